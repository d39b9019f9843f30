//! `utp-sim`: run a uTP bulk transfer over a simulated bottleneck and print a report.
//!
//! With no arguments it runs the default scenario (8 MiB over 10 Mbit/s, 25 ms one way,
//! 250 KB queue, 0.1 % loss). Options override single parameters; the seed can also
//! come from the `UTP_SIM_SEED` environment variable.

use std::process::ExitCode;
use std::time::Duration;

use utp_sim::{run, Scenario};

const USAGE: &str = "usage: utp-sim [--seed N] [--bytes N] [--rate-mbit F] [--delay-ms N] \
[--queue-kb N] [--loss PERCENT] [--profile default|libutp|libtorrent]";

fn parse(args: &[String]) -> Result<Scenario, String> {
    let mut s = Scenario::default();
    if let Ok(seed) = std::env::var("UTP_SIM_SEED") {
        s.seed = seed
            .parse()
            .map_err(|_| format!("UTP_SIM_SEED must be an integer, got {seed:?}"))?;
    }
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_string());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
        let num = |what: &str| -> Result<f64, String> {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{flag} takes {what}, got {value:?}"))
        };
        match flag.as_str() {
            "--seed" => {
                s.seed = value
                    .parse()
                    .map_err(|_| format!("--seed takes an integer, got {value:?}"))?
            }
            "--bytes" => s.bytes = num("a byte count")? as usize,
            "--rate-mbit" => {
                let r = num("a rate in Mbit/s")?;
                if r < 0.01 {
                    return Err(format!("--rate-mbit must be at least 0.01, got {value}"));
                }
                s.forward.rate_bps = (r * 1e6) as u64;
                s.reverse.rate_bps = (r * 1e6) as u64;
            }
            "--delay-ms" => {
                let d = Duration::from_micros((num("milliseconds")? * 1000.0) as u64);
                s.forward.delay = d;
                s.reverse.delay = d;
            }
            "--queue-kb" => s.forward.queue_bytes = (num("kilobytes")? * 1000.0) as u64,
            "--loss" => {
                let l = num("a percentage")?;
                if l >= 100.0 {
                    return Err(format!("--loss must be below 100 percent, got {value}"));
                }
                s.forward.loss = l / 100.0;
            }
            "--profile" => {
                s.config = match value.as_str() {
                    "default" => utp::Config::default(),
                    "libutp" => utp::Config::libutp(),
                    "libtorrent" => utp::Config::libtorrent(),
                    other => {
                        return Err(format!(
                            "--profile takes default, libutp or libtorrent, got {other:?}"
                        ))
                    }
                }
            }
            other => return Err(format!("unknown option {other:?}; {USAGE}")),
        }
    }
    Ok(s)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = match parse(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("utp-sim: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "utp-sim: one uTP flow (LEDBAT) over a simulated bottleneck; seed {}",
        scenario.seed
    );
    let wall = std::time::Instant::now();
    match run(&scenario) {
        Ok(report) => {
            println!("{report}");
            let secs = wall.elapsed().as_secs_f64();
            println!(
                "wall time            {:.3} s ({:.0}x real time, {:.2} M datagrams/s)",
                secs,
                report.duration.as_secs_f64() / secs.max(1e-9),
                report.datagrams as f64 / secs.max(1e-9) / 1e6
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("utp-sim: {e} (seed {})", scenario.seed);
            ExitCode::FAILURE
        }
    }
}

//! `utp-sim`: simulate uTP/LEDBAT experiments deterministically and report on them.
//!
//! ```text
//! utp-sim                                run the default scenario ("alone")
//! utp-sim list                           list the built-in scenarios and parameters
//! utp-sim run NAME|FILE.toml [options]   run one scenario
//! utp-sim sweep NAME|FILE.toml --vary P=v1,v2,... [--vary ...] [options]
//! utp-sim soak [--secs S] [--conns N] [--loss P] [--seed N] ...
//!                                        real-time soak of the tokio stack over
//!                                        loopback through a lossy relay (`soak`)
//!
//! options: --seed N         the seed (also UTP_SIM_SEED)
//!          --set P=V        set a parameter (see `list`)
//!          --out DIR        write report.txt, flows.csv, links.csv, *.svg, trace.pcap
//!          --jobs N         parallel runs for a sweep (default: all cores)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use utp_sim::report;
use utp_sim::scenario::{self, Scenario, BUILT_IN};
use utp_sim::sweep::{self, PARAMETERS};

/// Counts live heap bytes for `utp-sim soak` (`utp_sim::soak::heap_bytes`): the soak
/// checks memory with it, which RSS cannot show once the allocator keeps freed pages.
/// Two relaxed atomic operations per allocation: no measurable cost to the simulator
/// (`utp-sim run yield` takes 0.08 s with or without it).
#[global_allocator]
static HEAP: utp_sim::soak::CountingAlloc = utp_sim::soak::CountingAlloc;

const USAGE: &str =
    "usage: utp-sim [list | run NAME|FILE.toml | sweep NAME|FILE.toml --vary P=v1,v2,..] \
[--seed N] [--set P=V] [--out DIR] [--jobs N]";

struct Args {
    command: String,
    scenario: String,
    seed: Option<u64>,
    sets: Vec<(String, f64)>,
    vary: Vec<(String, Vec<f64>)>,
    out: Option<PathBuf>,
    jobs: usize,
}

fn number(p: &str, v: &str) -> Result<f64, String> {
    v.trim()
        .parse::<f64>()
        .map_err(|_| format!("{p} takes numbers, got {v:?}"))
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        command: "run".into(),
        scenario: "alone".into(),
        seed: None,
        sets: Vec::new(),
        vary: Vec::new(),
        out: None,
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if let Ok(seed) = std::env::var("UTP_SIM_SEED") {
        a.seed = Some(
            seed.parse()
                .map_err(|_| format!("UTP_SIM_SEED must be an integer, got {seed:?}"))?,
        );
    }
    let mut it = args.iter().peekable();
    if let Some(cmd) = it.peek() {
        if !cmd.starts_with('-') {
            a.command = it.next().expect("peeked").clone();
            if a.command != "list" {
                if let Some(name) = it.peek().filter(|s| !s.starts_with('-')) {
                    a.scenario = name.to_string();
                    it.next();
                }
            }
        }
    }
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))
        };
        match flag.as_str() {
            "--seed" => {
                let v = value()?;
                a.seed = Some(
                    v.parse()
                        .map_err(|_| format!("--seed takes an integer, got {v:?}"))?,
                );
            }
            "--set" => {
                let v = value()?;
                let (p, x) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--set takes P=V, got {v:?}"))?;
                a.sets.push((p.to_string(), number(p, x)?));
            }
            "--vary" => {
                let v = value()?;
                let (p, xs) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--vary takes P=v1,v2,..., got {v:?}"))?;
                let values = xs
                    .split(',')
                    .map(|x| number(p, x))
                    .collect::<Result<Vec<_>, _>>()?;
                a.vary.push((p.to_string(), values));
            }
            "--out" => a.out = Some(PathBuf::from(value()?)),
            "--jobs" => {
                let v = value()?;
                a.jobs = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--jobs takes a positive integer, got {v:?}"))?;
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other:?}; {USAGE}")),
        }
    }
    if !["run", "list", "sweep"].contains(&a.command.as_str()) {
        return Err(format!("unknown command {:?}; {USAGE}", a.command));
    }
    Ok(a)
}

fn load(name: &str) -> Result<Scenario, String> {
    if name.ends_with(".toml") || name.contains('/') {
        let text = std::fs::read_to_string(name).map_err(|e| format!("cannot read {name}: {e}"))?;
        return Scenario::from_toml(&text).map_err(|e| format!("{name}: {e}"));
    }
    Scenario::built_in(name).ok_or_else(|| {
        let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
        format!(
            "no scenario {name:?}: built-in ones are {} (or give a .toml file)",
            names.join(", ")
        )
    })
}

fn main() -> ExitCode {
    // `utp-sim list | head` ends quietly, as Unix tools do, instead of panicking on
    // the closed pipe (Rust ignores SIGPIPE, so println! would fail).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: restores the default action of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("soak") {
        return soak_main(&args[1..]);
    }
    match real_main(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("utp-sim: {e}");
            ExitCode::from(2)
        }
    }
}

fn real_main(args: &[String]) -> Result<ExitCode, String> {
    let a = parse(args)?;
    if a.command == "list" {
        println!("built-in scenarios:");
        for (n, d) in BUILT_IN {
            println!("  {n:<10} {d}");
        }
        println!("\nparameters for --set and --vary:");
        for (n, d) in PARAMETERS {
            println!("  {n:<18} {d}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut s = load(&a.scenario)?;
    if let Some(seed) = a.seed {
        s.seed = seed;
    }
    for (p, v) in &a.sets {
        sweep::set(&mut s, p, *v)?;
    }
    s.validate()?;
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    if a.command == "sweep" {
        if a.vary.is_empty() {
            return Err("sweep needs at least one --vary P=v1,v2,...".into());
        }
        eprintln!(
            "utp-sim: sweeping {} (seed {}) on {} threads",
            s.name, s.seed, a.jobs
        );
        let progress = |done: usize, total: usize| {
            let width = 40;
            let filled = done * width / total.max(1);
            eprint!(
                "\r[{}{}] {done}/{total}",
                "=".repeat(filled),
                " ".repeat(width - filled)
            );
            if done == total {
                eprintln!();
            }
        };
        let rows = sweep::sweep(&s, &a.vary, a.jobs, &progress)?;
        print!("{}", sweep::table(&rows));
        if let Some(dir) = &a.out {
            write(dir.join("sweep.csv"), sweep::csv(&rows))?;
            write(dir.join("sweep.svg"), sweep::plot(&rows))?;
            eprintln!(
                "utp-sim: wrote sweep.csv and sweep.svg to {}",
                dir.display()
            );
        }
        let failed = rows.iter().any(|r| r.failure.is_some());
        return Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    let wall = std::time::Instant::now();
    let r = scenario::run(&s, a.out.is_some())?;
    let secs = wall.elapsed().as_secs_f64().max(1e-9);
    let text = report::text(&r);
    print!("{text}");
    println!(
        "wall time   {secs:.2} s: {:.0}x real time, {:.2} M datagrams/s",
        r.simulated.as_secs_f64() / secs,
        r.datagrams as f64 / secs / 1e6
    );
    if let Some(dir) = &a.out {
        write(dir.join("report.txt"), text.clone())?;
        report::write_csv(&r, dir).map_err(|e| format!("cannot write CSV: {e}"))?;
        report::write_plots(&r, dir).map_err(|e| format!("cannot write plots: {e}"))?;
        if let Some(p) = &r.pcap {
            std::fs::write(dir.join("trace.pcap"), p)
                .map_err(|e| format!("cannot write pcap: {e}"))?;
        }
        eprintln!("utp-sim: wrote report.txt, flows.csv, links.csv, throughput.svg, window.svg, delay.svg, trace.pcap to {}", dir.display());
    }
    Ok(if r.failure.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `utp-sim soak`: real time, outside the deterministic simulator.
fn soak_main(args: &[String]) -> ExitCode {
    let config = match utp_sim::soak::SoakConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("utp-sim: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "utp-sim: soak for {:.0} s, {} connections, loss {}, seed {}",
        config.duration.as_secs_f64(),
        config.conns,
        config.loss,
        config.seed
    );
    match utp_sim::soak::run(&config) {
        Ok(report) => {
            print!("{}", report.text());
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("utp-sim: soak failed to start: {e}");
            ExitCode::from(2)
        }
    }
}

fn write(path: PathBuf, text: String) -> Result<(), String> {
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

//! LEDBAT under loss and delay, in virtual time: ours against the real libutp on the
//! same simulated links.
//!
//! Every cell of a grid (bottleneck rate × RTT × random loss × queue depth) moves a
//! fixed number of bytes through the deterministic simulator (`utp-sim`) three ways:
//! with our stack at both ends in its default configuration (BEP 29's growth of at
//! most 3000 bytes per RTT, as libutp and libtorrent grow), with ours held to RFC
//! 6817's GAIN of 1 (one 1380-byte packet per RTT), and with libutp at both ends. Criterion's `iter_custom`
//! returns the *simulated* transfer time, and `Throughput::Bytes` turns it into
//! goodput, so the figures are exact and the same on every machine. libutp's initial
//! seq_nr is pinned to one for which its fast retransmit works (checklist L bug 1);
//! otherwise its results swing severalfold with the seed.
//!
//! After the criterion runs, the bench prints one table (goodput of each, and ours /
//! libutp per cell) and writes it to `target/ledbat-grid.md`.
//!
//! Each transfer runs once per seed of [`SEEDS`] (the seed draws the losses), and a
//! cell's figure is the mean: one loss pattern decides whether a retransmission or the
//! last packets are lost, which moves a 4-second transfer by several percent either way.
//! The table also gives the lowest per-seed ratio.
//!
//! ```text
//! cargo bench -p utp-benches --bench ledbat_grid            # the grid
//! cargo bench -p utp-benches --bench ledbat_grid -- 50ms    # cells matching a filter
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use utp_sim::link::{LossModel, QueueLimit};
use utp_sim::scenario::{FlowKind, FlowSpec};
use utp_sim::{run, Scenario};

/// libutp's initial seq_nr in every libutp run: its fast retransmit works with it.
const LIBUTP_SEQ_NR: u16 = 0x4000;
/// Simulated time after which a transfer is abandoned (it then counts as moving the
/// bytes delivered so far in this time).
const LIMIT: Duration = Duration::from_secs(1200);
/// The seeds every transfer runs with, each variant on the same ones.
const SEEDS: [u64; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

/// What runs at both ends of the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// Our defaults (BEP 29's growth, 3000 bytes per RTT).
    Ours,
    /// Ours with RFC 6817's GAIN of 1.
    OursRfcGain,
    /// The real libutp.
    Libutp,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Ours, Variant::OursRfcGain, Variant::Libutp];

    fn name(self) -> &'static str {
        match self {
            Variant::Ours => "ours",
            Variant::OursRfcGain => "ours-rfc6817-gain",
            Variant::Libutp => "libutp",
        }
    }
}

/// One cell of the grid.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
struct Cell {
    rate_mbit: u64,
    rtt_ms: u64,
    loss_pct: f64,
    /// Queue depth in ms of the bottleneck rate.
    queue_ms: u64,
}

impl Cell {
    fn label(&self) -> String {
        let depth = if self.queue_ms < 100 {
            "shallow"
        } else {
            "deep"
        };
        format!(
            "{}M/{}ms/{}%/{}",
            self.rate_mbit, self.rtt_ms, self.loss_pct, depth
        )
    }

    /// Bytes to move: about 4 s at full rate on a clean link.
    fn bytes(&self) -> u64 {
        self.rate_mbit * 1_000_000 / 8 * 4
    }

    fn scenario(&self, variant: Variant, seed: u64) -> Scenario {
        let mut s = Scenario {
            name: self.label(),
            seed,
            duration_s: LIMIT.as_secs_f64(),
            resolution_ms: 100.0,
            ..Scenario::default()
        };
        let rate = self.rate_mbit * 1_000_000;
        let one_way = Duration::from_millis(self.rtt_ms / 2);
        s.forward.rate_bps = rate;
        s.forward.delay = one_way;
        s.forward.queue = QueueLimit::Bytes(rate / 8 * self.queue_ms / 1000);
        s.forward.loss = LossModel::Bernoulli {
            p: self.loss_pct / 100.0,
        };
        s.reverse.rate_bps = rate;
        s.reverse.delay = one_way;
        let mut flow = FlowSpec {
            kind: match variant {
                Variant::Ours | Variant::OursRfcGain => FlowKind::Utp,
                Variant::Libutp => FlowKind::Libutp,
            },
            bytes: Some(self.bytes()),
            libutp_seq_nr: Some(LIBUTP_SEQ_NR),
            ..FlowSpec::default()
        };
        if variant == Variant::OursRfcGain {
            // One MSS (1380 bytes) per RTT at zero delay: RFC 6817's GAIN of 1.
            flow.ledbat.max_increase_per_rtt = Some(1380);
        }
        s.flows = vec![flow];
        s
    }
}

fn grid() -> Vec<Cell> {
    let mut cells = Vec::new();
    for rate_mbit in [10, 100] {
        for rtt_ms in [10, 50, 200] {
            for loss_pct in [0.0, 0.1, 1.0, 5.0] {
                for queue_ms in [20, 250] {
                    cells.push(Cell {
                        rate_mbit,
                        rtt_ms,
                        loss_pct,
                        queue_ms,
                    });
                }
            }
        }
    }
    cells
}

/// What one transfer measured.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    /// Simulated time to move the cell's bytes (extrapolated if it hit [`LIMIT`]).
    time: Duration,
    /// Mean queuing delay at the bottleneck.
    queue_ms: f64,
    finished: bool,
}

impl Outcome {
    fn goodput_mbit(&self, bytes: u64) -> f64 {
        bytes as f64 * 8.0 / self.time.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Runs one transfer. Deterministic: the same cell, variant and seed give the same
/// outcome.
fn transfer(cell: Cell, variant: Variant, seed: u64) -> Outcome {
    let s = cell.scenario(variant, seed);
    let r = match run(&s, false) {
        Ok(r) => r,
        Err(e) => panic!("{}: {e}", cell.label()),
    };
    if let Some(f) = &r.failure {
        panic!("{} {variant:?} seed {seed}: {f}", cell.label());
    }
    let flow = &r.flows[0];
    let queue_ms = r.links[0].mean_queue_delay().as_secs_f64() * 1e3;
    match flow.finished {
        Some(t) => Outcome {
            time: t,
            queue_ms,
            finished: true,
        },
        None => {
            // Unfinished: the time the whole transfer would take at the rate so far.
            let part = flow.delivered.max(1) as f64 / cell.bytes() as f64;
            Outcome {
                time: r.simulated.div_f64(part.min(1.0)),
                queue_ms,
                finished: false,
            }
        }
    }
}

/// The transfer once per seed of [`SEEDS`], spread over the machine's cores; in seed
/// order.
fn transfers(cell: Cell, variant: Variant) -> Vec<Outcome> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = SEEDS.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = SEEDS
            .chunks(chunk)
            .map(|seeds| {
                scope.spawn(move || {
                    seeds
                        .iter()
                        .map(|&seed| transfer(cell, variant, seed))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("transfer thread"))
            .collect()
    })
}

/// The mean over seeds: the mean transfer time (so goodput is total bytes over total
/// time) and the mean queuing delay; finished only if every seed finished.
fn mean(outcomes: &[Outcome]) -> Outcome {
    let n = outcomes.len().max(1) as u32;
    Outcome {
        time: outcomes.iter().map(|o| o.time).sum::<Duration>() / n,
        queue_ms: outcomes.iter().map(|o| o.queue_ms).sum::<f64>() / f64::from(n),
        finished: outcomes.iter().all(|o| o.finished),
    }
}

/// Per-seed outcomes seen during this process run, for the summary table. The runs are
/// deterministic, so criterion's repeated calls reuse them.
type Seen = BTreeMap<(String, &'static str), Vec<Outcome>>;
static SEEN: Mutex<Seen> = Mutex::new(BTreeMap::new());

/// The cell's per-seed outcomes for `variant`, run on first use.
fn outcomes(cell: Cell, variant: Variant) -> Vec<Outcome> {
    let key = (cell.label(), variant.name());
    if let Some(o) = SEEN.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return o.clone();
    }
    let o = transfers(cell, variant);
    SEEN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, o.clone());
    o
}

fn ledbat_grid(c: &mut Criterion) {
    for cell in grid() {
        let mut g = c.benchmark_group(format!("ledbat/{}", cell.label()));
        g.throughput(Throughput::Bytes(cell.bytes()));
        g.sampling_mode(SamplingMode::Flat);
        for variant in Variant::ALL {
            g.bench_function(BenchmarkId::from_parameter(variant.name()), |b| {
                b.iter_custom(|iters| {
                    let o = mean(&outcomes(cell, variant));
                    o.time * u32::try_from(iters).unwrap_or(u32::MAX)
                })
            });
        }
        g.finish();
    }
    summary();
}

/// Prints the table for the cells that ran, and writes it to `target/ledbat-grid.md`.
fn summary() {
    let seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.is_empty() {
        return;
    }
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| cell (rate/RTT/loss/queue) | ours | ours, RFC 6817 gain | libutp | ours / libutp | lowest seed | ours RFC gain / libutp | queue ms ours / libutp |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let (mut ratios, mut ratios_gain) = (Vec::new(), Vec::new());
    for cell in grid() {
        let label = cell.label();
        let get = |v: Variant| seen.get(&(label.clone(), v.name()));
        let (Some(os), Some(bs), Some(ls)) = (
            get(Variant::Ours),
            get(Variant::OursRfcGain),
            get(Variant::Libutp),
        ) else {
            continue;
        };
        // Each variant ran on the same seeds: the ratio per seed pairs those runs.
        let lowest_seed = os
            .iter()
            .zip(ls)
            .map(|(o, l)| l.time.as_secs_f64() / o.time.as_secs_f64().max(1e-9))
            .fold(f64::INFINITY, f64::min);
        let (o, b, l) = (&mean(os), &mean(bs), &mean(ls));
        let bytes = cell.bytes();
        let (go, gb, gl) = (
            o.goodput_mbit(bytes),
            b.goodput_mbit(bytes),
            l.goodput_mbit(bytes),
        );
        let mark = |x: &Outcome| if x.finished { "" } else { " (unfinished)" };
        ratios.push(go / gl);
        ratios_gain.push(gb / gl);
        let _ = writeln!(
            t,
            "| {label} | {go:.2}{} | {gb:.2}{} | {gl:.2}{} | {:.2} | {lowest_seed:.2} | {:.2} | {:.0} / {:.0} |",
            mark(o),
            mark(b),
            mark(l),
            go / gl,
            gb / gl,
            o.queue_ms,
            l.queue_ms
        );
    }
    let stats = |r: &[f64]| {
        let geo = (r.iter().map(|x| x.ln()).sum::<f64>() / r.len().max(1) as f64).exp();
        let min = r.iter().cloned().fold(f64::INFINITY, f64::min);
        (geo, min)
    };
    if !ratios.is_empty() {
        let (geo, min) = stats(&ratios);
        let (geo_b, min_b) = stats(&ratios_gain);
        let _ = writeln!(
            t,
            "\n{} cells (goodput in Mbit/s, mean over seeds {SEEDS:?}): ours / libutp geometric mean {geo:.2}, lowest {min:.2}; \
             ours with RFC 6817 gain / libutp geometric mean {geo_b:.2}, lowest {min_b:.2}",
            ratios.len()
        );
    }
    println!("\n{t}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let _ = std::fs::write(dir.join("ledbat-grid.md"), &t);
}

criterion_group! {
    name = benches;
    // Simulated time is returned, so the timings have no noise: few samples suffice.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1))
        .without_plots();
    targets = ledbat_grid
}
criterion_main!(benches);

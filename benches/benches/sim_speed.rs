//! The simulator's speed: simulated datagrams per wall-clock second, for our stack and
//! for the real libutp in the same scenario, back to back in one process run.
//!
//! Criterion reports `Throughput::Elements` as elements per second: here, datagrams
//! that crossed the simulated network per second of wall time (one core).
//!
//! ```text
//! cargo bench -p utp-benches --bench sim_speed
//! ```

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use utp_sim::sweep::set;
use utp_sim::{run, Scenario};

/// (label, rate in Mbit/s, simulated seconds): a lone flow on a 50 ms RTT path.
const CASES: &[(&str, f64, f64)] = &[("10M", 10.0, 20.0), ("100M", 100.0, 5.0)];

fn scenario(rate_mbit: f64, secs: f64, stack: f64) -> Scenario {
    let mut s = Scenario::built_in("alone").expect("built-in scenario");
    for (p, v) in [
        ("rate_mbit", rate_mbit),
        ("duration_s", secs),
        ("stack", stack),
    ] {
        set(&mut s, p, v).expect("known parameter");
    }
    s
}

fn sim_speed(c: &mut Criterion) {
    for &(label, rate, secs) in CASES {
        let mut g = c.benchmark_group(format!("sim_speed/{label}"));
        for (name, stack) in [("ours", 0.0), ("libutp", 1.0)] {
            let s = scenario(rate, secs, stack);
            // The run is deterministic: its datagram count is the same every time.
            let datagrams = run(&s, false).expect("scenario runs").datagrams;
            g.throughput(Throughput::Elements(datagrams));
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| run(&s, false).expect("scenario runs").datagrams)
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .without_plots();
    targets = sim_speed
}
criterion_main!(benches);

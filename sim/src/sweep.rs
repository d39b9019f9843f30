//! Parameter sweeps: the same scenario over a grid of parameter values, in parallel.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::link::{LossModel, QueueLimit};
use crate::scenario::{run, FlowKind, Scenario, Stack};

/// The parameters `--set` and `--vary` understand, with what they change.
pub const PARAMETERS: &[(&str, &str)] = &[
    ("seed", "the run's seed"),
    ("duration_s", "simulated seconds"),
    ("rate_mbit", "bottleneck rate, both directions (Mbit/s)"),
    (
        "delay_ms",
        "one-way propagation delay, both directions (ms)",
    ),
    ("queue_kb", "bottleneck queue (kilobytes)"),
    ("loss", "random loss probability on the bottleneck (0..1)"),
    ("target_ms", "LEDBAT target delay of every uTP flow (ms)"),
    ("gain", "LEDBAT increase gain of every uTP flow"),
    ("decrease_gain", "LEDBAT decrease gain of every uTP flow"),
    (
        "exit_reduction",
        "LEDBAT window factor when slow start ends on delay (0..1)",
    ),
    ("min_window_packets", "LEDBAT minimum window (packets)"),
    ("base_history", "LEDBAT base-delay history (minutes)"),
    ("slow_start", "LEDBAT slow start (0 or 1)"),
    (
        "random_loss_backlog",
        "Veno's random-loss test: packets of ours queued below which a loss is random (0 off)",
    ),
    (
        "random_loss_reduction",
        "LEDBAT window factor on a random loss (0..1)",
    ),
    (
        "stack",
        "every uTP flow: 0 ours, 1 libutp, 2 ours to libutp, 3 libutp to ours",
    ),
];

/// Sets parameter `name` to `value` in `s`; the error says what is accepted.
pub fn set(s: &mut Scenario, name: &str, value: f64) -> Result<(), String> {
    let nonneg = |v: f64| {
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(format!("{name} must be a number >= 0, got {v}"))
        }
    };
    let v = nonneg(value)?;
    let utp_flows = s.flows.iter_mut().filter(|f| f.kind == FlowKind::Utp);
    match name {
        "seed" => s.seed = v as u64,
        "duration_s" => s.duration_s = v,
        "rate_mbit" => {
            if v < 0.01 {
                return Err(format!("rate_mbit must be at least 0.01, got {v}"));
            }
            s.forward.rate_bps = (v * 1e6) as u64;
            s.reverse.rate_bps = (v * 1e6) as u64;
        }
        "delay_ms" => {
            s.forward.delay = core::time::Duration::from_secs_f64(v / 1e3);
            s.reverse.delay = core::time::Duration::from_secs_f64(v / 1e3);
        }
        "queue_kb" => s.forward.queue = QueueLimit::Bytes((v * 1000.0) as u64),
        "loss" => {
            if v > 1.0 {
                return Err(format!("loss is a probability between 0 and 1, got {v}"));
            }
            s.forward.loss = LossModel::Bernoulli { p: v };
        }
        "target_ms" => utp_flows.for_each(|f| f.ledbat.target_ms = Some(v)),
        "gain" => utp_flows.for_each(|f| f.ledbat.gain = Some(v)),
        "decrease_gain" => utp_flows.for_each(|f| f.ledbat.decrease_gain = Some(v)),
        "exit_reduction" => {
            utp_flows.for_each(|f| f.ledbat.slow_start_exit_reduction = Some(v.min(1.0)))
        }
        "min_window_packets" => {
            utp_flows.for_each(|f| f.ledbat.min_window_packets = Some(v as usize))
        }
        "base_history" => utp_flows.for_each(|f| f.ledbat.base_history = Some(v as usize)),
        "slow_start" => utp_flows.for_each(|f| f.ledbat.slow_start = Some(v != 0.0)),
        "random_loss_backlog" => {
            utp_flows.for_each(|f| f.ledbat.random_loss_backlog_packets = Some(v))
        }
        "random_loss_reduction" => {
            utp_flows.for_each(|f| f.ledbat.random_loss_reduction = Some(v.min(1.0)))
        }
        "stack" => {
            let (kind, peer) = match v as u64 {
                0 if v == 0.0 => (FlowKind::Utp, Stack::Ours),
                1 if v == 1.0 => (FlowKind::Libutp, Stack::Libutp),
                2 if v == 2.0 => (FlowKind::Utp, Stack::Libutp),
                3 if v == 3.0 => (FlowKind::Libutp, Stack::Ours),
                _ => {
                    return Err(format!(
                        "stack is 0 (ours), 1 (libutp), 2 (ours to libutp) or 3 (libutp to ours), got {v}"
                    ))
                }
            };
            for f in s.flows.iter_mut().filter(|f| f.is_utp()) {
                f.kind = kind;
                f.peer = Some(peer);
            }
        }
        other => {
            let names: Vec<&str> = PARAMETERS.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "unknown parameter {other:?}; known: {}",
                names.join(", ")
            ));
        }
    }
    Ok(())
}

/// One point of a sweep and what it measured.
#[derive(Clone, Debug)]
pub struct SweepRow {
    /// The parameter values of this point.
    pub params: Vec<(String, f64)>,
    /// Goodput of all uTP flows together (bits per second, over the whole run).
    pub utp_goodput_bps: f64,
    /// Total goodput of all flows.
    pub total_goodput_bps: f64,
    /// Bottleneck utilisation by all flows.
    pub utilisation: f64,
    /// Mean bottleneck queuing delay (ms).
    pub queue_delay_ms: f64,
    /// Jain's index over all flows.
    pub fairness: f64,
    /// Retransmissions of all flows.
    pub retransmits: u64,
    /// A failure, if the run had one.
    pub failure: Option<String>,
}

/// Runs `base` at every combination of `grid` values on `jobs` threads, calling
/// `progress(done, total)` as runs finish. Rows come back in grid order.
pub fn sweep(
    base: &Scenario,
    grid: &[(String, Vec<f64>)],
    jobs: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<SweepRow>, String> {
    let mut points: Vec<Vec<(String, f64)>> = vec![Vec::new()];
    for (name, values) in grid {
        points = points
            .into_iter()
            .flat_map(|p| {
                values
                    .iter()
                    .map(move |v| [p.clone(), vec![(name.clone(), *v)]].concat())
            })
            .collect();
    }
    let scenarios = points
        .iter()
        .map(|p| {
            let mut s = base.clone();
            for (n, v) in p {
                set(&mut s, n, *v)?;
            }
            s.validate()?;
            Ok(s)
        })
        .collect::<Result<Vec<_>, String>>()?;
    let total = scenarios.len();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let rows: Mutex<Vec<Option<SweepRow>>> = Mutex::new(vec![None; total]);
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, total.max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    break;
                }
                let row = measure(&scenarios[i], points[i].clone());
                rows.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(row);
                progress(done.fetch_add(1, Ordering::SeqCst) + 1, total);
            });
        }
    });
    Ok(rows
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect())
}

fn measure(s: &Scenario, params: Vec<(String, f64)>) -> SweepRow {
    match run(s, false) {
        Ok(r) => {
            let span = r.simulated.as_secs_f64();
            let all: Vec<usize> = (0..r.flows.len()).collect();
            let goodput = |i: usize| r.goodput(i, 0.0, span);
            let utp: f64 = (0..r.flows.len())
                .filter(|&i| r.flows[i].spec.is_utp())
                .map(goodput)
                .sum();
            let total: f64 = all.iter().map(|&i| goodput(i)).sum();
            SweepRow {
                params,
                utp_goodput_bps: utp,
                total_goodput_bps: total,
                utilisation: total / s.forward.rate_bps.max(1) as f64,
                queue_delay_ms: r.links[0].mean_queue_delay().as_secs_f64() * 1e3,
                fairness: r.fairness(&all, 0.0, span),
                retransmits: r.flows.iter().map(|f| f.retransmits).sum(),
                failure: r.failure,
            }
        }
        Err(e) => SweepRow {
            params,
            utp_goodput_bps: 0.0,
            total_goodput_bps: 0.0,
            utilisation: 0.0,
            queue_delay_ms: 0.0,
            fairness: 0.0,
            retransmits: 0,
            failure: Some(e),
        },
    }
}

/// The summary table of a sweep.
pub fn table(rows: &[SweepRow]) -> String {
    let mut o = String::new();
    if let Some(first) = rows.first() {
        for (n, _) in &first.params {
            let _ = write!(o, "{n:>14} ");
        }
    }
    let _ = writeln!(
        o,
        "{:>12} {:>12} {:>8} {:>10} {:>8} {:>8}",
        "utp Mb/s", "total Mb/s", "util %", "queue ms", "jain", "rexmit"
    );
    for r in rows {
        for (_, v) in &r.params {
            let _ = write!(o, "{v:>14} ");
        }
        let _ = write!(
            o,
            "{:>12.2} {:>12.2} {:>8.1} {:>10.1} {:>8.3} {:>8}",
            r.utp_goodput_bps / 1e6,
            r.total_goodput_bps / 1e6,
            r.utilisation * 100.0,
            r.queue_delay_ms,
            r.fairness,
            r.retransmits
        );
        if let Some(f) = &r.failure {
            let _ = write!(o, "  FAILED: {f}");
        }
        o.push('\n');
    }
    o
}

/// The sweep as CSV.
pub fn csv(rows: &[SweepRow]) -> String {
    let mut o = String::new();
    if let Some(first) = rows.first() {
        for (n, _) in &first.params {
            let _ = write!(o, "{n},");
        }
    }
    o.push_str(
        "utp_goodput_bps,total_goodput_bps,utilisation,queue_delay_ms,jain,retransmits,failure\n",
    );
    for r in rows {
        for (_, v) in &r.params {
            let _ = write!(o, "{v},");
        }
        let _ = writeln!(
            o,
            "{:.0},{:.0},{:.4},{:.3},{:.4},{},{}",
            r.utp_goodput_bps,
            r.total_goodput_bps,
            r.utilisation,
            r.queue_delay_ms,
            r.fairness,
            r.retransmits,
            r.failure.as_deref().unwrap_or("").replace(',', ";")
        );
    }
    o
}

/// A plot of utilisation and queuing delay against the first swept parameter, one
/// line per value of the other parameters.
pub fn plot(rows: &[SweepRow]) -> String {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in rows {
        let Some(((_, x), rest)) = r.params.split_first() else {
            continue;
        };
        let label: Vec<String> = rest.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let key = format!("util % {}", label.join(" "));
        match series.iter_mut().find(|(k, _)| *k == key) {
            Some((_, pts)) => pts.push((*x, r.utilisation * 100.0)),
            None => series.push((key, vec![(*x, r.utilisation * 100.0)])),
        }
        let key = format!("queue ms {}", label.join(" "));
        match series.iter_mut().find(|(k, _)| *k == key) {
            Some((_, pts)) => pts.push((*x, r.queue_delay_ms)),
            None => series.push((key, vec![(*x, r.queue_delay_ms)])),
        }
    }
    let xname = rows
        .first()
        .and_then(|r| r.params.first())
        .map_or("", |(n, _)| n.as_str());
    crate::report::svg(
        &format!("Sweep over {xname}"),
        xname,
        "utilisation % / queuing delay ms",
        &series,
    )
}

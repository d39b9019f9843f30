//! The printed report of a run, and its files: CSV time series and SVG plots.

use core::fmt::Write as _;
use std::path::Path;

use crate::scenario::{FlowKind, RunResult, Stack, EPOCH, FORWARD};

/// A readable report: the scenario, each flow, the bottleneck.
pub fn text(r: &RunResult) -> String {
    let s = &r.scenario;
    let mut o = String::new();
    let f = &s.forward;
    let _ = writeln!(o, "scenario  {}: {}", s.name, s.description);
    let _ = writeln!(
        o,
        "seed      {}   (same seed, same run; override with --seed or UTP_SIM_SEED)",
        s.seed
    );
    let _ = writeln!(
        o,
        "forward   {:.1} Mbit/s, {:.0} ms one-way, queue {:?}, loss {:.2} %{}",
        f.rate_bps as f64 / 1e6,
        f.delay.as_secs_f64() * 1e3,
        f.queue,
        f.loss.mean() * 100.0,
        if s.changes.is_empty() {
            String::new()
        } else {
            format!(", {} scheduled changes", s.changes.len())
        }
    );
    let _ = writeln!(
        o,
        "simulated {:.1} s, {} datagrams",
        r.simulated.as_secs_f64(),
        r.datagrams
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "flow  kind     start   stop    delivered      goodput    share  retransmits  finished"
    );
    let total: f64 = r.flows.iter().map(|f| f.goodput_bps).sum();
    for (i, fl) in r.flows.iter().enumerate() {
        let kind = match fl.spec.kind {
            FlowKind::Utp | FlowKind::Libutp => match fl.spec.stacks() {
                Some((Stack::Ours, Stack::Ours)) => "utp",
                Some((Stack::Libutp, Stack::Libutp)) => "libutp",
                Some((Stack::Ours, Stack::Libutp)) => "utp>lib",
                _ => "lib>utp",
            },
            FlowKind::Tcp => "tcp",
            FlowKind::Cbr => "cbr",
        };
        let _ = writeln!(
            o,
            "{:>4}  {:<7}  {:>5.1}  {:>5}  {:>11}  {:>7.2} Mb/s  {:>5.1} %  {:>11}  {}",
            i,
            kind,
            fl.spec.start_s,
            fl.spec.stop_s.map_or("-".into(), |t| format!("{t:.1}")),
            fl.delivered,
            fl.goodput_bps / 1e6,
            if total > 0.0 {
                fl.goodput_bps / total * 100.0
            } else {
                0.0
            },
            fl.retransmits,
            fl.finished
                .map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        );
    }
    let l = &r.links[FORWARD];
    let _ = writeln!(o);
    let busy = l.busy_time.as_secs_f64() / r.simulated.as_secs_f64().max(1e-9);
    let _ = writeln!(
        o,
        "bottleneck  busy {:.1} %, queuing delay mean {:.1} ms / max {:.1} ms, drops {} (queue {}, random {}, codel {}, outage {})",
        busy * 100.0,
        l.mean_queue_delay().as_secs_f64() * 1e3,
        l.queue_delay_max.as_secs_f64() * 1e3,
        l.drops(),
        l.drops_queue,
        l.drops_random,
        l.drops_codel,
        l.drops_outage
    );
    if let Some(fail) = &r.failure {
        let _ = writeln!(o, "FAILURE     {fail}");
    }
    o
}

/// Writes `flows.csv` and `links.csv` (time series) into `dir`.
pub fn write_csv(r: &RunResult, dir: &Path) -> std::io::Result<()> {
    let mut flows = String::from(
        "time_s,flow,delivered_bytes,goodput_bps,cwnd_bytes,rtt_ms,delay_estimate_ms,retransmits\n",
    );
    for (flow, series) in &r.recorder.flows {
        for p in series {
            let _ = writeln!(
                flows,
                "{:.3},{},{},{:.0},{},{:.3},{:.3},{}",
                (p.t - EPOCH).as_secs_f64(),
                flow,
                p.delivered,
                p.goodput_bps,
                p.cwnd,
                p.rtt.as_secs_f64() * 1e3,
                p.delay_estimate.as_secs_f64() * 1e3,
                p.retransmits
            );
        }
    }
    std::fs::write(dir.join("flows.csv"), flows)?;
    let mut links = String::from("time_s,link,queue_delay_ms,backlog_bytes,sent_bytes,drops\n");
    for (i, series) in r.recorder.links.iter().enumerate().take(2) {
        let name = if i == FORWARD { "forward" } else { "reverse" };
        for p in series {
            let _ = writeln!(
                links,
                "{:.3},{},{:.3},{},{},{}",
                (p.t - EPOCH).as_secs_f64(),
                name,
                p.queue_delay.as_secs_f64() * 1e3,
                p.backlog,
                p.sent_bytes,
                p.drops
            );
        }
    }
    std::fs::write(dir.join("links.csv"), links)
}

/// Writes `throughput.svg`, `window.svg` and `delay.svg` into `dir`.
pub fn write_plots(r: &RunResult, dir: &Path) -> std::io::Result<()> {
    let t = |p: utp::Instant| (p - EPOCH).as_secs_f64();
    let flows: Vec<(String, Vec<(f64, f64)>)> = r
        .recorder
        .flows
        .iter()
        .map(|(i, s)| {
            (
                format!("flow {i}"),
                s.iter().map(|p| (t(p.t), p.goodput_bps / 1e6)).collect(),
            )
        })
        .collect();
    std::fs::write(
        dir.join("throughput.svg"),
        svg("Goodput per flow", "time (s)", "Mbit/s", &flows),
    )?;
    let windows: Vec<(String, Vec<(f64, f64)>)> = r
        .recorder
        .flows
        .iter()
        .map(|(i, s)| {
            (
                format!("flow {i}"),
                s.iter().map(|p| (t(p.t), p.cwnd as f64 / 1e3)).collect(),
            )
        })
        .collect();
    std::fs::write(
        dir.join("window.svg"),
        svg("Congestion window", "time (s)", "KB", &windows),
    )?;
    let mut delays: Vec<(String, Vec<(f64, f64)>)> = vec![(
        "bottleneck queue".into(),
        r.recorder.links[FORWARD]
            .iter()
            .map(|p| (t(p.t), p.queue_delay.as_secs_f64() * 1e3))
            .collect(),
    )];
    for (i, s) in &r.recorder.flows {
        if r.scenario.flows[*i].is_utp() {
            delays.push((
                format!("flow {i} LEDBAT estimate"),
                s.iter()
                    .map(|p| (t(p.t), p.delay_estimate.as_secs_f64() * 1e3))
                    .collect(),
            ));
        }
    }
    std::fs::write(
        dir.join("delay.svg"),
        svg("Queuing delay", "time (s)", "ms", &delays),
    )
}

/// A minimal line chart in SVG.
pub fn svg(title: &str, x_label: &str, unit: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    const W: f64 = 900.0;
    const H: f64 = 420.0;
    const L: f64 = 70.0;
    const R: f64 = 20.0;
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    const COLORS: [&str; 8] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    ];
    let pts = series.iter().flat_map(|(_, s)| s.iter());
    let x_max = pts.clone().map(|p| p.0).fold(0.0f64, f64::max).max(1e-9);
    let y_max = pts.map(|p| p.1).fold(0.0f64, f64::max).max(1e-9) * 1.05;
    let x = |v: f64| L + v / x_max * (W - L - R);
    let y = |v: f64| H - B - v / y_max * (H - T - B);
    let mut o = String::new();
    let _ = write!(o, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">");
    let _ = write!(o, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = write!(
        o,
        "<text x=\"{}\" y=\"24\" font-size=\"16\" text-anchor=\"middle\">{}</text>",
        W / 2.0,
        xml(title)
    );
    for k in 0..=5 {
        let vy = y_max * k as f64 / 5.0;
        let vx = x_max * k as f64 / 5.0;
        let _ = write!(
            o,
            "<line x1=\"{L}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
            W - R,
            y(vy),
            y(vy)
        );
        let _ = write!(
            o,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.3}</text>",
            L - 6.0,
            y(vy) + 4.0,
            trim(vy)
        );
        let _ = write!(
            o,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{:.3}</text>",
            x(vx),
            H - B + 18.0,
            trim(vx)
        );
    }
    let _ = write!(
        o,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        (L + W - R) / 2.0,
        H - 12.0,
        xml(x_label)
    );
    let _ = write!(
        o,
        "<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{}</text>",
        H / 2.0,
        H / 2.0,
        xml(unit)
    );
    for (i, (name, s)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut path = String::new();
        for (j, (px, py)) in s.iter().enumerate() {
            let _ = write!(
                path,
                "{}{:.1},{:.1}",
                if j == 0 { "M" } else { " L" },
                x(*px),
                y(*py)
            );
        }
        let _ = write!(
            o,
            "<path d=\"{path}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>"
        );
        let ly = T + 14.0 * i as f64;
        let _ = write!(
            o,
            "<rect x=\"{}\" y=\"{:.1}\" width=\"12\" height=\"3\" fill=\"{color}\"/>",
            W - R - 220.0,
            ly
        );
        let _ = write!(
            o,
            "<text x=\"{}\" y=\"{:.1}\">{}</text>",
            W - R - 202.0,
            ly + 5.0,
            xml(name)
        );
    }
    o.push_str("</svg>\n");
    o
}

fn trim(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

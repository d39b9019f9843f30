//! `bench-summary`: one table of the ratios that matter, from the latest benchmark runs.
//!
//! ```text
//! cargo bench -p utp-benches                              # run every benchmark
//! cargo run --release -p utp-benches --bin bench-summary  # print the summary
//! ```
//!
//! It reads criterion's results under `target/criterion/` (per-packet costs, simulator
//! speed, the LEDBAT grid in virtual time) and the table the loopback benchmark writes
//! to `target/loopback-bench.md`, and prints them as Markdown, ready for
//! `BENCHMARKS.md`. A benchmark that has not run is reported as missing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// One criterion benchmark: its id, median time per iteration (ns) and throughput.
#[derive(Debug)]
struct Result {
    median_ns: f64,
    bytes: Option<u64>,
    elements: Option<u64>,
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Every `new/benchmark.json` under `dir`, with its estimates, by full id.
fn criterion_results(dir: &Path) -> BTreeMap<String, Result> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.ends_with("new/benchmark.json") {
                if let Some((id, r)) = read_one(&p) {
                    out.insert(id, r);
                }
            }
        }
    }
    out
}

fn read_one(benchmark_json: &Path) -> Option<(String, Result)> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(benchmark_json).ok()?).ok()?;
    let est_path = benchmark_json.with_file_name("estimates.json");
    let est: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(est_path).ok()?).ok()?;
    let id = meta.get("full_id")?.as_str()?.to_string();
    let median_ns = est.get("median")?.get("point_estimate")?.as_f64()?;
    let tp = meta.get("throughput");
    let get = |k: &str| tp.and_then(|t| t.get(k)).and_then(|v| v.as_u64());
    Some((
        id,
        Result {
            median_ns,
            bytes: get("Bytes"),
            elements: get("Elements"),
        },
    ))
}

fn main() -> ExitCode {
    let target = target_dir();
    let results = criterion_results(&target.join("criterion"));
    let mut t = String::new();
    let _ = writeln!(t, "# Benchmark summary\n");
    let machine = machine();
    let _ = writeln!(t, "Machine: {machine}\n");

    // Per-packet costs.
    let _ = writeln!(
        t,
        "## Per-packet cost (`cargo bench -p utp-benches --bench per_packet`)\n"
    );
    let _ = writeln!(t, "| operation | ns |\n|---|---:|");
    let mut any = false;
    for (id, r) in results
        .iter()
        .filter(|(id, _)| id.starts_with("wire/") || id.starts_with("core/"))
    {
        any = true;
        let per = r
            .elements
            .map_or(r.median_ns, |n| r.median_ns / n.max(1) as f64);
        let _ = writeln!(t, "| {id} | {per:.1} |");
    }
    if !any {
        let _ = writeln!(t, "| (not run) | |");
    }

    // Simulator speed.
    let _ = writeln!(
        t,
        "\n## Simulator speed (`--bench sim_speed`): datagrams per wall-clock second\n"
    );
    let _ = writeln!(
        t,
        "| scenario | ours | libutp | ours / libutp |\n|---|---:|---:|---:|"
    );
    let rate = |id: &str| {
        results
            .get(id)
            .and_then(|r| Some(r.elements? as f64 / (r.median_ns / 1e9)))
    };
    for case in ["10M", "100M"] {
        let (o, l) = (
            rate(&format!("sim_speed/{case}/ours")),
            rate(&format!("sim_speed/{case}/libutp")),
        );
        let fmt = |x: Option<f64>| x.map_or("not run".into(), |v| format!("{:.2} M", v / 1e6));
        let ratio = match (o, l) {
            (Some(o), Some(l)) => format!("{:.2}", o / l),
            _ => "-".into(),
        };
        let _ = writeln!(
            t,
            "| alone, {case}bit/s | {} | {} | {ratio} |",
            fmt(o),
            fmt(l)
        );
    }

    // LEDBAT grid: goodput from the simulated transfer time.
    let _ = writeln!(
        t,
        "\n## LEDBAT under loss and delay, virtual time (`--bench ledbat_grid`)\n"
    );
    let _ = writeln!(
        t,
        "Goodput in Mbit/s of a transfer of 4 s at the link rate, mean over eight seeds; libutp's initial seq_nr pinned (L bug 1).\n"
    );
    // The bench writes its own table (with the lowest per-seed ratio, which criterion's
    // estimates do not carry); criterion's estimates are the fallback.
    if let Ok(md) = std::fs::read_to_string(target.join("ledbat-grid.md")) {
        t.push_str(&md);
    } else {
        grid_from_estimates(&mut t, &results);
    }

    // Loopback (written by the loopback bench itself).
    let _ = writeln!(t, "\n## Loopback, wall time (`--bench loopback`)\n");
    match std::fs::read_to_string(target.join("loopback-bench.md")) {
        Ok(md) => t.push_str(&md),
        Err(_) => t.push_str("(not run: `cargo bench -p utp-benches --bench loopback`)\n"),
    }
    print!("{t}");
    ExitCode::SUCCESS
}

/// The grid table from criterion's estimates (the median simulated time per cell).
fn grid_from_estimates(t: &mut String, results: &BTreeMap<String, Result>) {
    let _ = writeln!(
        t,
        "| cell (rate/RTT/loss/queue) | ours | ours, RFC 6817 gain | libutp | ours / libutp | ours RFC gain / libutp |\n|---|---:|---:|---:|---:|---:|"
    );
    let goodput = |id: &str| {
        let r = results.get(id)?;
        Some(r.bytes? as f64 * 8.0 / (r.median_ns / 1e9) / 1e6)
    };
    let mut ratios = Vec::new();
    let mut cells: Vec<&String> = results
        .keys()
        .filter(|id| id.starts_with("ledbat/") && id.ends_with("/ours"))
        .collect();
    cells.sort_by_key(|id| grid_order(id));
    for id in cells {
        let cell = id.trim_start_matches("ledbat/").trim_end_matches("/ours");
        let (o, l) = (goodput(id), goodput(&format!("ledbat/{cell}/libutp")));
        let b = goodput(&format!("ledbat/{cell}/ours-rfc6817-gain"));
        if let (Some(o), Some(l)) = (o, l) {
            ratios.push(o / l);
            let (bs, br) = b.map_or(("-".into(), "-".into()), |b| {
                (format!("{b:.2}"), format!("{:.2}", b / l))
            });
            let _ = writeln!(
                t,
                "| {cell} | {o:.2} | {bs} | {l:.2} | {:.2} | {br} |",
                o / l
            );
        }
    }
    if !ratios.is_empty() {
        let geo = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
        let min = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = ratios.iter().cloned().fold(0.0, f64::max);
        let _ = writeln!(
            t,
            "\n{} cells: ours / libutp geometric mean {geo:.2}, range {min:.2} to {max:.2}",
            ratios.len()
        );
    }
}

/// Sort key of a grid cell id `ledbat/RATEM/RTTms/LOSS%/QUEUE/...`: numeric order.
fn grid_order(id: &str) -> (u64, u64, u64, String) {
    let parts: Vec<&str> = id.split('/').collect();
    let num = |i: usize, suffix: &str| {
        parts
            .get(i)
            .and_then(|p| p.trim_end_matches(suffix).parse::<f64>().ok())
            .map_or(u64::MAX, |v| (v * 1000.0) as u64)
    };
    (
        num(1, "M"),
        num(2, "ms"),
        num(3, "%"),
        parts.get(4).unwrap_or(&"").to_string(),
    )
}

/// The CPU model and core count, from /proc/cpuinfo where available.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "{cpu}, {cores} cores, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

//! Prints the BEP 29 coverage matrix: every checklist item, the tests that cover it,
//! and whether they passed.
//!
//! ```text
//! cargo run -p utp-conformance --bin bep29-coverage              # runs the whole suite
//! cargo run -p utp-conformance --bin bep29-coverage -- --log F   # a saved test log
//! cargo run -p utp-conformance --bin bep29-coverage -- --static  # no pass/fail
//! ```
//!
//! Without `--log` or `--static` it runs `cargo test --workspace --no-fail-fast`,
//! keeps the combined output in `target/bep29-coverage.log`, and reads the outcome of
//! each test from it. A saved log must hold cargo's `Running` lines too (stderr and
//! stdout together: `cargo test --workspace --no-fail-fast > F 2>&1`). The exit status
//! is 1 when an item is untested or a covering test failed.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use utp_conformance::coverage::{
    items_path, load_items, matrix, parse_test_log, scan_workspace, unknown_ids, workspace_root,
    Outcome, Status,
};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut log_file: Option<PathBuf> = None;
    let mut run = true;
    let mut verbose = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--log" => {
                let Some(f) = args.next() else {
                    eprintln!("--log needs a file");
                    return ExitCode::from(2);
                };
                log_file = Some(PathBuf::from(f));
            }
            "--static" => run = false,
            "--verbose" | "-v" => verbose = true,
            "--help" | "-h" => {
                println!(
                    "bep29-coverage [--log FILE | --static] [--verbose]\n\n\
                     Prints each BEP 29 checklist item with the tests that cover it and\n\
                     their outcome. Without --log or --static it runs\n\
                     `cargo test --workspace --no-fail-fast` first."
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?} (try --help)");
                return ExitCode::from(2);
            }
        }
    }
    let root = workspace_root();
    let items = match load_items(&items_path()) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let scan = match scan_workspace(&root) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if log_file.is_none() && run {
        let path = root.join("target/bep29-coverage.log");
        match run_suite(&root, &path) {
            Ok(()) => log_file = Some(path),
            Err(e) => {
                eprintln!("could not run the test suite: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let log = match &log_file {
        Some(f) => match std::fs::read_to_string(f) {
            Ok(text) => Some(parse_test_log(&text)),
            Err(e) => {
                eprintln!("cannot read {}: {e}", f.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let rows = matrix(&items, &scan.tests, log.as_ref());

    println!("{:<5} {:<9} {:<5} title / tests", "item", "status", "tests");
    for r in &rows {
        println!(
            "{:<5} {:<9} {:<5} {}",
            r.item.id,
            r.status.to_string(),
            r.tests.len(),
            r.item.title
        );
        if let Some(why) = &r.item.untestable {
            println!("{:22}exempt: {why}", "");
        }
        let shown = if verbose { r.tests.len() } else { 3 };
        for (t, outcome) in r.tests.iter().take(shown) {
            let o = match outcome {
                Some(Outcome::Passed) => "ok",
                Some(Outcome::Failed) => "FAILED",
                Some(Outcome::Ignored) => "ignored",
                None if log.is_some() => "not in log",
                None => "-",
            };
            println!("{:22}{:<10} {} {}", "", o, t.target.krate, t.path);
        }
        if r.tests.len() > shown {
            println!(
                "{:22}... and {} more (--verbose)",
                "",
                r.tests.len() - shown
            );
        }
    }
    let count = |s: Status| rows.iter().filter(|r| r.status == s).count();
    let covered = rows
        .iter()
        .filter(|r| !matches!(r.status, Status::Untested | Status::Exempt))
        .count();
    println!();
    println!(
        "{} items: {} covered (pass {}, FAIL {}, ignored {}, not run {}), {} exempt, {} UNTESTED",
        rows.len(),
        covered,
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Ignored),
        count(Status::NotRun),
        count(Status::Exempt),
        count(Status::Untested),
    );
    let tagged = scan.tests.iter().filter(|t| !t.covers.is_empty()).count();
    println!(
        "{} test functions in the workspace, {} with a Covers: line",
        scan.tests.len(),
        tagged
    );
    if let Some(log) = &log {
        // A scanned test the log does not name: a scanner or module-path mismatch, or
        // a target the run did not build (a feature, a platform).
        let missing: Vec<_> = scan
            .tests
            .iter()
            .filter(|t| !log.contains_key(&(t.target.clone(), t.path.clone())))
            .collect();
        println!(
            "{} test results in the log; {} scanned tests not among them",
            log.len(),
            missing.len()
        );
        for t in missing.iter().take(if verbose { usize::MAX } else { 10 }) {
            println!("  not in log: {} ({})", t.location(), t.target.krate);
        }
    }
    let mut bad = false;
    for (id, t) in unknown_ids(&items, &scan.tests) {
        println!("unknown item {id} in Covers: of {}", t.location());
        bad = true;
    }
    for p in &scan.problems {
        println!("misplaced Covers: line at {p}");
        bad = true;
    }
    if let Some(f) = &log_file {
        println!("test log: {}", f.display());
    }
    if bad || count(Status::Untested) > 0 || count(Status::Fail) > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs the whole suite, stdout and stderr into one file in order.
fn run_suite(root: &std::path::Path, log: &std::path::Path) -> std::io::Result<()> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = File::create(log)?;
    let err = out.try_clone()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!(
        "running `cargo test --workspace --no-fail-fast` (output in {})",
        log.display()
    );
    let status = Command::new(cargo)
        .args(["test", "--workspace", "--no-fail-fast"])
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .status()?;
    eprintln!("cargo test finished: {status}");
    Ok(())
}

//! The project's own traces (`utp_conformance::record`, kept in `pcaps/`): each
//! recording is deterministic (two runs give the same pcap bytes), delivers its data,
//! and is listed in `pcaps/MANIFEST.toml` (which `tests/traces.rs` checks it against).
//!
//! The libutp-against-libutp files must equal a fresh recording byte for byte. Files
//! with our core in them change whenever the core's behaviour does: a difference is
//! reported as a notice (regenerate with `cargo run -p utp-conformance --example
//! record_traces`), not a failure.

use std::path::PathBuf;

use utp_conformance::check::check;
use utp_conformance::record::{pcap_bytes, record, scenarios, Scenario, Stack};

fn pcaps() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pcaps")
}

fn scenario(file: &str) -> Scenario {
    scenarios()
        .into_iter()
        .find(|s| s.file == file)
        .unwrap_or_else(|| panic!("no scenario {file}"))
}

fn regenerate(file: &str) {
    let s = scenario(file);
    let first = record(&s).unwrap_or_else(|e| panic!("{e}"));
    let second = record(&s).unwrap_or_else(|e| panic!("{e}"));
    let a = pcap_bytes(&first.capture.datagrams);
    let b = pcap_bytes(&second.capture.datagrams);
    assert!(a == b, "{file}: two recordings differ");
    assert_eq!(first.received, first.data, "{file}: data delivered");
    let report = check(&first.capture);
    assert_eq!(
        report.violations,
        vec![],
        "{file}: BEP 29 rules on the wire"
    );
    assert_eq!(report.reencode_mismatches, Vec::<usize>::new());
    let kept = std::fs::read(pcaps().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    if s.sender == Stack::Libutp && s.receiver == Stack::Libutp {
        assert!(
            kept == a,
            "{file}: the kept file differs from a fresh recording"
        );
    } else if kept != a {
        eprintln!(
            "notice: pcaps/{file} differs from a fresh recording (our core changed); \
             regenerate with `cargo run -p utp-conformance --example record_traces` and \
             update pcaps/MANIFEST.toml"
        );
    }
}

#[test]
fn ours_to_libutp_clean_is_deterministic() {
    regenerate("ours-seed_libutp-get_vnet.pcap");
}

#[test]
fn ours_to_libutp_lossy_is_deterministic() {
    regenerate("ours-seed_libutp-get_vnet-loss3.pcap");
}

#[test]
fn libutp_to_ours_clean_is_deterministic() {
    regenerate("libutp-seed_ours-get_vnet.pcap");
}

#[test]
fn libutp_to_ours_lossy_is_deterministic() {
    regenerate("libutp-seed_ours-get_vnet-loss3.pcap");
}

#[test]
fn libutp_to_libutp_clean_is_deterministic() {
    regenerate("libutp-seed_libutp-get_vnet.pcap");
}

#[test]
fn libutp_to_libutp_lossy_is_deterministic() {
    regenerate("libutp-seed_libutp-get_vnet-loss3.pcap");
}

/// Every scenario has a file and a manifest entry marked as generated, and the other way
/// round; each file stays small.
#[test]
fn scenarios_files_and_manifest_agree() {
    let manifest = std::fs::read_to_string(pcaps().join("MANIFEST.toml")).unwrap();
    let manifest: toml::Value = toml::from_str(&manifest).unwrap();
    let generated: Vec<String> = manifest["trace"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t.get("generator").and_then(|g| g.as_str()) == Some("record_traces"))
        .map(|t| t["file"].as_str().unwrap().to_string())
        .collect();
    let mut want: Vec<String> = scenarios().iter().map(|s| s.file.to_string()).collect();
    let mut have = generated.clone();
    want.sort();
    have.sort();
    assert_eq!(
        have, want,
        "manifest entries with generator = \"record_traces\""
    );
    for f in &generated {
        let len = std::fs::metadata(pcaps().join(f)).unwrap().len();
        assert!(len < 300_000, "{f}: {len} bytes");
    }
    // The set asked for: ours → libutp, libutp → ours, libutp → libutp, each clean and
    // lossy.
    for (sender, receiver) in [
        (Stack::Ours, Stack::Libutp),
        (Stack::Libutp, Stack::Ours),
        (Stack::Libutp, Stack::Libutp),
    ] {
        let losses: Vec<f64> = scenarios()
            .iter()
            .filter(|s| s.sender == sender && s.receiver == receiver)
            .map(|s| s.loss)
            .collect();
        assert!(losses.contains(&0.0) && losses.iter().any(|&l| l > 0.0));
    }
}

//! Replays every capture of `pcaps/MANIFEST.toml`: every uTP datagram decodes and
//! re-encodes byte for byte, the datagrams the manifest names as version-0 RESETs or
//! malformed are rejected, and the passive checker finds exactly the violations the
//! manifest expects (none, unless listed with a reason), told which senders' packets
//! crossed a reordering impairment before the capture point.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use utp_conformance::check::{check_with, CheckOptions, Kind, Report};
use utp_conformance::trace;

#[derive(Debug, Deserialize)]
struct Manifest {
    trace: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)] // descriptive fields are for people
struct Entry {
    file: String,
    location: String,
    seeder: String,
    downloader: String,
    initiator: String,
    network: String,
    impairment: String,
    captured_at: String,
    utp: usize,
    version0_resets: Vec<usize>,
    malformed: Vec<usize>,
    other: usize,
    connections: usize,
    notes: String,
    #[serde(default)]
    expected_violations: BTreeMap<String, usize>,
    #[serde(default)]
    reordered_senders: Vec<String>,
    #[serde(default)]
    reordering_ms: u64,
}

impl Entry {
    /// What the checker must know about the path to the capture point.
    fn options(&self) -> CheckOptions {
        let mut o = CheckOptions::default();
        for s in &self.reordered_senders {
            let addr = s
                .parse()
                .unwrap_or_else(|e| panic!("{}: reordered_senders {s:?}: {e}", self.file));
            o.reordering
                .insert(addr, Duration::from_millis(self.reordering_ms));
        }
        o
    }

    /// The checker's report on this capture, or `None` when it is not here.
    fn check(&self) -> Option<Report> {
        let path = path_of(self)?;
        let cap = trace::read(&path).unwrap_or_else(|err| panic!("{err}"));
        Some(check_with(&cap, &self.options()))
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifest() -> Manifest {
    let text =
        std::fs::read_to_string(root().join("pcaps/MANIFEST.toml")).expect("pcaps/MANIFEST.toml");
    toml::from_str(&text).expect("a valid manifest")
}

fn path_of(e: &Entry) -> Option<PathBuf> {
    let p = match e.location.as_str() {
        "pcaps" => root().join("pcaps").join(&e.file),
        "shared-ndpi" => root().join("../shared/pcaps/ndpi").join(&e.file),
        other => panic!("{}: unknown location {other:?}", e.file),
    };
    if !p.exists() && e.location == "shared-ndpi" {
        eprintln!(
            "notice: {} is not here (../shared/pcaps/ndpi/ is absent): skipped",
            e.file
        );
        return None;
    }
    Some(p)
}

/// Covers: A1, A7, A11, B12, B13
#[test]
fn every_trace_matches_its_manifest_entry() {
    let m = manifest();
    assert!(m.trace.len() >= 6, "the six lt/tr captures at least");
    let mut checked = 0;
    for e in &m.trace {
        let Some(r) = e.check() else { continue };
        let name = &e.file;
        assert_eq!(r.utp, e.utp, "{name}: valid uTP packets");
        assert_eq!(
            r.reencode_mismatches,
            Vec::<usize>::new(),
            "{name}: byte-exact re-encoding"
        );
        assert_eq!(
            r.version0_resets, e.version0_resets,
            "{name}: version-0 RESETs"
        );
        let malformed: Vec<usize> = r.malformed.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            malformed, e.malformed,
            "{name}: malformed uTP-looking datagrams"
        );
        assert_eq!(r.other, e.other, "{name}: other UDP");
        assert_eq!(r.connections, e.connections, "{name}: connections");
        let mut found: BTreeMap<String, usize> = BTreeMap::new();
        for v in &r.violations {
            *found.entry(v.rule.to_string()).or_default() += 1;
        }
        assert_eq!(
            found,
            e.expected_violations,
            "{name}: checker violations (first: {:?})",
            r.violations.first()
        );
        // A declared reordering is really there (or the declaration is stale).
        assert_eq!(
            r.reordered > 0,
            !e.reordered_senders.is_empty(),
            "{name}: {} packets reordered before the capture point",
            r.reordered
        );
        checked += 1;
    }
    assert!(checked >= 6);
}

/// The rejected datagrams say clearly why.
/// Covers: A3
#[test]
fn rejected_datagrams_have_a_clear_error() {
    for e in manifest().trace {
        let Some(path) = path_of(&e) else { continue };
        let cap = trace::read(&path).unwrap();
        for d in cap
            .datagrams
            .iter()
            .filter(|d| e.version0_resets.contains(&d.frame) || e.malformed.contains(&d.frame))
        {
            let err = utp::wire::Packet::decode(&d.payload).expect_err("rejected");
            assert!(!err.to_string().is_empty());
            if e.version0_resets.contains(&d.frame) {
                assert_eq!(
                    utp_conformance::check::classify(&d.payload),
                    Kind::Version0Reset
                );
            }
        }
    }
}

/// What the captures show about deployed stacks, asserted so that a change in the
/// decoder or the traces is noticed.
/// Covers: B15, X9
#[test]
fn deployed_practice_seen_in_the_traces() {
    let m = manifest();
    let get = |file: &str| {
        let e = m.trace.iter().find(|e| e.file == file).unwrap();
        e.check().unwrap()
    };
    let lt = get("lt-seed_lt-get_impaired_at-getter.pcap");
    let mut lengths: Vec<usize> = lt.sack_lengths.keys().copied().collect();
    lengths.sort();
    assert_eq!(
        lengths,
        vec![1, 2, 3],
        "libtorrent's selective ACKs are 1-3 bytes"
    );
    assert!(
        lt.first_extension_3_or_more >= 2,
        "libtorrent puts the close reason first"
    );
    let tr = get("tr-seed_tr-get_impaired_at-seeder.pcap");
    assert_eq!(
        tr.sack_lengths.keys().copied().collect::<Vec<_>>(),
        vec![4],
        "libutp: 4 bytes"
    );
    assert_eq!(get("lt-seed_lt-get_lo.pcap").state_with_fin_seq, 2);
}

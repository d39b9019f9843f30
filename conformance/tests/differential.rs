//! Differential replay (`utp_conformance::replay`) over every capture of
//! `pcaps/MANIFEST.toml`: for each connection, the initiator's datagrams are fed into
//! our core as the acceptor, and the acceptor's into our core as the initiator, at
//! their recorded times. Ours must deliver the bytes the recorded receiver
//! acknowledged, and acknowledge every packet it acknowledged, at most a delayed-ACK
//! interval later.

use std::path::PathBuf;
use std::time::Duration;

use utp_conformance::replay::{connections, replay, replay_config, Replay, Role};
use utp_conformance::trace;

/// How much later than the recorded receiver ours may acknowledge: our delayed ACK
/// (20 ms by default) plus a millisecond of rounding.
const SLACK: Duration = Duration::from_millis(21);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// (file, path) of every capture in the manifest that is present.
fn captures() -> Vec<(String, PathBuf)> {
    let text = std::fs::read_to_string(root().join("pcaps/MANIFEST.toml")).unwrap();
    let m: toml::Value = toml::from_str(&text).unwrap();
    let mut out = Vec::new();
    for t in m["trace"].as_array().unwrap() {
        let file = t["file"].as_str().unwrap().to_string();
        let path = match t["location"].as_str().unwrap() {
            "pcaps" => root().join("pcaps").join(&file),
            "shared-ndpi" => root().join("../shared/pcaps/ndpi").join(&file),
            other => panic!("{file}: location {other}"),
        };
        if path.exists() {
            out.push((file, path));
        } else {
            eprintln!("notice: {file} is not here: skipped");
        }
    }
    out
}

fn summary(file: &str, i: usize, role: Role, r: &Replay) -> String {
    format!(
        "{file} #{i} ours as {role:?}: fed {}, peer data packets {}, recorded receiver \
         acked {} packets / {} bytes in order, ours delivered {} bytes, trace gaps {}, \
         max ACK lag {:?}, EOF {}",
        r.fed,
        r.peer_data_packets,
        r.recorded_acked,
        r.expected.len(),
        r.delivered.len(),
        r.trace_gaps.len(),
        r.max_ack_lag,
        r.finished
    )
}

/// Replays every connection of every capture both ways and collects the problems.
fn replay_all(filter: impl Fn(&str) -> bool) -> Outcome {
    let mut problems = Vec::new();
    let mut bytes = 0;
    let (mut replayed, mut skipped) = (0, 0);
    for (file, path) in captures().into_iter().filter(|(f, _)| filter(f)) {
        let cap = trace::read(&path).unwrap_or_else(|e| panic!("{e}"));
        for (i, conn) in connections(&cap).iter().enumerate() {
            for role in [Role::Acceptor, Role::Initiator] {
                let r = match replay(&cap, conn, role, replay_config()) {
                    Ok(r) => r,
                    Err(e) => {
                        // A connection the capture holds too little of (a SYN that
                        // was never answered): nothing to compare.
                        println!("{file} #{i} ours as {role:?}: not replayable: {e}");
                        skipped += 1;
                        continue;
                    }
                };
                replayed += 1;
                println!("{}", summary(&file, i, role, &r));
                bytes += r.delivered.len();
                for p in r.problems(SLACK) {
                    problems.push(format!("{file} #{i} ours as {role:?}: {p}"));
                }
            }
        }
    }
    Outcome {
        problems,
        bytes,
        replayed,
        skipped,
    }
}

/// What [`replay_all`] found.
struct Outcome {
    problems: Vec<String>,
    /// Bytes ours delivered, over all replays.
    bytes: usize,
    /// Replays run, and connections (times roles) that could not be replayed.
    replayed: usize,
    skipped: usize,
}

/// The real captures of libtorrent and Transmission (libutp).
/// Covers: X1, X9, A11, B15, C21
#[test]
fn real_captures_replay_identically() {
    let o = replay_all(|f| !f.contains("_vnet") && !f.contains("_lo-udp"));
    assert!(
        o.bytes > 4_000_000,
        "the big transfers were replayed ({} bytes)",
        o.bytes
    );
    assert!(o.replayed >= 14, "{} replays", o.replayed);
    assert!(
        o.skipped <= 3,
        "{} connections could not be replayed",
        o.skipped
    );
    assert!(o.problems.is_empty(), "{}", o.problems.join("\n"));
}

/// The project's own recordings in virtual time (ours and libutp, libutp against
/// itself).
/// Covers: X1, A11
#[test]
fn recorded_traces_replay_identically() {
    let o = replay_all(|f| f.contains("_vnet"));
    assert!(
        o.bytes >= 6 * 200_000,
        "every recording was replayed ({} bytes)",
        o.bytes
    );
    assert_eq!((o.replayed, o.skipped), (12, 0));
    assert!(o.problems.is_empty(), "{}", o.problems.join("\n"));
}

/// The project's own captures over real UDP on loopback (`pcaps/record-loopback.sh`):
/// ours and libutp, libutp against itself, clean and through the lossy relay. A lossy
/// capture holds both legs of the relay, each replayed as a connection of its own.
/// Covers: X1, A11
#[test]
fn loopback_recordings_replay_identically() {
    let o = replay_all(|f| f.contains("_lo-udp"));
    assert!(
        o.bytes >= 3 * 300_000 + 3 * 2 * 150_000,
        "every capture was replayed, each relay leg too ({} bytes)",
        o.bytes
    );
    // 3 clean captures of one connection, 3 lossy ones of two legs; both roles each.
    assert_eq!((o.replayed, o.skipped), (18, 0));
    assert!(o.problems.is_empty(), "{}", o.problems.join("\n"));
}

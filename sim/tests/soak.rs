//! The short soak that CI runs: a few hundred concurrent connections of the tokio stack
//! on one client socket, through a lossy relay over loopback, for ten seconds, then
//! the drain. Real time (not the deterministic simulator); `utp-sim soak` runs the long
//! version. Nothing is tolerated: no failed, stuck or corrupt connection, every byte
//! verified, empty tables after the drain, flat memory (`SoakReport::memory_problems`).
//! The one thing counted rather than failed is the close residue
//! (`SoakReport::close_residue`): a `shutdown()` that ended in an error after every
//! byte arrived both ways, at most one per 10 000 connections.

use std::time::Duration;

use utp_sim::soak::{self, CountingAlloc, SoakConfig};

/// Counts the live heap, which the memory checks compare (RSS keeps freed pages).
#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc;

#[test]
fn short_soak_every_byte_intact_nothing_stuck_memory_flat() {
    let config = SoakConfig {
        duration: Duration::from_secs(10),
        conns: 300,
        loss: 0.02,
        seed: 7,
        max_bytes: 32 * 1024,
        // Compared from 6 s on: the per-entry heap is flat within a few percent from
        // the third second (the first connections are done and lingering by then).
        warmup: Some(Duration::from_secs(6)),
        ramp: Duration::from_secs(1),
        // `stall` (40 s) and `syn_retries` (5) keep their defaults: at 2 % loss a
        // connection fails or stalls past them by chance with probability below 10⁻⁸,
        // and this run opens about 10⁴ connections (see `SoakConfig`).
        ..SoakConfig::default()
    };
    let r = soak::run(&config).expect("the soak starts");
    println!("{}", r.text());
    assert_eq!(r.corrupt, 0, "corrupted streams: {:?}", r.failures);
    assert_eq!(
        r.failed, 0,
        "failed connections: {:?} {:?}",
        r.failure_kinds, r.failures
    );
    assert!(
        r.residue_within_bound(),
        "{} closes ended in an error after all data arrived: {:?}",
        r.close_residue,
        r.failures
    );
    assert_eq!(r.stuck, 0, "stuck connections: {:?}", r.failures);
    assert!(
        r.completed >= 1000,
        "only {} connections completed",
        r.completed
    );
    assert_eq!(
        r.server_completed, r.completed,
        "server and client disagree"
    );
    assert_eq!(
        r.bytes_verified, r.bytes_expected,
        "bytes verified and bytes the completed connections moved differ"
    );
    assert!(
        r.bytes_verified > 10 << 20,
        "only {} bytes",
        r.bytes_verified
    );
    assert_eq!(
        r.connections_left,
        (0, 0),
        "connections left in the tables after the drain"
    );
    assert_eq!(r.serving_left, 0, "server tasks left after the drain");
    assert!(
        r.heap_before.is_some(),
        "the counting allocator is installed"
    );
    let memory = r.memory_problems();
    assert!(memory.is_empty(), "memory: {memory:?}");
    assert!(r.passed());
}

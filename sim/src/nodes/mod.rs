//! The hosts a scenario can put on the network.
//!
//! - [`UtpNode`]: our uTP endpoint with a sending and/or receiving application.
//! - [`TcpNode`]: a TCP model (CUBIC by default, or NewReno; SACK loss recovery), the loss-based competitor LEDBAT must yield to.
//! - [`LibutpNode`]: the real libutp (C++) in virtual time, with the same applications
//!   as [`UtpNode`], so any flow can run ours, libutp, or one against the other.
//! - [`CbrNode`]: constant-rate UDP, and its sink.

mod cbr;
mod libutp_node;
mod tcp;
mod utp_node;

pub use cbr::{CbrNode, CbrSpec};
pub use libutp_node::LibutpNode;
pub use tcp::{TcpNode, TcpSpec};
pub use utp_node::{UtpNode, UtpSendSpec};

/// Length of the repeating test pattern; a prime, so a shifted stream never matches.
pub(crate) const PATTERN_LEN: usize = 65_521;

/// The test stream's bytes: `stream[i] = pattern[i % PATTERN_LEN]`. Made once per
/// process and shared by every node (a simulation run used to spend a percent of its
/// time making two copies).
pub(crate) fn pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut x: u32 = 0x1234_5678;
        (0..PATTERN_LEN)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    })
}

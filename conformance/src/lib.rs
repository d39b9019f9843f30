//! BEP 29 conformance: real traces replayed and checked, and interop with libutp.
//!
//! - [`record`]: the project's own traces: our core and libutp, and libutp against
//!   itself, recorded in virtual time (with and without loss) and written as pcap.
//! - [`replay`]: differential replay: one side of a recorded connection fed into our
//!   core playing the other side, and what ours delivers and acknowledges compared
//!   with what the recorded side did.
//! - [`trace`]: reads pcap and pcapng captures (Ethernet, Linux SLL and SLL2, raw IP,
//!   BSD null and loopback; IPv4 and IPv6) into UDP datagrams.
//! - [`coverage`]: the BEP 29 coverage matrix: checklist items
//!   (`conformance/bep29-items.toml`), the tests that declare `Covers:` lines, and
//!   their outcomes in a `cargo test` log.
//! - [`check`]: classifies datagrams, checks byte-exact re-encoding, and follows each
//!   connection to check the BEP 29 rules a capture can show.
//! - [`libutp`]: the reference C++ libutp as an in-process peer in virtual time, shaped
//!   like our [`utp::Endpoint`].
//! - [`libutp_udp`]: the same libutp on a real UDP socket in wall-clock time, in a
//!   thread of its own, for interop tests and benchmarks over loopback (Unix only).
//! - [`vnet`]: a virtual-time network in memory joining our endpoint and a libutp peer,
//!   with seeded loss, duplication and reordering.

pub mod check;
pub mod coverage;
pub mod libutp;
#[cfg(unix)]
pub mod libutp_udp;
pub mod record;
pub mod replay;
pub mod trace;
pub mod vnet;

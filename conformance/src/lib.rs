//! BEP 29 conformance: real traces replayed and checked, and interop with libutp.
//!
//! - [`trace`]: reads pcap and pcapng captures (Ethernet, Linux SLL, raw IP, loopback;
//!   IPv4 and IPv6) into UDP datagrams.
//! - [`check`]: classifies datagrams, checks byte-exact re-encoding, and follows each
//!   connection to check the BEP 29 rules a capture can show.
//! - [`libutp`]: the reference C++ libutp as an in-process peer in virtual time, shaped
//!   like our [`utp::Endpoint`].
//! - [`vnet`]: a virtual-time network in memory joining our endpoint and a libutp peer,
//!   with seeded loss, duplication and reordering.

pub mod check;
pub mod libutp;
pub mod trace;
pub mod vnet;

//! A deterministic network simulator for uTP and LEDBAT.
//!
//! Runs the sans-IO core ([`utp::proto::Endpoint`]) directly, in virtual time with
//! microsecond resolution, over modelled links ([`link`]): rate-limited queues
//! (drop-tail, RED, CoDel), delay, jitter, random and bursty loss, duplication,
//! reordering, MTU and changes over time. Competing traffic comes from a TCP (CUBIC or NewReno, SACK)
//! model and constant-rate UDP ([`nodes`]). One seed drives every random choice: the
//! same seed gives the same run, byte for byte ([`pcap`]).
//!
//! - [`scenario`]: what to simulate (TOML or built-in by name) and [`scenario::run`].
//! - [`metrics`]: per-flow and per-link time series, goodput, Jain's fairness index.
//! - [`report`]: the printed report, CSV and SVG outputs.
//! - [`relay`]: an impairing UDP relay on real sockets and wall-clock time (not part
//!   of the deterministic simulator), for real-time tests over loopback.
//! - [`soak`]: thousands of connections of the tokio stack through the relay, in real
//!   time (`utp-sim soak`).

pub mod engine;
pub mod link;
pub mod metrics;
pub mod nodes;
pub mod pcap;
pub mod relay;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod soak;
pub mod sweep;

pub use scenario::{run, RunResult, Scenario};

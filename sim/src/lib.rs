//! A deterministic network simulator for uTP.
//!
//! Runs the sans-IO core directly in virtual time over modelled links, with one seeded
//! generator behind every random choice: the same seed gives the same run. This first
//! version has a bottleneck link (rate, drop-tail queue, delay, random loss) and a
//! one-flow bulk-transfer scenario; the full simulator is issue 4.

pub mod link;
pub mod scenario;

pub use link::{Fate, Link, LinkConfig};
pub use scenario::{run, Report, Scenario, SimError};

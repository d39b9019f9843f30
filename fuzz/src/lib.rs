//! Shared code of the fuzz targets.
//!
//! The programs and invariants live in the integration-test helpers of `utp`, so that
//! `cargo test` runs the same invariants as property tests with a fixed budget
//! (`utp/tests/abuse.rs`, module `properties`); this crate compiles those files in.

#[path = "../../utp/tests/common/vnet.rs"]
pub mod vnet;

#[path = "../../utp/tests/common/hostile.rs"]
pub mod hostile;

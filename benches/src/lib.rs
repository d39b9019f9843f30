//! Benchmarks (work in progress: see issue 6).

//! `reel bench …`: benchmarks that print a ratio against a peer measured in the same run.
//!
//! - [`device`]: the engine's own read path against a device, fio-comparable JSON.
//! - [`compare_fio`]: the same job under fio, alternating runs, ratio of medians.
//! - [`report`]: the fio-shaped report both write.

pub mod compare_fio;
pub mod device;
pub mod report;

//! `reel bench …`: benchmarks that print a ratio against a peer measured in the same run.
//!
//! - [`device`]: the engine's own read path against a device, fio-comparable JSON.
//! - [`compare_fio`]: the same job under fio, alternating runs, ratio of medians.
//! - [`report`]: the fio-shaped report both write.
//! - [`nginx`]: `reel node` against nginx (sendfile and directio) under wrk, ratio of medians.
//! - [`migration`]: what background migration costs the foreground (interleaved or
//!   alternating design, A/A control, resampled interval).
//! - [`routing`]: `reel manager`'s routing against nginx `return 307`, with synthetic nodes;
//!   the manager's memory per inventory entry and mean decision time.
//! - [`stats`]: medians, log-bucket quantiles, intervals and window classification they share.
//! - [`harness`]: scratch space, child processes, wrk, HTTP and /proc counters they share.

pub mod compare_fio;
pub mod device;
pub mod harness;
pub mod migration;
pub mod nginx;
pub mod report;
pub mod routing;
pub mod stats;

//! Tiering: which assets live on the fast primary device, decided from their request rates.
//!
//! - [`rate`]: the request-rate counters. Shards count requests and bytes per asset slot
//!   (single writer per shard, no shared read-modify-write); the scheduler folds them into a
//!   decaying rate in views per hour.
//! - [`policy`]: the migration policy, [`TierPolicy`]: a state machine that turns rates and the
//!   tiers' state into [`Decision`]s (promote, write back, demote, evict) under a capacity and a
//!   copy bandwidth budget, and learns how each ended from its caller.
//! - [`throttle`]: the copy throttle, [`CopyThrottle`]: how fast background copies may go
//!   under a budget, slow-I/O pacing and a latency guard on the foreground's reads.
//! - [`placement`]: the cluster's placement policy, [`placement::Placement`] (the manager's):
//!   how many primary copies each asset has and on which nodes, from a [`ClusterView`] into
//!   [`PlacementDecision`]s (copy, drop), with hysteresis, a cool-down, minimum copies and
//!   per-node capacity.
//! - [`units`]: the text form of settings (sizes, durations, shares) for flags and files.
//! - [`sim`]: `reel simulate`: traces (CSV or synthetic Zipf with churn and new releases), the
//!   policy on a simulated node, and the LRU, static-oracle and Belady baselines.
//!
//! **Invariants.** The policy never reads the wall clock, never does I/O and never iterates a
//! hash map: every call takes the time from its caller, so the node, the simulator and the tests
//! run the same code, and the same inputs (seed) give the same decisions. Primary bytes counted
//! by the policy (resident, in flight, reserved) never exceed its capacity through anything it
//! granted. A copy without a secondary twin (dirty) never leaves primary.
//!
//! **How the node drives it** (one scheduler thread): create [`RateCounters::new`] with one
//! writer per shard; on every served request the shard calls [`RateWriter::record`] with the
//! asset's slot and the bytes asked for. Register assets with [`TierPolicy::add_asset`]
//! (and [`TierPolicy::remove_asset`] on delete); ask [`TierPolicy::reserve_upload`] before an
//! upload and confirm with [`TierPolicy::upload_committed`]; when the primary is short of room
//! for an upload, [`TierPolicy::evict_for_upload`] names the clean copies colder than
//! [`TierPolicy::newcomer_rate_per_h`] that make way (their drops are reported like a tick's),
//! or says none can, and the upload goes to the secondary. Every tick call
//! [`TierPolicy::tick`], execute the decisions in order and report each end with
//! [`TierPolicy::finished`]. A node that copies dirty assets to secondary by itself sets
//! `schedule_write_backs = false` and reports each copy with [`TierPolicy::mark_clean`].
//!
//! The slot is one dense index per asset *of the node*, the same for the counters and the
//! policy, whichever tier holds the asset (a catalog's `reel_store::Asset::slot` is dense per
//! volume; an asset only on secondary needs one too).

pub mod placement;
pub mod policy;
pub mod rate;
pub mod sim;
pub mod throttle;
pub mod units;

#[cfg(test)]
mod tests;

pub use placement::{
    AssetPlacement, ClusterView, PlacementConfig, PlacementDecision, PlacementReason,
};
pub use policy::{
    AssetPolicy, Decision, Outcome, Placement, PolicyConfig, PolicyError, PolicyStats, Residence,
    Ticket, Tier, TierPolicy,
};
pub use rate::{RateCounters, RateWriter, Rates};
pub use throttle::{CopyBudget, CopyThrottle, ThrottleConfig};

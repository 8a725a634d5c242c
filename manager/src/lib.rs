//! The Reelstore manager: the cluster's control plane, off the data path.
//!
//! - [`content`] — the content manager: inventory (asset → node, tier, version) rebuilt from the
//!   nodes' reports, liveness, load, request rates, tombstones.
//! - [`routing`] — the stream session manager: the node for each stream and why; the node for
//!   each upload.
//! - [`sessions`] and [`placement`] — the content session manager: the placement loop (the pure
//!   policy of `reel_policy::placement` over a view of the cluster) and the calls that carry its
//!   copies and drops out on nodes, and a delete's removals.
//! - [`server`] — the running manager: its two listeners, leadership, the handlers; [`http`] is
//!   its HTTP/1.1 serving on tokio with `reel-http`'s parser.
//! - [`store`] — the coordination store (embedded or etcd) where membership, leadership and
//!   tombstones live; [`leader`] — leadership with fenced writes on it.
//!
//! It builds on `reel-http` (the codec, the protocol, the client) and `reel-policy` (units,
//! pure decisions), never on `reel-store` or `reel-node`.

pub mod config;
pub mod content;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod placement;
pub mod routing;
pub mod server;
pub mod sessions;
pub mod store;

pub use config::ManagerConfig;
pub use server::Manager;

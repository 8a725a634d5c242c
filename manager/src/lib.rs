//! The Reelstore manager: content manager, stream session manager and content session manager.
//!
//! Being built: the cluster control plane is the subject of the cluster issues; so far it has
//! its coordination store ([`store`]), where membership, leadership, cluster config and
//! tombstones live, and leadership with fenced writes on it ([`leader`]). It builds on `reel-http` (the codec, the API's JSON bodies, the client) and
//! `reel-policy` (pure decisions under a clock), never on `reel-store` or `reel-node`.

pub mod leader;
pub mod store;

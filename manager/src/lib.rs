//! The Reelstore manager: content manager, stream session manager and content session manager.
//!
//! Not built yet: the cluster control plane is the subject of the cluster issues. The crate
//! exists so that its dependency boundary holds from the start: it builds on `reel-http` (the
//! codec, the API's JSON bodies, the client) and `reel-policy` (pure decisions under a clock),
//! never on `reel-store` or `reel-node`.

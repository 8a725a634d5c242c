//! The Reelstore manager: content manager, stream session manager and content session manager.
//!
//! **This crate is a stub.** The cluster control plane is the subject of a later issue; nothing
//! here is implemented yet, and no other crate depends on it.

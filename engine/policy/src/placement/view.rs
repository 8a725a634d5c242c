//! The placement policy's vocabulary towards its caller: the cluster view it reads each tick,
//! the per-asset overrides the manager stores, and the decisions it returns.

use serde::{Deserialize, Serialize};

use crate::policy::Tier;

/// A node: its index in [`ClusterView::nodes`], stable for the caller's life (the manager's
/// `NodeIdx`).
pub type NodeId = u16;

/// An asset: a key the caller chooses, unique within a view and stable for the caller's life
/// (the manager keeps one per asset id). The policy orders everything it does by it.
pub type AssetKey = u32;

/// What the caller knows of the cluster at one tick. The caller owns it and may keep it
/// between ticks, updating what changed; the policy only reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    /// Every member, `nodes[i].id == i`.
    pub nodes: Vec<NodeView>,
    /// Every asset, in any order (the policy sorts by key; a view already sorted costs one
    /// pass).
    pub assets: Vec<AssetView>,
}

/// One member node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: NodeId,
    /// Its name, for [`AssetPlacement::pin_nodes`].
    pub name: String,
    /// Routable: its copies serve and count, it may receive copies.
    pub up: bool,
    /// A library (it has a secondary device) or an edge (primary only).
    pub has_secondary: bool,
    pub primary_capacity_bytes: u64,
    /// What the node reported on its primary, copies of every kind included.
    pub primary_used_bytes: u64,
    /// Bytes sent per second (clients and relays): the tie-break between equal demands.
    pub load_bytes_per_s: f64,
}

/// One asset.
#[derive(Debug, Clone, PartialEq)]
pub struct AssetView {
    pub key: AssetKey,
    pub size_bytes: u64,
    /// Views per hour over the whole cluster (bytes requested ÷ size, decaying).
    pub rate_per_h: f64,
    /// Views per hour asked by each node's own clients (served locally or relayed through
    /// it): where demand is. Nodes not listed ask for nothing.
    pub demand_per_h: Vec<(NodeId, f64)>,
    /// Where it is now: one entry per node and tier.
    pub copies: Vec<CopyView>,
    /// The manager's stored overrides for it (default: none).
    pub overrides: AssetPlacement,
}

/// One copy of an asset: a node, a tier and since when it is there (for the minimum
/// residency; the caller's clock, the one it passes to [`super::Placement::tick`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CopyView {
    pub node: NodeId,
    pub tier: Tier,
    pub since_ns: u64,
}

/// Per-asset overrides of the placement settings, as the manager stores them. `None` and an
/// empty list use the cluster's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssetPlacement {
    /// Copies on distinct up nodes, any tier, never fewer (re-replicated from survivors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_copies: Option<u32>,
    /// Primary copies at most.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_primary_copies: Option<u32>,
    /// Nodes (by name) that always hold a primary copy: placed regardless of rate (evicting
    /// unpinned copies regardless of the margin), never dropped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pin_nodes: Vec<String>,
}

/// Why a decision was made (the manager's log and metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementReason {
    /// The first primary copy: the asset's rate reached the placement floor.
    FirstCopy,
    /// Another primary copy: the asset's traffic is more than its copies are sized to serve.
    Hot,
    /// Fewer copies than `min_copies` on up nodes (a node went down): re-replication.
    MinCopies,
    /// A pinned node lacks its copy.
    Pinned,
    /// A duplicate primary copy of an asset that cooled, after the cool-down.
    Cooled,
    /// A colder copy dropped to make room for a hotter one.
    Evicted,
}

impl PlacementReason {
    pub fn name(self) -> &'static str {
        match self {
            PlacementReason::FirstCopy => "first-copy",
            PlacementReason::Hot => "hot",
            PlacementReason::MinCopies => "min-copies",
            PlacementReason::Pinned => "pinned",
            PlacementReason::Cooled => "cooled",
            PlacementReason::Evicted => "evicted",
        }
    }
}

/// Work for the caller, in the order to execute it. Each is answered with
/// [`super::Placement::finished`]; until then a copy's bytes count on its destination, and a
/// dropped copy's bytes stay counted until the node's report no longer lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlacementDecision {
    /// Make a primary copy on `to_node`, pulled from `from_node` (a holder; `to_node` itself
    /// when it holds the asset on its secondary: a local promotion).
    Copy {
        asset: AssetKey,
        to_node: NodeId,
        from_node: NodeId,
        bytes: u64,
        reason: PlacementReason,
    },
    /// Remove the primary copy on `node` (never the last copy anywhere).
    Drop {
        asset: AssetKey,
        node: NodeId,
        bytes: u64,
        reason: PlacementReason,
    },
}

impl PlacementDecision {
    pub fn asset(&self) -> AssetKey {
        match *self {
            PlacementDecision::Copy { asset, .. } | PlacementDecision::Drop { asset, .. } => asset,
        }
    }

    /// The node the decision changes.
    pub fn node(&self) -> NodeId {
        match *self {
            PlacementDecision::Copy { to_node, .. } => to_node,
            PlacementDecision::Drop { node, .. } => node,
        }
    }

    pub fn reason(&self) -> PlacementReason {
        match *self {
            PlacementDecision::Copy { reason, .. } | PlacementDecision::Drop { reason, .. } => {
                reason
            }
        }
    }
}

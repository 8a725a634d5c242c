//! The policy's vocabulary towards its caller: tiers, per-asset overrides, where an asset is,
//! the decisions a tick returns, their tickets and how they ended.

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::TierPolicy;
use super::{check, PolicyError};

/// A tier of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Primary,
    Secondary,
}

/// Per-asset overrides (from `PUT /assets/{id}/policy`). `None` fields use the node's config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssetPolicy {
    /// Promote when the rate reaches this many views per hour.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promote_per_h: Option<f64>,
    /// Demote when the rate falls below this many views per hour (≤ the promote threshold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demote_per_h: Option<f64>,
    /// Keep the asset on this tier whatever its rate. Pinned to primary, it is promoted as soon
    /// as the bandwidth budget and space allow (evicting unpinned clean copies regardless of the
    /// margin) and never leaves; pinned to secondary, it leaves primary once clean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<Tier>,
}

impl AssetPolicy {
    pub fn validate(&self) -> Result<(), PolicyError> {
        if let Some(p) = self.promote_per_h {
            check(
                p.is_finite() && p >= 0.0,
                "promote_per_h",
                p,
                "views per hour, ≥ 0",
            )?;
        }
        if let Some(d) = self.demote_per_h {
            check(
                d.is_finite() && d >= 0.0,
                "demote_per_h",
                d,
                "views per hour, ≥ 0",
            )?;
            if let Some(p) = self.promote_per_h {
                check(d <= p, "demote_per_h", d, "≤ promote_per_h (hysteresis)")?;
            }
        }
        Ok(())
    }
}

/// Where an asset is, as far as the policy knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Residence {
    /// Not registered (no asset in this slot).
    Unknown,
    /// On secondary only.
    Secondary,
    /// On secondary, being copied to primary (its bytes are reserved on primary).
    Promoting,
    /// On primary only (a new upload): must be written back before it may leave primary.
    Dirty,
    /// On primary, being copied to secondary.
    WritingBack,
    /// On both tiers: leaving primary is a catalog change.
    Clean,
    /// On both tiers, the primary copy being dropped; its bytes count until the drop is confirmed.
    Dropping,
}

impl Residence {
    /// Whether a read is served from primary.
    pub fn on_primary(self) -> bool {
        matches!(
            self,
            Residence::Dirty | Residence::WritingBack | Residence::Clean | Residence::Dropping
        )
    }
}

/// Where an asset is when it becomes known to the policy ([`TierPolicy::add_asset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Secondary,
    /// On primary only (not yet written back).
    PrimaryDirty,
    /// On both tiers.
    PrimaryClean,
}

/// Names one decision (or upload reservation) in [`TierPolicy::finished`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Ticket(pub u64);

/// Work for the caller. Every decision is answered with [`TierPolicy::finished`] (its ticket and
/// whether it worked); until then its bytes stay counted on primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decision {
    /// Copy the asset from secondary to primary (verify, then flip the catalog).
    Promote {
        ticket: Ticket,
        slot: u32,
        bytes: u64,
    },
    /// Copy the dirty primary copy to secondary (write-back).
    WriteBack {
        ticket: Ticket,
        slot: u32,
        bytes: u64,
    },
    /// Drop the clean primary copy: its rate fell below the demote threshold (or it is pinned to
    /// secondary).
    Demote {
        ticket: Ticket,
        slot: u32,
        bytes: u64,
    },
    /// Drop the clean primary copy to make room for something hotter (or for uploads).
    Evict {
        ticket: Ticket,
        slot: u32,
        bytes: u64,
    },
}

impl Decision {
    pub fn ticket(&self) -> Ticket {
        match *self {
            Decision::Promote { ticket, .. }
            | Decision::WriteBack { ticket, .. }
            | Decision::Demote { ticket, .. }
            | Decision::Evict { ticket, .. } => ticket,
        }
    }

    pub fn slot(&self) -> u32 {
        match *self {
            Decision::Promote { slot, .. }
            | Decision::WriteBack { slot, .. }
            | Decision::Demote { slot, .. }
            | Decision::Evict { slot, .. } => slot,
        }
    }

    pub fn bytes(&self) -> u64 {
        match *self {
            Decision::Promote { bytes, .. }
            | Decision::WriteBack { bytes, .. }
            | Decision::Demote { bytes, .. }
            | Decision::Evict { bytes, .. } => bytes,
        }
    }
}

/// How a decision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed,
}

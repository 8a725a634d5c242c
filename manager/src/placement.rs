//! The content session manager's placement loop: every tick the leader builds a
//! [`ClusterView`] from the content manager's state, asks the pure [`Placement`] policy
//! (`reel_policy::placement`) what to copy and drop, and carries the decisions out on the
//! nodes over the inter-server network.
//!
//! - A copy to another node is a pull order to the receiving node (`PUT /v1/pull`, the node
//!   fetches from the holder, checks every chunk and publishes when whole); a copy whose source
//!   is the destination's own secondary is a promotion the node's tiering makes when asked by
//!   its clients, so it is only awaited. Either ends when the destination reports the asset on
//!   its primary, or fails after a deadline sized to the asset.
//! - A drop is `DELETE /assets/{id}?tier=primary` on the node (only the primary copy; refused
//!   for the only copy there).
//!
//! Asset keys are interned here (id → a stable `u32` for the manager's life), since the policy
//! orders everything by key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reel_policy::placement::{
    AssetKey, AssetPlacement, AssetView, ClusterView, CopyView, NodeView, Placement,
    PlacementDecision,
};
use reel_policy::{Outcome, Tier};

use crate::content::{Content, NodeIdx, PRIMARY, SECONDARY};

/// A decision the loop carries out on a node.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Order `to` to pull `id` (`etag`, `size`) from `source`.
    Pull {
        id: String,
        etag: String,
        size: u64,
        to: (String, SocketAddr),
        source: (String, SocketAddr),
    },
    /// Remove the primary copy of `id` on the node.
    DropPrimary {
        id: String,
        node: (String, SocketAddr),
    },
}

/// A copy awaited: it ends when its destination reports the asset on the primary.
struct Awaited {
    key: AssetKey,
    node: NodeIdx,
    deadline: Instant,
}

/// The leader's placement state: the policy, the asset keys, the copies awaited.
pub struct Placer {
    policy: Placement,
    keys: HashMap<Box<str>, AssetKey>,
    ids: Vec<Box<str>>,
    awaited: Vec<Awaited>,
    epoch: Instant,
    /// Per-asset overrides (the store's `/reel/policy/{id}`).
    pub overrides: HashMap<String, AssetPlacement>,
}

/// The slowest a copy is expected to go (bytes per second) before it counts as failed.
const COPY_RATE_FLOOR: u64 = 4 << 20;
/// A copy's deadline beyond the time its bytes take at the floor rate.
const COPY_SLACK: Duration = Duration::from_secs(60);

impl Placer {
    pub fn new(policy: Placement) -> Placer {
        Placer {
            policy,
            keys: HashMap::new(),
            ids: Vec::new(),
            awaited: Vec::new(),
            epoch: Instant::now(),
            overrides: HashMap::new(),
        }
    }

    pub fn policy(&self) -> &Placement {
        &self.policy
    }

    fn key(&mut self, id: &str) -> AssetKey {
        if let Some(&k) = self.keys.get(id) {
            return k;
        }
        let k = self.ids.len() as AssetKey;
        self.ids.push(id.into());
        self.keys.insert(id.into(), k);
        k
    }

    fn now_ns(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// The view of `c` at `now`.
    fn view(&mut self, c: &Content, now: Instant) -> ClusterView {
        let now_s = c.seconds(now);
        let hl = c.half_life.as_secs_f32();
        let now_ns = self.now_ns(now);
        let nodes = c
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let primary = n.tiers.iter().find(|t| t.tier == "primary");
                NodeView {
                    id: i as u16,
                    name: n.name.clone(),
                    up: n.routable(),
                    has_secondary: n.has_tier("secondary"),
                    primary_capacity_bytes: primary.map_or(0, |t| t.capacity_bytes),
                    primary_used_bytes: primary.map_or(0, |t| t.used_bytes),
                    load_bytes_per_s: n.load.tx_bytes_per_s,
                }
            })
            .collect();
        // Only the assets the policy may act on: those with traffic or demand, several copies
        // (a duplicate may go), an override, or fewer holders than `min_copies` (to copy
        // again). A cold asset with one holder needs nothing, and leaving the many of them out
        // keeps a tick (under the content lock) short with 10^6 assets.
        let min_holders = self.policy.config().min_copies.max(1) as usize;
        let mut ids: Vec<&str> = c
            .assets
            .iter()
            .filter(|(id, e)| {
                e.copies.len() >= 2
                    || e.copies.len() < min_holders
                    || e.rates
                        .iter()
                        .any(|r| r.views_per_h > 0.0 || r.demand_per_h > 0.0)
                    || self.overrides.contains_key(&***id)
            })
            .map(|(k, _)| &**k)
            .collect();
        ids.sort_unstable();
        let mut assets = Vec::with_capacity(ids.len());
        for id in ids {
            let e = &c.assets[id];
            let Some(size) = e
                .current
                .map(|v| v.size)
                .or(e.copies.first().map(|cp| cp.version.size))
            else {
                continue;
            };
            let key = self.key(id);
            let mut copies = Vec::with_capacity(e.copies.len() * 2);
            for cp in &e.copies {
                // Residency counts from when this manager saw the copy (its reports say no
                // more); a manager that just took the lead drops nothing for a while.
                let since_ns = now_ns.saturating_sub((cp.age_s(now_s) * 1e9) as u64);
                for (bit, tier) in [(PRIMARY, Tier::Primary), (SECONDARY, Tier::Secondary)] {
                    if cp.tiers & bit != 0 {
                        copies.push(CopyView {
                            node: cp.node,
                            tier,
                            since_ns,
                        });
                    }
                }
            }
            let demand_per_h = e
                .rates
                .iter()
                .map(|r| (r.node, f64::from(e.demand(r.node, now_s, hl))))
                .filter(|(_, d)| *d > 0.0)
                .collect();
            assets.push(AssetView {
                key,
                size_bytes: size,
                rate_per_h: f64::from(e.cluster_rate(now_s, hl)),
                demand_per_h,
                copies,
                overrides: self.overrides.get(id).cloned().unwrap_or_default(),
            });
        }
        ClusterView { nodes, assets }
    }

    /// One tick: ends the awaited copies the reports show (or whose deadline passed), asks the
    /// policy, and returns what to carry out now.
    pub fn tick(&mut self, c: &Content, now: Instant) -> Vec<Action> {
        let now_ns = self.now_ns(now);
        // Awaited copies: done once the destination reports the asset on its primary.
        let mut still = Vec::new();
        for a in std::mem::take(&mut self.awaited) {
            let id = &*self.ids[a.key as usize];
            let arrived = c.assets.get(id).is_some_and(|e| {
                e.copies
                    .iter()
                    .any(|cp| cp.node == a.node && cp.tiers & PRIMARY != 0)
            });
            if arrived {
                self.policy.finished(now_ns, a.key, a.node, Outcome::Done);
            } else if now >= a.deadline {
                tracing::warn!(id, node = %c.nodes[a.node as usize].name, "a placement copy did not arrive in time");
                self.policy.finished(now_ns, a.key, a.node, Outcome::Failed);
            } else {
                still.push(a);
            }
        }
        self.awaited = still;
        let view = self.view(c, now);
        let mut decisions = Vec::new();
        self.policy.tick(now_ns, &view, &mut decisions);
        let mut actions = Vec::new();
        for d in decisions {
            let id = self.ids[d.asset() as usize].to_string();
            let Some(e) = c.assets.get(id.as_str()) else {
                self.policy
                    .finished(now_ns, d.asset(), d.node(), Outcome::Failed);
                continue;
            };
            match d {
                PlacementDecision::Copy {
                    asset,
                    to_node,
                    from_node,
                    bytes,
                    reason,
                } => {
                    let to = &c.nodes[to_node as usize];
                    let from = &c.nodes[from_node as usize];
                    tracing::info!(id, to = %to.name, from = %from.name, reason = reason.name(), "placing a copy");
                    let secs = bytes / COPY_RATE_FLOOR;
                    self.awaited.push(Awaited {
                        key: asset,
                        node: to_node,
                        deadline: now + COPY_SLACK + Duration::from_secs(secs),
                    });
                    if to_node == from_node {
                        // From its own secondary: the node's tiering promotes what its clients
                        // ask for; awaited only.
                        continue;
                    }
                    let Some(v) = e.current.or(e
                        .copies
                        .iter()
                        .find(|cp| cp.node == from_node)
                        .map(|cp| cp.version))
                    else {
                        continue;
                    };
                    actions.push(Action::Pull {
                        id,
                        etag: v.etag(),
                        size: v.size,
                        to: (to.name.clone(), to.peer),
                        source: (from.name.clone(), from.peer),
                    });
                }
                PlacementDecision::Drop { node, reason, .. } => {
                    let n = &c.nodes[node as usize];
                    tracing::info!(id, node = %n.name, reason = reason.name(), "dropping a duplicate copy");
                    actions.push(Action::DropPrimary {
                        id,
                        node: (n.name.clone(), n.peer),
                    });
                }
            }
        }
        actions
    }

    /// The outcome of carrying out `action` (a pull order refused ends its copy; an accepted
    /// one is awaited).
    pub fn carried_out(&mut self, c: &Content, action: &Action, ok: bool, now: Instant) {
        let now_ns = self.now_ns(now);
        let (id, node) = match action {
            Action::Pull { id, to, .. } => (id, &to.0),
            Action::DropPrimary { id, node } => (id, &node.0),
        };
        let (Some(&key), Some(n)) = (self.keys.get(id.as_str()), c.node(node)) else {
            return;
        };
        match action {
            Action::Pull { .. } if !ok => {
                self.awaited.retain(|a| !(a.key == key && a.node == n));
                self.policy.finished(now_ns, key, n, Outcome::Failed);
            }
            Action::Pull { .. } => {}
            Action::DropPrimary { .. } => {
                let outcome = if ok { Outcome::Done } else { Outcome::Failed };
                self.policy.finished(now_ns, key, n, outcome);
            }
        }
    }
}

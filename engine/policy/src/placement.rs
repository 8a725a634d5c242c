//! Cluster placement: how many primary copies each asset has, and on which nodes.
//!
//! [`Placement`] is the manager's counterpart of the node's [`crate::TierPolicy`]: a state
//! machine with no I/O and no clock of its own. Every tick the caller passes the time and a
//! [`ClusterView`] (nodes: up or down, library or edge, primary capacity and use, load; assets:
//! size, cluster-wide rate, demand per node, copies), executes the [`PlacementDecision`]s
//! [`Placement::tick`] appends, and reports each one's end with [`Placement::finished`].
//! `reel simulate --cluster` and the tests drive the very same code under a simulated clock.
//!
//! **Rules.**
//! - *Target.* An asset serves `rate × size / 3600` bytes per second; each primary copy is sized
//!   to serve [`PlacementConfig::copy_serve_bytes_per_s`] of it. The target is
//!   `clamp(ceil(traffic / copy_serve), 1, max_primary_copies)` once the rate reaches
//!   [`PlacementConfig::first_copy_min_per_h`] (below it, no new copy). Copies grow to the
//!   target; they shrink only when the traffic falls below `(copies − 1) × copy_serve /
//!   hysteresis`, after the cool-down (counted from when it first fell below, restarted by
//!   every drop) and the minimum residency of the copy dropped: an asset near a boundary does
//!   not thrash. Pinned nodes always hold a copy.
//! - *Never the last copy.* A drop (cooled or evicted) happens only while the asset keeps
//!   `max(min_copies, 1)` holders: distinct up nodes with a copy on any tier (a library's
//!   secondary counts). A node that goes down stops counting: an asset left with fewer holders
//!   is copied again from a survivor ([`PlacementReason::MinCopies`]), first of all.
//! - *Where.* A new copy goes to the up node whose clients ask for the asset most (the demand
//!   relays and local serving report), then the least loaded, then the one with the most free
//!   primary. It is pulled from the destination's own secondary if it has one, else from the
//!   least-loaded primary holder, else from a secondary holder.
//! - *Capacity.* A node's primary counts what it reported plus the copies in flight to it (and
//!   those finished but not yet in its report). When a copy does not fit, it may evict copies
//!   there, coldest first, only those past their minimum residency, not pinned, whose drop
//!   keeps their asset's holders, and colder than the newcomer by the swap margin. A copy's
//!   heat is its share of its asset's traffic, `rate / primary copies` (views per hour: bytes
//!   served per byte of primary), so a third copy of a hot asset competes fairly with the
//!   first copy of a warm one. Evicted bytes become free only once the drops are confirmed:
//!   the newcomer waits for a later tick. Pinned copies evict regardless of the margin.
//! - *Budget.* At most `copies_per_tick_max` copies start per tick and `copies_in_flight_max`
//!   run at once; re-replication goes first, then pins, then growth, hottest copy first.
//!
//! **Invariants.** No wall clock, no I/O, no hash map: the view is read in key order and every
//! tie is broken by key or node id, so the same views give the same decisions.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

use serde::{Deserialize, Serialize};

use crate::policy::{Outcome, PolicyError, Tier};
use crate::units::{parse_seconds, parse_size};

mod view;

pub use view::{
    AssetKey, AssetPlacement, AssetView, ClusterView, CopyView, NodeId, NodeView,
    PlacementDecision, PlacementReason,
};

/// The cluster-wide placement settings: the manager's flags and its config file's
/// `[placement]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct PlacementConfig {
    /// Primary copies of one asset at most.
    #[arg(long, default_value_t = DEFAULT.max_primary_copies)]
    pub max_primary_copies: u32,
    /// Copies of every asset (distinct up nodes, any tier) never fewer; a library's secondary
    /// copy counts.
    #[arg(long, default_value_t = DEFAULT.min_copies)]
    pub min_copies: u32,
    /// The traffic one primary copy is sized to serve, bytes per second (a share of what one
    /// node's primary serves): an asset with more gets more copies.
    #[arg(long = "copy-serve", value_name = "BYTES_PER_S", value_parser = parse_size, default_value = "512M")]
    pub copy_serve_bytes_per_s: u64,
    /// Copies shrink from `k` only below `(k − 1) × copy_serve / hysteresis` (≥ 1).
    #[arg(long = "placement-hysteresis", hide = true, default_value_t = DEFAULT.hysteresis)]
    pub hysteresis: f64,
    /// A primary copy stays at least this long before it is dropped or evicted, seconds.
    #[arg(long = "placement-min-residency", hide = true, value_parser = parse_seconds, default_value = "10m")]
    pub min_residency_s: f64,
    /// A duplicate copy is dropped only after the asset stayed below its shrink threshold this
    /// long (and this long after the previous drop), seconds.
    #[arg(long = "placement-cooldown", hide = true, value_parser = parse_seconds, default_value = "10m")]
    pub cooldown_s: f64,
    /// The first primary copy is made once the rate reaches this many views per hour.
    #[arg(long = "placement-min-per-h", hide = true, default_value_t = DEFAULT.first_copy_min_per_h)]
    pub first_copy_min_per_h: f64,
    /// A newcomer evicts a copy only if `victim_heat · (1 + margin) ≤ its heat`.
    #[arg(long = "placement-margin", hide = true, default_value_t = DEFAULT.swap_margin)]
    pub swap_margin: f64,
    /// Copies started per tick at most.
    #[arg(long = "placement-copies-per-tick", hide = true, default_value_t = DEFAULT.copies_per_tick_max)]
    pub copies_per_tick_max: u32,
    /// Copies in flight at most, cluster-wide.
    #[arg(long = "placement-copies-in-flight", hide = true, default_value_t = DEFAULT.copies_in_flight_max)]
    pub copies_in_flight_max: u32,
    /// After a failed copy to a node, that node is not tried again for the asset this long.
    #[arg(long = "placement-retry-backoff", hide = true, value_parser = parse_seconds, default_value = "60")]
    pub retry_backoff_s: f64,
    /// A finished copy or drop overrides the view this long at most, seconds: until the node's
    /// report shows it.
    #[arg(long = "placement-settle", hide = true, value_parser = parse_seconds, default_value = "30")]
    pub settle_s: f64,
}

const DEFAULT: PlacementConfig = PlacementConfig {
    max_primary_copies: 4,
    min_copies: 1,
    copy_serve_bytes_per_s: 512 << 20,
    hysteresis: 1.5,
    min_residency_s: 600.0,
    cooldown_s: 600.0,
    first_copy_min_per_h: 2.0,
    swap_margin: 0.25,
    copies_per_tick_max: 8,
    copies_in_flight_max: 16,
    retry_backoff_s: 60.0,
    settle_s: 30.0,
};

impl Default for PlacementConfig {
    fn default() -> PlacementConfig {
        DEFAULT
    }
}

fn check(
    ok: bool,
    field: &'static str,
    value: f64,
    expected: &'static str,
) -> Result<(), PolicyError> {
    if ok {
        Ok(())
    } else {
        Err(PolicyError::Invalid {
            field,
            value: value.to_string(),
            expected,
        })
    }
}

impl PlacementConfig {
    pub fn validate(&self) -> Result<(), PolicyError> {
        let n = |v: u32| f64::from(v);
        check(
            self.max_primary_copies >= 1,
            "max_primary_copies",
            n(self.max_primary_copies),
            "at least 1",
        )?;
        check(
            self.min_copies >= 1,
            "min_copies",
            n(self.min_copies),
            "at least 1 (the last copy is never dropped)",
        )?;
        check(
            self.copy_serve_bytes_per_s > 0,
            "copy_serve_bytes_per_s",
            0.0,
            "bytes per second > 0",
        )?;
        let h = self.hysteresis;
        check(h.is_finite() && h >= 1.0, "hysteresis", h, "a factor ≥ 1")?;
        for (field, v) in [
            ("min_residency_s", self.min_residency_s),
            ("cooldown_s", self.cooldown_s),
            ("retry_backoff_s", self.retry_backoff_s),
            ("settle_s", self.settle_s),
        ] {
            check(v.is_finite() && v >= 0.0, field, v, "seconds, ≥ 0")?;
        }
        let f = self.first_copy_min_per_h;
        check(
            f.is_finite() && f >= 0.0,
            "first_copy_min_per_h",
            f,
            "views per hour, ≥ 0",
        )?;
        let m = self.swap_margin;
        check(
            m.is_finite() && m >= 0.0,
            "swap_margin",
            m,
            "a fraction ≥ 0",
        )?;
        check(
            self.copies_per_tick_max >= 1,
            "copies_per_tick_max",
            n(self.copies_per_tick_max),
            "at least 1",
        )?;
        check(
            self.copies_in_flight_max >= 1,
            "copies_in_flight_max",
            n(self.copies_in_flight_max),
            "at least 1",
        )?;
        Ok(())
    }
}

impl AssetPlacement {
    pub fn validate(&self) -> Result<(), PolicyError> {
        if let Some(m) = self.max_primary_copies {
            check(m >= 1, "max_primary_copies", f64::from(m), "at least 1")?;
        }
        if let Some(m) = self.min_copies {
            check(m >= 1, "min_copies", f64::from(m), "at least 1")?;
        }
        Ok(())
    }
}

/// Counters since the policy started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PlacementStats {
    pub copies_started: u64,
    pub copies_done: u64,
    pub copied_bytes: u64,
    pub copies_failed: u64,
    pub re_replications: u64,
    pub drops_cooled: u64,
    pub drops_evicted: u64,
    pub dropped_bytes: u64,
}

/// What the policy remembers of one (asset, node) between ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pending {
    /// A copy decided, not finished: its bytes count on the destination.
    Copying { bytes: u64 },
    /// A copy finished, not yet in the view: present until the view shows it or `until_ns`.
    Arrived { bytes: u64, until_ns: u64 },
    /// A drop decided, not finished.
    Dropping,
    /// A drop finished, still in the view: absent until the view stops showing it or `until_ns`.
    Left { until_ns: u64 },
}

/// One asset during a tick.
#[derive(Debug, Clone, Copy)]
struct AssetState {
    /// Index in `view.assets`.
    pos: u32,
    /// Primary copies on up nodes, copies in flight included, drops decided excluded.
    primary: u32,
    /// Distinct up nodes with a copy on any tier, the same way.
    holders: u32,
}

/// A primary copy that may be evicted, by heat.
#[derive(Debug, Clone, Copy)]
struct Victim {
    heat: f64,
    key: AssetKey,
    state: u32,
}

/// A candidate for another copy, hottest first (ties: the smaller key).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    heat: f64,
    key: AssetKey,
    state: u32,
}

impl PartialEq for Candidate {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Candidate {
    fn cmp(&self, o: &Self) -> Ordering {
        self.heat
            .total_cmp(&o.heat)
            .then(o.key.cmp(&self.key))
            .then(o.state.cmp(&self.state))
    }
}

/// Growth candidates looked at per tick at most (the hottest first): bounds a tick's work.
const CANDIDATES_PER_TICK_MAX: usize = 256;

/// How placing one copy went.
enum Placed {
    Copy,
    /// Drops were decided to make room; the copy waits for them.
    Evicting,
    Nowhere,
}

/// The cluster's placement policy. See the module documentation.
#[derive(Debug)]
pub struct Placement {
    cfg: PlacementConfig,
    pending: BTreeMap<(AssetKey, NodeId), Pending>,
    /// Since when each asset has more copies than it keeps (the cool-down).
    cool: BTreeMap<AssetKey, u64>,
    retry_after: BTreeMap<(AssetKey, NodeId), u64>,
    copies_in_flight: u32,
    stats: PlacementStats,
    // Per-tick scratch, kept to reuse its allocations.
    order: Vec<u32>,
    states: Vec<AssetState>,
    /// Per node: evictable copies, coldest first, and how far they were taken this tick.
    victims: Vec<Vec<Victim>>,
    victims_next: Vec<usize>,
    victims_built: bool,
    free: Vec<u64>,
    nodes_scratch: Vec<NodeId>,
}

/// Per-tick context: the view, the time and the budget left.
struct Tick<'a> {
    view: &'a ClusterView,
    now_ns: u64,
    copies_left: u32,
}

impl Placement {
    pub fn new(cfg: PlacementConfig) -> Result<Placement, PolicyError> {
        cfg.validate()?;
        Ok(Placement {
            cfg,
            pending: BTreeMap::new(),
            cool: BTreeMap::new(),
            retry_after: BTreeMap::new(),
            copies_in_flight: 0,
            stats: PlacementStats::default(),
            order: Vec::new(),
            states: Vec::new(),
            victims: Vec::new(),
            victims_next: Vec::new(),
            victims_built: false,
            free: Vec::new(),
            nodes_scratch: Vec::new(),
        })
    }

    pub fn config(&self) -> &PlacementConfig {
        &self.cfg
    }

    pub fn stats(&self) -> PlacementStats {
        self.stats
    }

    pub fn copies_in_flight(&self) -> u32 {
        self.copies_in_flight
    }

    /// The primary copies `rate_per_h` of an asset of `size_bytes` asks for, before the clamp
    /// to `[1, max]` (a fraction: `traffic / copy_serve`).
    pub fn copies_for(&self, rate_per_h: f64, size_bytes: u64) -> f64 {
        rate_per_h.max(0.0) * size_bytes as f64 / 3600.0 / self.cfg.copy_serve_bytes_per_s as f64
    }

    /// Ends a decision: the copy to or the drop on `node` of `asset`. Returns false (and changes
    /// nothing) when no such decision is open.
    pub fn finished(
        &mut self,
        now_ns: u64,
        asset: AssetKey,
        node: NodeId,
        outcome: Outcome,
    ) -> bool {
        let until_ns = now_ns.saturating_add(secs_ns(self.cfg.settle_s));
        let Some(p) = self.pending.get(&(asset, node)).copied() else {
            return false;
        };
        match (p, outcome) {
            (Pending::Copying { bytes }, Outcome::Done) => {
                self.copies_in_flight -= 1;
                self.stats.copies_done += 1;
                self.stats.copied_bytes += bytes;
                self.pending
                    .insert((asset, node), Pending::Arrived { bytes, until_ns });
            }
            (Pending::Copying { .. }, Outcome::Failed) => {
                self.copies_in_flight -= 1;
                self.stats.copies_failed += 1;
                self.pending.remove(&(asset, node));
                self.retry_after.insert(
                    (asset, node),
                    now_ns.saturating_add(secs_ns(self.cfg.retry_backoff_s)),
                );
            }
            (Pending::Dropping, Outcome::Done) => {
                self.pending
                    .insert((asset, node), Pending::Left { until_ns });
            }
            (Pending::Dropping, Outcome::Failed) => {
                self.pending.remove(&(asset, node));
            }
            (Pending::Arrived { .. } | Pending::Left { .. }, _) => return false,
        }
        true
    }

    /// One placement step at `now_ns` over `view`: appends the decisions to `out`, in the
    /// order to execute them (drops before the copies that may need their room).
    pub fn tick(&mut self, now_ns: u64, view: &ClusterView, out: &mut Vec<PlacementDecision>) {
        self.sort_view(view);
        self.settle(now_ns, view);
        self.count(view);
        self.free_room(view);
        self.victims_built = false;
        self.retry_after.retain(|_, &mut t| t > now_ns);
        let mut t = Tick {
            view,
            now_ns,
            copies_left: self.cfg.copies_per_tick_max,
        };
        self.re_replicate(&mut t, out);
        self.pin(&mut t, out);
        self.shrink(&mut t, out);
        self.grow(&mut t, out);
    }

    /// `self.order`: positions of `view.assets` by key, first of duplicates only.
    fn sort_view(&mut self, view: &ClusterView) {
        self.order.clear();
        self.order.extend(0..view.assets.len() as u32);
        let key = |p: &u32| view.assets[*p as usize].key;
        if !self.order.windows(2).all(|w| key(&w[0]) < key(&w[1])) {
            self.order.sort_by_key(key);
            self.order.dedup_by_key(|p| key(p));
        }
    }

    /// The position in `view.assets` of `key`.
    fn find(&self, view: &ClusterView, key: AssetKey) -> Option<usize> {
        self.order
            .binary_search_by_key(&key, |&p| view.assets[p as usize].key)
            .ok()
            .map(|i| self.order[i] as usize)
    }

    /// Forgets what the view now shows (or what expired).
    fn settle(&mut self, now_ns: u64, view: &ClusterView) {
        let mut gone = Vec::new();
        for (&(key, node), p) in &self.pending {
            let a = self.find(view, key).map(|i| &view.assets[i]);
            let shows = a.is_some_and(|a| shows_primary(a, node));
            let done = match *p {
                Pending::Arrived { until_ns, .. } => shows || a.is_none() || until_ns <= now_ns,
                Pending::Left { until_ns } => !shows || until_ns <= now_ns,
                Pending::Copying { .. } | Pending::Dropping => false,
            };
            if done {
                gone.push((key, node));
            }
        }
        for k in gone {
            self.pending.remove(&k);
        }
    }

    /// `self.states`: each asset's copies and holders, in key order.
    fn count(&mut self, view: &ClusterView) {
        self.states.clear();
        let up = |n: NodeId| view.nodes.get(n as usize).is_some_and(|n| n.up);
        let mut pend = self.pending.iter().peekable();
        for &pos in &self.order {
            let a = &view.assets[pos as usize];
            let (mut primary, mut holders) = (0u32, 0u32);
            for (i, c) in a.copies.iter().enumerate() {
                if !up(c.node) {
                    continue;
                }
                if !a.copies[..i].iter().any(|d| d.node == c.node) {
                    holders += 1;
                }
                if c.tier == Tier::Primary {
                    primary += 1;
                }
            }
            while pend.peek().is_some_and(|(&(k, _), _)| k < a.key) {
                pend.next();
            }
            while let Some((&(_, node), &p)) = pend.next_if(|(&(k, _), _)| k == a.key) {
                if !up(node) {
                    continue;
                }
                let shows = shows_primary(a, node);
                let any = a.copies.iter().any(|c| c.node == node);
                match p {
                    Pending::Copying { .. } | Pending::Arrived { .. } if !shows => {
                        primary += 1;
                        holders += u32::from(!any);
                    }
                    Pending::Dropping | Pending::Left { .. } if shows => {
                        primary -= 1;
                        holders -= u32::from(!shows_secondary(a, node));
                    }
                    _ => {}
                }
            }
            self.states.push(AssetState {
                pos,
                primary,
                holders,
            });
        }
    }

    /// `self.free`: each node's primary room, the copies in flight to it counted.
    fn free_room(&mut self, view: &ClusterView) {
        self.free.clear();
        let mut used: Vec<u64> = view.nodes.iter().map(|n| n.primary_used_bytes).collect();
        for (&(key, node), p) in &self.pending {
            let extra = match *p {
                Pending::Copying { bytes } => bytes,
                Pending::Arrived { bytes, .. } => bytes,
                Pending::Dropping | Pending::Left { .. } => 0,
            };
            if let Some(u) = used.get_mut(node as usize) {
                let shown = self
                    .find(view, key)
                    .is_some_and(|i| shows_primary(&view.assets[i], node));
                if !shown {
                    *u += extra;
                }
            }
        }
        self.free.extend(
            view.nodes
                .iter()
                .zip(&used)
                .map(|(n, &u)| n.primary_capacity_bytes.saturating_sub(u)),
        );
    }

    fn need_holders(&self, a: &AssetView) -> u32 {
        a.overrides.min_copies.unwrap_or(self.cfg.min_copies).max(1)
    }

    fn max_primary(&self, a: &AssetView) -> u32 {
        a.overrides
            .max_primary_copies
            .unwrap_or(self.cfg.max_primary_copies)
            .max(1)
    }

    /// The copies an asset grows to: 0 below the placement floor, else the target; at least
    /// its pinned up nodes.
    fn grow_target(&self, view: &ClusterView, a: &AssetView) -> u32 {
        let pins = pinned_up(view, a);
        if a.rate_per_h < self.cfg.first_copy_min_per_h || a.rate_per_h <= 0.0 {
            return pins;
        }
        let want = self.copies_for(a.rate_per_h, a.size_bytes).ceil();
        (want.min(f64::from(u32::MAX)) as u32)
            .max(1)
            .min(self.max_primary(a))
            .max(pins)
    }

    /// The copies an asset keeps: it shrinks below `k` copies only when the traffic needs
    /// fewer than `k` even raised by the hysteresis factor.
    fn keep_target(&self, view: &ClusterView, a: &AssetView) -> u32 {
        let want = (self.copies_for(a.rate_per_h, a.size_bytes) * self.cfg.hysteresis).ceil();
        (want.min(f64::from(u32::MAX)) as u32)
            .max(1)
            .min(self.max_primary(a))
            .max(pinned_up(view, a))
    }

    fn past_residency(&self, c: &CopyView, now_ns: u64) -> bool {
        now_ns.saturating_sub(c.since_ns) as f64 >= self.cfg.min_residency_s * 1e9
    }

    /// Whether the primary copy of `s` on `node` may go now: shown, not pinned, past its
    /// residency, nothing pending there, and the asset keeps its holders.
    fn may_drop(&self, t: &Tick, s: &AssetState, node: NodeId) -> bool {
        let a = &t.view.assets[s.pos as usize];
        let Some(c) = a
            .copies
            .iter()
            .find(|c| c.node == node && c.tier == Tier::Primary)
        else {
            return false;
        };
        if !t.view.nodes.get(node as usize).is_some_and(|n| n.up) {
            return false;
        }
        // A node that keeps its secondary copy stays a holder.
        let keeps_node = shows_secondary(a, node);
        let holders_after = s.holders.saturating_sub(u32::from(!keeps_node));
        !is_pinned(t.view, a, node)
            && self.past_residency(c, t.now_ns)
            && !self.pending.contains_key(&(a.key, node))
            && s.primary >= 1
            && holders_after >= self.need_holders(a)
    }

    fn drop_copy(
        &mut self,
        t: &Tick,
        state: usize,
        node: NodeId,
        reason: PlacementReason,
        out: &mut Vec<PlacementDecision>,
    ) {
        let s = self.states[state];
        let a = &t.view.assets[s.pos as usize];
        self.pending.insert((a.key, node), Pending::Dropping);
        let st = &mut self.states[state];
        st.primary -= 1;
        st.holders -= u32::from(!shows_secondary(a, node));
        match reason {
            PlacementReason::Evicted => self.stats.drops_evicted += 1,
            _ => self.stats.drops_cooled += 1,
        }
        self.stats.dropped_bytes += a.size_bytes;
        out.push(PlacementDecision::Drop {
            asset: a.key,
            node,
            bytes: a.size_bytes,
            reason,
        });
    }

    /// Re-replication: assets with fewer holders than they need, from a surviving holder.
    fn re_replicate(&mut self, t: &mut Tick, out: &mut Vec<PlacementDecision>) {
        for i in 0..self.states.len() {
            let s = self.states[i];
            let a = &t.view.assets[s.pos as usize];
            if s.holders == 0 || s.holders >= self.need_holders(a) {
                continue;
            }
            // One per asset per tick: the next, if still short, the next tick.
            if !self.budget_left(t) {
                return;
            }
            let heat = a.rate_per_h / f64::from(s.primary + 1);
            if let Placed::Copy = self.place_one(t, i, heat, true, PlacementReason::MinCopies, out)
            {
                self.stats.re_replications += 1;
            }
        }
    }

    /// Pinned nodes without their copy.
    fn pin(&mut self, t: &mut Tick, out: &mut Vec<PlacementDecision>) {
        for i in 0..self.states.len() {
            let s = self.states[i];
            let a = &t.view.assets[s.pos as usize];
            if a.overrides.pin_nodes.is_empty() {
                continue;
            }
            for n in &t.view.nodes {
                if !self.budget_left(t) {
                    return;
                }
                if !n.up || !a.overrides.pin_nodes.contains(&n.name) || self.has_primary(a, n.id) {
                    continue;
                }
                self.place_on(
                    t,
                    i,
                    n.id,
                    f64::INFINITY,
                    true,
                    PlacementReason::Pinned,
                    out,
                );
            }
        }
    }

    /// Duplicates of assets that cooled, one per asset per cool-down.
    fn shrink(&mut self, t: &mut Tick, out: &mut Vec<PlacementDecision>) {
        let mut cool = BTreeMap::new();
        for i in 0..self.states.len() {
            let s = self.states[i];
            let a = &t.view.assets[s.pos as usize];
            if s.primary < 2 || s.primary <= self.keep_target(t.view, a) {
                continue;
            }
            let since = self.cool.get(&a.key).copied().unwrap_or(t.now_ns);
            cool.insert(a.key, since);
            if (t.now_ns.saturating_sub(since) as f64) < self.cfg.cooldown_s * 1e9 {
                continue;
            }
            // The copy whose node asks least for it, then the busiest node, then the last id.
            let victim = a
                .copies
                .iter()
                .filter(|c| c.tier == Tier::Primary && self.may_drop(t, &s, c.node))
                .map(|c| c.node)
                .min_by(|&x, &y| {
                    demand_of(a, x)
                        .total_cmp(&demand_of(a, y))
                        .then(load_of(t.view, y).total_cmp(&load_of(t.view, x)))
                        .then(y.cmp(&x))
                });
            if let Some(node) = victim {
                self.drop_copy(t, i, node, PlacementReason::Cooled, out);
                cool.insert(a.key, t.now_ns);
            }
        }
        self.cool = cool;
    }

    /// More copies for the assets below their target, the hottest copy first.
    fn grow(&mut self, t: &mut Tick, out: &mut Vec<PlacementDecision>) {
        let mut heap: BinaryHeap<Candidate> = BinaryHeap::new();
        for (i, s) in self.states.iter().enumerate() {
            let a = &t.view.assets[s.pos as usize];
            if s.holders > 0 && s.primary < self.grow_target(t.view, a) {
                heap.push(Candidate {
                    heat: a.rate_per_h / f64::from(s.primary + 1),
                    key: a.key,
                    state: i as u32,
                });
            }
        }
        let mut looked = 0;
        while let Some(c) = heap.pop() {
            looked += 1;
            if looked > CANDIDATES_PER_TICK_MAX || !self.budget_left(t) {
                break;
            }
            let i = c.state as usize;
            let a = &t.view.assets[self.states[i].pos as usize];
            let reason = if self.states[i].primary == 0 {
                PlacementReason::FirstCopy
            } else {
                PlacementReason::Hot
            };
            if let Placed::Copy = self.place_one(t, i, c.heat, false, reason, out) {
                let s = self.states[i];
                if s.primary < self.grow_target(t.view, a) {
                    heap.push(Candidate {
                        heat: a.rate_per_h / f64::from(s.primary + 1),
                        ..c
                    });
                }
            }
        }
    }

    fn budget_left(&self, t: &Tick) -> bool {
        t.copies_left > 0 && self.copies_in_flight < self.cfg.copies_in_flight_max
    }

    /// Whether `node` holds (or is getting) a primary copy of `a`, as far as the policy knows.
    fn has_primary(&self, a: &AssetView, node: NodeId) -> bool {
        match self.pending.get(&(a.key, node)) {
            Some(Pending::Copying { .. } | Pending::Arrived { .. }) => true,
            Some(Pending::Dropping | Pending::Left { .. }) => false,
            None => shows_primary(a, node),
        }
    }

    /// One more copy of state `i` on the best node that can take it.
    fn place_one(
        &mut self,
        t: &mut Tick,
        i: usize,
        heat: f64,
        force: bool,
        reason: PlacementReason,
        out: &mut Vec<PlacementDecision>,
    ) -> Placed {
        let a = &t.view.assets[self.states[i].pos as usize];
        let mut nodes = std::mem::take(&mut self.nodes_scratch);
        nodes.clear();
        nodes.extend(
            t.view
                .nodes
                .iter()
                .filter(|n| {
                    n.up && n.primary_capacity_bytes >= a.size_bytes
                        && !self.pending.contains_key(&(a.key, n.id))
                        // Re-replication needs a node without any copy: another holder.
                        && (reason != PlacementReason::MinCopies
                            || !a.copies.iter().any(|c| c.node == n.id))
                        && !self.has_primary(a, n.id)
                        && self
                            .retry_after
                            .get(&(a.key, n.id))
                            .is_none_or(|&r| r <= t.now_ns)
                })
                .map(|n| n.id),
        );
        // Most demand, then least loaded, then most free primary, then the lowest id.
        nodes.sort_by(|&x, &y| {
            demand_of(a, y)
                .total_cmp(&demand_of(a, x))
                .then(load_of(t.view, x).total_cmp(&load_of(t.view, y)))
                .then(self.free[y as usize].cmp(&self.free[x as usize]))
                .then(x.cmp(&y))
        });
        let mut placed = Placed::Nowhere;
        for &n in &nodes {
            placed = self.place_on(t, i, n, heat, force, reason, out);
            if !matches!(placed, Placed::Nowhere) {
                break;
            }
        }
        self.nodes_scratch = nodes;
        placed
    }

    /// A copy of state `i` on `node`: now if it fits, else by evicting colder copies there.
    #[allow(clippy::too_many_arguments)]
    fn place_on(
        &mut self,
        t: &mut Tick,
        i: usize,
        node: NodeId,
        heat: f64,
        force: bool,
        reason: PlacementReason,
        out: &mut Vec<PlacementDecision>,
    ) -> Placed {
        let a = &t.view.assets[self.states[i].pos as usize];
        if self.pending.contains_key(&(a.key, node)) {
            return Placed::Nowhere;
        }
        let Some(from) = source_for(t.view, a, node, &self.pending) else {
            return Placed::Nowhere;
        };
        let free = self.free[node as usize];
        if a.size_bytes > free {
            return if self.evict(t, node, a.size_bytes - free, heat, force, out) {
                Placed::Evicting
            } else {
                Placed::Nowhere
            };
        }
        self.free[node as usize] -= a.size_bytes;
        self.pending.insert(
            (a.key, node),
            Pending::Copying {
                bytes: a.size_bytes,
            },
        );
        let s = &mut self.states[i];
        s.primary += 1;
        s.holders += u32::from(!a.copies.iter().any(|c| c.node == node));
        self.copies_in_flight += 1;
        t.copies_left -= 1;
        self.stats.copies_started += 1;
        out.push(PlacementDecision::Copy {
            asset: a.key,
            to_node: node,
            from_node: from,
            bytes: a.size_bytes,
            reason,
        });
        Placed::Copy
    }

    /// Drops copies on `node`, coldest first, freeing at least `need` bytes, if that can be
    /// done with copies colder than `heat` by the margin (any unpinned ones when `force`).
    /// Decides nothing unless it frees enough.
    fn evict(
        &mut self,
        t: &Tick,
        node: NodeId,
        need: u64,
        heat: f64,
        force: bool,
        out: &mut Vec<PlacementDecision>,
    ) -> bool {
        self.build_victims(t);
        let n = node as usize;
        let mut freed = 0u64;
        let mut chosen = Vec::new();
        let mut j = self.victims_next[n];
        while freed < need {
            let Some(&v) = self.victims[n].get(j) else {
                break;
            };
            j += 1;
            if !force && v.heat * (1.0 + self.cfg.swap_margin) > heat {
                break;
            }
            let s = self.states[v.state as usize];
            if !self.may_drop(t, &s, node) {
                continue;
            }
            freed += t.view.assets[s.pos as usize].size_bytes;
            chosen.push(v.state as usize);
        }
        if freed < need {
            return false;
        }
        self.victims_next[n] = j;
        for state in chosen {
            self.drop_copy(t, state, node, PlacementReason::Evicted, out);
        }
        true
    }

    /// Per node: the primary copies that may be evicted, coldest first (once per tick).
    fn build_victims(&mut self, t: &Tick) {
        if self.victims_built {
            return;
        }
        self.victims_built = true;
        let n = t.view.nodes.len();
        self.victims.resize_with(n, Vec::new);
        self.victims.truncate(n);
        for v in &mut self.victims {
            v.clear();
        }
        self.victims_next.clear();
        self.victims_next.resize(n, 0);
        for (i, s) in self.states.iter().enumerate() {
            let a = &t.view.assets[s.pos as usize];
            let heat = a.rate_per_h / f64::from(s.primary.max(1));
            for c in &a.copies {
                if c.tier == Tier::Primary && (c.node as usize) < n {
                    self.victims[c.node as usize].push(Victim {
                        heat,
                        key: a.key,
                        state: i as u32,
                    });
                }
            }
        }
        for v in &mut self.victims {
            v.sort_by(|x, y| x.heat.total_cmp(&y.heat).then(x.key.cmp(&y.key)));
        }
    }
}

fn secs_ns(s: f64) -> u64 {
    (s * 1e9) as u64
}

fn shows_primary(a: &AssetView, node: NodeId) -> bool {
    a.copies
        .iter()
        .any(|c| c.node == node && c.tier == Tier::Primary)
}

fn shows_secondary(a: &AssetView, node: NodeId) -> bool {
    a.copies
        .iter()
        .any(|c| c.node == node && c.tier == Tier::Secondary)
}

fn demand_of(a: &AssetView, node: NodeId) -> f64 {
    a.demand_per_h
        .iter()
        .filter(|(n, _)| *n == node)
        .map(|(_, d)| *d)
        .sum()
}

fn load_of(view: &ClusterView, node: NodeId) -> f64 {
    view.nodes
        .get(node as usize)
        .map_or(f64::INFINITY, |n| n.load_bytes_per_s)
}

fn is_pinned(view: &ClusterView, a: &AssetView, node: NodeId) -> bool {
    !a.overrides.pin_nodes.is_empty()
        && view
            .nodes
            .get(node as usize)
            .is_some_and(|n| a.overrides.pin_nodes.contains(&n.name))
}

fn pinned_up(view: &ClusterView, a: &AssetView) -> u32 {
    if a.overrides.pin_nodes.is_empty() {
        return 0;
    }
    view.nodes
        .iter()
        .filter(|n| n.up && a.overrides.pin_nodes.contains(&n.name))
        .count() as u32
}

/// Where a copy to `to` is pulled from: `to`'s own secondary, else the least-loaded up node
/// with a primary copy not being dropped, else the least-loaded up node with a secondary copy.
fn source_for(
    view: &ClusterView,
    a: &AssetView,
    to: NodeId,
    pending: &BTreeMap<(AssetKey, NodeId), Pending>,
) -> Option<NodeId> {
    if shows_secondary(a, to) && view.nodes.get(to as usize).is_some_and(|n| n.up) {
        return Some(to);
    }
    let best = |tier: Tier| {
        a.copies
            .iter()
            .filter(|c| {
                c.tier == tier
                    && c.node != to
                    && view.nodes.get(c.node as usize).is_some_and(|n| n.up)
                    && (tier == Tier::Secondary
                        || !matches!(
                            pending.get(&(a.key, c.node)),
                            Some(Pending::Dropping | Pending::Left { .. })
                        ))
            })
            .map(|c| c.node)
            .min_by(|&x, &y| {
                load_of(view, x)
                    .total_cmp(&load_of(view, y))
                    .then(x.cmp(&y))
            })
    };
    best(Tier::Primary).or_else(|| best(Tier::Secondary))
}

#[cfg(test)]
mod tests;

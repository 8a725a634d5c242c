//! The content manager: which node holds which asset on which tier and in which version, the
//! nodes' liveness and load, request rates, and the tombstones that decide which versions are
//! dead.
//!
//! Inventory and rates live in memory only: nodes are the source of truth and re-report
//! everything when they (re)register, so a restarted manager rebuilds this from their reports.
//! Tombstones are durable (the coordination store) and cached here.
//!
//! Invariants:
//! - A copy whose etag a tombstone kills is never routed (it is also never inserted: a report
//!   that lists one gets the tombstone back in its answer, and the node deletes the copy).
//! - When an asset's current version is known (a `published` since this manager started, or a
//!   tombstone's `keep`), only copies of that version are routed.
//! - A node that has not reported within the node timeout, or whose relay fetch failed within
//!   the hold-down, is not routed to (as a target or as a relay source).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reel_http::cluster::{Holding, Load, Register, Report, TierFill, Tombstone};

/// A node's index in [`Content::nodes`]; stable for the manager's life.
pub type NodeIdx = u16;

/// An asset version: the crc32c of its chunk crcs and its size (what a node's etag encodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    pub checksum: u32,
    pub size: u64,
}

impl Version {
    /// Parses a node's etag, `"xxxxxxxx-size"` (checksum in 8 hex digits, size in hex).
    pub fn parse(etag: &str) -> Option<Version> {
        let inner = etag.strip_prefix('"')?.strip_suffix('"')?;
        let (c, s) = inner.split_once('-')?;
        if c.len() != 8 {
            return None;
        }
        Some(Version {
            checksum: u32::from_str_radix(c, 16).ok()?,
            size: u64::from_str_radix(s, 16).ok()?,
        })
    }

    /// The etag as nodes write it.
    pub fn etag(&self) -> String {
        format!("\"{:08x}-{:x}\"", self.checksum, self.size)
    }
}

/// Tier bits of a [`Copy`].
pub const PRIMARY: u8 = 1;
pub const SECONDARY: u8 = 2;

fn tier_bits(tiers: &[String]) -> u8 {
    tiers.iter().fold(0, |b, t| match t.as_str() {
        "primary" => b | PRIMARY,
        "secondary" => b | SECONDARY,
        _ => b,
    })
}

/// One node's copy of an asset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Copy {
    pub node: NodeIdx,
    pub tiers: u8,
    pub version: Version,
    /// When this manager first saw the copy as it is (tiers and version), seconds since the
    /// content state began: how long it has stayed, for the placement's minimum residency.
    pub since_s: f32,
}

impl Copy {
    /// Seconds the copy has been as it is, at `now_s`.
    pub fn age_s(&self, now_s: f32) -> f32 {
        (now_s - self.since_s).max(0.0)
    }
}

/// One node's view of an asset's popularity: the rate its counters measure (requests it
/// served, relay fetches included) and the demand of its own clients for the asset when it
/// lacks it (relayed requests), each in views per hour as of `at_s`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeRate {
    pub node: NodeIdx,
    pub views_per_h: f32,
    pub demand_per_h: f32,
    /// Seconds since the content state began.
    pub at_s: f32,
}

/// What the manager knows of one asset.
#[derive(Clone, Debug, Default)]
pub struct AssetEntry {
    pub copies: Vec<Copy>,
    /// The version acknowledged last (a `published` since this manager started).
    pub current: Option<Version>,
    /// Per node: its rate and its clients' relayed demand (only nodes that reported some).
    pub rates: Vec<NodeRate>,
}

impl AssetEntry {
    /// The cluster-wide rate at `now_s`: the nodes' rates (each counts what it served, so a
    /// relayed request counts once, at its holder), each decayed since its report.
    pub fn cluster_rate(&self, now_s: f32, half_life_s: f32) -> f32 {
        self.rates
            .iter()
            .map(|r| r.views_per_h * decay(now_s - r.at_s, half_life_s))
            .sum()
    }

    /// The relayed demand of `node`'s clients at `now_s`, views per hour.
    pub fn demand(&self, node: NodeIdx, now_s: f32, half_life_s: f32) -> f32 {
        self.rates
            .iter()
            .find(|r| r.node == node)
            .map_or(0.0, |r| r.demand_per_h * decay(now_s - r.at_s, half_life_s))
    }
}

/// `node`'s rate entry of `e`, brought to `now_s` (its demand decayed; its rate is replaced by
/// the next report, or decays when read).
fn node_rate(e: &mut AssetEntry, node: NodeIdx, now_s: f32, half_life_s: f32) -> &mut NodeRate {
    let i = match e.rates.iter().position(|r| r.node == node) {
        Some(i) => i,
        None => {
            e.rates.push(NodeRate {
                node,
                views_per_h: 0.0,
                demand_per_h: 0.0,
                at_s: now_s,
            });
            e.rates.len() - 1
        }
    };
    let r = &mut e.rates[i];
    let k = decay(now_s - r.at_s, half_life_s);
    r.views_per_h *= k;
    r.demand_per_h *= k;
    r.at_s = now_s;
    r
}

/// The factor a rate keeps after `dt_s` seconds under `half_life_s`.
pub fn decay(dt_s: f32, half_life_s: f32) -> f32 {
    if dt_s <= 0.0 || half_life_s <= 0.0 {
        1.0
    } else {
        (-(dt_s / half_life_s) * std::f32::consts::LN_2).exp()
    }
}

/// A node's liveness as routing sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Registered in the store, not heard from since this manager started.
    Unknown,
    Up,
    /// Missed its reports for the node timeout.
    Down,
    /// A relay fetch from it failed: not trusted before `until` and a report after that.
    HeldDown {
        until: Instant,
    },
}

impl Liveness {
    pub fn name(&self) -> &'static str {
        match self {
            Liveness::Unknown => "unknown",
            Liveness::Up => "up",
            Liveness::Down => "down",
            Liveness::HeldDown { .. } => "held-down",
        }
    }
}

/// A member node.
#[derive(Clone, Debug)]
pub struct NodeState {
    pub name: String,
    pub access: SocketAddr,
    pub peer: SocketAddr,
    pub boot: u64,
    /// The session of its current registration (0: none since this manager started).
    pub session: u64,
    pub last_seq: u64,
    /// Whether a full report arrived in this session (before that, its holdings are unknown).
    pub full_seen: bool,
    /// A full report is arriving in pages (`more`): holdings not known until the last.
    pub paging: bool,
    pub last_report: Option<Instant>,
    pub liveness: Liveness,
    pub load: Load,
    pub tiers: Vec<TierFill>,
    /// The highest tombstone revision this session has been sent.
    pub tomb_rev_sent: i64,
    pub holdings: u64,
}

impl NodeState {
    pub fn routable(&self) -> bool {
        self.liveness == Liveness::Up && self.full_seen
    }

    pub fn has_tier(&self, tier: &str) -> bool {
        self.tiers.iter().any(|t| t.tier == tier)
    }

    pub fn free(&self, tier: &str) -> u64 {
        self.tiers
            .iter()
            .find(|t| t.tier == tier)
            .map_or(0, |t| t.capacity_bytes.saturating_sub(t.used_bytes))
    }
}

/// A liveness change, for the metrics and the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub node: String,
    pub from: &'static str,
    pub to: &'static str,
    pub why: &'static str,
}

/// The answer to a report the manager cannot take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportError {
    /// Unknown node or session: register again.
    Unregistered,
}

/// The content manager's state.
pub struct Content {
    pub nodes: Vec<NodeState>,
    by_name: HashMap<String, NodeIdx>,
    pub assets: HashMap<Box<str>, AssetEntry>,
    tombstones: HashMap<String, Tombstone>,
    /// Tombstones by revision, for the deltas of report answers.
    tomb_log: Vec<Tombstone>,
    next_session: u64,
    pub node_timeout: Duration,
    pub hold_down: Duration,
    /// The half-life of the manager's decay of reported rates and demand between reports.
    pub half_life: Duration,
    /// When this state began: rates' `at_s` count from it.
    epoch: Instant,
    /// Copies listed in reports that a tombstone killed (not inserted).
    pub dead_copies_reported: u64,
}

impl Content {
    pub fn new(node_timeout: Duration, hold_down: Duration, session_base: u64) -> Content {
        Content {
            nodes: Vec::new(),
            by_name: HashMap::new(),
            assets: HashMap::new(),
            tombstones: HashMap::new(),
            tomb_log: Vec::new(),
            next_session: session_base,
            node_timeout,
            hold_down,
            half_life: Duration::from_secs(30 * 60),
            epoch: Instant::now(),
            dead_copies_reported: 0,
        }
    }

    pub fn node(&self, name: &str) -> Option<NodeIdx> {
        self.by_name.get(name).copied()
    }

    /// A member known from the store (not yet heard from).
    pub fn add_member(&mut self, name: &str, access: SocketAddr, peer: SocketAddr) {
        if self.by_name.contains_key(name) {
            return;
        }
        let idx = self.nodes.len() as NodeIdx;
        self.nodes.push(NodeState {
            name: name.to_string(),
            access,
            peer,
            boot: 0,
            session: 0,
            last_seq: 0,
            full_seen: false,
            paging: false,
            last_report: None,
            liveness: Liveness::Unknown,
            load: Load::default(),
            tiers: Vec::new(),
            tomb_rev_sent: 0,
            holdings: 0,
        });
        self.by_name.insert(name.to_string(), idx);
    }

    /// Tombstones loaded from the store, or written by this manager.
    pub fn add_tombstone(&mut self, t: Tombstone) {
        if let Some(old) = self.tombstones.get(&t.id) {
            if old.rev >= t.rev {
                return;
            }
        }
        let keep = t.keep.as_deref().and_then(Version::parse);
        if let Some(e) = self.assets.get_mut(t.id.as_str()) {
            e.copies.retain(|c| Some(c.version) == keep);
            e.current = keep;
        }
        if self
            .assets
            .get(t.id.as_str())
            .is_some_and(|e| e.copies.is_empty())
        {
            self.assets.remove(t.id.as_str());
        }
        self.tombstones.insert(t.id.clone(), t.clone());
        self.tomb_log.push(t);
    }

    pub fn tombstone(&self, id: &str) -> Option<&Tombstone> {
        self.tombstones.get(id)
    }

    pub fn tombstones(&self) -> impl Iterator<Item = &Tombstone> {
        self.tombstones.values()
    }

    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    fn tomb_rev_max(&self) -> i64 {
        self.tomb_log.last().map_or(0, |t| t.rev)
    }

    /// Whether a tombstone kills version `v` of `id`.
    fn dead(&self, id: &str, v: Version) -> bool {
        self.tombstones
            .get(id)
            .is_some_and(|t| t.keep.as_deref().and_then(Version::parse) != Some(v))
    }

    /// A node registers: its session number and every tombstone. Its copies stay routable
    /// only after its full report.
    pub fn register(&mut self, r: &Register, now: Instant) -> (u64, Vec<Tombstone>) {
        self.add_member(&r.node, r.access, r.peer);
        let idx = self.by_name[&r.node];
        self.next_session += 1;
        let session = self.next_session;
        let rev = self.tomb_rev_max();
        let n = &mut self.nodes[idx as usize];
        n.access = r.access;
        n.peer = r.peer;
        n.boot = r.boot;
        n.session = session;
        n.last_seq = 0;
        n.full_seen = false;
        n.paging = false;
        n.tiers = r.tiers.clone();
        n.last_report = Some(now);
        n.tomb_rev_sent = rev;
        let mut all: Vec<Tombstone> = self.tombstones.values().cloned().collect();
        all.sort_by_key(|t| t.rev);
        (session, all)
    }

    /// Takes a report: load, rates, holdings. Returns the tombstones the node has not been
    /// sent, whether it must send a full report next, and the liveness change if any.
    pub fn report(
        &mut self,
        r: Report,
        now: Instant,
    ) -> Result<(Vec<Tombstone>, bool, Option<Transition>), ReportError> {
        let idx = self.node(&r.node).ok_or(ReportError::Unregistered)?;
        let n = &self.nodes[idx as usize];
        if n.session != r.session || r.session == 0 {
            return Err(ReportError::Unregistered);
        }
        let gap = r.seq != n.last_seq + 1;
        let resync = gap && !r.full;
        let mut transition = None;
        {
            let n = &mut self.nodes[idx as usize];
            n.last_seq = r.seq;
            n.last_report = Some(now);
            n.load = r.load;
            n.tiers = r.tiers;
            let up = match n.liveness {
                Liveness::HeldDown { until } => now >= until,
                _ => true,
            };
            if up && n.liveness != Liveness::Up {
                transition = Some(Transition {
                    node: n.name.clone(),
                    from: n.liveness.name(),
                    to: "up",
                    why: "reporting",
                });
                n.liveness = Liveness::Up;
            }
        }
        if r.full {
            self.forget_copies_of(idx);
            let n = &mut self.nodes[idx as usize];
            n.full_seen = !r.more;
            n.paging = r.more;
        } else if self.nodes[idx as usize].paging {
            // The next page of a full report (or, after a gap, a resync is asked).
            let n = &mut self.nodes[idx as usize];
            if resync {
                n.paging = false;
            } else if !r.more {
                n.paging = false;
                n.full_seen = true;
            }
        }
        if !resync {
            for id in &r.remove {
                self.remove_copy(id, idx);
            }
            let now_s = self.seconds(now);
            for h in r.upsert {
                self.upsert_copy(h, idx, now_s);
            }
        }
        let now_s = self.seconds(now);
        let hl = self.half_life.as_secs_f32();
        for rate in r.rates {
            if let Some(e) = self.assets.get_mut(rate.id.as_str()) {
                let nr = node_rate(e, idx, now_s, hl);
                nr.views_per_h = rate.views_per_h as f32;
            }
        }
        for d in r.demand {
            // Views since the last report become a decaying rate: each view adds ln 2 / h
            // views per hour, as a fold of the node's counters does.
            if let Some(e) = self.assets.get_mut(d.id.as_str()) {
                let nr = node_rate(e, idx, now_s, hl);
                nr.demand_per_h += (d.views as f32) * std::f32::consts::LN_2 * 3600.0 / hl.max(1.0);
            }
        }
        for name in r.failed_sources {
            if let Some(t) = self.hold_down(&name, now, "a relay fetch from it failed") {
                transition = transition.or(Some(t));
            }
        }
        let sent = self.nodes[idx as usize].tomb_rev_sent;
        // Only each id's latest tombstone: an older one (a delete before a new upload) must
        // not reach the node after it.
        let new: Vec<Tombstone> = self
            .tomb_log
            .iter()
            .filter(|t| t.rev > sent)
            .filter(|t| {
                self.tombstones
                    .get(&t.id)
                    .is_some_and(|cur| cur.rev == t.rev)
            })
            .cloned()
            .collect();
        self.nodes[idx as usize].tomb_rev_sent = self.tomb_rev_max();
        Ok((new, resync, transition))
    }

    /// Seconds from this state's start to `now`.
    pub fn seconds(&self, now: Instant) -> f32 {
        now.saturating_duration_since(self.epoch).as_secs_f32()
    }

    fn forget_copies_of(&mut self, idx: NodeIdx) {
        self.assets.retain(|_, e| {
            e.copies.retain(|c| c.node != idx);
            e.rates.retain(|r| r.node != idx);
            !e.copies.is_empty() || e.current.is_some()
        });
        self.nodes[idx as usize].holdings = 0;
    }

    fn remove_copy(&mut self, id: &str, idx: NodeIdx) {
        if let Some(e) = self.assets.get_mut(id) {
            let before = e.copies.len();
            e.copies.retain(|c| c.node != idx);
            if e.copies.len() < before {
                self.nodes[idx as usize].holdings -= 1;
            }
            if e.copies.is_empty() && e.current.is_none() {
                self.assets.remove(id);
            }
        }
    }

    fn upsert_copy(&mut self, h: Holding, idx: NodeIdx, now_s: f32) {
        let Some(version) = Version::parse(&h.etag) else {
            return;
        };
        if self.dead(&h.id, version) {
            self.dead_copies_reported += 1;
            self.remove_copy(&h.id, idx);
            return;
        }
        let mut copy = Copy {
            node: idx,
            tiers: tier_bits(&h.tiers),
            version,
            since_s: now_s,
        };
        let e = self.assets.entry(h.id.into_boxed_str()).or_default();
        match e.copies.iter_mut().find(|c| c.node == idx) {
            Some(c) => {
                if c.tiers == copy.tiers && c.version == copy.version {
                    copy.since_s = c.since_s;
                }
                *c = copy;
            }
            None => {
                e.copies.push(copy);
                self.nodes[idx as usize].holdings += 1;
            }
        }
    }

    /// A node published `v` of `id` (before acknowledging it): it is the current version.
    pub fn published(&mut self, node: NodeIdx, id: &str, v: Version, tiers: u8) {
        let now_s = self.seconds(Instant::now());
        let e = self.assets.entry(id.into()).or_default();
        e.current = Some(v);
        let mut added = false;
        match e.copies.iter_mut().find(|c| c.node == node) {
            Some(c) => {
                c.version = v;
                c.tiers = tiers;
                c.since_s = now_s;
            }
            None => {
                e.copies.push(Copy {
                    node,
                    tiers,
                    version: v,
                    since_s: now_s,
                });
                added = true;
            }
        }
        if added {
            self.nodes[node as usize].holdings += 1;
        }
    }

    /// Whether publishing `v` of `id` needs a tombstone first: another version may exist
    /// somewhere (known, or on a member whose holdings are not known now), or a tombstone
    /// keeps another version.
    pub fn publish_needs_tombstone(&self, id: &str, v: Version) -> bool {
        if let Some(t) = self.tombstones.get(id) {
            return t.keep.as_deref().and_then(Version::parse) != Some(v);
        }
        let other_known = self
            .assets
            .get(id)
            .is_some_and(|e| e.copies.iter().any(|c| c.version != v) || e.current != Some(v));
        other_known || self.nodes.iter().any(|n| !n.routable())
    }

    /// Copies of `id` that may be routed: on routable nodes, of the current version.
    pub fn live_copies(&self, id: &str) -> Vec<Copy> {
        let Some(e) = self.assets.get(id) else {
            return Vec::new();
        };
        let want = e.current;
        e.copies
            .iter()
            .filter(|c| want.is_none_or(|v| c.version == v))
            .filter(|c| self.nodes[c.node as usize].routable())
            .copied()
            .collect()
    }

    /// Every copy of `id` (any node, any version), for deletes and `/locations`.
    pub fn all_copies(&self, id: &str) -> Vec<Copy> {
        self.assets
            .get(id)
            .map(|e| e.copies.clone())
            .unwrap_or_default()
    }

    /// Whether some member's holdings are unknown now (not reported a full snapshot since this
    /// manager started): a miss may be a copy not reported yet.
    pub fn members_pending(&self) -> bool {
        self.nodes.iter().any(|n| {
            n.liveness == Liveness::Unknown || (n.liveness == Liveness::Up && !n.full_seen)
        })
    }

    /// Marks nodes silent for the node timeout down.
    pub fn expire(&mut self, now: Instant) -> Vec<Transition> {
        let timeout = self.node_timeout;
        let mut out = Vec::new();
        for n in &mut self.nodes {
            let silent = n
                .last_report
                .is_none_or(|t| now.saturating_duration_since(t) > timeout);
            if silent && matches!(n.liveness, Liveness::Up) {
                out.push(Transition {
                    node: n.name.clone(),
                    from: "up",
                    to: "down",
                    why: "missed its reports",
                });
                n.liveness = Liveness::Down;
                n.session = 0;
            }
        }
        out
    }

    /// Marks `name` down at once with a hold-down (a relay fetch from it failed).
    pub fn hold_down(&mut self, name: &str, now: Instant, why: &'static str) -> Option<Transition> {
        let idx = self.node(name)?;
        let until = now + self.hold_down;
        let n = &mut self.nodes[idx as usize];
        let from = n.liveness.name();
        n.liveness = Liveness::HeldDown { until };
        Some(Transition {
            node: n.name.clone(),
            from,
            to: "held-down",
            why,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(name: &str) -> Register {
        Register {
            node: name.into(),
            boot: 1,
            access: "127.0.0.1:1".parse().expect("addr"),
            peer: "127.0.0.1:2".parse().expect("addr"),
            tiers: vec![],
        }
    }

    fn holding(id: &str, etag: &str, tiers: &[&str]) -> Holding {
        Holding {
            id: id.into(),
            etag: etag.into(),
            size: 16,
            tiers: tiers.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn report(node: &str, session: u64, seq: u64, full: bool, up: Vec<Holding>) -> Report {
        Report {
            node: node.into(),
            session,
            seq,
            full,
            more: false,
            upsert: up,
            remove: vec![],
            rates: vec![],
            load: Load::default(),
            tiers: vec![],
            failed_sources: vec![],
            pulls: vec![],
            demand: vec![],
        }
    }

    use reel_http::cluster::{AssetDemand, AssetRate};

    const V1: &str = "\"00000001-10\"";
    const V2: &str = "\"00000002-10\"";

    #[test]
    fn etags_parse_and_print() {
        let v = Version::parse("\"0badcafe-1f\"").expect("etag");
        assert_eq!((v.checksum, v.size), (0x0bad_cafe, 31));
        assert_eq!(v.etag(), "\"0badcafe-1f\"");
        for bad in [
            "",
            "\"\"",
            "0badcafe-1f",
            "\"badcafe-1f\"",
            "\"0badcafe\"",
            "\"zzzzzzzz-1\"",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn copies_route_only_after_a_full_report_and_while_reporting() {
        let t0 = Instant::now();
        let mut c = Content::new(Duration::from_secs(2), Duration::from_secs(10), 0);
        let (s, _) = c.register(&reg("n1"), t0);
        assert!(c.live_copies("a").is_empty());
        c.report(
            report("n1", s, 1, true, vec![holding("a", V1, &["primary"])]),
            t0,
        )
        .expect("report");
        assert_eq!(c.live_copies("a").len(), 1);
        assert!(c.expire(t0 + Duration::from_secs(1)).is_empty());
        let tr = c.expire(t0 + Duration::from_secs(3));
        assert_eq!(tr[0].to, "down");
        assert!(c.live_copies("a").is_empty());
        // The old session is gone: the node must register again.
        assert_eq!(
            c.report(report("n1", s, 2, false, vec![]), t0),
            Err(ReportError::Unregistered)
        );
    }

    #[test]
    fn a_paged_full_report_routes_only_once_its_last_page_arrived() {
        let t0 = Instant::now();
        let mut c = Content::new(Duration::from_secs(2), Duration::from_secs(10), 0);
        let (s, _) = c.register(&reg("n1"), t0);
        let mut p1 = report("n1", s, 1, true, vec![holding("a", V1, &["primary"])]);
        p1.more = true;
        c.report(p1, t0).expect("report");
        assert!(
            c.live_copies("a").is_empty(),
            "holdings unknown until the last page"
        );
        let mut p2 = report("n1", s, 2, false, vec![holding("b", V1, &["primary"])]);
        p2.more = true;
        c.report(p2, t0).expect("report");
        c.report(
            report("n1", s, 3, false, vec![holding("c", V1, &["primary"])]),
            t0,
        )
        .expect("report");
        for id in ["a", "b", "c"] {
            assert_eq!(c.live_copies(id).len(), 1, "{id}");
        }
        // A page lost (a gap) asks for the snapshot again and routes nothing meanwhile.
        let (s, _) = c.register(&reg("n1"), t0);
        let mut p1 = report("n1", s, 1, true, vec![holding("a", V1, &["primary"])]);
        p1.more = true;
        c.report(p1, t0).expect("report");
        let (_, resync, _) = c
            .report(
                report("n1", s, 3, false, vec![holding("c", V1, &["primary"])]),
                t0,
            )
            .expect("report");
        assert!(resync);
        assert!(!c.nodes[0].routable());
    }

    #[test]
    fn a_seq_gap_asks_for_a_full_report() {
        let t0 = Instant::now();
        let mut c = Content::new(Duration::from_secs(2), Duration::from_secs(10), 0);
        let (s, _) = c.register(&reg("n1"), t0);
        c.report(report("n1", s, 1, true, vec![]), t0)
            .expect("report");
        let (_, resync, _) = c
            .report(
                report("n1", s, 3, false, vec![holding("b", V1, &["secondary"])]),
                t0,
            )
            .expect("report");
        assert!(resync);
        assert!(
            c.live_copies("b").is_empty(),
            "a delta after a gap is not applied"
        );
    }

    #[test]
    fn tombstones_kill_other_versions_and_reach_every_session() {
        let t0 = Instant::now();
        let mut c = Content::new(Duration::from_secs(2), Duration::from_secs(10), 0);
        let (s1, _) = c.register(&reg("n1"), t0);
        let (s2, _) = c.register(&reg("n2"), t0);
        c.report(
            report("n1", s1, 1, true, vec![holding("a", V1, &["primary"])]),
            t0,
        )
        .expect("report");
        c.report(
            report("n2", s2, 1, true, vec![holding("a", V1, &["secondary"])]),
            t0,
        )
        .expect("report");
        let v2 = Version::parse(V2).expect("etag");
        assert!(c.publish_needs_tombstone("a", v2));
        c.add_tombstone(Tombstone {
            id: "a".into(),
            keep: Some(V2.into()),
            rev: 7,
        });
        c.published(0, "a", v2, PRIMARY);
        let live = c.live_copies("a");
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].version, v2);
        // n2 learns of it in its next answer, and its stale copy is not taken back.
        let (tombs, _, _) = c
            .report(
                report("n2", s2, 2, false, vec![holding("a", V1, &["secondary"])]),
                t0,
            )
            .expect("report");
        assert_eq!(tombs.len(), 1);
        assert_eq!(c.live_copies("a").len(), 1);
        assert_eq!(c.dead_copies_reported, 1);
        // A node registering later gets every tombstone.
        let (_, all) = c.register(&reg("n3"), t0);
        assert_eq!(all.len(), 1);
        // A delete keeps nothing.
        c.add_tombstone(Tombstone {
            id: "a".into(),
            keep: None,
            rev: 9,
        });
        assert!(c.live_copies("a").is_empty());
        assert!(c.all_copies("a").is_empty());
    }

    #[test]
    fn rates_sum_over_nodes_and_demand_counts_where_clients_ask() {
        let t0 = Instant::now();
        let mut c = Content::new(Duration::from_secs(2), Duration::from_secs(10), 0);
        c.half_life = Duration::from_secs(3600);
        let (s1, _) = c.register(&reg("n1"), t0);
        let (s2, _) = c.register(&reg("n2"), t0);
        let mut r1 = report("n1", s1, 1, true, vec![holding("a", V1, &["primary"])]);
        r1.rates = vec![AssetRate {
            id: "a".into(),
            views_per_h: 30.0,
        }];
        c.report(r1, t0).expect("report");
        let mut r2 = report("n2", s2, 1, true, vec![holding("a", V1, &["secondary"])]);
        r2.rates = vec![AssetRate {
            id: "a".into(),
            views_per_h: 10.0,
        }];
        r2.demand = vec![AssetDemand {
            id: "a".into(),
            views: 2.0,
        }];
        c.report(r2, t0).expect("report");
        let e = &c.assets["a"];
        let now = c.seconds(t0);
        assert!((e.cluster_rate(now, 3600.0) - 40.0).abs() < 0.01);
        // Two views under a 1 h half-life: 2 ln 2 views per hour.
        assert!((e.demand(1, now, 3600.0) - 2.0 * std::f32::consts::LN_2).abs() < 0.01);
        assert_eq!(e.demand(0, now, 3600.0), 0.0);
        // An hour without reports halves both.
        assert!((e.cluster_rate(now + 3600.0, 3600.0) - 20.0).abs() < 0.05);
        // A node's full report forgets its part.
        c.report(report("n2", s2, 2, true, vec![]), t0)
            .expect("report");
        assert!((c.assets["a"].cluster_rate(now, 3600.0) - 30.0).abs() < 0.01);
    }

    #[test]
    fn a_failed_relay_holds_a_node_down_until_a_later_report() {
        let t0 = Instant::now();
        let mut c = Content::new(Duration::from_secs(2), Duration::from_secs(10), 0);
        let (s1, _) = c.register(&reg("n1"), t0);
        c.report(
            report("n1", s1, 1, true, vec![holding("a", V1, &["primary"])]),
            t0,
        )
        .expect("report");
        c.hold_down("n1", t0, "test").expect("known");
        assert!(c.live_copies("a").is_empty());
        c.report(
            report("n1", s1, 2, false, vec![]),
            t0 + Duration::from_secs(5),
        )
        .expect("report");
        assert!(c.live_copies("a").is_empty(), "still held down");
        c.report(
            report("n1", s1, 3, false, vec![]),
            t0 + Duration::from_secs(11),
        )
        .expect("report");
        assert_eq!(c.live_copies("a").len(), 1);
    }
}

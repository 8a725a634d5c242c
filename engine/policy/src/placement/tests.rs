//! The placement policy under a simulated clock: growth and cool-down, no thrash near a
//! boundary, never the last copy, re-replication after a node is lost, capacity and eviction
//! by heat, demand-directed placement, pins, copies in flight.

use super::*;
use crate::policy::{Outcome, Tier};

const MIB: u64 = 1 << 20;
const S: u64 = 1_000_000_000;

/// A cluster view and the policy; decisions are carried out at once (copies and drops finish
/// in the step that decided them) unless `hold` says to keep them in flight.
struct Rig {
    p: Placement,
    view: ClusterView,
    now_ns: u64,
    log: Vec<(u64, PlacementDecision)>,
    hold: bool,
    held: Vec<PlacementDecision>,
}

/// Node 0 is a library (secondary, holds every asset there); nodes 1.. are edges.
fn rig(cfg: PlacementConfig, edges: usize, primary_bytes: u64) -> Rig {
    let mut nodes = vec![NodeView {
        id: 0,
        name: "library".into(),
        up: true,
        has_secondary: true,
        primary_capacity_bytes: primary_bytes,
        primary_used_bytes: 0,
        load_bytes_per_s: 0.0,
    }];
    for e in 1..=edges {
        nodes.push(NodeView {
            id: e as NodeId,
            name: format!("edge{e}"),
            has_secondary: false,
            ..nodes[0].clone()
        });
    }
    Rig {
        p: Placement::new(cfg).expect("valid config"),
        view: ClusterView {
            nodes,
            assets: Vec::new(),
        },
        now_ns: 0,
        log: Vec::new(),
        hold: false,
        held: Vec::new(),
    }
}

/// Settings that make the copy count easy to read: one copy per 100 MiB/s of traffic.
fn cfg() -> PlacementConfig {
    PlacementConfig {
        copy_serve_bytes_per_s: 100 * MIB,
        min_residency_s: 60.0,
        cooldown_s: 300.0,
        ..PlacementConfig::default()
    }
}

/// The rate (views/h) at which an asset of `size` asks for `copies` copies' worth of traffic.
fn rate_for(copies: f64, size: u64) -> f64 {
    copies * 100.0 * MIB as f64 * 3600.0 / size as f64
}

impl Rig {
    /// An asset on the library's secondary (and on the given primaries).
    fn add(&mut self, key: AssetKey, size: u64, rate_per_h: f64, primaries: &[NodeId]) {
        let mut copies = vec![CopyView {
            node: 0,
            tier: Tier::Secondary,
            since_ns: 0,
        }];
        for &n in primaries {
            copies.push(CopyView {
                node: n,
                tier: Tier::Primary,
                since_ns: self.now_ns,
            });
            self.view.nodes[n as usize].primary_used_bytes += size;
        }
        self.view.assets.push(AssetView {
            key,
            size_bytes: size,
            rate_per_h,
            demand_per_h: Vec::new(),
            copies,
            overrides: AssetPlacement::default(),
        });
    }

    fn asset(&mut self, key: AssetKey) -> &mut AssetView {
        self.view
            .assets
            .iter_mut()
            .find(|a| a.key == key)
            .expect("asset in the view")
    }

    fn primaries(&self, key: AssetKey) -> Vec<NodeId> {
        let a = self
            .view
            .assets
            .iter()
            .find(|a| a.key == key)
            .expect("asset");
        let mut v: Vec<NodeId> = a
            .copies
            .iter()
            .filter(|c| c.tier == Tier::Primary)
            .map(|c| c.node)
            .collect();
        v.sort_unstable();
        v
    }

    fn apply(&mut self, d: PlacementDecision) {
        match d {
            PlacementDecision::Copy {
                asset,
                to_node,
                bytes,
                ..
            } => {
                let now = self.now_ns;
                self.asset(asset).copies.push(CopyView {
                    node: to_node,
                    tier: Tier::Primary,
                    since_ns: now,
                });
                self.view.nodes[to_node as usize].primary_used_bytes += bytes;
            }
            PlacementDecision::Drop {
                asset, node, bytes, ..
            } => {
                self.asset(asset)
                    .copies
                    .retain(|c| !(c.node == node && c.tier == Tier::Primary));
                self.view.nodes[node as usize].primary_used_bytes -= bytes;
            }
        }
        assert!(self
            .p
            .finished(self.now_ns, d.asset(), d.node(), Outcome::Done));
    }

    /// Advances the clock, ticks, carries out the decisions; returns them.
    fn step(&mut self, dt_s: f64) -> Vec<PlacementDecision> {
        self.now_ns += (dt_s * 1e9) as u64;
        let mut out = Vec::new();
        self.p.tick(self.now_ns, &self.view, &mut out);
        for &d in &out {
            self.log.push((self.now_ns, d));
            if self.hold {
                self.held.push(d);
            } else {
                self.apply(d);
            }
        }
        for n in &self.view.nodes {
            assert!(
                n.primary_used_bytes <= n.primary_capacity_bytes,
                "node {} over capacity",
                n.id
            );
        }
        out
    }

    fn run(&mut self, seconds: f64, dt_s: f64) {
        let steps = (seconds / dt_s).round() as usize;
        for _ in 0..steps {
            self.step(dt_s);
        }
    }

    fn drops_of(&self, key: AssetKey) -> Vec<(u64, NodeId, PlacementReason)> {
        self.log
            .iter()
            .filter_map(|&(t, d)| match d {
                PlacementDecision::Drop {
                    asset,
                    node,
                    reason,
                    ..
                } if asset == key => Some((t, node, reason)),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_hot_asset_grows_then_shrinks_after_the_cool_down() {
    let mut r = rig(cfg(), 4, 10_000 * MIB);
    let size = 1000 * MIB;
    r.add(1, size, rate_for(3.5, size), &[]);
    r.step(1.0);
    assert_eq!(r.primaries(1).len(), 4, "ceil(3.5) = 4 copies");
    assert!(r
        .log
        .iter()
        .any(|(_, d)| d.reason() == PlacementReason::FirstCopy));
    assert!(r
        .log
        .iter()
        .any(|(_, d)| d.reason() == PlacementReason::Hot));

    // Cools to 1.2 copies' worth: keeps 4 while 3 ≥ ceil(1.2 × 1.5) = 2 … drops to 2.
    r.asset(1).rate_per_h = rate_for(1.2, size);
    let cooled_at = r.now_ns;
    r.run(290.0, 10.0);
    assert_eq!(
        r.primaries(1).len(),
        4,
        "nothing dropped before the cool-down"
    );
    r.run(1000.0, 10.0);
    assert_eq!(r.primaries(1).len(), 2, "ceil(1.2 × 1.5) = 2 kept");
    let drops = r.drops_of(1);
    assert_eq!(drops.len(), 2);
    for (k, &(t, _, reason)) in drops.iter().enumerate() {
        assert_eq!(reason, PlacementReason::Cooled);
        // One drop per cool-down: the first 300 s after it cooled, the next 300 s later.
        assert!(t - cooled_at >= (k as u64 + 1) * 300 * S, "drop {k} at {t}");
    }
    // Cold: one primary copy stays (the duplicate goes, the first copy is not a duplicate).
    r.asset(1).rate_per_h = 0.0;
    r.run(2000.0, 10.0);
    assert_eq!(r.primaries(1).len(), 1);
}

#[test]
fn no_thrash_around_a_boundary() {
    let mut r = rig(cfg(), 4, 10_000 * MIB);
    let size = 1000 * MIB;
    r.add(1, size, rate_for(1.9, size), &[]);
    r.step(1.0);
    assert_eq!(r.primaries(1).len(), 2);
    // The traffic swings between 0.7 and 2.0 copies' worth every 30 s for 3 hours: inside the
    // hysteresis band (grow above 2, shrink to 1 below 2/1.5 = 0.67), nothing moves.
    for i in 0..360 {
        let c = if i % 2 == 0 { 0.7 } else { 2.0 };
        r.asset(1).rate_per_h = rate_for(c, size);
        r.step(30.0);
    }
    assert_eq!(r.log.len(), 2, "only the first two copies: {:?}", r.log);
    // Swings across the shrink threshold (0.5 / 2.0): the drop waits for a cool-down spent
    // below it, which a 30 s swing never completes.
    for i in 0..360 {
        let c = if i % 2 == 0 { 0.5 } else { 2.0 };
        r.asset(1).rate_per_h = rate_for(c, size);
        r.step(30.0);
    }
    assert_eq!(r.log.len(), 2, "{:?}", r.log);
}

#[test]
fn never_the_last_copy() {
    // An asset on one edge's primary only (the library lost it): cold, and a hotter newcomer
    // wants the room. It is never dropped.
    let mut r = rig(cfg(), 2, 1000 * MIB);
    let size = 600 * MIB;
    r.view.assets.push(AssetView {
        key: 1,
        size_bytes: size,
        rate_per_h: 0.0,
        demand_per_h: vec![(1, 0.0)],
        copies: vec![CopyView {
            node: 1,
            tier: Tier::Primary,
            since_ns: 0,
        }],
        overrides: AssetPlacement::default(),
    });
    r.view.nodes[1].primary_used_bytes = size;
    r.add(2, size, 50.0, &[]);
    r.asset(2).demand_per_h = vec![(1, 50.0)];
    // Fill the other nodes so node 1 is the only place for asset 2.
    r.view.nodes[0].primary_capacity_bytes = 0;
    r.view.nodes[2].primary_capacity_bytes = 0;
    r.run(3600.0, 10.0);
    assert_eq!(r.primaries(1), vec![1]);
    assert!(r.drops_of(1).is_empty());
    // The same with its holder's sibling copy on a down node: a down node's copy does not
    // count, so the up one is still the last.
    r.view.nodes[2].primary_capacity_bytes = 1000 * MIB;
    r.asset(1).copies.push(CopyView {
        node: 2,
        tier: Tier::Primary,
        since_ns: 0,
    });
    r.view.nodes[2].primary_used_bytes = size;
    r.view.nodes[2].up = false;
    r.run(3600.0, 10.0);
    assert!(r.drops_of(1).is_empty(), "{:?}", r.log);
}

#[test]
fn min_copies_are_restored_from_survivors_when_a_node_goes_down() {
    let mut r = rig(cfg(), 3, 10_000 * MIB);
    let size = 100 * MIB;
    // Cold (no growth), min 2 copies: on the library's secondary and edge 1.
    r.add(1, size, 0.0, &[1]);
    r.asset(1).overrides.min_copies = Some(2);
    r.run(600.0, 10.0);
    assert!(r.log.is_empty(), "two holders: nothing to do: {:?}", r.log);
    r.view.nodes[1].up = false;
    let out = r.step(10.0);
    assert_eq!(out.len(), 1, "{out:?}");
    match out[0] {
        PlacementDecision::Copy {
            asset,
            to_node,
            from_node,
            reason,
            ..
        } => {
            assert_eq!(asset, 1);
            assert_eq!(reason, PlacementReason::MinCopies);
            assert_eq!(from_node, 0, "the surviving holder");
            assert!(
                to_node == 2 || to_node == 3,
                "a node without a copy: {to_node}"
            );
        }
        d => panic!("expected a copy, got {d:?}"),
    }
    r.run(600.0, 10.0);
    assert_eq!(r.log.len(), 1, "restored once: {:?}", r.log);
    // The library goes down too: edge 1 is down, the new copy is the only holder; another copy
    // is made from it.
    r.view.nodes[0].up = false;
    let out = r.step(10.0);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(matches!(
        out[0],
        PlacementDecision::Copy {
            reason: PlacementReason::MinCopies,
            ..
        }
    ));
    assert_ne!(out[0].node(), 0);
    assert_ne!(out[0].node(), 1);
}

#[test]
fn a_colder_copy_makes_room_for_a_hotter_one_never_the_reverse() {
    // One edge with room for one asset; the library has no primary.
    let mut r = rig(cfg(), 1, 1000 * MIB);
    r.view.nodes[0].primary_capacity_bytes = 0;
    let size = 800 * MIB;
    r.add(1, size, 10.0, &[1]);
    // Past the minimum residency.
    r.run(120.0, 10.0);
    assert!(r.log.is_empty());
    // A colder newcomer (8 /h, not 10 × 1.25) waits, forever.
    r.add(2, size, 8.0, &[]);
    r.run(3600.0, 10.0);
    assert_eq!(r.primaries(1), vec![1]);
    assert!(r.primaries(2).is_empty());
    assert!(r.log.is_empty(), "{:?}", r.log);
    // Only a little hotter (12 /h < 12.5): still not.
    r.asset(2).rate_per_h = 12.0;
    r.run(600.0, 10.0);
    assert!(r.log.is_empty(), "{:?}", r.log);
    // Hotter by the margin: the cold copy is evicted, then the newcomer copied in.
    r.asset(2).rate_per_h = 13.0;
    let first = r.step(10.0);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(matches!(
        first[0],
        PlacementDecision::Drop {
            asset: 1,
            node: 1,
            reason: PlacementReason::Evicted,
            ..
        }
    ));
    let second = r.step(10.0);
    assert!(matches!(
        second[..],
        [PlacementDecision::Copy {
            asset: 2,
            to_node: 1,
            from_node: 0,
            ..
        }]
    ));
    // And now the first asset, at 10 /h, cannot take the room back from the 13 /h one.
    r.run(3600.0, 10.0);
    assert_eq!(r.primaries(2), vec![1]);
    assert_eq!(r.log.len(), 2, "{:?}", r.log);
}

#[test]
fn copies_go_where_the_clients_ask() {
    let mut r = rig(cfg(), 4, 10_000 * MIB);
    let size = 1000 * MIB;
    r.add(1, size, rate_for(1.8, size), &[]);
    r.asset(1).demand_per_h = vec![(2, 10.0), (3, 100.0), (4, 40.0)];
    r.step(1.0);
    assert_eq!(r.primaries(1), vec![3, 4], "the two edges asking most");
    // Ties in demand: the least-loaded node first.
    r.add(2, size, rate_for(0.5, size), &[]);
    r.asset(2).demand_per_h = vec![(1, 20.0), (2, 20.0)];
    r.view.nodes[1].load_bytes_per_s = 5e8;
    r.view.nodes[2].load_bytes_per_s = 1e8;
    r.step(1.0);
    assert_eq!(r.primaries(2), vec![2]);
    // A cooled duplicate goes from the node that asks least.
    r.asset(1).rate_per_h = rate_for(0.3, size);
    r.run(1200.0, 10.0);
    assert_eq!(r.primaries(1), vec![3]);
}

#[test]
fn copies_in_flight_count_against_capacity_and_the_budget() {
    let cfg = PlacementConfig {
        copies_per_tick_max: 2,
        copies_in_flight_max: 3,
        ..cfg()
    };
    // One edge with room for 5 × 100 MiB, the library without primary.
    let mut r = rig(cfg, 1, 500 * MIB);
    r.view.nodes[0].primary_capacity_bytes = 0;
    for k in 0..10 {
        r.add(k, 100 * MIB, 100.0 - f64::from(k), &[]);
    }
    r.hold = true;
    assert_eq!(r.step(1.0).len(), 2, "two per tick");
    assert_eq!(r.step(1.0).len(), 1, "three in flight at most");
    assert!(r.step(1.0).is_empty());
    // The hottest first.
    let keys: Vec<AssetKey> = r.held.iter().map(|d| d.asset()).collect();
    assert_eq!(keys, vec![0, 1, 2]);
    for d in std::mem::take(&mut r.held) {
        r.apply(d);
    }
    r.hold = false;
    r.run(10.0, 1.0);
    // Room for five: two more, and never over capacity (checked by every step).
    let placed: Vec<AssetKey> = (0..10).filter(|&k| !r.primaries(k).is_empty()).collect();
    assert_eq!(placed, vec![0, 1, 2, 3, 4]);
}

#[test]
fn a_failed_copy_backs_off_and_an_unknown_end_changes_nothing() {
    let mut r = rig(cfg(), 1, 1000 * MIB);
    r.view.nodes[0].primary_capacity_bytes = 0;
    r.add(1, 100 * MIB, 50.0, &[]);
    r.hold = true;
    let out = r.step(1.0);
    assert_eq!(out.len(), 1);
    assert!(r.p.finished(r.now_ns, 1, 1, Outcome::Failed));
    assert!(
        !r.p.finished(r.now_ns, 1, 1, Outcome::Done),
        "already ended"
    );
    assert!(
        !r.p.finished(r.now_ns, 7, 1, Outcome::Done),
        "never decided"
    );
    r.held.clear();
    assert!(r.step(30.0).is_empty(), "backing off");
    assert_eq!(r.step(31.0).len(), 1, "retried after the backoff");
    assert_eq!(r.p.stats().copies_failed, 1);
}

#[test]
fn pinned_nodes_hold_a_copy_that_is_never_dropped() {
    let mut r = rig(cfg(), 2, 1000 * MIB);
    r.view.nodes[0].primary_capacity_bytes = 0;
    let size = 800 * MIB;
    // Edge 2 is full of a hot asset; a cold asset pinned to edge 2 evicts it regardless.
    r.add(1, size, 1000.0, &[2]);
    r.run(120.0, 10.0);
    r.add(2, size, 0.0, &[]);
    r.asset(2).overrides.pin_nodes = vec!["edge2".into()];
    r.run(60.0, 10.0);
    assert_eq!(r.primaries(2), vec![2]);
    // Asset 1 moved to edge 1 (still hot, it has room there).
    assert_eq!(r.primaries(1), vec![1]);
    // Hot asset 1 cannot evict the pinned copy back.
    r.asset(1).rate_per_h = 1e6;
    r.run(3600.0, 10.0);
    assert_eq!(r.primaries(2), vec![2]);
    assert!(r.drops_of(2).is_empty());
}

#[test]
fn same_views_same_decisions_whatever_the_asset_order() {
    let build = |reverse: bool| {
        let mut r = rig(cfg(), 3, 3000 * MIB);
        for k in 0..40u32 {
            let size = (50 + u64::from(k * 37 % 11) * 40) * MIB;
            r.add(k, size, f64::from((k * 7919) % 97) * 3.0, &[]);
            r.asset(k).demand_per_h = vec![(1 + (k % 3) as NodeId, 5.0)];
        }
        if reverse {
            r.view.assets.reverse();
        }
        for i in 0..100u32 {
            for a in &mut r.view.assets {
                a.rate_per_h = f64::from((a.key * 31 + i * 17) % 97) * 3.0;
            }
            r.step(60.0);
        }
        r.log
    };
    let a = build(false);
    assert!(a.len() > 20, "{}", a.len());
    assert_eq!(a, build(true));
}

#[test]
fn settings_are_checked() {
    for bad in [
        PlacementConfig {
            max_primary_copies: 0,
            ..PlacementConfig::default()
        },
        PlacementConfig {
            min_copies: 0,
            ..PlacementConfig::default()
        },
        PlacementConfig {
            hysteresis: 0.5,
            ..PlacementConfig::default()
        },
        PlacementConfig {
            cooldown_s: f64::NAN,
            ..PlacementConfig::default()
        },
    ] {
        assert!(Placement::new(bad).is_err());
    }
    let o: AssetPlacement =
        serde_json::from_str(r#"{"min_copies":2,"pin_nodes":["edge1"]}"#).expect("parses");
    assert_eq!(o.min_copies, Some(2));
    assert!(o.validate().is_ok());
    assert_eq!(
        serde_json::to_string(&o).expect("serializes"),
        r#"{"min_copies":2,"pin_nodes":["edge1"]}"#
    );
    assert!(serde_json::from_str::<AssetPlacement>(r#"{"copies":2}"#).is_err());
}

#[test]
fn a_down_node_neither_counts_nor_loses_its_copy() {
    let mut r = rig(cfg(), 3, 10_000 * MIB);
    let size = 100 * MIB;
    // Cold, with primaries on all three edges; edge 2 is down.
    r.add(1, size, 0.0, &[1, 2, 3]);
    r.view.nodes[2].up = false;
    r.run(3600.0, 10.0);
    // The two up copies shrink to one; the down node's copy is not touched (its node decides
    // nothing until it is back), and it does not count towards the asset's copies.
    let drops = r.drops_of(1);
    assert_eq!(drops.len(), 1, "{drops:?}");
    assert_ne!(drops[0].1, 2);
    assert_eq!(r.primaries(1).len(), 2, "one up copy and the down node's");
    // Back up, it is a duplicate again and goes after a cool-down.
    r.view.nodes[2].up = true;
    r.run(3600.0, 10.0);
    assert_eq!(r.primaries(1).len(), 1);
}

//! `reel simulate --cluster`: the placement policy ([`Placement`]) on a simulated cluster,
//! next to two static baselines, on the same trace.
//!
//! **The cluster.** Node 0 is the library: its secondary holds every asset (new releases are
//! uploaded there at their release time) and it has a primary too; nodes 1..=edges are edges
//! (primary only). Every client belongs to an edge; edge `e`'s population is weighted
//! `edges + 1 − e` (4 edges: 40 %, 30 %, 20 %, 10 % of the requests). Primaries start empty.
//!
//! **The trace** ([`cluster_trace`]): the synthetic Zipf trace of `reel simulate` (churn, new
//! releases) gives the times, the global popularity and the sizes; each request is given to an
//! edge by population, and a share `locality` of each edge's requests is re-drawn from that
//! edge's own Zipf ranking over the initial library (regional taste, steady).
//!
//! **Routing**, as the manager's: the client's edge serves from its own primary; else it relays
//! from the least-loaded node holding the asset on primary (load: bytes read per second, the
//! last tick's plus this tick's so far); else from the library's secondary. A request is a
//! primary hit when its bytes come from a primary (local or relayed); relayed bytes are those
//! read on another node than the client's edge.
//!
//! **Contenders**, at the same primary capacities:
//! - *policy*: [`Placement`] ticks every `tick_s` over a view with decaying rates (half-life
//!   `half_life_s`) and per-edge demand; its copies move over one link per destination at
//!   `copy_link_bytes_per_s` and serve once finished; drops are immediate.
//! - *Open Connect* (static, popularity-proportional): at the start of every simulated day,
//!   each asset gets `clamp(ceil(traffic / copy_serve), 1, max)` copies by the previous day's
//!   requests (the first day by its own: a day-ahead oracle), placed greedily, most viewed
//!   first, each copy on the node asking most for it that has room; instant. Releases wait for
//!   the next day.
//! - *Traffic Control* (consistent hashing, fixed spread `spread`): each asset hashes to
//!   `spread` nodes on a ring (100 virtual nodes per node); a client's request goes to its own
//!   edge if that is one of them, else to one chosen by its edge; each node's primary is an
//!   LRU cache filled on a miss from the library's secondary (instant).
//!
//! Copy traffic is bytes written to primaries (copies, daily placements, cache fills) ÷ bytes
//! served. Load balance is the most bytes read on one node (any tier) ÷ the mean over nodes.

use std::collections::BTreeMap;

use serde::Serialize;

use super::trace::{zipf_cdf, zipf_rank};
use super::{ratio, zipf_trace, SimRng, Trace, ZipfSpec, NEVER};
use crate::placement::{
    AssetPlacement, AssetView, ClusterView, CopyView, NodeId, NodeView, Placement, PlacementConfig,
    PlacementDecision,
};
use crate::policy::{Outcome, PolicyError, Tier};

/// The simulated cluster and its workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterSpec {
    /// The global workload (times, popularity, churn, releases, sizes, seed).
    pub zipf: ZipfSpec,
    pub edges: u16,
    /// Share of each edge's requests drawn from its own regional ranking.
    pub locality: f64,
    /// Each edge's primary, as a fraction of the library's bytes.
    pub edge_primary_fraction: f64,
    /// The library's primary, as a fraction of the library's bytes.
    pub library_primary_fraction: f64,
    /// Half-life of the rates in the policy's view, seconds.
    pub half_life_s: f64,
    /// Simulated seconds between placement ticks.
    pub tick_s: f64,
    /// One copy link per destination node, bytes per second.
    pub copy_link_bytes_per_s: f64,
    /// Consistent hashing's replicas per asset.
    pub spread: u16,
    /// The policy under test; Open Connect uses its `copy_serve_bytes_per_s` and
    /// `max_primary_copies` too.
    pub placement: PlacementConfig,
}

impl Default for ClusterSpec {
    fn default() -> ClusterSpec {
        ClusterSpec {
            zipf: ZipfSpec::default(),
            edges: 4,
            locality: 0.3,
            edge_primary_fraction: 0.05,
            library_primary_fraction: 0.05,
            half_life_s: 3600.0,
            tick_s: 10.0,
            copy_link_bytes_per_s: 256.0 * 1048576.0,
            spread: 2,
            placement: PlacementConfig::default(),
        }
    }
}

/// A trace whose requests each come from an edge's clients.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterTrace {
    pub trace: Trace,
    /// The client's edge (a node id, 1..=edges) of each request.
    pub edge_of: Vec<NodeId>,
}

/// Generates the workload of `spec`, deterministically from its seed.
pub fn cluster_trace(spec: &ClusterSpec) -> ClusterTrace {
    let mut trace = zipf_trace(&spec.zipf);
    let mut rng = SimRng::new(spec.zipf.seed ^ 0xC1A5_7E12);
    let edges = usize::from(spec.edges.max(1));
    let initial: Vec<u32> = (0..trace.assets.len() as u32)
        .filter(|&a| trace.assets[a as usize].release_ns.is_none())
        .collect();
    let regional: Vec<Vec<u32>> = (0..edges)
        .map(|_| {
            let mut p = initial.clone();
            for i in (1..p.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                p.swap(i, j);
            }
            p
        })
        .collect();
    let cdf = zipf_cdf(initial.len().max(1), spec.zipf.alpha);
    let weights: Vec<f64> = (0..edges).map(|e| (edges - e) as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut edge_of = Vec::with_capacity(trace.requests.len());
    for r in &mut trace.requests {
        let mut u = rng.f64() * total;
        let mut e = 0;
        while e + 1 < edges && u >= weights[e] {
            u -= weights[e];
            e += 1;
        }
        edge_of.push(e as NodeId + 1);
        if !initial.is_empty() && rng.f64() < spec.locality {
            let a = regional[e][zipf_rank(&cdf, &mut rng)];
            let s = trace.assets[a as usize].size_bytes;
            r.asset = a;
            r.bytes = if rng.f64() < spec.zipf.whole_fraction {
                s
            } else {
                ((s as f64 * (0.02 + 0.98 * rng.f64())) as u64).clamp(1, s)
            };
        }
    }
    ClusterTrace { trace, edge_of }
}

/// One contender's run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterRun {
    /// Bytes read from a primary (local or relayed) ÷ bytes requested.
    pub byte_hit_ratio: f64,
    /// Bytes read on another node than the client's edge ÷ bytes requested.
    pub relayed_share: f64,
    /// Bytes written to primaries ÷ bytes requested.
    pub copy_ratio: f64,
    /// Most bytes read on one node ÷ the mean over nodes.
    pub load_max_over_mean: f64,
    /// Bytes read on each node (any tier), node 0 the library.
    pub node_read_bytes: Vec<u64>,
    pub copies: u64,
    pub drops: u64,
    /// Steps where a node's primary held more than its capacity. Must be 0.
    pub capacity_violations: u64,
    /// Drops of an asset's last copy. Must be 0.
    pub last_copy_drops: u64,
}

/// Everything `reel simulate --cluster` measured on one trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterReport {
    pub assets: u64,
    pub requests: u64,
    pub duration_s: f64,
    pub library_bytes: u64,
    pub requested_bytes: u64,
    pub edge_primary_bytes: u64,
    pub library_primary_bytes: u64,
    pub spec: ClusterSpec,
    pub policy: ClusterRun,
    pub open_connect: ClusterRun,
    pub consistent_hashing: ClusterRun,
}

/// Runs the three contenders over `ct`.
pub fn simulate_cluster(
    ct: &ClusterTrace,
    spec: &ClusterSpec,
) -> Result<ClusterReport, PolicyError> {
    spec.placement.validate()?;
    let caps = capacities(&ct.trace, spec);
    let policy = run_placement(ct, spec, &caps)?;
    let open_connect = run_open_connect(ct, spec, &caps);
    let consistent_hashing = run_consistent_hashing(ct, spec, &caps);
    Ok(ClusterReport {
        assets: ct.trace.assets.len() as u64,
        requests: ct.trace.requests.len() as u64,
        duration_s: ct.trace.duration_s(),
        library_bytes: ct.trace.library_bytes(),
        requested_bytes: ct.trace.requested_bytes(),
        edge_primary_bytes: caps.get(1).copied().unwrap_or(0),
        library_primary_bytes: caps[0],
        spec: spec.clone(),
        policy,
        open_connect,
        consistent_hashing,
    })
}

fn capacities(trace: &Trace, spec: &ClusterSpec) -> Vec<u64> {
    let lib = trace.library_bytes() as f64;
    let mut caps = vec![(lib * spec.library_primary_fraction.clamp(0.0, 1.0)) as u64];
    caps.extend((0..spec.edges).map(|_| (lib * spec.edge_primary_fraction.clamp(0.0, 1.0)) as u64));
    caps
}

/// What every contender keeps: primaries, bytes read, the tallies.
struct Cluster {
    caps: Vec<u64>,
    used: Vec<u64>,
    /// `on[node][asset]`: a primary copy that serves.
    on: Vec<Vec<bool>>,
    read: Vec<u64>,
    /// Bytes read per node since the last tick, and a smoothed rate (bytes/s).
    read_tick: Vec<u64>,
    load: Vec<f64>,
    tick_s: f64,
    hit_bytes: u64,
    relayed_bytes: u64,
    all_bytes: u64,
    copy_bytes: u64,
    run: ClusterRun,
}

impl Cluster {
    fn new(caps: &[u64], assets: usize, tick_s: f64) -> Cluster {
        let n = caps.len();
        Cluster {
            caps: caps.to_vec(),
            used: vec![0; n],
            on: vec![vec![false; assets]; n],
            read: vec![0; n],
            read_tick: vec![0; n],
            load: vec![0.0; n],
            tick_s,
            hit_bytes: 0,
            relayed_bytes: 0,
            all_bytes: 0,
            copy_bytes: 0,
            run: ClusterRun {
                byte_hit_ratio: 0.0,
                relayed_share: 0.0,
                copy_ratio: 0.0,
                load_max_over_mean: 0.0,
                node_read_bytes: Vec::new(),
                copies: 0,
                drops: 0,
                capacity_violations: 0,
                last_copy_drops: 0,
            },
        }
    }

    fn live_load(&self, n: usize) -> f64 {
        self.load[n] + self.read_tick[n] as f64 / self.tick_s
    }

    /// Reads `bytes` on `node` for a client of `edge`.
    fn serve(&mut self, node: usize, edge: usize, bytes: u64, primary: bool) {
        self.all_bytes += bytes;
        self.read[node] += bytes;
        self.read_tick[node] += bytes;
        if primary {
            self.hit_bytes += bytes;
        }
        if node != edge {
            self.relayed_bytes += bytes;
        }
    }

    /// The manager's routing: local primary, else the least-loaded primary holder, else the
    /// library's secondary.
    fn route(&mut self, asset: usize, edge: usize, bytes: u64) {
        if self.on[edge][asset] {
            return self.serve(edge, edge, bytes, true);
        }
        let holder = (0..self.on.len())
            .filter(|&n| self.on[n][asset])
            .min_by(|&x, &y| {
                self.live_load(x)
                    .total_cmp(&self.live_load(y))
                    .then(x.cmp(&y))
            });
        match holder {
            Some(h) => self.serve(h, edge, bytes, true),
            None => self.serve(0, edge, bytes, false),
        }
    }

    /// Folds this tick's reads into the smoothed load (a few ticks' memory).
    fn fold_load(&mut self) {
        for n in 0..self.load.len() {
            let now = self.read_tick[n] as f64 / self.tick_s;
            self.load[n] = 0.5 * self.load[n] + 0.5 * now;
            self.read_tick[n] = 0;
        }
    }

    fn add(&mut self, node: usize, asset: usize, size: u64) {
        if !self.on[node][asset] {
            self.on[node][asset] = true;
            self.used[node] += size;
            self.copy_bytes += size;
            self.run.copies += 1;
            if self.used[node] > self.caps[node] {
                self.run.capacity_violations += 1;
            }
        }
    }

    fn remove(&mut self, node: usize, asset: usize, size: u64) {
        if self.on[node][asset] {
            self.on[node][asset] = false;
            self.used[node] -= size;
            self.run.drops += 1;
        }
    }

    fn finish(mut self) -> ClusterRun {
        let all = self.all_bytes as f64;
        self.run.byte_hit_ratio = ratio(self.hit_bytes as f64, all).min(1.0);
        self.run.relayed_share = ratio(self.relayed_bytes as f64, all);
        self.run.copy_ratio = ratio(self.copy_bytes as f64, all);
        let max = self.read.iter().copied().max().unwrap_or(0) as f64;
        let mean = self.read.iter().sum::<u64>() as f64 / self.read.len().max(1) as f64;
        self.run.load_max_over_mean = ratio(max, mean);
        self.run.node_read_bytes = self.read;
        self.run
    }
}

/// Decaying rates as the manager's view holds them: views per hour.
fn fold_rate(rate: &mut f64, views: f64, decay: f64, per_view: f64) {
    *rate = *rate * decay + views * per_view;
}

fn run_placement(
    ct: &ClusterTrace,
    spec: &ClusterSpec,
    caps: &[u64],
) -> Result<ClusterRun, PolicyError> {
    let trace = &ct.trace;
    let n_assets = trace.assets.len();
    let edges = usize::from(spec.edges);
    let mut placement = Placement::new(spec.placement.clone())?;
    let tick_ns = ((spec.tick_s.max(1e-3)) * 1e9) as u64;
    let mut c = Cluster::new(caps, n_assets, spec.tick_s.max(1e-3));
    let mut view = ClusterView {
        nodes: caps
            .iter()
            .enumerate()
            .map(|(i, &cap)| NodeView {
                id: i as NodeId,
                name: if i == 0 {
                    "library".into()
                } else {
                    format!("edge{i}")
                },
                up: true,
                has_secondary: i == 0,
                primary_capacity_bytes: cap,
                primary_used_bytes: 0,
                load_bytes_per_s: 0.0,
            })
            .collect(),
        assets: Vec::new(),
    };
    // The view's position of each asset (assets enter it at their release, in key order).
    let mut pos: Vec<usize> = vec![usize::MAX; n_assets];
    let enter = |view: &mut ClusterView, pos: &mut Vec<usize>, a: usize, at_ns: u64| {
        pos[a] = view.assets.len();
        view.assets.push(AssetView {
            key: a as u32,
            size_bytes: trace.assets[a].size_bytes,
            rate_per_h: 0.0,
            demand_per_h: (1..=edges).map(|e| (e as NodeId, 0.0)).collect(),
            copies: vec![CopyView {
                node: 0,
                tier: Tier::Secondary,
                since_ns: at_ns,
            }],
            overrides: AssetPlacement::default(),
        });
    };
    for (a, asset) in trace.assets.iter().enumerate() {
        if asset.release_ns.is_none() {
            enter(&mut view, &mut pos, a, 0);
        }
    }
    let releases = trace.releases();
    let mut next_release = 0usize;
    // Views since the last tick, per asset and per (asset, edge).
    let mut views = vec![0.0f64; n_assets];
    let mut demand = vec![0.0f64; n_assets * edges];
    let decay = 0.5f64.powf(spec.tick_s / spec.half_life_s);
    let per_view = std::f64::consts::LN_2 * 3600.0 / spec.half_life_s;
    // Copies in flight: (finish_ns, seq) → (asset, node); one link per destination.
    let mut copies: BTreeMap<(u64, u64), (usize, NodeId)> = BTreeMap::new();
    let mut link_free_ns = vec![0u64; caps.len()];
    let mut seq = 0u64;
    let mut out: Vec<PlacementDecision> = Vec::new();
    let mut next_tick_ns = 0u64;
    for (i, r) in trace.requests.iter().enumerate() {
        loop {
            let copy_ns = copies.keys().next().map_or(NEVER, |k| k.0);
            let release_ns = releases.get(next_release).map_or(NEVER, |x| x.0);
            let due = copy_ns.min(next_tick_ns).min(release_ns);
            if due > r.at_ns {
                break;
            }
            if copy_ns == due {
                let Some((_, (a, node))) = copies.pop_first() else {
                    break;
                };
                let size = trace.assets[a].size_bytes;
                c.add(usize::from(node), a, size);
                let v = &mut view.assets[pos[a]];
                v.copies.push(CopyView {
                    node,
                    tier: Tier::Primary,
                    since_ns: due,
                });
                view.nodes[usize::from(node)].primary_used_bytes += size;
                placement.finished(due, a as u32, node, Outcome::Done);
            } else if release_ns == due {
                let (t, a) = releases[next_release];
                next_release += 1;
                enter(&mut view, &mut pos, a as usize, t);
            } else {
                c.fold_load();
                for (n, node) in view.nodes.iter_mut().enumerate() {
                    node.load_bytes_per_s = c.load[n];
                }
                for v in &mut view.assets {
                    let a = v.key as usize;
                    fold_rate(&mut v.rate_per_h, views[a], decay, per_view);
                    views[a] = 0.0;
                    for (e, d) in v.demand_per_h.iter_mut().enumerate() {
                        fold_rate(&mut d.1, demand[a * edges + e], decay, per_view);
                        demand[a * edges + e] = 0.0;
                    }
                }
                out.clear();
                placement.tick(due, &view, &mut out);
                for d in &out {
                    match *d {
                        PlacementDecision::Copy {
                            asset,
                            to_node,
                            bytes,
                            ..
                        } => {
                            let to = usize::from(to_node);
                            let took =
                                (bytes as f64 / spec.copy_link_bytes_per_s.max(1.0) * 1e9) as u64;
                            let start = link_free_ns[to].max(due);
                            link_free_ns[to] = start + took.max(1);
                            seq += 1;
                            copies.insert((link_free_ns[to], seq), (asset as usize, to_node));
                        }
                        PlacementDecision::Drop { asset, node, .. } => {
                            let a = asset as usize;
                            let size = trace.assets[a].size_bytes;
                            let v = &mut view.assets[pos[a]];
                            v.copies
                                .retain(|cp| !(cp.node == node && cp.tier == Tier::Primary));
                            if v.copies.is_empty() {
                                c.run.last_copy_drops += 1;
                            }
                            c.remove(usize::from(node), a, size);
                            view.nodes[usize::from(node)].primary_used_bytes -= size;
                            placement.finished(due, asset, node, Outcome::Done);
                        }
                    }
                }
                next_tick_ns += tick_ns;
            }
        }
        let a = r.asset as usize;
        let e = usize::from(ct.edge_of[i]);
        let v = r.bytes as f64 / trace.assets[a].size_bytes.max(1) as f64;
        views[a] += v;
        demand[a * edges + e - 1] += v;
        c.route(a, e, r.bytes);
    }
    Ok(c.finish())
}

/// Per day: views per asset and per (asset, edge), from the requests of that day.
fn daily_views(ct: &ClusterTrace, edges: usize) -> Vec<(Vec<f64>, Vec<f64>)> {
    let trace = &ct.trace;
    let n = trace.assets.len();
    let days = (trace.duration_s() / 86_400.0).floor() as usize + 1;
    let mut out = vec![(vec![0.0; n], vec![0.0; n * edges]); days];
    for (i, r) in trace.requests.iter().enumerate() {
        let d = (r.at_ns / 86_400_000_000_000) as usize;
        let a = r.asset as usize;
        let v = r.bytes as f64 / trace.assets[a].size_bytes.max(1) as f64;
        out[d].0[a] += v;
        out[d].1[a * edges + usize::from(ct.edge_of[i]) - 1] += v;
    }
    out
}

fn run_open_connect(ct: &ClusterTrace, spec: &ClusterSpec, caps: &[u64]) -> ClusterRun {
    let trace = &ct.trace;
    let n = trace.assets.len();
    let edges = usize::from(spec.edges);
    let days = daily_views(ct, edges);
    let mut c = Cluster::new(caps, n, spec.tick_s.max(1e-3));
    let cfg = &spec.placement;
    let tick_ns = ((spec.tick_s.max(1e-3)) * 1e9) as u64;
    let mut next_tick_ns = 0u64;
    let mut day_placed = usize::MAX;
    for (i, r) in trace.requests.iter().enumerate() {
        while next_tick_ns <= r.at_ns {
            c.fold_load();
            next_tick_ns += tick_ns;
        }
        let day = (r.at_ns / 86_400_000_000_000) as usize;
        if day != day_placed {
            day_placed = day;
            // The previous day's counts; the first day's own.
            let (views, demand) = &days[day.saturating_sub(1)];
            let released_by = day as u64 * 86_400_000_000_000;
            let mut order: Vec<usize> = (0..n)
                .filter(|&a| {
                    views[a] > 0.0 && trace.assets[a].release_ns.is_none_or(|t| t <= released_by)
                })
                .collect();
            order.sort_by(|&x, &y| views[y].total_cmp(&views[x]).then(x.cmp(&y)));
            let mut want: Vec<Vec<bool>> = vec![vec![false; n]; caps.len()];
            let mut used = vec![0u64; caps.len()];
            for a in order {
                let size = trace.assets[a].size_bytes;
                let traffic = views[a] * size as f64 / 86_400.0;
                let k = ((traffic / cfg.copy_serve_bytes_per_s as f64).ceil() as u32)
                    .clamp(1, cfg.max_primary_copies) as usize;
                for _ in 0..k {
                    let node = (0..caps.len())
                        .filter(|&nd| !want[nd][a] && used[nd] + size <= caps[nd])
                        .max_by(|&x, &y| {
                            let d = |nd: usize| {
                                if nd == 0 {
                                    0.0
                                } else {
                                    demand[a * edges + nd - 1]
                                }
                            };
                            d(x).total_cmp(&d(y))
                                .then(used[y].cmp(&used[x]))
                                .then(y.cmp(&x))
                        });
                    let Some(nd) = node else { break };
                    want[nd][a] = true;
                    used[nd] += size;
                }
            }
            // Drops first, then the new copies: a node never holds both days' sets at once.
            for (nd, wanted) in want.iter().enumerate() {
                for (a, &w) in wanted.iter().enumerate() {
                    if !w && c.on[nd][a] {
                        c.remove(nd, a, trace.assets[a].size_bytes);
                    }
                }
            }
            for (nd, wanted) in want.iter().enumerate() {
                for (a, &w) in wanted.iter().enumerate() {
                    if w {
                        c.add(nd, a, trace.assets[a].size_bytes);
                    }
                }
            }
        }
        c.route(r.asset as usize, usize::from(ct.edge_of[i]), r.bytes);
    }
    c.finish()
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Virtual nodes per node on the ring (times its capacity over the smallest).
const VNODES: u64 = 100;

fn run_consistent_hashing(ct: &ClusterTrace, spec: &ClusterSpec, caps: &[u64]) -> ClusterRun {
    let trace = &ct.trace;
    let n = trace.assets.len();
    let mut c = Cluster::new(caps, n, spec.tick_s.max(1e-3));
    let min_cap = caps.iter().copied().filter(|&x| x > 0).min().unwrap_or(1);
    let mut ring: Vec<(u64, usize)> = Vec::new();
    for (nd, &cap) in caps.iter().enumerate() {
        if cap == 0 {
            continue;
        }
        let v = (VNODES as f64 * cap as f64 / min_cap as f64).round() as u64;
        for k in 0..v {
            ring.push((mix(((nd as u64) << 32) | k), nd));
        }
    }
    ring.sort_unstable();
    let distinct = ring
        .iter()
        .map(|x| x.1)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let spread = usize::from(spec.spread.max(1)).min(distinct.max(1));
    let owners = |a: usize| -> Vec<usize> {
        let mut out = Vec::with_capacity(spread);
        if ring.is_empty() {
            return out;
        }
        let h = mix(a as u64 ^ 0xA55E_7000_0000_0000);
        let mut i = ring.partition_point(|x| x.0 < h);
        while out.len() < spread {
            let nd = ring[i % ring.len()].1;
            if !out.contains(&nd) {
                out.push(nd);
            }
            i += 1;
        }
        out
    };
    let owner_of: Vec<Vec<usize>> = (0..n).map(owners).collect();
    // One LRU per node: stamp → asset, and each asset's stamp there.
    let mut lru: Vec<BTreeMap<u64, usize>> = vec![BTreeMap::new(); caps.len()];
    let mut stamp: Vec<Vec<u64>> = vec![vec![0; n]; caps.len()];
    let mut clock = 0u64;
    let tick_ns = ((spec.tick_s.max(1e-3)) * 1e9) as u64;
    let mut next_tick_ns = 0u64;
    for (i, r) in trace.requests.iter().enumerate() {
        while next_tick_ns <= r.at_ns {
            c.fold_load();
            next_tick_ns += tick_ns;
        }
        let a = r.asset as usize;
        let edge = usize::from(ct.edge_of[i]);
        let own = &owner_of[a];
        if own.is_empty() {
            c.serve(0, edge, r.bytes, false);
            continue;
        }
        let node = if own.contains(&edge) {
            edge
        } else {
            own[edge % own.len()]
        };
        clock += 1;
        if c.on[node][a] {
            lru[node].remove(&stamp[node][a]);
            c.serve(node, edge, r.bytes, true);
        } else {
            c.serve(0, edge, r.bytes, false);
            let size = trace.assets[a].size_bytes;
            if size > caps[node] {
                continue;
            }
            while c.used[node] + size > caps[node] {
                let Some((_, victim)) = lru[node].pop_first() else {
                    break;
                };
                c.remove(node, victim, trace.assets[victim].size_bytes);
            }
            c.add(node, a, size);
        }
        lru[node].insert(clock, a);
        stamp[node][a] = clock;
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ClusterSpec {
        ClusterSpec {
            zipf: ZipfSpec {
                assets: 400,
                requests: 40_000,
                rate_per_s: 5.0,
                churn_per_h: 0.2,
                new_releases_per_h: 0.02,
                ..ZipfSpec::default()
            },
            tick_s: 10.0,
            ..ClusterSpec::default()
        }
    }

    #[test]
    fn the_trace_spreads_requests_over_edges_by_population() {
        let spec = small();
        let ct = cluster_trace(&spec);
        assert_eq!(ct, cluster_trace(&spec));
        let mut per = [0u32; 5];
        for &e in &ct.edge_of {
            per[usize::from(e)] += 1;
        }
        assert_eq!(per[0], 0, "no client at the library");
        // 40 / 30 / 20 / 10 %.
        assert!(
            per[1] > per[2] && per[2] > per[3] && per[3] > per[4],
            "{per:?}"
        );
        let share = f64::from(per[1]) / ct.edge_of.len() as f64;
        assert!((share - 0.4).abs() < 0.02, "{share}");
    }

    #[test]
    fn every_contender_keeps_capacity_and_the_last_copy() {
        let spec = small();
        let ct = cluster_trace(&spec);
        let r = simulate_cluster(&ct, &spec).expect("valid");
        for run in [&r.policy, &r.open_connect, &r.consistent_hashing] {
            assert_eq!(run.capacity_violations, 0, "{run:?}");
            assert_eq!(run.last_copy_drops, 0);
            assert!((0.0..=1.0).contains(&run.byte_hit_ratio));
            assert!((0.0..=1.0).contains(&run.relayed_share));
            assert!(run.load_max_over_mean >= 1.0);
            assert_eq!(
                run.node_read_bytes.iter().sum::<u64>(),
                r.requested_bytes,
                "every byte read once"
            );
        }
        assert!(r.policy.copies > 0);
        assert_eq!(
            r,
            simulate_cluster(&ct, &spec).expect("valid"),
            "deterministic"
        );
    }
}

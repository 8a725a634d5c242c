//! What the cluster demo shows: each node's `/metrics` and what it holds (`GET /assets`), the
//! manager's routes by reason, a live block per second and the summary.
//!
//! Copies arriving on a node and removed from it are counted from what the node lists second
//! by second (ids new to it, ids gone), so they show whatever makes them: an upload, a copy
//! placed by the manager, a delete. Counters a node may export for copies it pulled or dropped
//! (`reel_cluster_copies_*`, the placement being built) are shown beside them once they exist.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use reel_http::client::{encode_request, Conn};

use super::load::{Counts, Group, Measured};
use crate::units::human_bytes;

/// Largest `/metrics` page or listing page read.
const BODY_MAX: u64 = 16 << 20;
/// Most listing pages read per node and scrape (1000 ids each).
const PAGES_MAX: usize = 20;

/// The route reasons, in the manager's order.
pub(super) const REASONS: [&str; 6] = [
    "local-primary",
    "relay-primary",
    "local-secondary",
    "relay-secondary",
    "primary",
    "secondary",
];

/// One GET on a kept connection (opened on first use, dropped on any failure): the body.
fn get(conn: &mut Option<Conn>, addr: SocketAddr, target: &str) -> Result<String> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(
            Conn::connect(addr, Duration::from_secs(2))
                .with_context(|| format!("connecting to {addr}"))?,
        ),
    };
    let req = encode_request("GET", "reel-demo", target, &[], None);
    let res = c
        .exchange(&req, false, BODY_MAX)
        .map_err(anyhow::Error::from);
    let r = match res {
        Ok(r) => r,
        Err(e) => {
            *conn = None;
            return Err(e);
        }
    };
    if r.head.close {
        *conn = None;
    }
    if r.head.status != 200 {
        bail!("GET {target} answered {}", r.head.status);
    }
    String::from_utf8(r.body).context("not UTF-8")
}

/// The sum of a metric over its label sets whose labels contain `label` (all when empty).
pub(super) fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| label.is_empty() || l.contains(label))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .sum()
}

/// Whether the text has a metric named `name`.
fn has_metric(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

/// A node's figures at one scrape.
#[derive(Clone, Debug, Default)]
pub(super) struct NodeFigures {
    pub(super) primary_used: u64,
    pub(super) primary_capacity: u64,
    pub(super) primary_assets: u64,
    /// `None`: the node has no secondary.
    pub(super) secondary: Option<(u64, u64, u64)>,
    pub(super) in_flight: u64,
    pub(super) tx_bytes: u64,
    pub(super) relays: u64,
    pub(super) relay_failures: u64,
    pub(super) promotions: u64,
    pub(super) demotions: u64,
    pub(super) evictions: u64,
    pub(super) write_backs: u64,
    /// Copies pulled / dropped as the node counts them, once it exports those counters.
    pub(super) copies_pulled: Option<u64>,
    pub(super) copies_dropped: Option<u64>,
}

impl NodeFigures {
    fn parse(text: &str) -> NodeFigures {
        let n = |name: &str| metric(text, name, "") as u64;
        let tier = |name: &str, t: &str| metric(text, name, &format!("tier=\"{t}\"")) as u64;
        let has_secondary = text
            .lines()
            .any(|l| l.starts_with("reel_device_capacity_bytes") && l.contains("\"secondary\""));
        let optional = |names: &[&str]| {
            names
                .iter()
                .find(|m| has_metric(text, m))
                .map(|m| metric(text, m, "") as u64)
        };
        NodeFigures {
            primary_used: tier("reel_device_used_bytes", "primary"),
            primary_capacity: tier("reel_device_capacity_bytes", "primary"),
            primary_assets: tier("reel_device_assets", "primary"),
            secondary: has_secondary.then(|| {
                (
                    tier("reel_device_used_bytes", "secondary"),
                    tier("reel_device_capacity_bytes", "secondary"),
                    tier("reel_device_assets", "secondary"),
                )
            }),
            in_flight: n("reel_requests_in_flight"),
            tx_bytes: n("reel_response_bytes_total"),
            relays: n("reel_relay_streams_total"),
            relay_failures: n("reel_relay_fetch_failures_total")
                + n("reel_relay_crc_failures_total"),
            promotions: n("reel_promotions_total"),
            demotions: n("reel_demotions_total"),
            evictions: n("reel_evictions_total"),
            write_backs: n("reel_write_backs_total"),
            copies_pulled: optional(&[
                "reel_cluster_copies_pulled_total",
                "reel_cluster_pulls_total",
                "reel_placement_copies_total",
            ]),
            copies_dropped: optional(&[
                "reel_cluster_copies_dropped_total",
                "reel_cluster_drops_total",
                "reel_placement_drops_total",
            ]),
        }
    }
}

/// One node as the view follows it.
pub(super) struct NodeWatch {
    pub(super) name: String,
    addr: SocketAddr,
    conn: Option<Conn>,
    pub(super) now: NodeFigures,
    /// Response bytes at the previous scrape, for MB/s.
    prev_tx: u64,
    /// What it held at the previous listing.
    held: Option<BTreeSet<String>>,
    pub(super) held_now: usize,
    /// Ids that appeared / disappeared since the load started.
    pub(super) arrived: u64,
    pub(super) removed: u64,
    /// Bytes per second sent at the last scrape.
    pub(super) tx_per_s: f64,
    /// The node answered its last scrape.
    pub(super) up: bool,
}

impl NodeWatch {
    pub(super) fn new(name: &str, addr: SocketAddr) -> NodeWatch {
        NodeWatch {
            name: name.to_string(),
            addr,
            conn: None,
            now: NodeFigures::default(),
            prev_tx: 0,
            held: None,
            held_now: 0,
            arrived: 0,
            removed: 0,
            tx_per_s: 0.0,
            up: false,
        }
    }

    /// Every id the node holds (both tiers), paging through `GET /assets`.
    fn listing(&mut self) -> Result<BTreeSet<String>> {
        let mut ids = BTreeSet::new();
        let mut after: Option<String> = None;
        for _ in 0..PAGES_MAX {
            let target = match &after {
                Some(a) => format!("/assets?limit=1000&after={a}"),
                None => "/assets?limit=1000".to_string(),
            };
            let text = get(&mut self.conn, self.addr, &target)?;
            let page: reel_http::api::ListPage =
                serde_json::from_str(&text).context("the listing is not JSON")?;
            ids.extend(page.assets.into_iter().map(|a| a.id));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        Ok(ids)
    }

    /// Scrapes `/metrics` and the listing; `dt` is the time since the previous scrape.
    pub(super) fn scrape(&mut self, dt: f64) {
        let text = match get(&mut self.conn, self.addr, "/metrics") {
            Ok(t) => t,
            Err(_) => {
                self.up = false;
                return;
            }
        };
        self.up = true;
        self.now = NodeFigures::parse(&text);
        self.tx_per_s = self.now.tx_bytes.saturating_sub(self.prev_tx) as f64 / dt.max(1e-3);
        self.prev_tx = self.now.tx_bytes;
        if let Ok(ids) = self.listing() {
            if let Some(prev) = &self.held {
                self.arrived += ids.difference(prev).count() as u64;
                self.removed += prev.difference(&ids).count() as u64;
            }
            self.held_now = ids.len();
            self.held = Some(ids);
        }
    }

    /// Forgets the counts so far (the load starts now).
    pub(super) fn baseline(&mut self) {
        self.arrived = 0;
        self.removed = 0;
    }
}

/// The manager's counters.
#[derive(Clone, Debug, Default)]
pub(super) struct ManagerFigures {
    pub(super) routes: BTreeMap<&'static str, u64>,
    pub(super) not_found: u64,
    pub(super) unavailable: u64,
    pub(super) assets: u64,
}

pub(super) struct ManagerWatch {
    addr: SocketAddr,
    conn: Option<Conn>,
    pub(super) now: ManagerFigures,
    /// Routes at the previous scrape, for the per-second line.
    prev: BTreeMap<&'static str, u64>,
}

impl ManagerWatch {
    pub(super) fn new(addr: SocketAddr) -> ManagerWatch {
        ManagerWatch {
            addr,
            conn: None,
            now: ManagerFigures::default(),
            prev: BTreeMap::new(),
        }
    }

    pub(super) fn scrape(&mut self) {
        self.prev = self.now.routes.clone();
        let Ok(text) = get(&mut self.conn, self.addr, "/metrics") else {
            return;
        };
        self.now = ManagerFigures {
            routes: REASONS
                .iter()
                .map(|r| {
                    let label = format!("reason=\"{r}\"");
                    (
                        *r,
                        metric(&text, "reel_manager_routes_total", &label) as u64,
                    )
                })
                .collect(),
            not_found: metric(&text, "reel_manager_not_found_total", "") as u64,
            unavailable: metric(&text, "reel_manager_unavailable_total", "") as u64,
            assets: metric(&text, "reel_manager_inventory_assets", "") as u64,
        };
    }

    /// Routes since the previous scrape, the nonzero ones: `relay-primary 21, …`.
    fn routes_line(&self) -> String {
        let parts: Vec<String> = REASONS
            .iter()
            .filter_map(|r| {
                let d = self.now.routes.get(r).copied().unwrap_or(0)
                    - self
                        .prev
                        .get(r)
                        .copied()
                        .unwrap_or(0)
                        .min(self.now.routes.get(r).copied().unwrap_or(0));
                (d > 0).then(|| format!("{r} {d}"))
            })
            .collect();
        if parts.is_empty() {
            "-".to_string()
        } else {
            parts.join(", ")
        }
    }
}

fn pct(part: f64, whole: f64) -> f64 {
    if whole <= 0.0 {
        0.0
    } else {
        100.0 * part / whole
    }
}

fn fill(used: u64, cap: u64) -> String {
    format!(
        "{:>4} MiB {:>3.0}%",
        used >> 20,
        pct(used as f64, cap as f64)
    )
}

/// What the columns mean, once before the first header.
pub(super) fn print_legend() {
    println!(
        "  columns: held = titles on the node; copies = titles that arrived on it / left it \
         since the load started; streams = requests in flight; MB/s = bytes it sent (to clients \
         and peers); p99 ms, req/s = its clients' requests in the last second, measured by the \
         clients; relays = streams it relayed from a holder so far"
    );
}

/// The header of the per-node lines.
pub(super) fn print_header() {
    println!(
        "  {:>5}  {:<6} {:<13} {:<13} {:>5} {:>7} {:>7} {:>7} {:>7} {:>6} {:>6}  tiering",
        "time",
        "node",
        "primary",
        "secondary",
        "held",
        "copies",
        "streams",
        "MB/s",
        "p99 ms",
        "req/s",
        "relays",
    );
}

/// One live block: the manager's routes in the last second, then a line per node.
pub(super) fn print_block(
    secs: f64,
    dt: f64,
    manager: &ManagerWatch,
    nodes: &[NodeWatch],
    window: &BTreeMap<String, Group>,
) {
    println!(
        "  {:>4.0}s  manager  {} assets; routes/s: {}",
        secs,
        manager.now.assets,
        manager.routes_line()
    );
    for n in nodes {
        if !n.up {
            println!("  {:>5}  {:<6} (no answer)", "", n.name);
            continue;
        }
        let f = &n.now;
        let secondary = f
            .secondary
            .map_or("-".to_string(), |(used, cap, _)| fill(used, cap));
        let copies = match (f.copies_pulled, f.copies_dropped) {
            (Some(p), Some(d)) => format!("+{p}/-{d}"),
            _ => format!("+{}/-{}", n.arrived, n.removed),
        };
        let (p99, rps) = match window.get(&n.name) {
            Some(g) if !g.us.is_empty() => (
                format!("{:.1}", g.us.value_at_quantile(0.99) as f64 / 1e3),
                format!("{:.1}", g.counts.requests as f64 / dt.max(1e-3)),
            ),
            _ => ("-".to_string(), "0".to_string()),
        };
        let tiering = if f.secondary.is_some() {
            format!(
                "promo {} demo {} wback {}",
                f.promotions, f.demotions, f.write_backs
            )
        } else {
            String::new()
        };
        let line = format!(
            "  {:>5}  {:<6} {:<13} {:<13} {:>5} {:>7} {:>7} {:>7.1} {:>7} {:>6} {:>6}  {}",
            "",
            n.name,
            fill(f.primary_used, f.primary_capacity),
            secondary,
            n.held_now,
            copies,
            f.in_flight,
            n.tx_per_s / 1e6,
            p99,
            rps,
            f.relays,
            tiering
        );
        println!("{}", line.trim_end());
    }
}

/// What the summary needs besides the clients' figures.
pub(super) struct SummaryInput<'a> {
    pub(super) secs: f64,
    pub(super) offered: f64,
    pub(super) edges: usize,
    pub(super) clients_per_edge: usize,
    pub(super) interrupted: bool,
    pub(super) manager: &'a ManagerFigures,
    /// The manager's route counts before the load (ingest checks are not part of it).
    pub(super) manager_before: &'a ManagerFigures,
    pub(super) nodes: &'a [NodeWatch],
    /// Response bytes per node before the load.
    pub(super) tx_before: &'a BTreeMap<String, u64>,
}

/// The totals of all serving nodes.
pub(super) fn totals(m: &Measured) -> Counts {
    let mut all = Counts::default();
    for g in m.by_node.values() {
        all.add(&g.counts);
    }
    all.errors = m.errors;
    all
}

fn ms(g: &Group, q: f64) -> f64 {
    g.us.value_at_quantile(q) as f64 / 1e3
}

/// Prints the summary; the totals.
pub(super) fn print_summary(m: &Measured, s: &SummaryInput) -> Counts {
    let all = totals(m);
    let secs = s.secs.max(1e-9);
    println!("reel demo: summary");
    if s.interrupted {
        println!("  interrupted after {:.1} s", s.secs);
    }
    println!(
        "  load         {secs:.1} s, {} edges × {} clients, {} requests ({} whole titles, {} \
         ranges), {:.1} req/s of {:.0} offered, {:.2} GB, {:.0} MB/s",
        s.edges,
        s.clients_per_edge,
        all.requests,
        all.full,
        all.ranges,
        all.requests as f64 / secs,
        s.offered,
        all.bytes as f64 / 1e9,
        all.bytes as f64 / secs / 1e6
    );
    let mut lat = super::super::load::histogram().ok();
    if let Some(h) = &mut lat {
        for g in m.by_node.values() {
            let _ = h.add(&g.us);
        }
    }
    if let Some(h) = lat.filter(|h| !h.is_empty()) {
        let q = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        let per_edge: Vec<String> = m
            .by_edge
            .iter()
            .filter(|(_, g)| !g.us.is_empty())
            .map(|(e, g)| format!("{e}'s clients {:.1}/{:.1}", ms(g, 0.5), ms(g, 0.99)))
            .collect();
        println!(
            "  latency      p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (the manager's 307 and the \
             node's answer, to the last byte); p50/p99: {}",
            q(0.5),
            q(0.99),
            h.max() as f64 / 1e3,
            per_edge.join(", ")
        );
    }
    println!(
        "  verified     {} responses, {:.2} GB compared with the generator: {} wrong bytes",
        all.requests,
        all.bytes as f64 / 1e9,
        all.wrong_bytes
    );
    let routed: u64 = m.routes.values().sum();
    let parts: Vec<String> = REASONS
        .iter()
        .filter_map(|r| {
            let n = m.routes.get(*r).copied().unwrap_or(0);
            (n > 0).then(|| format!("{r} {n} ({:.0}%)", pct(n as f64, routed as f64)))
        })
        .collect();
    let manager_total: u64 = REASONS
        .iter()
        .map(|r| {
            s.manager.routes.get(r).copied().unwrap_or(0)
                - s.manager_before
                    .routes
                    .get(r)
                    .copied()
                    .unwrap_or(0)
                    .min(s.manager.routes.get(r).copied().unwrap_or(0))
        })
        .sum();
    println!(
        "  routes       {} (the manager counted {manager_total} routes, {} not found, {} \
         unavailable)",
        if parts.is_empty() {
            "-".to_string()
        } else {
            parts.join(", ")
        },
        s.manager.not_found - s.manager_before.not_found.min(s.manager.not_found),
        s.manager.unavailable - s.manager_before.unavailable.min(s.manager.unavailable),
    );
    let relayed: u64 = ["relay-primary", "relay-secondary"]
        .iter()
        .map(|r| m.routes.get(*r).copied().unwrap_or(0))
        .sum();
    let relayed_bytes: u64 = ["relay-primary", "relay-secondary"]
        .iter()
        .map(|r| m.route_bytes.get(*r).copied().unwrap_or(0))
        .sum();
    let local: u64 = ["local-primary", "local-secondary"]
        .iter()
        .map(|r| m.routes.get(*r).copied().unwrap_or(0))
        .sum();
    println!(
        "  relayed      {relayed} requests ({:.0}%), {:.0}% of the bytes, through the client's \
         edge from the holder; {local} served by the client's own edge from its copy",
        pct(relayed as f64, routed as f64),
        pct(relayed_bytes as f64, all.bytes as f64)
    );
    let per_node: Vec<String> = s
        .nodes
        .iter()
        .map(|n| {
            let to_clients = m.by_node.get(&n.name).map_or(0, |g| g.counts.bytes);
            let tx = n
                .now
                .tx_bytes
                .saturating_sub(s.tx_before.get(&n.name).copied().unwrap_or(0));
            format!(
                "{} {} to clients ({} sent in all, peers included)",
                n.name,
                human_bytes(to_clients),
                human_bytes(tx)
            )
        })
        .collect();
    println!("  served       {}", per_node.join("; "));
    let copies: Vec<String> = s
        .nodes
        .iter()
        .map(|n| {
            let counted = match (n.now.copies_pulled, n.now.copies_dropped) {
                (Some(p), Some(d)) => format!(", node counters +{p}/-{d}"),
                _ => String::new(),
            };
            format!(
                "{} holds {} (+{} arrived, -{} removed{counted})",
                n.name, n.held_now, n.arrived, n.removed
            )
        })
        .collect();
    println!("  copies       {}", copies.join("; "));
    for n in s.nodes.iter().filter(|n| n.now.secondary.is_some()) {
        let f = &n.now;
        println!(
            "  tiers        {}: {} promotions, {} demotions, {} evictions, {} write-backs; \
             primary {} titles, secondary {}",
            n.name,
            f.promotions,
            f.demotions,
            f.evictions,
            f.write_backs,
            f.primary_assets,
            f.secondary.map_or(0, |s| s.2)
        );
    }
    let relay_failures: u64 = s.nodes.iter().map(|n| n.now.relay_failures).sum();
    println!(
        "  errors       {} (relay fetch or crc failures at the nodes: {relay_failures})",
        all.errors
    );
    if let Some(e) = &m.first_error {
        println!("               first: {e}");
    }
    if let Some(e) = &m.first_wrong {
        println!("  WRONG BYTES  first: {e}");
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sum_over_matching_labels() {
        let text = "# HELP x\n\
                    reel_device_used_bytes{tier=\"primary\",device=\"/a\"} 4096\n\
                    reel_device_used_bytes{tier=\"secondary\",device=\"/b\"} 8192\n\
                    reel_device_used_bytes_other 1\n\
                    reel_relay_streams_total 7\n\
                    reel_manager_report_lag_seconds{node=\"x\"} +Inf\n";
        assert_eq!(metric(text, "reel_device_used_bytes", ""), 12288.0);
        assert_eq!(
            metric(text, "reel_device_used_bytes", "tier=\"secondary\""),
            8192.0
        );
        assert_eq!(metric(text, "reel_relay_streams_total", ""), 7.0);
        assert_eq!(metric(text, "reel_manager_report_lag_seconds", ""), 0.0);
        assert_eq!(metric(text, "missing", ""), 0.0);
        let f = NodeFigures::parse(text);
        assert_eq!(f.primary_used, 4096);
        assert_eq!(
            f.secondary.map(|s| s.0),
            None,
            "no capacity line: no secondary"
        );
        assert_eq!(f.relays, 7);
        assert_eq!(f.copies_pulled, None);
    }
}

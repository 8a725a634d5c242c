//! The stream session manager: picks the node for each stream, and says why.
//!
//! Order, for a client whose local node is known (an address range of the config's coverage
//! zones, or `?near=NODE`):
//! 1. the local node holds the asset on its primary: `local-primary`;
//! 2. another node holds it on its primary: relayed through the local node from the
//!    least-loaded such holder (`relay-primary`), since the local node is the client's own;
//! 3. the local node holds it on its secondary: `local-secondary`;
//! 4. another node holds it on its secondary: `relay-secondary`;
//! 5. else not found.
//!
//! Without a local node (or with the local node down) the client goes straight to the holder:
//! the least-loaded node with the asset on primary (`primary`), else on secondary
//! (`secondary`). Load is the node's streams in progress, then its bytes sent per second.

use std::net::IpAddr;

use crate::content::{Content, Copy, NodeIdx, PRIMARY, SECONDARY};

/// Why a stream went where it went (the `Reel-Route` header, the metrics' label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    LocalPrimary,
    RelayPrimary,
    LocalSecondary,
    RelaySecondary,
    Primary,
    Secondary,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::LocalPrimary,
        Reason::RelayPrimary,
        Reason::LocalSecondary,
        Reason::RelaySecondary,
        Reason::Primary,
        Reason::Secondary,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::LocalPrimary => "local-primary",
            Reason::RelayPrimary => "relay-primary",
            Reason::LocalSecondary => "local-secondary",
            Reason::RelaySecondary => "relay-secondary",
            Reason::Primary => "primary",
            Reason::Secondary => "secondary",
        }
    }
}

/// Where a stream goes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// The node the client is sent to.
    pub node: NodeIdx,
    pub reason: Reason,
    /// For a relay: the holder the node fetches from, and the copy's tier bits.
    pub source: Option<NodeIdx>,
    pub copy: Copy,
}

/// A client address range that belongs to a node (the config's coverage zones).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub net: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `10.1.0.0/16`, `fd00::/8` or a bare address.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = a.trim().parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse().ok().filter(|&p| p <= max)?,
            None => max,
        };
        Some(Cidr { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Client address ranges → node name, longest prefix first.
#[derive(Clone, Debug, Default)]
pub struct Zones {
    zones: Vec<(Cidr, String)>,
}

impl Zones {
    pub fn new(mut zones: Vec<(Cidr, String)>) -> Zones {
        zones.sort_by_key(|(c, _)| std::cmp::Reverse(c.prefix));
        Zones { zones }
    }

    /// The node whose zone holds `ip`.
    pub fn node_of(&self, ip: IpAddr) -> Option<&str> {
        self.zones
            .iter()
            .find(|(c, _)| c.contains(ip))
            .map(|(_, n)| n.as_str())
    }

    pub fn len(&self) -> usize {
        self.zones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }
}

fn least_loaded(content: &Content, copies: &[Copy], tier: u8) -> Option<Copy> {
    copies
        .iter()
        .filter(|c| c.tiers & tier != 0)
        .min_by(|a, b| {
            let la = &content.nodes[a.node as usize].load;
            let lb = &content.nodes[b.node as usize].load;
            (la.streams, la.tx_bytes_per_s)
                .partial_cmp(&(lb.streams, lb.tx_bytes_per_s))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.node.cmp(&b.node))
        })
        .copied()
}

/// Picks the node for a stream of `id` from a client whose local node is `local` (routable
/// or not); `None` when no routable node holds the current version.
pub fn decide(content: &Content, id: &str, local: Option<NodeIdx>) -> Option<Decision> {
    let copies = content.live_copies(id);
    let local = local.filter(|&l| content.nodes[l as usize].routable());
    let on = |c: &Copy, tier: u8, node: NodeIdx| c.node == node && c.tiers & tier != 0;
    let direct = |copy: Copy, reason| Decision {
        node: copy.node,
        reason,
        source: None,
        copy,
    };
    if let Some(l) = local {
        let relay = |copy: Copy, reason| Decision {
            node: l,
            reason,
            source: Some(copy.node),
            copy,
        };
        if let Some(c) = copies.iter().find(|c| on(c, PRIMARY, l)) {
            return Some(direct(*c, Reason::LocalPrimary));
        }
        if let Some(c) = least_loaded(content, &copies, PRIMARY) {
            return Some(relay(c, Reason::RelayPrimary));
        }
        if let Some(c) = copies.iter().find(|c| on(c, SECONDARY, l)) {
            return Some(direct(*c, Reason::LocalSecondary));
        }
        return least_loaded(content, &copies, SECONDARY).map(|c| relay(c, Reason::RelaySecondary));
    }
    least_loaded(content, &copies, PRIMARY)
        .map(|c| direct(c, Reason::Primary))
        .or_else(|| least_loaded(content, &copies, SECONDARY).map(|c| direct(c, Reason::Secondary)))
}

/// The node an upload of `size` bytes (if known) goes to: a routable node with a secondary and
/// the most room on it, else one with the most room on its primary.
pub fn ingest_node(content: &Content, size: Option<u64>) -> Option<NodeIdx> {
    let fits = |free: u64| size.is_none_or(|s| s <= free);
    let best = |tier: &str| {
        content
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.routable() && n.has_tier(tier) && fits(n.free(tier)))
            .max_by_key(|(i, n)| (n.free(tier), std::cmp::Reverse(*i)))
            .map(|(i, _)| i as NodeIdx)
    };
    best("secondary").or_else(|| best("primary"))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use reel_http::cluster::{Holding, Load, Register, Report, TierFill};

    use super::*;

    /// Nodes, each with its holdings: (asset id, tiers).
    type Layout<'a> = &'a [(&'a str, &'a [(&'a str, &'a [&'a str])])];

    fn cluster(holdings: Layout) -> Content {
        let t0 = Instant::now();
        let mut c = Content::new(Duration::from_secs(2), Duration::from_secs(10), 0);
        for (i, (node, held)) in holdings.iter().enumerate() {
            let (s, _) = c.register(
                &Register {
                    node: node.to_string(),
                    boot: 1,
                    access: format!("127.0.0.1:{}", 1000 + i).parse().expect("addr"),
                    peer: format!("127.0.0.1:{}", 2000 + i).parse().expect("addr"),
                    tiers: vec![],
                },
                t0,
            );
            let upsert = held
                .iter()
                .map(|(id, tiers)| Holding {
                    id: id.to_string(),
                    etag: "\"00000001-10\"".into(),
                    size: 16,
                    tiers: tiers.iter().map(|t| t.to_string()).collect(),
                })
                .collect();
            c.report(
                Report {
                    node: node.to_string(),
                    session: s,
                    seq: 1,
                    full: true,
                    more: false,
                    upsert,
                    remove: vec![],
                    rates: vec![],
                    load: Load {
                        streams: 10 - i as u64,
                        ..Load::default()
                    },
                    tiers: vec![TierFill {
                        tier: "secondary".into(),
                        capacity_bytes: 100 * (i as u64 + 1),
                        used_bytes: 0,
                    }],
                    failed_sources: vec![],
                    pulls: vec![],
                    demand: vec![],
                },
                t0,
            )
            .expect("report");
        }
        c
    }

    fn route(
        c: &Content,
        id: &str,
        local: Option<&str>,
    ) -> Option<(String, &'static str, Option<String>)> {
        let l = local.map(|n| c.node(n).expect("node"));
        decide(c, id, l).map(|d| {
            (
                c.nodes[d.node as usize].name.clone(),
                d.reason.name(),
                d.source.map(|s| c.nodes[s as usize].name.clone()),
            )
        })
    }

    #[test]
    fn the_order_of_choices() {
        let c = cluster(&[
            ("n1", &[("a", &["primary"]), ("b", &["secondary"])]),
            (
                "n2",
                &[("a", &["primary", "secondary"]), ("c", &["secondary"])],
            ),
            ("n3", &[("b", &["primary"])]),
        ]);
        let s = |s: &str| Some(s.to_string());
        assert_eq!(
            route(&c, "a", Some("n1")),
            Some((s("n1").unwrap_or_default(), "local-primary", None))
        );
        // n3 lacks a: relayed through n3 from the least-loaded primary holder (n2: 9 streams).
        assert_eq!(
            route(&c, "a", Some("n3")),
            Some(("n3".into(), "relay-primary", s("n2")))
        );
        // n1 has b on secondary only, n3 on primary: the primary copy wins, relayed.
        assert_eq!(
            route(&c, "b", Some("n1")),
            Some(("n1".into(), "relay-primary", s("n3")))
        );
        assert_eq!(
            route(&c, "c", Some("n2")),
            Some(("n2".into(), "local-secondary", None))
        );
        assert_eq!(
            route(&c, "c", Some("n1")),
            Some(("n1".into(), "relay-secondary", s("n2")))
        );
        assert_eq!(route(&c, "a", None), Some(("n2".into(), "primary", None)));
        assert_eq!(route(&c, "c", None), Some(("n2".into(), "secondary", None)));
        assert_eq!(route(&c, "zzz", Some("n1")), None);
    }

    #[test]
    fn ingest_goes_to_the_most_room_on_a_secondary() {
        let c = cluster(&[("n1", &[]), ("n2", &[]), ("n3", &[])]);
        assert_eq!(ingest_node(&c, Some(10)), c.node("n3"));
        assert_eq!(ingest_node(&c, Some(250)), c.node("n3"));
        assert_eq!(ingest_node(&c, Some(301)), None);
    }

    #[test]
    fn cidrs_and_zones() {
        let z = Zones::new(vec![
            (Cidr::parse("10.0.0.0/8").expect("cidr"), "wide".into()),
            (Cidr::parse("10.1.0.0/16").expect("cidr"), "n1".into()),
            (Cidr::parse("fd00::/8").expect("cidr"), "v6".into()),
        ]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(z.node_of(ip("10.1.2.3")), Some("n1"));
        assert_eq!(z.node_of(ip("10.2.2.3")), Some("wide"));
        assert_eq!(z.node_of(ip("::ffff:10.1.0.1")), Some("n1"));
        assert_eq!(z.node_of(ip("fd12::1")), Some("v6"));
        assert_eq!(z.node_of(ip("192.168.0.1")), None);
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope").is_none());
        assert_eq!(
            Cidr::parse("0.0.0.0/0").map(|c| c.contains(ip("1.2.3.4"))),
            Some(true)
        );
    }
}

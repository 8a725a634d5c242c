//! The manager's settings: flags, with a TOML file (`--config`) for the coverage zones.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use reel_http::cluster::valid_node_name;
use reel_policy::units::{parse_duration, parse_duration_or_zero};
use serde::Deserialize;

use crate::routing::{Cidr, Zones};

/// `reel manager` flags.
#[derive(Args, Debug, Clone)]
pub struct ManagerConfig {
    /// Where clients reach the manager (routing, ingest, delete, /cluster, /metrics).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// The inter-server listener: nodes register and report here (cluster token required).
    #[arg(long, default_value = "127.0.0.1:7100")]
    pub peer_listen: SocketAddr,
    /// The cluster token (one line; the same file as the nodes').
    #[arg(long, value_name = "FILE")]
    pub cluster_token_file: PathBuf,
    /// The coordination store: `embedded` (a file log under --data-dir; one manager) or
    /// `etcd://HOST:PORT[,HOST:PORT…]` (several managers, one leads).
    #[arg(long, default_value = "embedded")]
    pub store: String,
    /// The embedded store's directory.
    #[arg(long, value_name = "DIR", default_value = "reel-manager-data")]
    pub data_dir: PathBuf,
    /// A TOML file with the coverage zones: `[[zone]] node = "n1"  clients = ["10.1.0.0/16"]`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This manager's name in the leader election (default: its peer address).
    #[arg(long)]
    pub name: Option<String>,
    /// The access address given to clients redirected here by a standby (default --listen).
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
    /// The inter-server address nodes are told to report to (default --peer-listen).
    #[arg(long)]
    pub peer_advertise: Option<SocketAddr>,
    /// A node silent this long leaves routing.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub node_timeout: Duration,
    /// How often nodes report.
    #[arg(long, value_parser = parse_duration, default_value = "500ms")]
    pub report_interval: Duration,
    /// A node whose relay fetch failed stays out of routing this long, then until it reports.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub hold_down: Duration,
    /// The leader's lease (etcd): a standby takes over about this long after the leader dies.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub leader_ttl: Duration,
    /// After taking the lead, a miss waits up to this long for members' first reports before
    /// answering 404 (a restarted manager never says "not found" for an asset a live node
    /// holds).
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub warmup: Duration,
    /// The half-life over which the manager decays the nodes' reported rates and their
    /// clients' relayed demand between reports.
    #[arg(long, value_parser = parse_duration, default_value = "30m")]
    pub rate_half_life: Duration,
    /// A request head must arrive within this.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub head_timeout: Duration,
    /// A keep-alive connection idle this long is closed.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub idle_timeout: Duration,
    /// How often the leader places copies of hot assets on more nodes' primaries and removes
    /// the duplicates of cooled ones (0: never; placement needs nodes that take pull orders).
    #[arg(long, value_parser = parse_duration_or_zero, default_value = "2s")]
    pub placement_interval: Duration,
    /// The placement policy's settings.
    #[command(flatten)]
    pub placement: reel_policy::placement::PlacementConfig,
    /// How long a relay or put ticket stays valid.
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub ticket_ttl: Duration,
}

/// The coordination store named by `--store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Embedded,
    Etcd(Vec<String>),
}

impl StoreSpec {
    pub fn parse(s: &str) -> Result<StoreSpec, String> {
        if s == "embedded" {
            return Ok(StoreSpec::Embedded);
        }
        let Some(rest) = s.strip_prefix("etcd://") else {
            return Err(format!(
                "--store {s:?}: use `embedded` or `etcd://HOST:PORT[,HOST:PORT…]`"
            ));
        };
        let eps: Vec<String> = rest
            .split(',')
            .filter(|e| !e.is_empty())
            .map(|e| format!("http://{e}"))
            .collect();
        if eps.is_empty() {
            return Err("--store etcd:// needs at least one HOST:PORT".into());
        }
        Ok(StoreSpec::Etcd(eps))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileZone {
    node: String,
    clients: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    zone: Vec<FileZone>,
}

/// Reads the coverage zones of a `--config` file: the zones and the file's text (what the
/// coordination store keeps, so every manager and every restart routes by the same zones).
pub fn read_zones(path: &Path) -> Result<(Zones, String), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --config {}: {e}", path.display()))?;
    let zones = zones_from_toml(&text).map_err(|e| format!("--config {}: {e}", path.display()))?;
    Ok((zones, text))
}

/// Parses the zones of a config file's text.
pub fn zones_from_toml(text: &str) -> Result<Zones, String> {
    let f: File = toml::from_str(text).map_err(|e| e.message().to_string())?;
    let mut out = Vec::new();
    for z in f.zone {
        if !valid_node_name(&z.node) {
            return Err(format!(
                "zone node {:?} is not a node name ([A-Za-z0-9_-], 1-64)",
                z.node
            ));
        }
        for c in z.clients {
            let cidr = Cidr::parse(&c).ok_or_else(|| {
                format!(
                    "zone of {}: {c:?} is not an address range like 10.1.0.0/16",
                    z.node
                )
            })?;
            out.push((cidr, z.node.clone()));
        }
    }
    Ok(Zones::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_specs() {
        assert_eq!(StoreSpec::parse("embedded"), Ok(StoreSpec::Embedded));
        assert_eq!(
            StoreSpec::parse("etcd://127.0.0.1:2379,10.0.0.2:2379"),
            Ok(StoreSpec::Etcd(vec![
                "http://127.0.0.1:2379".into(),
                "http://10.0.0.2:2379".into()
            ]))
        );
        assert!(StoreSpec::parse("etcd://").is_err());
        assert!(StoreSpec::parse("zookeeper://x").is_err());
    }

    #[test]
    fn zones_parse_and_refuse_nonsense() {
        let z =
            zones_from_toml("[[zone]]\nnode = \"n1\"\nclients = [\"10.1.0.0/16\", \"10.9.9.9\"]\n")
                .expect("zones");
        assert_eq!(z.node_of("10.1.3.4".parse().expect("ip")), Some("n1"));
        assert!(zones_from_toml("[[zone]]\nnode = \"n 1\"\nclients = []\n").is_err());
        assert!(zones_from_toml("[[zone]]\nnode = \"n1\"\nclients = [\"10.0.0.0/40\"]\n").is_err());
        assert!(zones_from_toml("[[zones]]\n").is_err());
    }
}

//! The node's settings, each defined once: [`NodeConfig`] with the copy throttle's
//! [`ThrottleConfig`] and the tier policy's [`PolicyConfig`] inside is the library's config,
//! the `reel node` flags (it derives [`clap::Args`]; the doc comments are the flags' help and
//! the defaults are the flags' defaults) and, through the flags, the environment and the TOML
//! config file.
//!
//! Layering (defaults < file < environment < flags) is clap's own: `reel node` makes each key
//! of the file the default of the flag of the same name (`read_bufs_per_shard = 256` for
//! `--read-bufs-per-shard`; a `[policy]` table holds the policy's keys), and clap's `env`
//! feature reads `REEL_<FLAG_NAME>` (`REEL_COPY_BUDGET`) where no flag is given. Why clap and
//! toml rather than figment, config or twelf: the project had both already, a file value then
//! goes through the same parser as its flag (a size is `1M` or `1048576` in both, a bad one is
//! named by its key), and the flags stay exactly what they were, which a second deserializer
//! (serde onto the same structs, as figment or clap-serde-derive do) would have to match field by
//! field.

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::{BoolishValueParser, TypedValueParser};
use clap::ArgAction;
use reel_policy::units::{parse_duration, parse_size_usize};
use reel_policy::{PolicyConfig, ThrottleConfig};

/// Everything `reel node` can be told besides its devices. Defaults suit a 2–64 core host with
/// 1 MiB assets or larger.
#[derive(Clone, Debug, clap::Args)]
pub struct NodeConfig {
    /// Address to serve HTTP on, e.g. 0.0.0.0:8080 (port 0 picks a free port; the chosen
    /// address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// A file holding the cluster token (one line of 16–1024 visible ASCII characters). With
    /// it, writes and admin requests (PUT, DELETE: uploads, deletes, policies, `/migration`)
    /// need `Authorization: Bearer <token>`; reads stay open. The token is never logged.
    #[arg(long, value_name = "FILE")]
    pub cluster_token_file: Option<std::path::PathBuf>,
    /// The cluster manager's inter-server listener, e.g. `http://10.1.0.1:7100`; several,
    /// comma-separated, for several managers (the node follows the leader). With it the node
    /// joins the cluster: it registers, reports what it holds every report period, and tells
    /// the manager of each upload before its `201`. Needs `--cluster-token-file` and
    /// `--peer-listen`.
    #[arg(long, value_name = "URL", value_delimiter = ',', value_parser = ManagerUrl::parse)]
    pub manager: Vec<ManagerUrl>,
    /// Address of the inter-server listener (peers and the manager), e.g. 10.1.0.5:7001: the
    /// same endpoints as `--listen`, every request authenticated with the cluster token.
    #[arg(long, value_name = "ADDR")]
    pub peer_listen: Option<SocketAddr>,
    /// This node's name in the cluster (`[A-Za-z0-9_-]{1,64}`, unique); default: the host name
    /// (its first label).
    #[arg(long, value_name = "NAME", value_parser = parse_node_name)]
    pub node_name: Option<String>,
    /// The access address the manager sends clients to; default: `--listen` (which must then
    /// name an address, not 0.0.0.0 or ::).
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<SocketAddr>,
    /// The inter-server address the manager and peers reach this node at; default:
    /// `--peer-listen` (which must then name an address, not 0.0.0.0 or ::).
    #[arg(long, value_name = "ADDR")]
    pub peer_advertise: Option<SocketAddr>,
    /// Shard threads, one ring and listener each; 0 = one per CPU.
    #[arg(long, default_value_t = 0)]
    pub shards: usize,
    /// Pin shard `i` to CPU `i % cpus` (`--no-pin`: do not).
    #[arg(
        long = "no-pin",
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new().map(|no_pin| !no_pin),
        help = "Do not pin shard threads to CPUs"
    )]
    pub pin: bool,
    /// Bytes per registered read buffer, the unit of device reads and sends.
    #[arg(long = "read-buf", value_name = "READ_BUF", value_parser = parse_size_usize, default_value = "1M")]
    pub read_buf_bytes: usize,
    /// Registered read buffers per shard: bounds reads in flight and buffers awaiting
    /// zero-copy notifications.
    #[arg(long, default_value_t = 128)]
    pub read_bufs_per_shard: usize,
    /// Chunks read ahead per stream (2–4 keeps the device and the socket busy).
    #[arg(long, default_value_t = 3)]
    pub stream_depth: usize,
    /// Payload sends of at least this size use SEND_ZC, smaller ones a plain send (below it the
    /// notification costs more than the copy saves).
    #[arg(long = "zero-copy-min", value_name = "ZERO_COPY_MIN", value_parser = parse_size_usize, default_value = "64K")]
    pub zero_copy_min_bytes: usize,
    /// Use SEND_ZC for clients on this host too (loopback). Off by default: the kernel copies
    /// zero-copy data delivered to a local socket anyway (msg_zerocopy.rst, "Loopback"), so a
    /// plain send is cheaper there.
    #[arg(long)]
    pub zero_copy_local: bool,
    /// Connections per shard; further ones get 503.
    #[arg(long, default_value_t = 4096)]
    pub connections_per_shard_max: usize,
    /// Time allowed for a request head after its first byte.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub head_timeout: Duration,
    /// Time a keep-alive connection may idle between requests.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub idle_timeout: Duration,
    /// Time a client may take no response bytes before it is dropped.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub send_timeout: Duration,
    /// Time an upload may deliver no body bytes before it is aborted.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub body_timeout: Duration,
    /// Threads that run uploads and deletes.
    #[arg(long, default_value_t = 8)]
    pub ingest_workers: usize,
    /// Uploads waiting for a worker beyond which new ones get 503.
    #[arg(long, default_value_t = 256)]
    pub ingest_queue_max: usize,
    /// Largest request head accepted; larger ones get 431.
    #[arg(long, value_parser = parse_size_usize, default_value = "16K")]
    pub head_bytes_max: usize,
    /// Assets per `/assets` page when the request names no `limit`.
    #[arg(skip = 1000u32)]
    pub list_limit_default: u32,
    /// Half-life of each asset's decaying request rate. Unset: with a secondary, the tiering
    /// policy chooses it among 30 min … 8 h from the node's own traffic (`/migration` shows the
    /// choice); without one, the rates `/info` shows use 30 min.
    #[arg(long, value_parser = parse_duration)]
    pub rate_half_life: Option<Duration>,
    /// Copies between the tiers serve as soon as they are written and are made durable together
    /// (one device flush pair per tier, which stalls reads) once the node has served no one for
    /// 2 s (`scheduler::QUIET`), or when the oldest has waited this long under load
    /// (also before a drop needs one, and at a graceful stop). A crash forgets the copies not
    /// yet committed (never an asset: the source still holds it), which are redone.
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub migration_commit_interval: Duration,
    /// Before a commit under load, copies stop writing for this long (counted from the last
    /// copy's end, time paused included), so the device has written their data back and the
    /// commit's flush is short (a flush right after copying stalls reads far longer than one
    /// after a pause: docs/decisions/2026-11-24-settle-before-commit.md).
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub migration_commit_settle: Duration,
    /// How fast background copies between the tiers may go (see [`reel_policy::throttle`]).
    #[command(flatten)]
    pub throttle: ThrottleConfig,
    /// Tiering thresholds and limits (capacity, half-life and budget are filled in from the
    /// fields above, the throttle's budget and the primary's size).
    #[command(flatten)]
    pub policy: PolicyConfig,
}

/// A manager's inter-server listener: `http://HOST:PORT` (a trailing `/` allowed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagerUrl {
    /// `HOST:PORT`, resolved at each connect (a manager may move behind a name).
    pub authority: String,
}

impl ManagerUrl {
    /// Parses `http://HOST:PORT`; the error names the form expected.
    pub fn parse(s: &str) -> Result<ManagerUrl, String> {
        let bad = || {
            format!(
                "{s:?} is not a manager URL: give http://HOST:PORT of the manager's \
                 inter-server listener, e.g. http://10.1.0.1:7100"
            )
        };
        let rest = s.trim().strip_prefix("http://").ok_or_else(bad)?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty()
            || port.parse::<u16>().map_or(true, |p| p == 0)
            || authority.contains(['/', '?', '#', '@', ' '])
        {
            return Err(bad());
        }
        Ok(ManagerUrl {
            authority: authority.to_string(),
        })
    }
}

impl std::fmt::Display for ManagerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

fn parse_node_name(s: &str) -> Result<String, String> {
    if reel_http::cluster::valid_node_name(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a node name: use 1 to 64 of A-Z a-z 0-9 _ -"
        ))
    }
}

/// The host name's first label (`edge-3` of `edge-3.example.net`), if the kernel has one.
fn host_name() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let first = h.trim().split('.').next()?.to_string();
    (!first.is_empty()).then_some(first)
}

/// What a clustered node is: its name, its managers and the addresses it advertises.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub node: String,
    pub managers: Vec<ManagerUrl>,
    /// `--advertise`, else `None`: the bound `--listen` address.
    pub advertise: Option<SocketAddr>,
    /// `--peer-advertise`, else `None`: the bound `--peer-listen` address.
    pub peer_advertise: Option<SocketAddr>,
}

impl NodeConfig {
    /// Checks the cluster flags together: `Ok(None)` for a node without `--manager`, its
    /// [`ClusterConfig`] with one; the error names the flag that fixes it.
    pub fn cluster(&self) -> Result<Option<ClusterConfig>, String> {
        if self.manager.is_empty()
            && self.peer_listen.is_some()
            && self.cluster_token_file.is_none()
        {
            return Err(
                "--peer-listen needs --cluster-token-file FILE: every request on the \
                        inter-server listener must present the cluster token"
                    .into(),
            );
        }
        if self.manager.is_empty() {
            // A node name without a manager still names the node that honours relay tickets
            // (minted by whoever holds the token), so it needs the token, not a manager.
            if self.node_name.is_some() && self.cluster_token_file.is_none() {
                return Err(
                    "--node-name needs --cluster-token-file FILE: it names this node \
                            in relay tickets signed with the cluster token"
                        .into(),
                );
            }
            for (flag, given) in [
                ("--advertise", self.advertise.is_some()),
                ("--peer-advertise", self.peer_advertise.is_some()),
            ] {
                if given {
                    return Err(format!(
                        "{flag} only means something in a cluster: add --manager URL"
                    ));
                }
            }
            return Ok(None);
        }
        if self.cluster_token_file.is_none() {
            return Err(
                "--manager needs --cluster-token-file FILE: the node presents the \
                        cluster token to the manager, and asks it of peers"
                    .into(),
            );
        }
        let Some(peer_listen) = self.peer_listen else {
            return Err(
                "--manager needs --peer-listen ADDR: the inter-server listener the \
                        manager and peers reach this node on (e.g. --peer-listen 10.1.0.5:7001)"
                    .into(),
            );
        };
        for (listen, adv, flag, adv_flag) in [
            (self.listen, self.advertise, "--listen", "--advertise"),
            (
                peer_listen,
                self.peer_advertise,
                "--peer-listen",
                "--peer-advertise",
            ),
        ] {
            match adv {
                None if listen.ip().is_unspecified() => {
                    return Err(format!(
                        "{flag} {listen} names no address others can reach: give \
                         {adv_flag} ADDR (the address to hand out for it)"
                    ))
                }
                Some(a) if a.ip().is_unspecified() || a.port() == 0 => {
                    return Err(format!(
                        "{adv_flag} {a} is not an address others can reach: give the host's \
                         address and port"
                    ))
                }
                _ => {}
            }
        }
        let node = match &self.node_name {
            Some(n) => n.clone(),
            None => match host_name() {
                Some(h) if reel_http::cluster::valid_node_name(&h) => h,
                Some(h) => {
                    return Err(format!(
                        "the host name {h:?} is not a valid node name (1 to 64 of A-Z a-z 0-9 \
                         _ -): give --node-name NAME"
                    ))
                }
                None => {
                    return Err("no host name to name the node by: give --node-name NAME".into())
                }
            },
        };
        Ok(Some(ClusterConfig {
            node,
            managers: self.manager.clone(),
            advertise: self.advertise,
            peer_advertise: self.peer_advertise,
        }))
    }
}

impl Default for NodeConfig {
    /// The flags' defaults.
    fn default() -> Self {
        reel_policy::units::defaults_of::<NodeConfig>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_flags_defaults() {
        let c = NodeConfig::default();
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(c.node_name, None);
        assert_eq!((c.shards, c.pin, c.zero_copy_local), (0, true, false));
        assert_eq!((c.read_buf_bytes, c.read_bufs_per_shard), (1 << 20, 128));
        assert_eq!((c.stream_depth, c.zero_copy_min_bytes), (3, 64 << 10));
        assert_eq!(c.connections_per_shard_max, 4096);
        assert_eq!(c.head_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.send_timeout, Duration::from_secs(30));
        assert_eq!(c.body_timeout, Duration::from_secs(30));
        assert_eq!((c.ingest_workers, c.ingest_queue_max), (8, 256));
        assert_eq!((c.head_bytes_max, c.list_limit_default), (16 << 10, 1000));
        assert_eq!(c.rate_half_life, None);
        assert_eq!(c.migration_commit_interval, Duration::from_secs(600));
        assert_eq!(c.migration_commit_settle, Duration::from_secs(20));
        assert_eq!(c.throttle, ThrottleConfig::default());
        assert_eq!(c.policy, PolicyConfig::default());
        assert!(c.manager.is_empty() && c.peer_listen.is_none() && c.node_name.is_none());
        assert_eq!(c.cluster(), Ok(None), "no manager: a node alone, as before");
    }

    #[test]
    fn manager_urls_parse_or_name_the_form() {
        let u = ManagerUrl::parse("http://10.1.0.1:7100/").expect("url");
        assert_eq!(u.authority, "10.1.0.1:7100");
        assert_eq!(u.to_string(), "http://10.1.0.1:7100");
        assert_eq!(
            ManagerUrl::parse("http://mgr-1:7100").map(|u| u.authority),
            Ok("mgr-1:7100".to_string())
        );
        for bad in [
            "10.1.0.1:7100",
            "https://m:1",
            "http://m",
            "http://m:0",
            "http://:80",
            "http://m:80/v1",
            "http://u@m:80",
        ] {
            let e = ManagerUrl::parse(bad).expect_err(bad);
            assert!(e.contains("http://HOST:PORT"), "{e}");
        }
    }

    #[test]
    fn cluster_flags_are_checked_together_and_name_the_fix() {
        let token = Some(std::path::PathBuf::from("/t"));
        let mgr = vec![ManagerUrl::parse("http://10.0.0.1:7100").expect("url")];
        let peer: SocketAddr = "127.0.0.1:7001".parse().expect("addr");
        let base = NodeConfig {
            manager: mgr.clone(),
            cluster_token_file: token.clone(),
            peer_listen: Some(peer),
            node_name: Some("n1".into()),
            ..NodeConfig::default()
        };
        let c = base.cluster().expect("valid").expect("clustered");
        assert_eq!((c.node.as_str(), c.managers), ("n1", mgr));
        let err = |cfg: NodeConfig| cfg.cluster().expect_err("refused");
        let e = err(NodeConfig {
            cluster_token_file: None,
            ..base.clone()
        });
        assert!(e.contains("--cluster-token-file"), "{e}");
        let e = err(NodeConfig {
            peer_listen: None,
            ..base.clone()
        });
        assert!(e.contains("--peer-listen ADDR"), "{e}");
        let e = err(NodeConfig {
            listen: "0.0.0.0:8080".parse().expect("addr"),
            ..base.clone()
        });
        assert!(e.contains("--advertise ADDR"), "{e}");
        let c = NodeConfig {
            listen: "0.0.0.0:8080".parse().expect("addr"),
            advertise: Some("10.0.0.5:8080".parse().expect("addr")),
            ..base.clone()
        };
        assert!(c.cluster().is_ok());
        let e = err(NodeConfig {
            peer_listen: Some("[::]:7001".parse().expect("addr")),
            ..base.clone()
        });
        assert!(e.contains("--peer-advertise ADDR"), "{e}");
        // Without a manager a node name (for relay tickets) needs only the token; the
        // addresses to advertise still mean nothing.
        assert_eq!(
            NodeConfig {
                manager: Vec::new(),
                ..base.clone()
            }
            .cluster(),
            Ok(None)
        );
        let e = err(NodeConfig {
            manager: Vec::new(),
            cluster_token_file: None,
            peer_listen: None,
            ..base.clone()
        });
        assert!(e.contains("--node-name needs --cluster-token-file"), "{e}");
        let e = err(NodeConfig {
            manager: Vec::new(),
            advertise: Some("10.0.0.5:8080".parse().expect("addr")),
            ..base.clone()
        });
        assert!(e.contains("--manager"), "{e}");
        let e = err(NodeConfig {
            manager: Vec::new(),
            node_name: None,
            cluster_token_file: None,
            ..base
        });
        assert!(e.contains("--cluster-token-file"), "{e}");
        assert!(parse_node_name("edge_eu-1").is_ok());
        assert!(parse_node_name("a.b")
            .expect_err("dot")
            .contains("node name"));
    }
}

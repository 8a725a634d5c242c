//! `reel node`: serve a volume over HTTP. Settings come from defaults, then an optional TOML
//! file (`--config`), then the environment (`REEL_<FLAG_NAME>`, e.g. `REEL_COPY_BUDGET=64M`),
//! then flags — each later source overrides the earlier one. Each setting is defined once, in
//! [`reel_node::NodeConfig`] (see `reel_node::config` for how the sources are layered).
//!
//! Example config file (every key optional; sizes take suffixes, durations take `ms`/`s`/`m`):
//!
//! ```toml
//! primary = "/dev/nvme0n1"
//! secondary = "/dev/sdb"
//! listen = "0.0.0.0:8080"
//! shards = 0                 # 0 = one per CPU
//! read_buf = "1M"
//! read_bufs_per_shard = 128
//! stream_depth = 3
//! zero_copy_min = "64K"
//! zero_copy_local = false    # SEND_ZC for clients on this host too
//! connections_per_shard_max = 4096
//! head_timeout = "10s"
//! idle_timeout = "60s"
//! send_timeout = "30s"
//! body_timeout = "30s"
//! ingest_workers = 8
//! copy_budget = "256M"       # bytes/s for background copies between the tiers
//! copy_yield_depth = 1       # copies wait while the shards have this many device reads out
//! copy_yield_max = "5ms"     # ... but at most this long per chunk I/O
//! copy_slow_io = "50ms"      # a slower copy I/O halves the copy rate and pauses it (0 = never)
//! copy_io_size = "128K"      # copies read and write in pieces of at most this (0 = whole chunks)
//! copy_latency_target = "5%" # copies slow down while they raise the clients' read p99 more (0 = off)
//! migration_commit_interval = "10m" # copies serve at once, durable when idle or this old
//! migration_commit_settle = "20s"   # ... under load, copies pause this long before the commit
//! # rate_half_life = "30m"   # unset: the tiering policy chooses it from the traffic
//! # In a cluster (all four needed; see `reel_node::cluster`):
//! # manager = "http://10.1.0.1:7100,http://10.1.0.2:7100"
//! # cluster_token_file = "/etc/reel/token"
//! # peer_listen = "10.1.0.5:7001"   # the inter-server listener (token on every request)
//! # node_name = "edge-1"            # default: the host name
//! # advertise = "203.0.113.5:8080"  # default: listen (needed when it is 0.0.0.0)
//! # peer_advertise = "10.1.0.5:7001"
//!
//! [policy]                   # tiering thresholds (reel_policy::PolicyConfig)
//! # promote_per_h = 1.0      # unset: 1.5 views within about one half-life
//! # demote_per_h = 0.25      # unset: a quarter of the promote threshold
//! min_residency_s = 600
//! swap_margin = 1.0
//! ```

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{ArgAction, Args, FromArgMatches};
use reel_node::{Node, NodeConfig, Tiers};
use reel_store::{EngineError, Volume};

use crate::units::human_bytes;

/// `reel node`'s arguments: the devices, the config file and every setting of
/// [`NodeConfig`] (defined there once, for the library, the flags and the file).
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Primary (fast) device or file holding a formatted volume (`reel format`).
    #[arg(long)]
    pub primary: Option<PathBuf>,
    /// Secondary (large, slower) device or file holding a formatted volume. Every asset is
    /// copied to it in the background (write-back); assets not on the primary are served
    /// from it.
    #[arg(long)]
    pub secondary: Option<PathBuf>,
    /// TOML file with any of these settings (the environment and flags override it). Keys are
    /// the flag names with `_` for `-`, e.g. `read_bufs_per_shard = 256`; the policy's in a
    /// `[policy]` table. Each flag also reads `REEL_<FLAG_NAME>`, e.g. `REEL_COPY_BUDGET=64M`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub node: NodeConfig,
}

/// The settings after layering defaults, file, environment and flags.
#[derive(Debug)]
pub struct Resolved {
    pub primary: PathBuf,
    pub secondary: Option<PathBuf>,
    pub node: NodeConfig,
}

/// `reel node`'s command line, each flag also read from `REEL_<FLAG_NAME>`.
fn command() -> clap::Command {
    NodeArgs::augment_args(clap::Command::new("node")).mut_args(|a| {
        let env = a
            .get_long()
            .map(|l| format!("REEL_{}", l.to_uppercase().replace('-', "_")));
        match env {
            Some(env) => a.env(env),
            None => a,
        }
    })
}

/// Makes each key of a config file the default of its flag: the key is the flag's name with
/// `_` (or, in the `[policy]` table and for `pin`, the setting's field name). A key that names
/// no flag, or a value its flag rejects, is an error that names the key.
fn with_file_defaults(mut cmd: clap::Command, file: &toml::Table) -> anyhow::Result<clap::Command> {
    let mut keys: Vec<(String, &toml::Value)> = Vec::new();
    for (key, value) in file {
        match (key.as_str(), value) {
            ("policy", toml::Value::Table(t)) => {
                keys.extend(t.iter().map(|(k, v)| (k.clone(), v)));
            }
            _ => keys.push((key.clone(), value)),
        }
    }
    for (key, value) in keys {
        let flag = key.replace('_', "-");
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()) || a.get_id() == key.as_str())
        else {
            bail!("unknown key {key:?}: it names no flag of `reel node`");
        };
        let id = arg.get_id().clone();
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!("{key}: {other} is not a number, a string or a boolean"),
        };
        if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
            let Some(b) = value.as_bool() else {
                bail!("{key}: {value} is not true or false");
            };
            // `pin = false` is `--no-pin`: the key names the setting, the flag its negation.
            let negated = arg.get_long().and_then(|l| l.strip_prefix("no-")) == Some(&flag);
            cmd = cmd.mut_arg(id, |a| a.default_value((b != negated).to_string()));
            continue;
        } else if let (Some(long), false) = (arg.get_long(), value.is_bool()) {
            // The flag's own parser checks the value.
            let given = format!("--{long}={text}");
            if let Err(e) = command().try_get_matches_from(["node", given.as_str()]) {
                bail!("{key} = {value}: {}", clap_reason(&e));
            }
        } else {
            bail!("{key}: {value} is not a valid value");
        }
        cmd = cmd.mut_arg(id, |a| a.default_value(text));
    }
    Ok(cmd)
}

/// What a clap error says, without its "error: " and its pointer to `--help` (the edge adds
/// its own prefix).
fn clap_reason(e: &clap::Error) -> anyhow::Error {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    anyhow::anyhow!("{}", first.trim_start_matches("error: "))
}

/// Parses `reel node`'s arguments (`argv[0]` is the command's name) over the config file and
/// the environment: defaults < file < environment < flags.
pub fn resolve<T: AsRef<OsStr>>(argv: &[T]) -> anyhow::Result<Resolved> {
    let argv: Vec<OsString> = argv.iter().map(|a| a.as_ref().to_owned()).collect();
    let first = command()
        .try_get_matches_from(&argv)
        .map_err(|e| clap_reason(&e))?;
    let mut cmd = command();
    if let Some(p) = first.get_one::<PathBuf>("config") {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("cannot read config file {}", p.display()))?;
        let file: toml::Table = toml::from_str(&text)
            .with_context(|| format!("config file {} is not valid", p.display()))?;
        cmd = with_file_defaults(cmd, &file)
            .with_context(|| format!("config file {} is not valid", p.display()))?;
    }
    let m = cmd
        .try_get_matches_from(&argv)
        .map_err(|e| clap_reason(&e))?;
    let args = NodeArgs::from_arg_matches(&m).map_err(|e| clap_reason(&e))?;
    let primary = args.primary.ok_or_else(|| {
        anyhow::anyhow!("no primary device: pass --primary DEV (or `primary = ...` in --config)")
    })?;
    // The cluster flags are checked before any device is opened.
    args.node.cluster().map_err(anyhow::Error::msg)?;
    Ok(Resolved {
        primary,
        secondary: args.secondary,
        node: args.node,
    })
}

fn open(path: &Path, tier: &str) -> anyhow::Result<Volume> {
    Volume::open(path).map_err(|e| match e {
        EngineError::NotAVolume { .. } | EngineError::Locked { .. } => {
            anyhow::Error::new(e).context(format!("cannot open the {tier} device"))
        }
        other => anyhow::Error::new(other)
            .context(format!("cannot open the {tier} device {}", path.display())),
    })
}

/// Serves as told. `args` were checked by the command line already; the arguments are parsed
/// again here, over the config file and the environment (see [`resolve`]).
pub fn run(_args: &NodeArgs) -> anyhow::Result<()> {
    crate::require_io_uring()?;
    // `reel node ...`: the subcommand's arguments start at "node".
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    let r = resolve(&argv)?;
    let primary = open(&r.primary, "primary")?;
    let secondary = match &r.secondary {
        Some(p) if p == &r.primary => bail!("--secondary names the same device as --primary"),
        Some(p) => Some(Arc::new(open(p, "secondary")?)),
        None => None,
    };
    let st = primary.stats();
    let report = primary.open_report().clone();
    let node = Node::start(
        r.node,
        Tiers {
            primary: Arc::new(primary),
            secondary,
        },
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("cannot install signal handler")?;
    }
    if let Some(peer) = node.peer_addr() {
        // Before the "listening on" line, which tells a harness the node is up.
        println!("reel node: inter-server listener on {peer} (cluster token required)");
    }
    println!(
        "reel node: listening on {} (primary {}: {} assets, {} of {} used; {} records replayed)",
        node.local_addr(),
        r.primary.display(),
        st.assets,
        human_bytes(st.used_bytes),
        human_bytes(st.capacity_bytes),
        report.records_replayed,
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("reel node: stopping");
    node.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;

    /// A config file holding `text`, in a directory that lives as long as the first value.
    fn config_file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = dir.path().join("node.toml");
        std::fs::write(&cfg, text).expect("write");
        let path = cfg.to_str().expect("utf-8 path").to_string();
        (dir, path)
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let (_dir, cfg) = config_file(
            "primary = \"/p\"\nlisten = \"0.0.0.0:9000\"\nread_bufs_per_shard = 64\nstream_depth = 2\n\
             head_timeout = \"2s\"\nidle_timeout = 5\nzero_copy_min = \"16K\"\ncopy_io_size = \"64K\"\n\
             copy_latency_target = \"10%\"\n",
        );
        let cfg = cfg.as_str();
        let r = resolve(&["node", "--config", cfg, "--stream-depth", "4"]).expect("resolve");
        assert_eq!(r.primary, PathBuf::from("/p"));
        assert_eq!(r.node.listen, "0.0.0.0:9000".parse().expect("addr"));
        assert_eq!(r.node.read_bufs_per_shard, 64);
        assert_eq!(r.node.stream_depth, 4, "the flag wins");
        assert_eq!(r.node.head_timeout, Duration::from_secs(2));
        assert_eq!(r.node.idle_timeout, Duration::from_secs(5));
        assert_eq!(r.node.zero_copy_min_bytes, 16 << 10);
        assert_eq!(r.node.send_timeout, NodeConfig::default().send_timeout);
        assert_eq!(r.node.throttle.io_bytes_max, NonZeroUsize::new(64 << 10));
        assert_eq!(r.node.throttle.latency_rise_max, Some(0.1));
        let r = resolve(&[
            "node",
            "--config",
            cfg,
            "--copy-io-size",
            "0",
            "--copy-latency-target",
            "0",
        ])
        .expect("resolve");
        assert_eq!(r.node.throttle.io_bytes_max, None, "0: whole chunks");
        assert_eq!(
            r.node.throttle.latency_rise_max, None,
            "the flag wins; 0: no guard"
        );
    }

    #[test]
    fn todays_files_keep_their_meaning_policy_table_and_booleans_included() {
        let (_dir, cfg) = config_file(
            "primary = \"/p\"\nsecondary = \"/s\"\npin = false\nzero_copy_local = true\n\
             copy_budget = \"0\"\ncopy_slow_io = 0\ncopy_yield_depth = 0\ncopy_yield_max = \"2ms\"\n\
             read_buf = 524288\nmigration_commit_interval = \"1m\"\n\
             [policy]\npromote_per_h = 2.5\ndemote_per_h = 0.5\nmin_residency_s = 60\nswap_margin = 0.5\n",
        );
        let cfg = cfg.as_str();
        let r = resolve(&["node", "--config", cfg]).expect("resolve");
        assert_eq!(r.secondary, Some(PathBuf::from("/s")));
        let n = &r.node;
        assert!(!n.pin && n.zero_copy_local);
        assert_eq!(
            n.throttle.bytes_per_s_max,
            reel_policy::CopyBudget::Unlimited
        );
        assert_eq!((n.throttle.slow_io, n.throttle.yield_depth), (None, None));
        assert_eq!(n.throttle.yield_wait_max, Duration::from_millis(2));
        assert_eq!(n.read_buf_bytes, 512 << 10);
        assert_eq!(n.migration_commit_interval, Duration::from_secs(60));
        assert_eq!(
            (n.policy.promote_per_h, n.policy.demote_per_h),
            (Some(2.5), Some(0.5))
        );
        assert_eq!(
            (n.policy.min_residency_s, n.policy.swap_margin),
            (60.0, Some(0.5))
        );
        // Flags still win over the [policy] table.
        let r = resolve(&["node", "--config", cfg, "--min-residency", "2m"]).expect("resolve");
        assert_eq!(r.node.policy.min_residency_s, 120.0);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = dir.path().join("node.toml");
        std::fs::write(&cfg, "primary = \"/p\"\nread_bufz = 3\n").expect("write");
        let argv = ["node", "--config", cfg.to_str().expect("utf-8 path")];
        let e = format!("{:#}", resolve(&argv).expect_err("unknown key"));
        assert!(e.contains("read_bufz"), "{e}");
        std::fs::write(&cfg, "primary = \"/p\"\nhead_timeout = \"soon\"\n").expect("write");
        let e = format!("{:#}", resolve(&argv).expect_err("bad duration"));
        assert!(e.contains("head_timeout"), "{e}");
        std::fs::write(&cfg, "primary = \"/p\"\n[policy]\nswap_marginz = 1\n").expect("write");
        let e = format!("{:#}", resolve(&argv).expect_err("unknown policy key"));
        assert!(e.contains("swap_marginz"), "{e}");
        let e = format!("{:#}", resolve(&["node"]).expect_err("no primary"));
        assert!(e.contains("--primary"), "{e}");
    }

    #[test]
    fn cluster_settings_come_from_the_file_and_the_flags() {
        let (_dir, cfg) = config_file(
            "primary = \"/p\"\nmanager = \"http://10.0.0.1:7100,http://10.0.0.2:7100\"\n\
             peer_listen = \"127.0.0.1:7001\"\nnode_name = \"edge-1\"\ncluster_token_file = \"/t\"\n",
        );
        let r = resolve(&["node", "--config", cfg.as_str()]).expect("resolve");
        let managers: Vec<String> = r.node.manager.iter().map(|m| m.to_string()).collect();
        assert_eq!(managers, ["http://10.0.0.1:7100", "http://10.0.0.2:7100"]);
        assert_eq!(
            r.node.peer_listen,
            Some("127.0.0.1:7001".parse().expect("addr"))
        );
        assert_eq!(r.node.node_name.as_deref(), Some("edge-1"));
        let r = resolve(&[
            "node",
            "--config",
            cfg.as_str(),
            "--manager",
            "http://10.0.0.3:7100",
        ])
        .expect("resolve");
        assert_eq!(r.node.manager.len(), 1, "the flag wins");
        // Checked before any device is opened, naming the fix.
        let e = format!(
            "{:#}",
            resolve(&["node", "--primary", "/p", "--manager", "http://m:1"]).expect_err("no token")
        );
        assert!(e.contains("--cluster-token-file"), "{e}");
    }

    #[test]
    fn the_environment_overrides_the_file_and_flags_override_the_environment() {
        let (_dir, cfg) =
            config_file("primary = \"/p\"\ningest_workers = 2\ningest_queue_max = 3\n");
        let cfg = cfg.as_str();
        // Settings no other test here looks at: the tests share the process's environment.
        std::env::set_var("REEL_INGEST_WORKERS", "5");
        std::env::set_var("REEL_INGEST_QUEUE_MAX", "6");
        std::env::set_var("REEL_NO_PIN", "true");
        let r = resolve(&["node", "--config", cfg, "--ingest-queue-max", "7"]);
        for v in [
            "REEL_INGEST_WORKERS",
            "REEL_INGEST_QUEUE_MAX",
            "REEL_NO_PIN",
        ] {
            std::env::remove_var(v);
        }
        let n = r.expect("resolve").node;
        assert_eq!(n.ingest_workers, 5, "the environment wins over the file");
        assert_eq!(n.ingest_queue_max, 7, "the flag wins over the environment");
        assert!(!n.pin, "REEL_NO_PIN=true is --no-pin");
        let r = resolve(&["node", "--primary", "/p", "--no-pin"]).expect("resolve");
        assert!(!r.node.pin);
    }
}

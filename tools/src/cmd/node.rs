//! `reel node`: serve a volume over HTTP. Settings come from defaults, then an optional TOML
//! file (`--config`), then flags — each later source overrides the earlier one.
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
//! rate_half_life = "30m"
//!
//! [policy]                   # tiering thresholds (reel_policy::PolicyConfig)
//! promote_per_h = 1.0
//! demote_per_h = 0.25
//! min_residency_s = 600
//! swap_margin = 1.0
//! ```

use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use reel_node::{Node, NodeConfig, Tiers};
use reel_policy::CopyBudget;
use reel_store::{EngineError, Volume};
use serde::Deserialize;

use crate::units::{
    human_bytes, parse_duration, parse_duration_or_zero, parse_percent, parse_size,
};

#[derive(Args, Debug, Default)]
pub struct NodeArgs {
    /// Primary (fast) device or file holding a formatted volume (`reel format`).
    #[arg(long)]
    pub primary: Option<PathBuf>,
    /// Secondary (large, slower) device or file holding a formatted volume. Every asset is
    /// copied to it in the background (write-back); assets not on the primary are served
    /// from it.
    #[arg(long)]
    pub secondary: Option<PathBuf>,
    /// Address to serve HTTP on, e.g. 0.0.0.0:8080 (port 0 picks a free port; the chosen
    /// address is printed). Default 127.0.0.1:8080.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Shard threads, one ring and listener each (default: one per CPU).
    #[arg(long)]
    pub shards: Option<usize>,
    /// TOML file with any of these settings (flags override it). Keys are the flag names with
    /// `_` for `-`, e.g. `read_bufs_per_shard = 256`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Do not pin shard threads to CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Bytes per registered read buffer, the unit of device reads and sends [default: 1M].
    #[arg(long, value_parser = parse_size)]
    pub read_buf: Option<u64>,
    /// Registered read buffers per shard: bounds reads in flight and buffers awaiting
    /// zero-copy notifications [default: 128].
    #[arg(long)]
    pub read_bufs_per_shard: Option<usize>,
    /// Chunks read ahead per stream [default: 3].
    #[arg(long)]
    pub stream_depth: Option<usize>,
    /// Payload sends of at least this size use SEND_ZC, smaller ones a plain send
    /// [default: 64K].
    #[arg(long, value_parser = parse_size)]
    pub zero_copy_min: Option<u64>,
    /// Use SEND_ZC for clients on this host too (loopback). Off by default: the kernel copies
    /// zero-copy data delivered to a local socket anyway, so a plain send is cheaper there.
    #[arg(long)]
    pub zero_copy_local: bool,
    /// Connections per shard; further ones get 503 [default: 4096].
    #[arg(long)]
    pub connections_per_shard_max: Option<usize>,
    /// Time allowed for a request head after its first byte [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    pub head_timeout: Option<Duration>,
    /// Time a keep-alive connection may idle between requests [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Time a client may take no response bytes before it is dropped [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    pub send_timeout: Option<Duration>,
    /// Time an upload may deliver no body bytes before it is aborted [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    pub body_timeout: Option<Duration>,
    /// Threads that run uploads and deletes [default: 8].
    #[arg(long)]
    pub ingest_workers: Option<usize>,
    /// Uploads waiting for a worker beyond which new ones get 503 [default: 256].
    #[arg(long)]
    pub ingest_queue_max: Option<usize>,
    /// Bandwidth budget of background copies between the tiers, bytes/s; 0 = unlimited
    /// [default: 256M].
    #[arg(long, value_parser = parse_size)]
    pub copy_budget: Option<u64>,
    /// Half-life of each asset's decaying request rate [default: 30m].
    #[arg(long, value_parser = parse_duration)]
    pub rate_half_life: Option<Duration>,
    /// A background copy submits its next chunk I/O only while the shards have fewer than this
    /// many device reads in flight for responses (waiting at most --copy-yield-max); 0 = never
    /// wait [default: 1].
    #[arg(long)]
    pub copy_yield_depth: Option<u64>,
    /// The longest a copy waits for foreground reads per chunk I/O [default: 5ms].
    #[arg(long, value_parser = parse_duration)]
    pub copy_yield_max: Option<Duration>,
    /// A copy chunk I/O slower than this means a congested device: the copies' rate is halved
    /// (regaining 1/8 of --copy-budget a second) and they pause 10x as long as that I/O took
    /// (at most 2 s); 0 = never [default: 50ms].
    #[arg(long, value_parser = parse_duration_or_zero)]
    pub copy_slow_io: Option<Duration>,
    /// The largest device I/O of a copy: chunks are read and written in pieces of at most this
    /// (whole 4 KiB blocks), one after another, so a foreground read queued behind one waits
    /// for a piece, not a chunk; 0 = whole chunks [default: 128K].
    #[arg(long, value_parser = parse_size)]
    pub copy_io_size: Option<u64>,
    /// How far the p99 of the clients' device reads may rise while copies run (e.g. 5% or
    /// 0.05): within --copy-budget, copies run at the rate that keeps it there, measured as
    /// they go (while clients read, they stop for 2 s after every 4 s to measure them without
    /// copies); 0 = copies run at the budget [default: 5%].
    #[arg(long, value_parser = parse_percent)]
    pub copy_latency_target: Option<f64>,
    /// Copies between the tiers serve as soon as they are written and are made durable together
    /// (one device flush pair per tier, which stalls reads) once the node has served no one for
    /// 2 s, or when the oldest has waited this long under load (also before a drop needs one,
    /// and at a graceful stop). A crash forgets the copies not yet committed (never an asset:
    /// the source still holds it), which are redone [default: 10m].
    #[arg(long, value_parser = parse_duration)]
    pub migration_commit_interval: Option<Duration>,
    /// Before a commit under load, copies stop writing for this long (counted from the last
    /// copy's end, time paused included), so the device has written their data back and the
    /// commit's flush is short (on this project's VM a flush
    /// right after copying stalled reads 160–205 ms; 20 s later, 1–8 ms) [default: 20s].
    #[arg(long, value_parser = parse_duration)]
    pub migration_commit_settle: Option<Duration>,
    /// Promote an asset to the primary when its rate reaches this many views per hour
    /// [default: 1].
    #[arg(long)]
    pub promote_per_h: Option<f64>,
    /// Demote (drop the clean primary copy) when the rate falls below this many views per
    /// hour; must not exceed the promote threshold [default: 0.25].
    #[arg(long)]
    pub demote_per_h: Option<f64>,
    /// A copy stays on the primary at least this long [default: 10m].
    #[arg(long, value_parser = parse_duration)]
    pub min_residency: Option<Duration>,
    /// Largest request head accepted; larger ones get 431 [default: 16K].
    #[arg(long, value_parser = parse_size)]
    pub head_bytes_max: Option<u64>,
}

/// A size in a config file: a number of bytes or a string with a suffix.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    fn bytes(&self, key: &str) -> anyhow::Result<u64> {
        match self {
            SizeValue::Bytes(b) => Ok(*b),
            SizeValue::Text(t) => parse_size(t).map_err(|e| anyhow::anyhow!("{key}: {e}")),
        }
    }
}

/// A share in a config file: a number (a fraction) or a string such as "5%".
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum PercentValue {
    Fraction(f64),
    Text(String),
}

impl PercentValue {
    fn fraction(&self, key: &str) -> anyhow::Result<f64> {
        let text = match self {
            PercentValue::Fraction(f) => f.to_string(),
            PercentValue::Text(t) => t.clone(),
        };
        parse_percent(&text).map_err(|e| anyhow::anyhow!("{key}: {e}"))
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum DurationValue {
    Seconds(f64),
    Text(String),
}

impl DurationValue {
    fn duration(&self, key: &str) -> anyhow::Result<Duration> {
        match self {
            DurationValue::Seconds(s) if *s > 0.0 && s.is_finite() => {
                Ok(Duration::from_secs_f64(*s))
            }
            DurationValue::Seconds(s) => bail!("{key}: {s} is not a positive number of seconds"),
            DurationValue::Text(t) => parse_duration(t).map_err(|e| anyhow::anyhow!("{key}: {e}")),
        }
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    primary: Option<PathBuf>,
    secondary: Option<PathBuf>,
    listen: Option<String>,
    shards: Option<usize>,
    pin: Option<bool>,
    read_buf: Option<SizeValue>,
    read_bufs_per_shard: Option<usize>,
    stream_depth: Option<usize>,
    zero_copy_min: Option<SizeValue>,
    zero_copy_local: Option<bool>,
    connections_per_shard_max: Option<usize>,
    head_timeout: Option<DurationValue>,
    idle_timeout: Option<DurationValue>,
    send_timeout: Option<DurationValue>,
    body_timeout: Option<DurationValue>,
    ingest_workers: Option<usize>,
    ingest_queue_max: Option<usize>,
    head_bytes_max: Option<SizeValue>,
    copy_budget: Option<SizeValue>,
    rate_half_life: Option<DurationValue>,
    copy_yield_depth: Option<u64>,
    copy_yield_max: Option<DurationValue>,
    copy_slow_io: Option<DurationValue>,
    copy_io_size: Option<SizeValue>,
    copy_latency_target: Option<PercentValue>,
    migration_commit_interval: Option<DurationValue>,
    migration_commit_settle: Option<DurationValue>,
    /// The tiering policy's settings (`reel_policy::PolicyConfig` field names).
    policy: Option<reel_policy::PolicyConfig>,
}

/// The settings after merging defaults, file and flags.
#[derive(Debug)]
pub struct Resolved {
    pub primary: PathBuf,
    pub secondary: Option<PathBuf>,
    pub node: NodeConfig,
}

/// `copy_io_size` as the node's setting: 0 means whole chunks.
fn io_max(bytes: u64) -> Option<NonZeroUsize> {
    NonZeroUsize::new(bytes.min(usize::MAX as u64) as usize)
}

/// A share as the latency guard's setting: 0 means no guard.
fn rise_max(fraction: f64) -> Option<f64> {
    (fraction > 0.0).then_some(fraction)
}

pub fn resolve(args: &NodeArgs) -> anyhow::Result<Resolved> {
    let file = match &args.config {
        None => FileConfig::default(),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("config file {} is not valid", p.display()))?
        }
    };
    let mut c = NodeConfig::default();
    let primary = args.primary.clone().or(file.primary).ok_or_else(|| {
        anyhow::anyhow!("no primary device: pass --primary DEV (or `primary = ...` in --config)")
    })?;
    let secondary = args.secondary.clone().or(file.secondary);
    if let Some(l) = &file.listen {
        c.listen = l
            .parse()
            .with_context(|| format!("listen = {l:?} is not an address like 0.0.0.0:8080"))?;
    }
    if let Some(l) = args.listen {
        c.listen = l;
    }
    macro_rules! take {
        ($field:ident, $conv:expr) => {
            if let Some(v) = &file.$field {
                c.$field = $conv(v, stringify!($field))?;
            }
        };
    }
    let plain = |v: &usize, _k: &str| -> anyhow::Result<usize> { Ok(*v) };
    let size = |v: &SizeValue, k: &str| -> anyhow::Result<usize> {
        usize::try_from(v.bytes(k)?).context("size too large")
    };
    let dur = |v: &DurationValue, k: &str| v.duration(k);
    take!(shards, plain);
    take!(read_bufs_per_shard, plain);
    take!(stream_depth, plain);
    take!(connections_per_shard_max, plain);
    take!(ingest_workers, plain);
    take!(ingest_queue_max, plain);
    take!(head_timeout, dur);
    take!(idle_timeout, dur);
    take!(send_timeout, dur);
    take!(body_timeout, dur);
    take!(rate_half_life, dur);
    take!(migration_commit_interval, dur);
    take!(migration_commit_settle, dur);
    if let Some(v) = &file.copy_yield_max {
        c.throttle.yield_wait_max = dur(v, "copy_yield_max")?;
    }
    if let Some(v) = &file.copy_slow_io {
        // 0 (never back off) is allowed here, unlike other durations.
        let d = match v {
            DurationValue::Seconds(s) if *s == 0.0 => Duration::ZERO,
            DurationValue::Text(t) => {
                parse_duration_or_zero(t).map_err(|e| anyhow::anyhow!("copy_slow_io: {e}"))?
            }
            v => dur(v, "copy_slow_io")?,
        };
        c.throttle.slow_io = (!d.is_zero()).then_some(d);
    }
    if let Some(v) = file.copy_yield_depth {
        c.throttle.yield_depth = NonZeroU64::new(v);
    }
    take!(head_bytes_max, size);
    if let Some(v) = &file.read_buf {
        c.read_buf_bytes = size(v, "read_buf")?;
    }
    if let Some(v) = &file.zero_copy_min {
        c.zero_copy_min_bytes = size(v, "zero_copy_min")?;
    }
    if let Some(p) = file.pin {
        c.pin = p;
    }
    if let Some(v) = &file.copy_io_size {
        c.throttle.io_bytes_max = io_max(v.bytes("copy_io_size")?);
    }
    if let Some(v) = &file.copy_latency_target {
        c.throttle.latency_rise_max = rise_max(v.fraction("copy_latency_target")?);
    }
    if let Some(v) = &file.copy_budget {
        c.throttle.bytes_per_s_max = CopyBudget::from_bytes_per_s(v.bytes("copy_budget")?);
    }
    if let Some(p) = &file.policy {
        c.policy = p.clone();
    }
    if let Some(z) = file.zero_copy_local {
        c.zero_copy_local = z;
    }
    // Flags last.
    let set = |dst: &mut usize, v: Option<usize>| {
        if let Some(v) = v {
            *dst = v;
        }
    };
    set(&mut c.shards, args.shards);
    set(&mut c.read_bufs_per_shard, args.read_bufs_per_shard);
    set(&mut c.stream_depth, args.stream_depth);
    set(
        &mut c.connections_per_shard_max,
        args.connections_per_shard_max,
    );
    set(&mut c.ingest_workers, args.ingest_workers);
    set(&mut c.ingest_queue_max, args.ingest_queue_max);
    set(&mut c.read_buf_bytes, args.read_buf.map(|v| v as usize));
    set(
        &mut c.zero_copy_min_bytes,
        args.zero_copy_min.map(|v| v as usize),
    );
    set(
        &mut c.head_bytes_max,
        args.head_bytes_max.map(|v| v as usize),
    );
    for (dst, v) in [
        (&mut c.head_timeout, args.head_timeout),
        (&mut c.idle_timeout, args.idle_timeout),
        (&mut c.send_timeout, args.send_timeout),
        (&mut c.body_timeout, args.body_timeout),
        (&mut c.rate_half_life, args.rate_half_life),
        (&mut c.throttle.yield_wait_max, args.copy_yield_max),
        (
            &mut c.migration_commit_interval,
            args.migration_commit_interval,
        ),
        (&mut c.migration_commit_settle, args.migration_commit_settle),
    ] {
        if let Some(v) = v {
            *dst = v;
        }
    }
    if args.no_pin {
        c.pin = false;
    }
    if args.zero_copy_local {
        c.zero_copy_local = true;
    }
    if let Some(b) = args.copy_budget {
        c.throttle.bytes_per_s_max = CopyBudget::from_bytes_per_s(b);
    }
    if let Some(d) = args.copy_slow_io {
        c.throttle.slow_io = (!d.is_zero()).then_some(d);
    }
    if let Some(t) = args.copy_latency_target {
        c.throttle.latency_rise_max = rise_max(t);
    }
    if let Some(n) = args.copy_io_size {
        c.throttle.io_bytes_max = io_max(n);
    }
    if let Some(d) = args.copy_yield_depth {
        c.throttle.yield_depth = NonZeroU64::new(d);
    }
    if let Some(v) = args.promote_per_h {
        c.policy.promote_per_h = v;
    }
    if let Some(v) = args.demote_per_h {
        c.policy.demote_per_h = v;
    }
    if let Some(v) = args.min_residency {
        c.policy.min_residency_s = v.as_secs_f64();
    }
    Ok(Resolved {
        primary,
        secondary,
        node: c,
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

pub fn run(args: &NodeArgs) -> anyhow::Result<()> {
    crate::require_io_uring()?;
    let r = resolve(args)?;
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
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = dir.path().join("node.toml");
        std::fs::write(
            &cfg,
            "primary = \"/p\"\nlisten = \"0.0.0.0:9000\"\nread_bufs_per_shard = 64\nstream_depth = 2\n\
             head_timeout = \"2s\"\nidle_timeout = 5\nzero_copy_min = \"16K\"\ncopy_io_size = \"64K\"\n\
             copy_latency_target = \"10%\"\n",
        )
        .expect("write");
        let args = NodeArgs {
            config: Some(cfg.clone()),
            stream_depth: Some(4),
            ..NodeArgs::default()
        };
        let r = resolve(&args).expect("resolve");
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
        let args = NodeArgs {
            config: Some(cfg.clone()),
            copy_io_size: Some(0),
            copy_latency_target: Some(0.0),
            ..NodeArgs::default()
        };
        let r = resolve(&args).expect("resolve");
        assert_eq!(r.node.throttle.io_bytes_max, None, "0: whole chunks");
        assert_eq!(
            r.node.throttle.latency_rise_max, None,
            "the flag wins; 0: no guard"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = dir.path().join("node.toml");
        std::fs::write(&cfg, "primary = \"/p\"\nread_bufz = 3\n").expect("write");
        let args = NodeArgs {
            config: Some(cfg.clone()),
            ..NodeArgs::default()
        };
        let e = format!("{:#}", resolve(&args).expect_err("unknown key"));
        assert!(e.contains("read_bufz"), "{e}");
        std::fs::write(&cfg, "primary = \"/p\"\nhead_timeout = \"soon\"\n").expect("write");
        let e = format!("{:#}", resolve(&args).expect_err("bad duration"));
        assert!(e.contains("head_timeout"), "{e}");
        let e = format!(
            "{:#}",
            resolve(&NodeArgs::default()).expect_err("no primary")
        );
        assert!(e.contains("--primary"), "{e}");
    }
}

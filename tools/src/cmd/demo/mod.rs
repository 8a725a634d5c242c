//! `reel demo`: the README's "run it" command. By default it is a cluster on loopback
//! ([`cluster`]): a manager, a library node and two edges as child processes, titles ingested
//! through the manager, a skewed load from each edge's clients, relays, a live view per node and
//! a summary. `reel demo --single` is the one-node demo this file runs:
//!
//! No root, no setup: it formats two files in a new
//! temporary directory (under /var/tmp: tmpfs has no O_DIRECT) as a small primary and a larger
//! secondary volume, ingests a library of synthetic titles — the back catalogue straight into
//! the secondary volume, the new releases over HTTP `PUT` to a node started in this process
//! (they land on the primary and are written back) —, then drives a paced, skewed load of
//! keep-alive `GET`s (full and ranges) against the node for `--duration`, with a live line every
//! second: throughput, requests/s, p99 latency, the share of bytes served from the primary, how
//! full both tiers are, and the migrations so far (promotions, demotions, evictions,
//! write-backs, from `/metrics`). Halfway the hot set shifts, so titles are promoted as they
//! heat up and demoted or evicted as they cool. Every response is compared byte for byte with
//! the generator. At the end: a summary, the node stops, both volumes are reopened (recovery)
//! and scrubbed, and the directory is removed. Exits non-zero if a wrong byte was served.
//!
//! The load is paced (`--rate` requests per second in all) because the tiering thresholds are
//! request rates: derived from the offered rate, they mean the same on any machine. Seconds stand
//! in for the hours a production node uses (5 s half-life instead of 30 min).
//!
//! Registered I/O buffers count against `RLIMIT_MEMLOCK` for a user without `CAP_IPC_LOCK`
//! (often 8 MiB), so the demo sizes chunks and buffer pools to fit the limit it finds.
//!
//! The modules: [`library`] (the titles, their content and their ingest), [`load`] (the paced
//! clients that fetch and verify) and [`view`] (the node's metrics, the live line and the
//! summary).

mod cluster;
mod library;
mod load;
mod view;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use reel_http::client::Conn;
use reel_node::{Node, NodeConfig, Tiers};
use reel_policy::PolicyConfig;
use reel_store::driver::{Driver, DriverConfig};
use reel_store::format::GeometryOptions;
use reel_store::{FormatOptions, Volume};

use crate::units::{human_bytes, parse_duration, parse_size};

use library::{ingest_back_catalogue, library, names, upload_new_releases};
use load::{hot_sets, Load, FULL_SHARE, HOT_SHARE};
use view::{drive, print_summary, Scraper};

const MIB: u64 = 1 << 20;
/// Promote at this share of all requests, demote below this one (converted to views per hour
/// from the offered rate; a range counts as the fraction of the title it covers, so a title's
/// views are at least `FULL_SHARE` of its requests).
const PROMOTE_SHARE: f64 = 0.02;
const DEMOTE_SHARE: f64 = 0.008;
/// Bytes per second the node may copy between the tiers.
const COPY_BUDGET: u64 = 128 * MIB;
/// Largest response body kept (a PUT's answer, a `/metrics` page).
const BODY_MAX: u64 = 64 * MIB;

/// A keep-alive connection to the node: 5 s to connect, 30 s for every read and write.
fn connect(addr: SocketAddr) -> Result<Conn> {
    let c = Conn::connect(addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    c.stream().set_read_timeout(Some(Duration::from_secs(30)))?;
    c.stream()
        .set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(c)
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The one-node demo instead of the cluster: a node with two file-backed tiers, its
    /// promotions and demotions under a skewed load whose hot set shifts halfway.
    #[arg(long)]
    pub single: bool,
    /// How long to drive the load: seconds, or with a suffix (90s, 2m). (--single: the hot set
    /// shifts halfway.)
    #[arg(long, value_parser = parse_duration, default_value = "60")]
    pub duration: Duration,
    /// Titles in the library (deterministic pseudo-random content; 2–6 MiB each in the
    /// cluster, 4–16 MiB with --single).
    #[arg(long, default_value_t = 30)]
    pub assets: u32,
    /// Requests per second offered by all clients together, paced [default: 40 in the
    /// cluster, 100 with --single, where the tiering thresholds are derived from it].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Client threads, one keep-alive HTTP/1.1 connection each [default: 3 per edge in the
    /// cluster, 4 with --single].
    #[arg(long)]
    pub clients: Option<usize>,
    /// Size of the primary volume file (the library node's in the cluster): small on purpose,
    /// so it cannot hold the library [default: 64M in the cluster, 128M with --single].
    #[arg(long, value_parser = parse_size)]
    pub primary_size: Option<u64>,
    /// Where to make the demo's temporary directory (default /var/tmp; it must be on a
    /// filesystem with O_DIRECT, such as ext4 or xfs, not tmpfs).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// With --single: keep the temporary directory (both volume files) afterwards. In the
    /// cluster: leave the manager and the nodes running after the summary and print URLs to
    /// try (Ctrl-C stops them; the directory is kept).
    #[arg(long)]
    pub keep: bool,
}

impl DemoArgs {
    pub(crate) fn rate(&self) -> f64 {
        self.rate.unwrap_or(if self.single { 100.0 } else { 40.0 })
    }

    pub(crate) fn clients(&self) -> usize {
        self.clients.unwrap_or(if self.single { 4 } else { 3 })
    }

    pub(crate) fn primary_size(&self) -> u64 {
        self.primary_size
            .unwrap_or(if self.single { 128 * MIB } else { 64 * MIB })
    }
}

/// Chunk size and buffer pools of the demo's volumes and node.
#[derive(Clone, Copy, Debug)]
struct Buffers {
    chunk: u64,
    shards: usize,
    bufs_per_shard: usize,
    workers: usize,
}

impl Buffers {
    /// Bytes the node registers: shard pools, ingest workers and the scheduler (8 chunks each).
    fn node_bytes(&self) -> u64 {
        self.shards as u64 * self.bufs_per_shard as u64 * self.chunk
            + (self.workers as u64 + 1) * 8 * self.chunk
    }
}

/// The `RLIMIT_MEMLOCK` that applies to registered buffers; `None` when it does not apply
/// (`CAP_IPC_LOCK`) or is unlimited.
fn memlock_limit() -> Option<u64> {
    const CAP_IPC_LOCK: u32 = 14;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if cap_eff & (1 << CAP_IPC_LOCK) != 0 {
        return None;
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    match limits
        .lines()
        .find_map(|l| l.strip_prefix("Max locked memory"))
        .and_then(|rest| rest.split_whitespace().next())
    {
        Some("unlimited") => None,
        Some(v) => Some(v.parse().unwrap_or(8 * MIB)),
        None => Some(8 * MIB),
    }
}

fn pick_buffers(limit: Option<u64>) -> Result<Buffers> {
    let shards = reel_node::online_cpus().clamp(1, 4);
    // Besides the node, buffers are registered by a volume open (2 MiB) and by the demo's own
    // ingest and scrub rings (8 chunks); none runs beside the node, but count one on top anyway.
    let fits = |b: &Buffers| {
        let other = (2 * MIB).max(8 * b.chunk);
        limit.is_none_or(|l| b.node_bytes() + other <= l)
    };
    let options = [
        Buffers {
            chunk: MIB,
            shards,
            bufs_per_shard: 16,
            workers: 2,
        },
        Buffers {
            chunk: 128 << 10,
            shards,
            bufs_per_shard: 8,
            workers: 1,
        },
        Buffers {
            chunk: 64 << 10,
            shards: shards.min(2),
            bufs_per_shard: 4,
            workers: 1,
        },
    ];
    options.into_iter().find(fits).ok_or_else(|| {
        anyhow!(
            "RLIMIT_MEMLOCK is {} here, too little for io_uring's registered buffers (the demo \
             needs about 4 MiB); raise it with `ulimit -l 65536` or run with CAP_IPC_LOCK",
            human_bytes(limit.unwrap_or(0))
        )
    })
}

/// What the summary found wrong, reported after cleanup.
struct Verdict {
    wrong_bytes: u64,
    wrong_responses: u64,
    errors: u64,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    if args.single {
        run_single(args)
    } else {
        cluster::run(args)
    }
}

/// The one-node demo (`--single`).
fn run_single(args: &DemoArgs) -> Result<()> {
    crate::require_io_uring()?;
    if !(4..=1000).contains(&args.assets) {
        bail!("--assets must be 4..=1000");
    }
    if !(args.rate().is_finite() && args.rate() >= 1.0) {
        bail!("--rate must be at least 1 request per second");
    }
    if !(1..=64).contains(&args.clients()) {
        bail!("--clients must be 1..=64");
    }
    if args.primary_size() < 64 * MIB {
        bail!("--primary-size must be at least 64M");
    }
    let parent = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let tmp = tempfile::Builder::new()
        .prefix("reel-demo.")
        .tempdir_in(&parent)
        .with_context(|| {
            format!(
                "creating a temporary directory in {} (pass --dir DIR, on a filesystem with \
                 O_DIRECT such as ext4 or xfs)",
                parent.display()
            )
        })?;
    let dir = tmp.path().to_path_buf();
    // Ctrl-C ends the load early and still cleans up; a second one exits at once.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())
            .context("cannot install signal handler")?;
        signal_hook::flag::register(sig, stop.clone()).context("cannot install signal handler")?;
    }
    let outcome = demo(args, &dir, &stop);
    if args.keep {
        let kept = tmp.keep();
        println!(
            "  kept {}: `reel node --primary {} --secondary {}` serves it again",
            kept.display(),
            kept.join("primary.img").display(),
            kept.join("secondary.img").display()
        );
    } else {
        match tmp.close() {
            Ok(()) => println!("  removed {}", dir.display()),
            Err(e) if outcome.is_ok() => {
                return Err(e).with_context(|| format!("removing {}", dir.display()));
            }
            Err(e) => eprintln!("warning: could not remove {}: {e}", dir.display()),
        }
    }
    let v = outcome?;
    if v.wrong_bytes > 0 {
        bail!(
            "the node served {} wrong bytes in {} responses",
            v.wrong_bytes,
            v.wrong_responses
        );
    }
    if v.errors > 0 {
        bail!("{} requests failed", v.errors);
    }
    println!("reel demo: done");
    Ok(())
}

fn format_volume(path: &Path, size: u64, chunk: u64) -> Result<u64> {
    let sb = Volume::format(
        path,
        &FormatOptions {
            size: Some(size),
            force: false,
            geometry: GeometryOptions {
                chunk_size: Some(chunk as u32),
                ..GeometryOptions::default()
            },
        },
    )
    .with_context(|| format!("formatting {}", path.display()))?;
    Ok(sb.data_blocks * 4096)
}

fn demo(args: &DemoArgs, dir: &Path, stop: &Arc<AtomicBool>) -> Result<Verdict> {
    let bufs = pick_buffers(memlock_limit())?;
    let mut titles = library(args.assets);
    let library_bytes: u64 = titles.iter().map(|t| t.size).sum();
    println!(
        "reel demo: a node with two file-backed tiers in {} (no root, no setup)",
        dir.display()
    );

    // 1. Two volumes: a small primary, a secondary that holds everything.
    let p_path = dir.join("primary.img");
    let s_path = dir.join("secondary.img");
    let secondary_size =
        (library_bytes + library_bytes / 4 + 64 * MIB).div_ceil(16 * MIB) * 16 * MIB;
    let p_data = format_volume(&p_path, args.primary_size(), bufs.chunk)?;
    let s_data = format_volume(&s_path, secondary_size, bufs.chunk)?;
    println!(
        "  primary    {:>9} file, {:>10} for data: small, cannot hold the library ({} titles, {})",
        human_bytes(args.primary_size()),
        human_bytes(p_data),
        titles.len(),
        human_bytes(library_bytes)
    );
    println!(
        "  secondary  {:>9} file, {:>10} for data: large, holds a copy of every title",
        human_bytes(secondary_size),
        human_bytes(s_data)
    );
    // New releases (every third title, as many as fill 60% of the primary) arrive over HTTP;
    // the back catalogue goes straight into the secondary.
    let mut room = p_data * 6 / 10;
    for t in titles.iter_mut().skip(2).step_by(3) {
        if t.size <= room {
            room -= t.size;
            t.new_release = true;
        }
    }
    let primary = Arc::new(Volume::open(&p_path).context("opening the primary")?);
    let secondary = Arc::new(Volume::open(&s_path).context("opening the secondary")?);
    ingest_back_catalogue(&secondary, &titles, bufs.chunk)?;

    // 2. The node, tiering in seconds instead of hours.
    let node = start_node(args, &bufs, &primary, &secondary)?;
    let addr = node.local_addr();
    let mut scraper = Scraper::new(addr);

    // 3. New releases over HTTP: each lands on the primary, then is written back.
    upload_new_releases(addr, &titles, &mut scraper, stop)?;

    // 4. The skewed load, with a live line per second.
    let hot = hot_sets(&titles);
    let half = args.duration / 2;
    println!(
        "  load: {:.0} requests/s paced over {} keep-alive clients for {:.0?}; {:.0}% to a hot \
         set of {} (Zipf), the rest to any title; half whole titles, half 256 KiB–2 MiB ranges; \
         every response compared with the generator",
        args.rate(),
        args.clients(),
        args.duration,
        HOT_SHARE * 100.0,
        hot[0].len()
    );
    println!(
        "  hot set: {} (* = new release); at {:.0?} it shifts to {}",
        names(&titles, &hot[0]),
        half,
        names(&titles, &hot[1])
    );
    let mut acc = 0.0;
    let zipf_cdf: Vec<f64> = (1..=hot[0].len())
        .map(|k| {
            acc += 1.0 / k as f64;
            acc
        })
        .collect();
    let t0 = Instant::now();
    let load = Arc::new(Load {
        addr,
        titles,
        hot,
        zipf_cdf,
        primary: primary.clone(),
        rate: args.rate(),
        t0,
        shift_at: t0 + half,
        end: t0 + args.duration,
        issued: AtomicU64::new(0),
        stop: stop.clone(),
    });
    let report = drive(&load, args.clients(), &mut scraper)?;
    let figures = scraper.figures();
    let all = print_summary(args, &report, &figures);

    // 5. Stop the node; reopen both volumes (recovery) and scrub them.
    drop(load);
    drop(scraper);
    node.shutdown();
    drop(primary);
    drop(secondary);
    check_volumes(&[("primary", &p_path), ("secondary", &s_path)], bufs.chunk)?;
    Ok(Verdict {
        wrong_bytes: all.wrong_bytes,
        wrong_responses: all.wrong_responses,
        errors: all.errors,
    })
}

/// The tiering policy, in seconds instead of hours: thresholds from the offered rate.
fn policy(rate: f64) -> PolicyConfig {
    let views_per_h = |share: f64| rate * 3600.0 * FULL_SHARE * share;
    PolicyConfig {
        promote_per_h: Some(views_per_h(PROMOTE_SHARE)),
        demote_per_h: Some(views_per_h(DEMOTE_SHARE)),
        min_residency_s: 5.0,
        retry_backoff_s: 5.0,
        ..PolicyConfig::default()
    }
}

/// The node's configuration: loopback on any port, the buffers that fit `RLIMIT_MEMLOCK`, a
/// 5 s rate half-life and `policy`.
fn node_config(bufs: &Buffers, policy: PolicyConfig) -> NodeConfig {
    NodeConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        shards: bufs.shards,
        read_buf_bytes: bufs.chunk as usize,
        read_bufs_per_shard: bufs.bufs_per_shard,
        ingest_workers: bufs.workers,
        rate_half_life: Some(Duration::from_secs(5)),
        policy,
        throttle: reel_policy::ThrottleConfig {
            bytes_per_s_max: reel_policy::CopyBudget::from_bytes_per_s(COPY_BUDGET),
            ..reel_policy::ThrottleConfig::default()
        },
        ..NodeConfig::default()
    }
}

fn start_node(
    args: &DemoArgs,
    bufs: &Buffers,
    primary: &Arc<Volume>,
    secondary: &Arc<Volume>,
) -> Result<Node> {
    let policy = policy(args.rate());
    let node = Node::start(
        node_config(bufs, policy.clone()),
        Tiers {
            primary: primary.clone(),
            secondary: Some(secondary.clone()),
        },
    )
    .context("starting the node")?;
    println!(
        "  node on {}: {} shards, {} chunks, {} of registered buffers; tiering: rate half-life \
         5 s, promote at {:.0} views/h, demote below {:.0}, min residency 5 s, copies at {}/s",
        node.local_addr(),
        bufs.shards,
        human_bytes(bufs.chunk),
        human_bytes(bufs.node_bytes()),
        policy.promote_per_h.unwrap_or_default(),
        policy.demote_per_h.unwrap_or_default(),
        human_bytes(COPY_BUDGET)
    );
    Ok(node)
}

/// Reopens each volume (recovery runs), scrubs every chunk against its checksum and checks the
/// space accounting.
fn check_volumes(volumes: &[(&str, &Path)], chunk: u64) -> Result<()> {
    let t = Instant::now();
    for &(name, path) in volumes {
        let v = Volume::open(path).with_context(|| format!("reopening the {name}"))?;
        let mut drv = Driver::new(&DriverConfig {
            ring_entries: 16,
            buf_size: chunk as usize,
            buf_count: 4,
            write_log: None,
        })?;
        let bad = v.scrub(&mut drv)?;
        if !bad.is_empty() {
            bail!("scrubbing the {name} found damage: {bad:?}");
        }
        let st = v.stats();
        if st.used_bytes + st.free_bytes != st.capacity_bytes {
            bail!("the {name}'s space does not add up after reopening: {st:?}");
        }
    }
    println!(
        "  volumes      node stopped; both reopened (recovery) and scrubbed in {:.2?}: clean",
        t.elapsed()
    );
    Ok(())
}

//! `reel demo` (the default): a cluster on loopback, with no root and no setup. In a new
//! temporary directory (under /var/tmp: tmpfs has no O_DIRECT) it formats file-backed volumes
//! with the code `reel format` uses — the library node `lib` gets a small primary and a large
//! secondary, the edges `edge1` and `edge2` a primary only —, writes a cluster token and the
//! manager's coverage zones (clients from 127.0.0.2 belong to edge1, from 127.0.0.3 to edge2),
//! and starts `reel manager` (embedded store) and three `reel node`s as children of this binary
//! on ephemeral loopback ports. The titles are ingested through the manager (`PUT` with the
//! token → `307` with a put ticket → `PUT` at the node, which is the library: the only node with
//! a secondary). Then each edge's clients — sockets bound to the edge's client address — ask the
//! manager for titles (Zipf over the edge's own ranking, whole titles and ranges), follow its
//! redirect and compare every byte with the generator, for `--duration`, while a block per
//! second shows each node (fill of both tiers, what it holds and the copies that arrived or
//! went, streams, MB/s sent, its clients' p99, relays) and the manager's routes. At the end: a
//! summary, the children stopped, the directory removed. `--keep` leaves the cluster running
//! with URLs to try until Ctrl-C.
//!
//! The modules: [`procs`] (the children), [`load`] (the clients) and [`view`] (the live view
//! and the summary).

mod load;
mod procs;
mod view;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use reel_http::client::{encode_request, Conn};

use super::library::{fill, mb_s, mix};
use super::{format_volume, memlock_limit, Buffers, DemoArgs, MIB};
use crate::units::human_bytes;
use load::{can_bind, split_location, zipf_cdf, Clients, EdgeClients, Load};
use procs::Procs;
use view::{
    print_block, print_header, print_legend, print_summary, ManagerWatch, NodeWatch, SummaryInput,
};

/// The library node and the edges.
const LIB: &str = "lib";
const EDGES: [(&str, Ipv4Addr); 2] = [
    ("edge1", Ipv4Addr::new(127, 0, 0, 2)),
    ("edge2", Ipv4Addr::new(127, 0, 0, 3)),
];
/// Size of an edge's primary volume.
const EDGE_PRIMARY: u64 = 64 * MIB;
/// Promote at this share of all requests, demote below this one (on the library; converted to
/// views per hour from the offered rate, as in the single-node demo).
const PROMOTE_SHARE: f64 = 0.02;
const DEMOTE_SHARE: f64 = 0.008;
/// Print the column header again after this many blocks.
const HEADER_EVERY: u64 = 10;

/// A title: its id, the seed of its content and its size.
pub(super) struct Title {
    pub(super) id: String,
    pub(super) seed: u64,
    pub(super) size: u64,
}

fn titles(n: u32) -> Vec<Title> {
    (0..n)
        .map(|i| Title {
            id: format!("demo/title-{i:02}.mp4"),
            seed: u64::from(i) + 1,
            // 2–6 MiB, not block-aligned.
            size: 2 * MIB + mix(u64::from(i) ^ 0xC1A5) % (4 * MIB + 1),
        })
        .collect()
}

/// Chunk size and buffer pools that fit three nodes in `RLIMIT_MEMLOCK` (io_uring charges
/// registered buffers to the user, so the nodes share the limit).
fn pick_buffers(limit: Option<u64>) -> Result<Buffers> {
    let nodes = 1 + EDGES.len() as u64;
    let options = [
        (MIB, 16, 2),
        (256 << 10, 8, 1),
        (128 << 10, 8, 1),
        (64 << 10, 8, 1),
    ];
    options
        .into_iter()
        .map(|(chunk, bufs_per_shard, workers)| Buffers {
            chunk,
            shards: 1,
            bufs_per_shard,
            workers,
        })
        // A volume open registers 2 MiB for a moment, besides the nodes' pools.
        .find(|b| limit.is_none_or(|l| nodes * b.node_bytes() + 2 * MIB <= l))
        .ok_or_else(|| {
            anyhow!(
                "RLIMIT_MEMLOCK is {} here, too little for three nodes' io_uring registered \
                 buffers (the cluster demo needs about 7 MiB); raise it with `ulimit -l 65536`, \
                 run with CAP_IPC_LOCK, or try `reel demo --single`",
                human_bytes(limit.unwrap_or(0))
            )
        })
}

/// What went wrong, reported after cleanup.
struct Verdict {
    wrong_bytes: u64,
    wrong_responses: u64,
    errors: u64,
    relayed_or_local: u64,
}

pub(super) fn run(args: &DemoArgs) -> Result<()> {
    crate::require_io_uring()?;
    if !(4..=1000).contains(&args.assets) {
        bail!("--assets must be 4..=1000");
    }
    let rate = args.rate();
    if !(rate.is_finite() && (1.0..=10_000.0).contains(&rate)) {
        bail!("--rate must be 1..=10000 requests per second");
    }
    if !(1..=64).contains(&args.clients()) {
        bail!("--clients must be 1..=64 (per edge)");
    }
    if args.primary_size() < 64 * MIB {
        bail!("--primary-size must be at least 64M");
    }
    if args.duration.is_zero() || args.duration > Duration::from_secs(24 * 3600) {
        bail!("--duration must be more than 0 and at most 24h");
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
    let procs = Arc::new(Procs::default());
    // Ctrl-C (or SIGTERM) ends the load early and still stops the children and cleans up; a
    // second one kills the children at once and exits.
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("cannot install signal handler")?;
    let signals_handle = signals.handle();
    {
        let (stop, procs) = (stop.clone(), procs.clone());
        std::thread::Builder::new()
            .name("demo-signals".into())
            .spawn(move || {
                for _ in signals.forever() {
                    if stop.swap(true, Relaxed) {
                        eprintln!("reel demo: killing the manager and the nodes");
                        procs.kill_all();
                        std::process::exit(130);
                    }
                    eprintln!("reel demo: stopping (Ctrl-C again to kill everything at once)");
                }
            })
            .context("starting the signal thread")?;
    }
    let outcome = cluster(args, &dir, &stop, &procs);
    let stopped = procs.stop_all();
    signals_handle.close();
    if args.keep {
        let kept = tmp.keep();
        println!(
            "  kept {} (volumes, token, manager data, logs); `rm -r {}` removes it",
            kept.display(),
            kept.display()
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
    if let Err(e) = stopped {
        eprintln!("warning: {e:#}");
    }
    if v.wrong_bytes > 0 {
        bail!(
            "the cluster served {} wrong bytes in {} responses",
            v.wrong_bytes,
            v.wrong_responses
        );
    }
    if v.errors > 0 {
        bail!("{} requests failed", v.errors);
    }
    if v.relayed_or_local == 0 && !stop.load(Relaxed) {
        bail!("no request was served by an edge (no relay, no local copy)");
    }
    println!("reel demo: done");
    Ok(())
}

/// A random cluster token (32 hex digits) in `dir/token`.
fn write_token(dir: &Path) -> Result<PathBuf> {
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let p = dir.join("token");
    std::fs::write(&p, format!("{token}\n")).context("writing the cluster token")?;
    Ok(p)
}

/// The manager's coverage zones: each edge's client address.
fn zones_toml() -> String {
    EDGES
        .iter()
        .map(|(name, ip)| format!("[[zone]]\nnode = \"{name}\"\nclients = [\"{ip}/32\"]\n"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn path_arg(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{} is not UTF-8", p.display()))
}

/// One node's volumes and arguments.
struct NodePlan {
    name: &'static str,
    primary: PathBuf,
    secondary: Option<PathBuf>,
}

fn node_args(
    plan: &NodePlan,
    manager_peer: SocketAddr,
    token: &Path,
    bufs: &Buffers,
    rate: f64,
) -> Result<Vec<String>> {
    let mut a: Vec<String> = vec!["node".into(), "--primary".into(), path_arg(&plan.primary)?];
    if let Some(s) = &plan.secondary {
        a.extend(["--secondary".into(), path_arg(s)?]);
    }
    let views_per_h = |share: f64| rate * 3600.0 * load::FULL_SHARE * share;
    a.extend(
        [
            "--listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
            "--node-name",
            plan.name,
            "--manager",
            &format!("http://{manager_peer}"),
            "--cluster-token-file",
            &path_arg(token)?,
            "--shards",
            "1",
            "--no-pin",
            "--read-buf",
            &bufs.chunk.to_string(),
            "--read-bufs-per-shard",
            &bufs.bufs_per_shard.to_string(),
            "--ingest-workers",
            &bufs.workers.to_string(),
        ]
        .map(str::to_string),
    );
    if plan.secondary.is_some() {
        // Tiering in seconds instead of hours, as in the single-node demo.
        a.extend(
            [
                "--rate-half-life",
                "5s",
                "--promote-per-h",
                &format!("{:.0}", views_per_h(PROMOTE_SHARE)),
                "--demote-per-h",
                &format!("{:.0}", views_per_h(DEMOTE_SHARE)),
                "--min-residency",
                "5",
                "--copy-budget",
                "64M",
            ]
            .map(str::to_string),
        );
    }
    Ok(a)
}

/// `GET target` at the manager, its body as JSON.
fn manager_json(addr: SocketAddr, target: &str) -> Result<serde_json::Value> {
    let mut c = Conn::connect(addr, Duration::from_secs(2))?;
    let r = c.request("GET", target, &[], None)?;
    if r.status() != 200 {
        bail!("GET {target}: {}", r.status());
    }
    serde_json::from_slice(&r.body).context("not JSON")
}

/// Waits (at most 15 s) until the manager routes to every node.
fn wait_routable(manager: SocketAddr, names: &[&str], stop: &AtomicBool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline && !stop.load(Relaxed) {
        match manager_json(manager, "/cluster") {
            Ok(v) => {
                let up: Vec<&str> = v["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|n| n["routable"].as_bool() == Some(true))
                    .filter_map(|n| n["name"].as_str())
                    .collect();
                if names.iter().all(|n| up.contains(n)) {
                    return Ok(());
                }
                last = format!("routable: {up:?}");
            }
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the nodes did not all join the manager within 15 s ({last})")
}

/// PUTs a title through the manager: its `307` (with a put ticket), then the upload at the node
/// it names. The node's name.
fn ingest_title(manager: SocketAddr, token: &str, t: &Title, buf: &mut [u8]) -> Result<String> {
    let auth = format!("Bearer {token}");
    let len = t.size.to_string();
    let target = format!("/assets/{}", t.id);
    let mut c = Conn::connect(manager, Duration::from_secs(5))?;
    // `Expect: 100-continue`: the manager answers at once and the body goes to the node only.
    let head = encode_request(
        "PUT",
        "reel-demo",
        &target,
        &[
            ("Authorization", &auth),
            ("Content-Type", "video/mp4"),
            ("Content-Length", &len),
            ("Expect", "100-continue"),
        ],
        None,
    );
    c.write_all(&head)?;
    let h = c.read_head()?;
    let body = c.read_body(&h, 64 << 10).unwrap_or_default();
    if h.status != 307 {
        bail!(
            "PUT {} at the manager answered {}: {}",
            t.id,
            h.status,
            String::from_utf8_lossy(&body).trim()
        );
    }
    let route = h.header("reel-route").unwrap_or_default();
    let node = route
        .split_whitespace()
        .find_map(|w| w.strip_prefix("node="))
        .unwrap_or("?")
        .to_string();
    let (addr, node_target) = split_location(h.header("location").unwrap_or_default())
        .ok_or_else(|| anyhow!("the manager's 307 for {} has no usable Location", t.id))?;
    let mut n = Conn::connect(addr, Duration::from_secs(5))?;
    n.stream().set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = encode_request(
        "PUT",
        "reel-demo",
        &node_target,
        &[("Content-Type", "video/mp4"), ("Content-Length", &len)],
        None,
    );
    n.write_all(&head)?;
    let mut sent = 0u64;
    while sent < t.size {
        let k = (t.size - sent).min(buf.len() as u64) as usize;
        fill(t.seed, sent, &mut buf[..k]);
        n.write_all(&buf[..k])?;
        sent += k as u64;
    }
    let h = n.read_head()?;
    let body = n.read_body(&h, 64 << 10).unwrap_or_default();
    if h.status != 201 {
        bail!(
            "PUT {} at {node} answered {}: {}",
            t.id,
            h.status,
            String::from_utf8_lossy(&body).trim()
        );
    }
    Ok(node)
}

/// The edges' rankings: edge1 a shuffled order of the titles, edge2 the same order rotated, so
/// each edge has hot titles of its own and some in common with the other.
fn rankings(n: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    fastrand::Rng::with_seed(7).shuffle(&mut order);
    let shift = (n / 6).max(1);
    let mut second = order.clone();
    second.rotate_left(shift);
    vec![order, second]
}

fn short(titles: &[Title], ranking: &[usize], k: usize) -> String {
    ranking
        .iter()
        .take(k)
        .map(|&i| {
            titles[i]
                .id
                .trim_start_matches("demo/title-")
                .trim_end_matches(".mp4")
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn cluster(args: &DemoArgs, dir: &Path, stop: &Arc<AtomicBool>, procs: &Procs) -> Result<Verdict> {
    let bufs = pick_buffers(memlock_limit())?;
    let rate = args.rate();
    let titles = Arc::new(titles(args.assets));
    let library_bytes: u64 = titles.iter().map(|t| t.size).sum();
    println!(
        "reel demo: a cluster on loopback in {} (no root, no setup): a manager, a library node \
         and two edges, each a `reel` process",
        dir.display()
    );

    // 1. Volumes, the token, the zones.
    let secondary_size =
        (library_bytes + library_bytes / 4 + 64 * MIB).div_ceil(16 * MIB) * 16 * MIB;
    let mut plans = vec![NodePlan {
        name: LIB,
        primary: dir.join("lib-primary.img"),
        secondary: Some(dir.join("lib-secondary.img")),
    }];
    for (name, _) in EDGES {
        plans.push(NodePlan {
            name,
            primary: dir.join(format!("{name}-primary.img")),
            secondary: None,
        });
    }
    for p in &plans {
        let psize = if p.secondary.is_some() {
            args.primary_size()
        } else {
            EDGE_PRIMARY
        };
        let pdata = format_volume(&p.primary, psize, bufs.chunk)?;
        let second = match &p.secondary {
            Some(s) => {
                let sdata = format_volume(s, secondary_size, bufs.chunk)?;
                format!(
                    ", secondary {} ({} for data: holds every title)",
                    human_bytes(secondary_size),
                    human_bytes(sdata)
                )
            }
            None => String::new(),
        };
        println!(
            "  {:<6} primary {} ({} for data){second}",
            p.name,
            human_bytes(psize),
            human_bytes(pdata)
        );
    }
    let token_path = write_token(dir)?;
    let token = std::fs::read_to_string(&token_path)?.trim().to_string();
    let zones = dir.join("zones.toml");
    std::fs::write(&zones, zones_toml()).context("writing the zones")?;
    std::fs::create_dir_all(dir.join("logs"))?;

    // 2. The manager, then the nodes.
    let (manager, manager_peer) = procs.spawn(
        "manager",
        &[
            "manager",
            "--listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
            "--cluster-token-file",
            &path_arg(&token_path)?,
            "--data-dir",
            &path_arg(&dir.join("manager-data"))?,
            "--config",
            &path_arg(&zones)?,
            "--rate-half-life",
            "10s",
        ]
        .map(str::to_string),
        &dir.join("logs/manager.stderr"),
        stop,
    )?;
    println!(
        "  manager http://{manager} (clients) and {manager_peer} (nodes), embedded store; zones: \
         clients from {} belong to {}, from {} to {}",
        EDGES[0].1, EDGES[0].0, EDGES[1].1, EDGES[1].0
    );
    let mut watches = Vec::new();
    for p in &plans {
        let a = node_args(p, manager_peer, &token_path, &bufs, rate)?;
        let log = dir.join(format!("logs/{}.stderr", p.name));
        let (access, peer) = procs.spawn(p.name, &a, &log, stop)?;
        println!(
            "  {:<6} http://{access} (clients), {peer} (peers); 1 shard, {} chunks, {} of \
             registered buffers",
            p.name,
            human_bytes(bufs.chunk),
            human_bytes(bufs.node_bytes())
        );
        watches.push(NodeWatch::new(p.name, access));
    }
    let names: Vec<&str> = plans.iter().map(|p| p.name).collect();
    wait_routable(manager, &names, stop)?;

    // 3. Where the edges' clients come from.
    let bindable = EDGES.iter().all(|(_, ip)| can_bind(IpAddr::V4(*ip)));
    if !bindable {
        println!(
            "  NOTE: cannot bind client sockets to {} / {} here; the clients name their edge \
             with ?near=EDGE instead of the manager's zones",
            EDGES[0].1, EDGES[1].1
        );
    }

    // 4. The titles, through the manager.
    let t = Instant::now();
    let mut landed: BTreeMap<String, u64> = BTreeMap::new();
    let mut buf = vec![0u8; MIB as usize];
    for title in titles.iter() {
        if stop.load(Relaxed) {
            bail!("interrupted during the ingest");
        }
        let node = ingest_title(manager, &token, title, &mut buf)?;
        *landed.entry(node).or_default() += 1;
    }
    let took = t.elapsed();
    let landed: Vec<String> = landed.iter().map(|(n, k)| format!("{k} on {n}")).collect();
    println!(
        "  ingest: {} titles, {} through the manager in {:.2?} ({:.0} MB/s): PUT with the token \
         → 307 with a put ticket → PUT at the node with the most room on a secondary; {}",
        titles.len(),
        human_bytes(library_bytes),
        took,
        mb_s(library_bytes, took),
        landed.join(", ")
    );

    // 5. The load, with a block per second.
    let ranks = rankings(titles.len());
    let edges: Vec<EdgeClients> = EDGES
        .iter()
        .zip(ranks)
        .map(|((name, ip), ranking)| EdgeClients {
            edge: name.to_string(),
            source: bindable.then_some(IpAddr::V4(*ip)),
            ranking,
        })
        .collect();
    for e in &edges {
        println!(
            "  {}'s clients ({}): hottest first {} …",
            e.edge,
            match e.source {
                Some(ip) => format!("from {ip}"),
                None => format!("?near={}", e.edge),
            },
            short(&titles, &e.ranking, 6)
        );
    }
    println!(
        "  load: {rate:.0} requests/s paced over {} clients per edge for {:.0?}; Zipf over each \
         edge's ranking; half whole titles, half 256 KiB–1 MiB ranges; each asks the manager, \
         follows its 307 and compares every byte with the generator",
        args.clients(),
        args.duration
    );
    let mut mgr = ManagerWatch::new(manager);
    mgr.scrape();
    let manager_before = mgr.now.clone();
    for w in &mut watches {
        w.scrape(1.0);
        w.baseline();
    }
    let tx_before: BTreeMap<String, u64> = watches
        .iter()
        .map(|w| (w.name.clone(), w.now.tx_bytes))
        .collect();
    let t0 = Instant::now();
    let load = Arc::new(Load {
        manager,
        titles: titles.clone(),
        zipf_cdf: zipf_cdf(titles.len()),
        rate_per_edge: rate / edges.len() as f64,
        issued: edges.iter().map(|_| AtomicU64::new(0)).collect(),
        edges,
        t0,
        end: t0 + args.duration,
        stop: stop.clone(),
    });
    print_legend();
    let clients = Clients::start(&load, args.clients())?;
    let mut last = t0;
    let mut died = None;
    for second in 1u64..=args.duration.as_secs() + 1 {
        let until = (t0 + Duration::from_secs(second)).min(load.end);
        while Instant::now() < until && !stop.load(Relaxed) {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
        if let Some(why) = procs.exited() {
            died = Some(why);
            stop.store(true, Relaxed);
        }
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        let window = clients.take_window();
        mgr.scrape();
        for w in &mut watches {
            w.scrape(dt);
        }
        if (second - 1) % HEADER_EVERY == 0 {
            print_header();
        }
        print_block(
            now.duration_since(t0).as_secs_f64(),
            dt,
            &mgr,
            &watches,
            &window,
        );
        let _ = std::io::stdout().flush();
        if now >= load.end || stop.load(Relaxed) {
            break;
        }
    }
    let interrupted = stop.load(Relaxed);
    let (done, failed) = clients.so_far();
    let measured = clients.finish();
    let secs = t0.elapsed().as_secs_f64();
    if let Some(why) = died {
        bail!("{why}\n(after {done} requests, {failed} failed)");
    }
    mgr.scrape();
    for w in &mut watches {
        w.scrape(1.0);
    }
    let all = print_summary(
        &measured,
        &SummaryInput {
            secs,
            offered: rate,
            edges: EDGES.len(),
            clients_per_edge: args.clients(),
            interrupted,
            manager: &mgr.now,
            manager_before: &manager_before,
            nodes: &watches,
            tx_before: &tx_before,
        },
    );
    let relayed_or_local: u64 = [
        "relay-primary",
        "relay-secondary",
        "local-primary",
        "local-secondary",
    ]
    .iter()
    .map(|r| measured.routes.get(*r).copied().unwrap_or(0))
    .sum();

    // 6. --keep: the cluster stays up until Ctrl-C.
    if args.keep && !stop.load(Relaxed) {
        keep_running(manager, &titles, &token_path, dir, procs, stop);
    }
    Ok(Verdict {
        wrong_bytes: all.wrong_bytes,
        wrong_responses: all.wrong_responses,
        errors: all.errors,
        relayed_or_local,
    })
}

/// Prints what to try, then waits for Ctrl-C (or a child's exit).
fn keep_running(
    manager: SocketAddr,
    titles: &[Title],
    token: &Path,
    dir: &Path,
    procs: &Procs,
    stop: &AtomicBool,
) {
    let id = titles
        .first()
        .map_or("demo/title-00.mp4", |t| t.id.as_str());
    let lib = procs
        .with(LIB, |p| p.access.to_string())
        .unwrap_or_default();
    println!("reel demo: the cluster keeps running (--keep); Ctrl-C stops it");
    println!("  manager   http://{manager}");
    println!("  try       curl -L http://{manager}/assets/{id} -o x.mp4");
    println!(
        "            curl -sL --interface {} http://{manager}/assets/{id} -o x.mp4 -D - | grep -i \
         reel-route    # as a client of {} (relayed through it)",
        EDGES[0].1, EDGES[0].0
    );
    println!("            curl -s http://{manager}/assets/{id}/locations");
    println!("            reel cluster --manager {manager}");
    println!("            curl -s http://{lib}/metrics | grep reel_relay    # a node's metrics");
    println!(
        "            mpv http://{manager}/assets/{id}    # any player follows the redirect (the \
         content is synthetic, not a playable video)"
    );
    println!(
        "  upload    curl -L -T FILE -H \"Authorization: Bearer $(cat {})\" \
         http://{manager}/assets/my/file.mp4",
        token.display()
    );
    println!("  logs      {}", dir.join("logs").display());
    println!("  stop      Ctrl-C: stops the manager and the nodes; the directory is kept");
    let _ = std::io::stdout().flush();
    while !stop.load(Relaxed) {
        if let Some(why) = procs.exited() {
            eprintln!("reel demo: {why}");
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_parse_as_the_manager_reads_them() {
        let z = reel_manager::config::zones_from_toml(&zones_toml()).expect("zones");
        assert_eq!(z.node_of("127.0.0.2".parse().expect("ip")), Some("edge1"));
        assert_eq!(z.node_of("127.0.0.3".parse().expect("ip")), Some("edge2"));
        assert_eq!(z.node_of("127.0.0.1".parse().expect("ip")), None);
    }

    #[test]
    fn rankings_differ_but_overlap() {
        let r = rankings(30);
        assert_eq!(r.len(), 2);
        assert_ne!(r[0][..5], r[1][..5]);
        let mut a = r[0].clone();
        let mut b = r[1].clone();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "both rank every title");
        assert!(r[1][..3].iter().all(|i| r[0][..10].contains(i)));
    }

    #[test]
    fn buffers_fit_the_limit() {
        let b = pick_buffers(Some(8 * MIB)).expect("8 MiB fits");
        assert!(3 * b.node_bytes() + 2 * MIB <= 8 * MIB, "{b:?}");
        assert_eq!(pick_buffers(None).expect("unlimited").chunk, MIB);
        assert!(pick_buffers(Some(MIB)).is_err());
    }

    #[test]
    fn titles_are_a_few_mib() {
        for t in titles(40) {
            assert!((2 * MIB..=6 * MIB).contains(&t.size), "{}", t.size);
        }
    }
}

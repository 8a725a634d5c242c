//! `reel bench routing`: what `reel manager` costs per routed stream and per inventory entry.
//!
//! It starts a `reel manager` (embedded store in a scratch directory, a token file) and then
//! *synthetic nodes*: `--nodes` fake node identities in this process that register on the
//! manager's peer listener and send full reports with `--holdings` copies in total (ids
//! `bench/000123456`, node etags `"%08x-%x"`, random tiers; the hottest `--replicated` share
//! of the assets is held by two nodes), then keep sending small deltas every 500 ms so that
//! the manager keeps them up. They are fake reporters, not `reel node`s: the node is not what
//! is measured here.
//!
//! Measured, in one run:
//! - the manager's RSS (`/proc/PID/status` VmRSS) before the nodes register and after their
//!   full reports are applied → bytes per asset and per copy (averages over the inventory),
//!   with the peak (VmHWM) that parsing the reports needs;
//! - `reel load --no-follow` against the manager at each `--rates` point (open loop, Poisson
//!   arrivals, Zipf popularity over every asset id, `--connections`): redirects per second,
//!   p50/p99 from the intended start, and the manager's CPU per redirect; the same `reel load`
//!   against a peer in the same run, alternating with the manager at each point: nginx
//!   answering `return 307` with the same headers (when nginx is installed; otherwise no ratio
//!   is printed);
//! - the mean routing decision time from the manager's /metrics
//!   (`reel_manager_decision_seconds_total / reel_manager_decisions_total`) per point.
//!
//! Prints a markdown table on stdout; `--json` writes the figures.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use reel_http::client::{encode_request, Response};
use reel_http::cluster::{Holding, Load, Register, Registered, Report, ReportAck, TierFill};
use serde::Serialize;

use crate::cmd::bench::harness::{
    self, free_port, host_line, is_root, note, proc_ticks, tree_ticks, Http, Proc, CLK_TCK,
};

const ME: &str = "reel bench routing";
/// The synthetic nodes' report period (the manager's default).
const REPORT_EVERY: Duration = Duration::from_millis(500);
/// Holdings re-sent in each delta report of a synthetic node.
const DELTA_HOLDINGS: usize = 16;
const TOKEN: &str = "reel-bench-routing-cluster-token-0123456789";

#[derive(Args, Debug)]
pub struct RoutingArgs {
    /// Smoke run: 10^5 copies, one point at 1000 req/s, 2 s per run (any flag given still
    /// overrides).
    #[arg(long)]
    pub quick: bool,
    /// Synthetic nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub nodes: u32,
    /// Copies reported in total over all nodes [default: 1000000; --quick 100000].
    #[arg(long)]
    pub holdings: Option<u64>,
    /// Share of the assets (the hottest) held by two nodes; the others by one.
    #[arg(long, default_value_t = 0.1)]
    pub replicated: f64,
    /// Offered rates of `reel load`, req/s, comma-separated [default: 5000,10000,20000;
    /// --quick 1000].
    #[arg(long, value_delimiter = ',')]
    pub rates: Option<Vec<f64>>,
    /// Seconds measured per run [default: 10; --quick 2].
    #[arg(long)]
    pub run_seconds: Option<u64>,
    /// `reel load --connections`.
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// Zipf exponent of the popularity over the asset ids.
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Parent of the scratch directory (the manager's store, the id list, logs).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
    /// Measure the manager only (no nginx peer, no ratios).
    #[arg(long)]
    pub no_peer: bool,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep the scratch directory (store, id list, logs, raw `reel load` JSON).
    #[arg(long)]
    pub keep: bool,
}

/// The settings after `--quick` and the flags.
struct Plan {
    holdings: u64,
    assets: u64,
    replicated: u64,
    rates: Vec<f64>,
    secs: u64,
    warmup_ms: u64,
}

impl Plan {
    fn new(a: &RoutingArgs) -> Result<Plan> {
        let q = a.quick;
        let holdings = a.holdings.unwrap_or(if q { 100_000 } else { 1_000_000 });
        if !(0.0..=1.0).contains(&a.replicated) {
            bail!("--replicated is a share from 0 to 1, e.g. 0.1");
        }
        if a.nodes < 2 && a.replicated > 0.0 {
            bail!("--replicated needs at least two --nodes (or pass --replicated 0)");
        }
        if !(1..=100_000_000).contains(&holdings) {
            bail!("--holdings must be 1 to 10^8");
        }
        if !(a.zipf.is_finite() && a.zipf > 0.0) {
            bail!("--zipf must be greater than 0, e.g. 1.0");
        }
        // holdings = assets × (1 + replicated share), the hottest ranks holding the second copy.
        let assets = ((holdings as f64 / (1.0 + a.replicated)).round() as u64).max(1);
        let replicated = holdings.saturating_sub(assets).min(assets);
        let rates = a.rates.clone().unwrap_or(if q {
            vec![1000.0]
        } else {
            vec![5000.0, 10000.0, 20000.0]
        });
        if rates.is_empty() || rates.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
            bail!("--rates are requests per second greater than 0, e.g. 5000,10000");
        }
        Ok(Plan {
            holdings: assets + replicated,
            assets,
            replicated,
            rates,
            secs: a.run_seconds.unwrap_or(if q { 2 } else { 10 }).max(1),
            warmup_ms: if q { 500 } else { 1000 },
        })
    }
}

/// The id of asset `i` (its Zipf rank, from 0).
fn asset_id(i: u64) -> String {
    format!("bench/{i:09}")
}

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// The manager's peer API with the cluster token.
struct PeerApi {
    http: Http,
}

impl PeerApi {
    fn put<T: Serialize, R: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        body: &T,
    ) -> Result<R> {
        let body = serde_json::to_vec(body).context("encoding a peer request")?;
        let host = self.http.addr.to_string();
        let auth = format!("Bearer {TOKEN}");
        let req = encode_request(
            "PUT",
            &host,
            path,
            &[("Authorization", auth.as_str())],
            Some(&body),
        );
        let r: Response = self.http.exchange(&format!("PUT {path}"), &req)?;
        if r.status() != 200 {
            let text = r.text();
            bail!(
                "PUT {path} answered {}: {}",
                r.status(),
                &text[..text.len().min(300)]
            );
        }
        serde_json::from_slice(&r.body).with_context(|| format!("the answer to PUT {path}"))
    }
}

/// One synthetic node: its name, session and report sequence, and what it holds.
struct FakeNode {
    name: String,
    session: u64,
    seq: u64,
    holdings: Vec<Holding>,
}

/// Holdings per page of a full report, as `reel node` sends them.
const FULL_REPORT_PAGE: usize = 50_000;

fn tiers_of(rng: &mut fastrand::Rng) -> Vec<String> {
    match rng.u8(..4) {
        0 => vec!["secondary".into()],
        1 => vec!["primary".into(), "secondary".into()],
        _ => vec!["primary".into()],
    }
}

fn fills() -> Vec<TierFill> {
    ["primary", "secondary"]
        .iter()
        .map(|t| TierFill {
            tier: t.to_string(),
            capacity_bytes: 1 << 40,
            used_bytes: 1 << 39,
        })
        .collect()
}

fn report(n: &mut FakeNode, full: bool, upsert: Vec<Holding>) -> Report {
    n.seq += 1;
    Report {
        node: n.name.clone(),
        session: n.session,
        seq: n.seq,
        full,
        more: false,
        upsert,
        remove: vec![],
        rates: vec![],
        load: Load::default(),
        tiers: fills(),
        failed_sources: vec![],
        pulls: vec![],
        demand: vec![],
    }
}

/// The synthetic nodes' holdings: asset `i` on node `i % nodes`, and the hottest `replicated`
/// assets also on the next node; each copy with a random version and tiers.
fn holdings(plan: &Plan, nodes: u32, rng: &mut fastrand::Rng) -> Vec<Vec<Holding>> {
    let nodes = u64::from(nodes);
    let mut out: Vec<Vec<Holding>> = (0..nodes).map(|_| Vec::new()).collect();
    for i in 0..plan.assets {
        let size = rng.u64(1 << 20..1 << 32);
        let etag = format!("\"{:08x}-{size:x}\"", rng.u32(..));
        let copies = if i < plan.replicated { 2 } else { 1 };
        for k in 0..copies {
            out[((i + k) % nodes) as usize].push(Holding {
                id: asset_id(i),
                etag: etag.clone(),
                size,
                tiers: tiers_of(rng),
            });
        }
    }
    out
}

/// Registers the synthetic nodes and sends their full reports; the seconds the reports took.
fn load_inventory(
    peer: SocketAddr,
    access: SocketAddr,
    plan: &Plan,
    nodes: u32,
) -> Result<(Vec<FakeNode>, f64)> {
    let mut rng = fastrand::Rng::with_seed(42);
    let mut api = PeerApi {
        http: Http::new(peer, Duration::from_secs(120)),
    };
    let mut out = Vec::new();
    let mut took = 0.0;
    for (i, held) in holdings(plan, nodes, &mut rng).into_iter().enumerate() {
        let name = format!("bench-n{i}");
        let reg: Registered = api.put(
            "/v1/register",
            &Register {
                node: name.clone(),
                boot: rng.u64(..),
                access,
                peer: SocketAddr::from(([127, 0, 0, 1], 9)),
                tiers: fills(),
            },
        )?;
        let mut n = FakeNode {
            name,
            session: reg.session,
            seq: 0,
            holdings: Vec::new(),
        };
        // In pages, as a node sends a large snapshot.
        let pages: Vec<Vec<Holding>> = held
            .chunks(FULL_REPORT_PAGE)
            .map(<[Holding]>::to_vec)
            .collect();
        let last = pages.len().saturating_sub(1);
        let t0 = Instant::now();
        for (k, page) in pages.into_iter().enumerate() {
            let mut r = report(&mut n, k == 0, page);
            r.more = k < last;
            let ack: ReportAck = api.put("/v1/report", &r)?;
            if ack.resync {
                bail!(
                    "the manager asked {} for a resync during its first full report",
                    n.name
                );
            }
        }
        took += t0.elapsed().as_secs_f64();
        n.holdings = held;
        out.push(n);
        harness::check_interrupt()?;
    }
    Ok((out, took))
}

/// Keeps the synthetic nodes up: a delta report each every 500 ms, re-sending a few holdings
/// with other tiers, until `stop`.
fn keep_reporting(
    peer: SocketAddr,
    mut nodes: Vec<FakeNode>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<u64>> {
    std::thread::spawn(move || {
        let mut api = PeerApi {
            http: Http::new(peer, Duration::from_secs(10)),
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let mut sent = 0u64;
        let mut next = Instant::now() + REPORT_EVERY;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(50)));
                continue;
            }
            next += REPORT_EVERY;
            for n in &mut nodes {
                let mut delta = Vec::with_capacity(DELTA_HOLDINGS);
                for _ in 0..DELTA_HOLDINGS.min(n.holdings.len()) {
                    let k = rng.usize(..n.holdings.len());
                    let h = &mut n.holdings[k];
                    h.tiers = tiers_of(&mut rng);
                    delta.push(h.clone());
                }
                let r = report(n, false, delta);
                let ack: ReportAck = api.put("/v1/report", &r)?;
                if ack.resync {
                    bail!(
                        "the manager asked {} for a resync (a report was lost)",
                        n.name
                    );
                }
                sent += 1;
            }
        }
        Ok(sent)
    })
}

/// The manager's /metrics as (name → value), labels kept in the name.
fn scrape(access: SocketAddr) -> Result<std::collections::BTreeMap<String, f64>> {
    let mut http = Http::new(access, Duration::from_secs(10));
    let r = http.expect("GET", "/metrics", None, &[200])?;
    Ok(r.text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

fn metric(m: &std::collections::BTreeMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

/// Starts nginx answering every `/assets/…` with a 307 shaped like the manager's.
fn start_nginx(dir: &Path, to: SocketAddr) -> Result<(Proc, SocketAddr)> {
    let dir = dir.join("nginx");
    std::fs::create_dir_all(dir.join("tmp"))?;
    let port = free_port()?;
    let user = if is_root() { "user root;" } else { "" };
    let d = dir.display();
    let conf = format!(
        "# written by reel bench routing: a 307 per request, like the manager's
{user}
worker_processes 2;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    server_tokens off;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096 reuseport;
        location /assets/ {{
            add_header Reel-Route \"primary node=bench-n0\" always;
            add_header Cache-Control \"no-store\" always;
            return 307 http://{to}$request_uri;
        }}
        location = /healthz {{
            return 200 \"ok\\n\";
        }}
    }}
}}
"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf_path);
    let mut proc = Proc::spawn("nginx", &mut cmd, &dir.join("stdout.log"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    proc.wait_ready(addr, Duration::from_secs(20))?;
    Ok((proc, addr))
}

fn nginx_installed() -> bool {
    Command::new("sh")
        .args(["-c", "command -v nginx"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One `reel load --no-follow` run.
#[derive(Serialize, Clone, Debug, Default)]
struct LoadRun {
    offered_per_s: f64,
    completed_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
    late: u64,
    waited: u64,
    /// The server's CPU time per valid answer, microseconds.
    cpu_us_per_answer: f64,
}

#[allow(clippy::too_many_arguments)]
fn run_load(
    scratch: &Path,
    name: &str,
    target: SocketAddr,
    ids: &Path,
    rate: f64,
    secs: u64,
    warmup_ms: u64,
    connections: u32,
    zipf: f64,
    cpu_of: &dyn Fn() -> u64,
) -> Result<LoadRun> {
    let json = scratch.join(format!("load-{name}-{rate}.json"));
    let log = scratch.join(format!("load-{name}-{rate}.log"));
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("load")
        .args(["--target", &target.to_string(), "--assets-file"])
        .arg(ids)
        .args(["--no-follow", "--arrival", "poisson", "--popularity"])
        .arg(format!("zipf:{zipf}"))
        .args(["--rate", &rate.to_string()])
        .args(["--duration", &format!("{secs}s")])
        .args(["--warmup", &format!("{warmup_ms}ms")])
        .args(["--connections", &connections.to_string()])
        .args(["--interval", "5s", "--json"])
        .arg(&json);
    let t0 = cpu_of();
    harness::run_logged("reel load", &mut cmd, &log)?;
    let cpu_s = (cpu_of().saturating_sub(t0)) as f64 / CLK_TCK;
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&json).with_context(|| format!("reading {}", json.display()))?,
    )
    .context("reel load's --json")?;
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let answers = (f("requests") - f("errors")).max(0.0);
    let run = LoadRun {
        offered_per_s: f("offered_per_s"),
        completed_per_s: f("completed_per_s"),
        p50_us: f("p50_us") as u64,
        p99_us: f("p99_us") as u64,
        errors: f("errors") as u64,
        late: f("late") as u64,
        waited: f("waited") as u64,
        // The whole run's CPU (warmup included) over the measured answers and the warmup's.
        cpu_us_per_answer: if answers > 0.0 {
            cpu_s * 1e6 / (answers + rate * warmup_ms as f64 / 1e3)
        } else {
            0.0
        },
    };
    note(
        ME,
        format!(
            "{name} at {rate} req/s: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, errors {}, late {}, waited {}",
            run.completed_per_s,
            run.p50_us as f64 / 1e3,
            run.p99_us as f64 / 1e3,
            run.errors,
            run.late,
            run.waited
        ),
    );
    Ok(run)
}

/// One point of the table.
#[derive(Serialize, Debug)]
struct Point {
    rate: f64,
    manager: LoadRun,
    peer: Option<LoadRun>,
    /// Mean routing decision over the manager's run, from its /metrics.
    decision_mean_us: f64,
}

/// The figures, as `--json` writes them.
#[derive(Serialize, Debug)]
struct Figures {
    host: String,
    nodes: u32,
    assets: u64,
    holdings: u64,
    connections: u32,
    run_seconds: u64,
    zipf: f64,
    peer: Option<String>,
    rss_before_kib: u64,
    rss_after_kib: u64,
    hwm_after_kib: u64,
    bytes_per_asset: f64,
    bytes_per_copy: f64,
    full_reports_s: f64,
    points: Vec<Point>,
    reports_sent: u64,
}

pub fn run(args: &RoutingArgs) -> Result<()> {
    harness::install_interrupt()?;
    harness::raise_nofile();
    let plan = Plan::new(args)?;
    if !args.dir.is_dir() {
        bail!("--dir {} is not a directory", args.dir.display());
    }
    let tmp = tempfile::Builder::new()
        .prefix("reel-bench-routing.")
        .tempdir_in(&args.dir)
        .with_context(|| format!("creating a scratch directory in {}", args.dir.display()))?;
    let scratch = tmp.path().to_path_buf();
    let result = measure(args, &plan, &scratch);
    if args.keep {
        note(ME, format!("kept {}", tmp.keep().display()));
    }
    let figures = result?;
    print_table(&figures);
    if let Some(p) = &args.json {
        let mut text = serde_json::to_vec_pretty(&figures)?;
        text.push(b'\n');
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn measure(args: &RoutingArgs, plan: &Plan, scratch: &Path) -> Result<Figures> {
    let token = scratch.join("cluster.token");
    std::fs::write(&token, format!("{TOKEN}\n"))?;
    let access = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let peer = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("manager")
        .args(["--listen", &access.to_string()])
        .args(["--peer-listen", &peer.to_string()])
        .arg("--cluster-token-file")
        .arg(&token)
        .arg("--data-dir")
        .arg(scratch.join("store"))
        // The fake reporters share the CPUs with the load: a late report must not take a
        // synthetic node out of routing.
        .args(["--node-timeout", "10s"]);
    let mut manager = Proc::spawn("reel manager", &mut cmd, &scratch.join("manager.log"))?;
    manager.wait_ready(access, Duration::from_secs(20))?;
    // Leading once /cluster answers 200 (a standby answers 503).
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let mut h = Http::new(access, Duration::from_secs(5));
        if h.expect("GET", "/cluster", None, &[200]).is_ok() {
            break;
        }
        if Instant::now() > until {
            bail!(
                "the manager did not take the lead in 20 s: {}",
                manager.log_tail(20)
            );
        }
        harness::sleep(Duration::from_millis(100))?;
    }
    let pid = manager.pid();
    harness::sleep(Duration::from_millis(500))?;
    let rss_before = status_kib(pid, "VmRSS")?;
    note(
        ME,
        format!(
            "manager up (pid {pid}, RSS {:.1} MiB); {} synthetic nodes report {} copies of {} assets",
            rss_before as f64 / 1024.0,
            args.nodes,
            plan.holdings,
            plan.assets
        ),
    );
    let (nodes, full_reports_s) = load_inventory(peer, access, plan, args.nodes)?;
    let m = scrape(access)?;
    let inventory = metric(&m, "reel_manager_inventory_assets") as u64;
    if inventory != plan.assets {
        bail!(
            "the manager's inventory holds {inventory} assets, not {}",
            plan.assets
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reporter = keep_reporting(peer, nodes, stop.clone());
    harness::sleep(Duration::from_secs(1))?;
    let rss_after = status_kib(pid, "VmRSS")?;
    let hwm_after = status_kib(pid, "VmHWM")?;
    let grown = rss_after.saturating_sub(rss_before) as f64 * 1024.0;
    note(
        ME,
        format!(
            "inventory loaded in {full_reports_s:.1} s: RSS {:.1} MiB (peak {:.1} MiB)",
            rss_after as f64 / 1024.0,
            hwm_after as f64 / 1024.0
        ),
    );

    // The ids in rank order (the hottest first), for reel load's Zipf.
    let ids = scratch.join("ids.txt");
    let mut list = String::with_capacity(plan.assets as usize * 16);
    for i in 0..plan.assets {
        let _ = writeln!(list, "{}", asset_id(i));
    }
    std::fs::write(&ids, list)?;

    let peer_srv = if args.no_peer {
        None
    } else if nginx_installed() {
        Some(start_nginx(scratch, SocketAddr::from(([127, 0, 0, 1], 9)))?)
    } else {
        note(ME, "nginx is not installed: the manager is measured alone, no ratio (apt-get install -y nginx)");
        None
    };
    let mut points = Vec::new();
    for &rate in &plan.rates {
        let before = scrape(access)?;
        let mgr = run_load(
            scratch,
            "manager",
            access,
            &ids,
            rate,
            plan.secs,
            plan.warmup_ms,
            args.connections,
            args.zipf,
            &|| proc_ticks(pid).unwrap_or(0),
        )?;
        let after = scrape(access)?;
        let dn = metric(&after, "reel_manager_decisions_total")
            - metric(&before, "reel_manager_decisions_total");
        let ds = metric(&after, "reel_manager_decision_seconds_total")
            - metric(&before, "reel_manager_decision_seconds_total");
        let peer_run = match &peer_srv {
            Some((p, addr)) => {
                let ppid = p.pid();
                Some(run_load(
                    scratch,
                    "nginx",
                    *addr,
                    &ids,
                    rate,
                    plan.secs,
                    plan.warmup_ms,
                    args.connections,
                    args.zipf,
                    &|| tree_ticks(ppid),
                )?)
            }
            None => None,
        };
        manager.alive()?;
        if reporter.is_finished() {
            break;
        }
        points.push(Point {
            rate,
            manager: mgr,
            peer: peer_run,
            decision_mean_us: if dn > 0.0 { ds / dn * 1e6 } else { 0.0 },
        });
    }
    stop.store(true, Ordering::Relaxed);
    let reports_sent = reporter
        .join()
        .map_err(|_| anyhow!("the synthetic nodes' reporter panicked"))??;
    if points.len() < plan.rates.len() {
        bail!("the synthetic nodes stopped reporting");
    }
    let routable = scrape(access)?
        .iter()
        .filter(|(k, v)| k.starts_with("reel_manager_node_up{") && **v == 1.0)
        .count();
    if routable != args.nodes as usize {
        bail!(
            "only {routable} of {} synthetic nodes stayed up",
            args.nodes
        );
    }
    Ok(Figures {
        host: host_line(),
        nodes: args.nodes,
        assets: plan.assets,
        holdings: plan.holdings,
        connections: args.connections,
        run_seconds: plan.secs,
        zipf: args.zipf,
        peer: peer_srv
            .as_ref()
            .map(|_| "nginx return 307 (2 workers)".to_string()),
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        hwm_after_kib: hwm_after,
        bytes_per_asset: grown / plan.assets as f64,
        bytes_per_copy: grown / plan.holdings as f64,
        full_reports_s,
        points,
        reports_sent,
    })
}

fn print_table(f: &Figures) {
    println!(
        "reel bench routing: reel manager (embedded store) with {} synthetic nodes (fake \
         reporters in this process, not reel nodes): {} assets, {} copies; reel load \
         --no-follow, Poisson arrivals, Zipf {} over the ids, {} connections, {} s per run; \
         peer: {}",
        f.nodes,
        f.assets,
        f.holdings,
        f.zipf,
        f.connections,
        f.run_seconds,
        f.peer.as_deref().unwrap_or("none")
    );
    println!("({})", f.host);
    println!(
        "memory: manager RSS {:.1} MiB before the reports, {:.1} MiB after (peak {:.1} MiB): \
         {:.0} B per asset, {:.0} B per copy; full reports applied in {:.2} s",
        f.rss_before_kib as f64 / 1024.0,
        f.rss_after_kib as f64 / 1024.0,
        f.hwm_after_kib as f64 / 1024.0,
        f.bytes_per_asset,
        f.bytes_per_copy,
        f.full_reports_s
    );
    println!();
    println!(
        "| offered req/s | manager redirects/s | p50 ms | p99 ms | CPU µs/redirect | mean decision µs | nginx 307/s | p50 ms | p99 ms | CPU µs/307 | manager / nginx (req/s) | p99 manager / nginx |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let ms = |us: u64| format!("{:.2}", us as f64 / 1e3);
    for p in &f.points {
        let m = &p.manager;
        let (pr, ratio, p99r) = match &p.peer {
            Some(n) => (
                format!(
                    "{:.0} | {} | {} | {:.1}",
                    n.completed_per_s,
                    ms(n.p50_us),
                    ms(n.p99_us),
                    n.cpu_us_per_answer
                ),
                format!("{:.2}", m.completed_per_s / n.completed_per_s.max(1e-9)),
                format!("{:.2}", m.p99_us as f64 / (n.p99_us as f64).max(1.0)),
            ),
            None => ("- | - | - | -".into(), "-".into(), "-".into()),
        };
        println!(
            "| {:.0} | {:.0}{} | {} | {} | {:.1} | {:.2} | {pr} | {ratio} | {p99r} |",
            p.rate,
            m.completed_per_s,
            if m.errors > 0 {
                format!(" ({} errors)", m.errors)
            } else {
                String::new()
            },
            ms(m.p50_us),
            ms(m.p99_us),
            m.cpu_us_per_answer,
            p.decision_mean_us
        );
    }
    println!(
        "\n(latency from each request's intended start; reel load, the manager, nginx and the \
         fake reporters share the host's CPUs; {} delta reports sent)",
        f.reports_sent
    );
}

//! `reel bench nginx`: serving large media assets with `reel node` against nginx, in the same
//! run, on the same bytes. A set of large assets (default 16 × 256 MiB) and a set of small ones
//! (default 1000 × 1 MiB) are generated once, written as plain files into a docroot that nginx
//! serves, and PUT into a freshly formatted reel volume (a file). All servers answer the
//! identical URLs /assets/large/NN and /assets/small/NNNN (nginx maps them with an alias).
//!
//! Servers, each measured in turn for every point, `--repeats` times:
//! - reel: `reel node --primary VOLUME --listen 127.0.0.1:PORT --shards N`
//! - nginx-sendfile: sendfile on; tcp_nopush on; page cache warmed (all files of the set read)
//!   before each run
//! - nginx-directio: sendfile off; aio threads; directio 512; output_buffers 2 1m
//!
//! Both nginx configs: worker_processes auto, access_log off, keepalive, open_file_cache,
//! reuseport; this command writes them and starts nginx itself. The load is wrk (2 threads) at
//! 8/32/128 connections for 10 s per point; a Lua script makes each request pick a random asset
//! of the set, and its done() hook reports the exact bytes and duration. Server CPU is
//! utime+stime from /proc/PID/stat (nginx: master and workers; reel: the node process, all
//! threads) sampled before and after each wrk run.
//!
//! Prints, per run and per point (medians), lines on stderr, then a markdown table on stdout:
//! bytes/s (GB/s, 10^9 bytes), requests/s and server CPU-seconds per GB for each server, the
//! ratios reel/nginx-sendfile and reel/nginx-directio (of the medians) and the targets: large
//! assets ≥ 1.0× nginx sendfile and ≥ 3× nginx directio in bytes/s; CPU per GB ≤ nginx
//! sendfile's. Before measuring it checks, for the first and last large and small asset, that
//! the body each server sends equals the source file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::cmd::bench::harness::{
    self, fill_random, format_volume, free_port, host_line, is_root, loadavg, meminfo_kib, note,
    parse_result_line, require_tools, run_wrk, tree_ticks, wrk_script, FsInfo, Http, Proc, Scratch,
    CLK_TCK,
};
use crate::cmd::bench::stats::{median, ratio};

const ME: &str = "reel bench nginx";

#[derive(Args, Debug)]
pub struct NginxArgs {
    /// Sanity run: 4 × 64 MiB and 100 × 1 MiB, 3 s per point, 8 and 32 connections, 1 repeat
    /// (any flag given still overrides).
    #[arg(long)]
    pub quick: bool,
    /// Number of large assets [default: 16].
    #[arg(long)]
    pub large_count: Option<u32>,
    /// Size of each large asset in MiB [default: 256].
    #[arg(long)]
    pub large_mb: Option<u64>,
    /// Number of small assets [default: 1000].
    #[arg(long)]
    pub small_count: Option<u32>,
    /// Size of each small asset in MiB [default: 1].
    #[arg(long)]
    pub small_mb: Option<u64>,
    /// wrk duration per run, seconds [default: 10].
    #[arg(long)]
    pub run_seconds: Option<u32>,
    /// Connection counts, comma-separated [default: 8,32,128].
    #[arg(long, value_delimiter = ',')]
    pub conns: Option<Vec<u32>>,
    /// Runs of each server per point [default: 3].
    #[arg(long)]
    pub repeats: Option<u32>,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// wrk --timeout (a 256 MiB response takes seconds at 128 connections).
    #[arg(long, default_value = "60s")]
    pub timeout: String,
    /// nginx worker_processes.
    #[arg(long, default_value = "auto")]
    pub workers: String,
    /// reel node --shards [default: number of CPUs].
    #[arg(long)]
    pub shards: Option<u32>,
    /// Parent of the scratch directory (not tmpfs: the reel volume and nginx directio need
    /// O_DIRECT).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
    /// Measure nginx only (no volume, no reel node).
    #[arg(long)]
    pub skip_reel: bool,
    /// Keep the scratch directory (data, configs, logs, raw results).
    #[arg(long)]
    pub keep: bool,
}

/// The settings after `--quick` and the flags.
struct Plan {
    large_count: u32,
    large_mb: u64,
    small_count: u32,
    small_mb: u64,
    secs: u32,
    conns: Vec<u32>,
    repeats: u32,
    shards: u32,
}

impl Plan {
    fn new(a: &NginxArgs) -> Result<Plan> {
        let q = a.quick;
        let p = Plan {
            large_count: a.large_count.unwrap_or(if q { 4 } else { 16 }),
            large_mb: a.large_mb.unwrap_or(if q { 64 } else { 256 }),
            small_count: a.small_count.unwrap_or(if q { 100 } else { 1000 }),
            small_mb: a.small_mb.unwrap_or(1),
            secs: a.run_seconds.unwrap_or(if q { 3 } else { 10 }),
            conns: a
                .conns
                .clone()
                .unwrap_or_else(|| if q { vec![8, 32] } else { vec![8, 32, 128] }),
            repeats: a.repeats.unwrap_or(if q { 1 } else { 3 }),
            shards: a.shards.unwrap_or(harness::cpus() as u32),
        };
        let positive = [
            ("--large-count", u64::from(p.large_count)),
            ("--large-mb", p.large_mb),
            ("--small-count", u64::from(p.small_count)),
            ("--small-mb", p.small_mb),
            ("--run-seconds", u64::from(p.secs)),
            ("--repeats", u64::from(p.repeats)),
            ("--threads", u64::from(a.threads)),
            ("--shards", u64::from(p.shards)),
        ];
        for (flag, v) in positive {
            if v == 0 {
                bail!("{flag} must be a positive whole number");
            }
        }
        if p.conns.is_empty() {
            bail!("--conns is empty");
        }
        for &c in &p.conns {
            if c < a.threads {
                bail!(
                    "each connection count must be >= --threads ({}) for wrk, got {c}",
                    a.threads
                );
            }
        }
        Ok(p)
    }

    fn data_mib(&self) -> u64 {
        u64::from(self.large_count) * self.large_mb + u64::from(self.small_count) * self.small_mb
    }
}

/// `large/NN`, `small/NNNN`: as many digits as the largest index, at least `min`.
fn asset_id(set: &str, count: u32, min: usize, i: u32) -> String {
    let width = count.saturating_sub(1).to_string().len().max(min);
    format!("{set}/{i:0width$}")
}

const SETS: [&str; 2] = ["large", "small"];
const SERVERS: [&str; 3] = ["reel", "nginx-sendfile", "nginx-directio"];

/// One wrk run against one server.
#[derive(Clone, Debug)]
struct Run {
    server: &'static str,
    set: &'static str,
    conns: u32,
    bytes: f64,
    duration_us: f64,
    requests: f64,
    errors: f64,
    cpu_ticks: u64,
}

/// The figures of a run or, over runs, their medians.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Figures {
    gbps: f64,
    rps: f64,
    cpu_s_per_gb: f64,
}

impl Run {
    fn figures(&self) -> Figures {
        let secs = self.duration_us / 1e6;
        Figures {
            gbps: self.bytes / secs / 1e9,
            rps: self.requests / secs,
            cpu_s_per_gb: (self.cpu_ticks as f64 / CLK_TCK) / (self.bytes / 1e9),
        }
    }
}

/// The medians of one server at one point, its runs' figures in run order, and its errors.
struct PointOf {
    med: Figures,
    runs: Vec<Figures>,
    errors: f64,
}

/// Every server's medians at (set, conns).
fn point(runs: &[Run], set: &str, conns: u32) -> BTreeMap<&'static str, PointOf> {
    let mut out = BTreeMap::new();
    for s in SERVERS {
        let rs: Vec<&Run> = runs
            .iter()
            .filter(|r| r.server == s && r.set == set && r.conns == conns)
            .collect();
        if rs.is_empty() {
            continue;
        }
        let figs: Vec<Figures> = rs.iter().map(|r| r.figures()).collect();
        let med = |f: fn(&Figures) -> f64| median(figs.iter().map(f).collect());
        out.insert(
            s,
            PointOf {
                med: Figures {
                    gbps: med(|f| f.gbps),
                    rps: med(|f| f.rps),
                    cpu_s_per_gb: med(|f| f.cpu_s_per_gb),
                },
                runs: figs,
                errors: rs.iter().map(|r| r.errors).sum(),
            },
        );
    }
    out
}

/// `a`'s over `b`'s median of a figure at a point.
fn point_ratio(
    p: &BTreeMap<&str, PointOf>,
    a: &str,
    b: &str,
    f: fn(&Figures) -> f64,
) -> Option<f64> {
    ratio(f(&p.get(a)?.med), f(&p.get(b)?.med))
}

/// The stderr lines after each point: every server's medians and reel's ratios per repeat.
fn point_lines(runs: &[Run], set: &str, conns: u32) -> Vec<String> {
    let p = point(runs, set, conns);
    let parts: Vec<String> = SERVERS
        .iter()
        .filter_map(|s| {
            let m = &p.get(s)?.med;
            Some(format!(
                "{s} {:.3} GB/s {:.1} req/s {:.3} CPU-s/GB",
                m.gbps, m.rps, m.cpu_s_per_gb
            ))
        })
        .collect();
    let mut out = vec![format!("median {set} c={conns}: {}", parts.join("; "))];
    if let Some(reel) = p.get("reel") {
        for other in ["nginx-sendfile", "nginx-directio"] {
            let Some(o) = p.get(other) else { continue };
            let pairs: Vec<String> = reel
                .runs
                .iter()
                .zip(&o.runs)
                .map(|(a, b)| format!("{:.2}", a.gbps / b.gbps))
                .collect();
            let r = point_ratio(&p, "reel", other, |f| f.gbps).unwrap_or(f64::NAN);
            out.push(format!(
                "  reel/{other} bytes/s {r:.2} (per repeat: {})",
                pairs.join(" ")
            ));
        }
    }
    out
}

fn fmt_figure(v: f64, rps: bool) -> String {
    if rps && v >= 100.0 {
        format!("{v:.0}")
    } else if rps {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// `1.23×`, with ✓/✗ against `want` (at least, or at most with `le`); — when there is none.
fn fmt_ratio(v: Option<f64>, want: Option<f64>, le: bool) -> String {
    let Some(v) = v else {
        return "—".to_string();
    };
    let mut s = format!("{v:.2}×");
    if let Some(w) = want {
        let ok = if le { v <= w } else { v >= w };
        s += if ok { " ✓" } else { " ✗" };
    }
    s
}

/// The markdown table: per set and connection count, GB/s, req/s and CPU-s/GB of each server,
/// the ratios and targets.
fn table(runs: &[Run], conns_list: &[u32], labels: [&str; 2], have_reel: bool) -> String {
    let mut out = String::new();
    out += "| assets | conns | metric | reel | nginx sendfile | nginx directio | reel / sendfile | reel / directio | target |\n";
    out += "|---|---|---|---|---|---|---|---|---|\n";
    let mut any_errors = false;
    for (set, label) in SETS.iter().zip(labels) {
        for &conns in conns_list {
            let p = point(runs, set, conns);
            if p.is_empty() {
                continue;
            }
            any_errors |= p.values().any(|v| v.errors > 0.0);
            let large = *set == "large";
            type Pick = fn(&Figures) -> f64;
            let metrics: [(&str, Pick); 3] = [
                ("GB/s", |f| f.gbps),
                ("req/s", |f| f.rps),
                ("CPU-s/GB", |f| f.cpu_s_per_gb),
            ];
            for (k, (name, pick)) in metrics.into_iter().enumerate() {
                let cell = |s: &str| match p.get(s) {
                    None if s == "reel" && !have_reel => "skipped".to_string(),
                    None => "—".to_string(),
                    Some(v) => {
                        fmt_figure(pick(&v.med), k == 1)
                            + if v.errors > 0.0 { " (errors!)" } else { "" }
                    }
                };
                let rs_ = point_ratio(&p, "reel", "nginx-sendfile", pick);
                let rd_ = point_ratio(&p, "reel", "nginx-directio", pick);
                let (target, rs, rd) = match k {
                    0 => (
                        if large {
                            "≥ 1.0× sendfile, ≥ 3× directio"
                        } else {
                            "—"
                        },
                        fmt_ratio(rs_, large.then_some(1.0), false),
                        fmt_ratio(rd_, large.then_some(3.0), false),
                    ),
                    2 => (
                        "≤ 1.0× sendfile",
                        fmt_ratio(rs_, Some(1.0), true),
                        fmt_ratio(rd_, None, false),
                    ),
                    _ => (
                        "—",
                        fmt_ratio(rs_, None, false),
                        fmt_ratio(rd_, None, false),
                    ),
                };
                let first = k == 0;
                out += &format!(
                    "| {} | {} | {name} | {} | {} | {} | {rs} | {rd} | {target} |\n",
                    if first { label } else { "" },
                    if first {
                        conns.to_string()
                    } else {
                        String::new()
                    },
                    cell("reel"),
                    cell("nginx-sendfile"),
                    cell("nginx-directio"),
                );
            }
        }
    }
    out +=
        "\nbytes/s counts every byte received, including responses cut off at the end of a run: \
            with large assets and many connections few responses complete within a run, so req/s \
            is coarse there (raise --run-seconds for it).\n";
    if any_errors {
        out += "\n(errors!) marks servers with failed requests (non-2xx, timeouts, socket errors) \
                in some run; see the wrk outputs (--keep keeps them).\n";
    }
    out
}

/// A started server.
struct Server {
    name: &'static str,
    proc: Proc,
    addr: SocketAddr,
}

/// Writes an nginx config with `directives` into `dir` and starts nginx in the foreground.
fn start_nginx(
    name: &'static str,
    directives: &str,
    work: &Path,
    www: &Path,
    workers: &str,
) -> Result<Server> {
    let dir = work.join(name);
    std::fs::create_dir_all(dir.join("tmp"))?;
    let port = free_port()?;
    let user = if is_root() { "user root;" } else { "" };
    let d = dir.display();
    let conf = format!(
        "# {name}, written by reel bench nginx
{user}
worker_processes {workers};
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
    default_type application/octet-stream;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    open_file_cache max=10000 inactive=300s;
    open_file_cache_valid 300s;
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
{directives}
    server {{
        listen 127.0.0.1:{port} backlog=4096 reuseport;
        location /assets/ {{
            alias {w}/;
        }}
        location = /healthz {{
            return 200 \"ok\\n\";
        }}
    }}
}}
",
        w = www.display()
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let nginx_cmd = |test: bool| {
        let mut c = Command::new("nginx");
        if test {
            c.args(["-t", "-q"]);
        }
        c.arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path);
        c
    };
    let t = nginx_cmd(true).output().context("running nginx -t")?;
    if !t.status.success() {
        bail!(
            "nginx rejected the {name} config ({}): {}{}",
            conf_path.display(),
            String::from_utf8_lossy(&t.stderr),
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
    }
    let mut proc = Proc::spawn(name, &mut nginx_cmd(false), &dir.join("stdout.log"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    proc.wait_ready(addr, Duration::from_secs(20))?;
    Ok(Server { name, proc, addr })
}

fn write_random_file(path: &Path, bytes: u64, rng: &mut fastrand::Rng) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        fill_random(rng, &mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Reads every file of a set, so nginx sendfile serves from a warm page cache.
fn warm_cache(dir: &Path) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for e in std::fs::read_dir(dir)? {
        let mut f = File::open(e?.path())?;
        while f.read(&mut buf)? > 0 {}
    }
    Ok(())
}

pub fn run(args: &NginxArgs) -> Result<()> {
    harness::install_interrupt()?;
    let plan = Plan::new(args)?;
    require_tools(&["nginx", "wrk"])?;
    let v = Command::new("nginx")
        .arg("-V")
        .output()
        .context("nginx -V")?;
    let nginx_v = String::from_utf8_lossy(&v.stderr).into_owned();
    if !nginx_v.contains("--with-threads") {
        bail!("this nginx is built without thread pools (--with-threads), needed for 'aio threads'; Debian's nginx package has them");
    }
    let nginx_version = nginx_v
        .lines()
        .next()
        .and_then(|l| l.rsplit('/').next())
        .unwrap_or("?")
        .trim()
        .to_string();
    let with_reel = !args.skip_reel;
    harness::raise_nofile();
    if !with_reel {
        note(ME, "reel part SKIPPED (--skip-reel): measuring nginx only");
    }

    let data_mib = plan.data_mib();
    // The volume's metadata (checkpoints + journal) is about 3% of its size; leave room for it.
    let vol_mib = if with_reel {
        data_mib + data_mib / 16 + 256
    } else {
        0
    };
    let need = data_mib + vol_mib + 512;
    let scratch = Scratch::new(ME, &args.dir, "reel-compare-nginx.", args.keep)?;
    let fs = FsInfo::of(&args.dir)?;
    if fs.avail_mib < need {
        bail!(
            "not enough free space in {}: need {need} MiB (docroot {data_mib} MiB + reel volume {vol_mib} MiB + 512 MiB margin), have {} MiB; choose --dir elsewhere or lower --large-count / --large-mb / --small-count",
            args.dir.display(),
            fs.avail_mib
        );
    }
    let mem_mib = meminfo_kib("MemAvailable") / 1024;
    if mem_mib <= data_mib + data_mib / 4 {
        note(ME, format!("WARNING: only {mem_mib} MiB of memory available for {data_mib} MiB of assets: the nginx-sendfile runs will not be served from a fully warm page cache"));
    }
    let work = scratch.path().to_path_buf();
    let www = work.join("www");
    std::fs::create_dir_all(www.join("large"))?;
    std::fs::create_dir_all(www.join("small"))?;
    std::fs::create_dir_all(work.join("runs"))?;

    // Assets.
    note(ME, format!("scratch directory {}", work.display()));
    note(
        ME,
        format!(
            "generating {} x {} MiB + {} x {} MiB of random data ({data_mib} MiB) in {}",
            plan.large_count,
            plan.large_mb,
            plan.small_count,
            plan.small_mb,
            www.display()
        ),
    );
    let t0 = Instant::now();
    let mut rng = fastrand::Rng::new();
    let mut ids: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (set, count, mb, min) in [
        ("large", plan.large_count, plan.large_mb, 2),
        ("small", plan.small_count, plan.small_mb, 4),
    ] {
        let mut paths = String::new();
        let list = ids.entry(set).or_default();
        for i in 0..count {
            harness::check_interrupt()?;
            let id = asset_id(set, count, min, i);
            write_random_file(&www.join(&id), mb << 20, &mut rng)?;
            paths += &format!("/assets/{id}\n");
            list.push(id);
        }
        std::fs::write(work.join(format!("paths-{set}")), paths)?;
    }
    let _ = Command::new("sync").status();
    note(ME, format!("generated in {} s", t0.elapsed().as_secs()));

    // Servers.
    let mut servers: Vec<Server> = Vec::new();
    if with_reel {
        let vol = work.join("volume.img");
        note(
            ME,
            format!(
                "formatting a {vol_mib} MiB reel volume at {}",
                vol.display()
            ),
        );
        format_volume(&vol, vol_mib, &work.join("format.log"))?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("node")
            .arg("--primary")
            .arg(&vol)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--shards")
            .arg(plan.shards.to_string());
        note(ME, format!("starting: {cmd:?}"));
        let mut proc = Proc::spawn("reel node", &mut cmd, &work.join("reel-node.log"))?;
        proc.wait_ready(addr, Duration::from_secs(120))?;
        match proc
            .log_tail(50)
            .lines()
            .find(|l| l.contains("listening on"))
        {
            Some(line) => note(ME, line),
            None => note(
                ME,
                "warning: reel node answers /healthz but printed no 'listening on' line",
            ),
        }
        let server = Server {
            name: "reel",
            proc,
            addr,
        };
        note(ME, "ingesting into reel (PUT /assets/{id})");
        let t0 = Instant::now();
        let mut http = Http::new(addr, Duration::from_secs(3600));
        for id in ids.values().flatten() {
            harness::check_interrupt()?;
            let mut f = File::open(www.join(id))?;
            let len = f.metadata()?.len();
            let mut err = None;
            let status = http.put_stream(&format!("/assets/{id}"), len, |buf| {
                if let Err(e) = f.read_exact(buf) {
                    err = Some(e);
                }
            })?;
            if let Some(e) = err {
                return Err(e).with_context(|| format!("reading {id}"));
            }
            if status != 201 && status != 200 {
                bail!(
                    "reel answered {status} to PUT /assets/{id}; node log: {}",
                    server.proc.log.display()
                );
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        note(
            ME,
            format!(
                "ingested {} assets ({data_mib} MiB) in {secs:.1} s, {:.0} MiB/s",
                plan.large_count + plan.small_count,
                data_mib as f64 / secs
            ),
        );
        servers.push(server);
    }
    servers.push(start_nginx(
        "nginx-sendfile",
        "    sendfile on;\n    tcp_nopush on;",
        &work,
        &www,
        &args.workers,
    )?);
    servers.push(start_nginx(
        "nginx-directio",
        "    sendfile off;\n    aio threads;\n    directio 512;\n    output_buffers 2 1m;",
        &work,
        &www,
        &args.workers,
    )?);
    note(
        ME,
        format!(
            "nginx-sendfile on http://{}, nginx-directio on http://{} (worker_processes {})",
            servers[servers.len() - 2].addr,
            servers[servers.len() - 1].addr,
            args.workers
        ),
    );

    // Correctness: the first and last asset of each set, from every server.
    for (set, list) in &ids {
        for id in [list.first(), list.last()].into_iter().flatten() {
            let want = std::fs::read(www.join(id))?;
            for s in &servers {
                let mut http = Http::new(s.addr, Duration::from_secs(300));
                let r = http.expect("GET", &format!("/assets/{id}"), None, &[200])?;
                if r.body != want {
                    bail!("{} served /assets/{id} ({set}) with {} bytes that differ from the source file's {}", s.name, r.body.len(), want.len());
                }
            }
        }
    }
    let names: Vec<&str> = servers.iter().map(|s| s.name).collect();
    note(
        ME,
        format!(
            "verified: the first and last large and small asset from {} match the source files",
            names.join(" ")
        ),
    );

    // Load.
    for set in SETS {
        let script = wrk_script(
            &work.join(format!("paths-{set}")),
            &format!("Each request GETs a random asset of the {set} set; done() prints the totals as key=value."),
            "    return wrk.format(\"GET\", paths[math.random(#paths)])",
            r#"    io.write(string.format(
        "RESULT bytes=%.0f duration_us=%.0f requests=%.0f errors=%.0f err_connect=%.0f err_read=%.0f err_write=%.0f err_status=%.0f err_timeout=%.0f\n",
        summary.bytes, summary.duration, summary.requests,
        e.connect + e.read + e.write + e.status + e.timeout,
        e.connect, e.read, e.write, e.status, e.timeout))"#,
        );
        std::fs::write(work.join(format!("wrk-{set}.lua")), script)?;
    }
    let total_runs = 2 * plan.conns.len() * servers.len() * plan.repeats as usize;
    let conns_text: Vec<String> = plan.conns.iter().map(u32::to_string).collect();
    note(ME, format!(
        "measuring: {total_runs} wrk runs of {}s ({}; connections {}; {} repeats; wrk -t {} --timeout {})",
        plan.secs, names.join(" "), conns_text.join(" "), plan.repeats, args.threads, args.timeout
    ));
    let mut runs: Vec<Run> = Vec::new();
    let mut tsv = String::from(
        "server\tset\tconns\trep\tbytes\tduration_us\trequests\terrors\tcpu_ticks\tclk_tck\n",
    );
    for set in SETS {
        for &conns in &plan.conns {
            note(ME, format!("== {set} assets, {conns} connections"));
            for rep in 1..=plan.repeats {
                for s in &mut servers {
                    s.proc.alive()?;
                    if s.name == "nginx-sendfile" {
                        warm_cache(&www.join(set))?;
                    }
                    let before = tree_ticks(s.proc.pid());
                    let out = work
                        .join("runs")
                        .join(format!("{set}-c{conns}-{}-{rep}.txt", s.name));
                    let wrk_args: Vec<String> = vec![
                        "-t".into(),
                        args.threads.to_string(),
                        "-c".into(),
                        conns.to_string(),
                        "-d".into(),
                        format!("{}s", plan.secs),
                        "--timeout".into(),
                        args.timeout.clone(),
                        "-s".into(),
                        work.join(format!("wrk-{set}.lua")).display().to_string(),
                    ];
                    let text = run_wrk(&wrk_args, &format!("http://{}/", s.addr), &out)
                        .with_context(|| format!("wrk against {}", s.name))?;
                    // Let the server finish the responses cut off at the end of the run.
                    harness::sleep(Duration::from_millis(300))?;
                    let after = tree_ticks(s.proc.pid());
                    let kv = parse_result_line(&text).with_context(|| {
                        format!("wrk printed no RESULT line for {}: {text}", s.name)
                    })?;
                    let get = |k: &str| kv.get(k).copied().unwrap_or(0.0);
                    if get("bytes") == 0.0 {
                        bail!("{} returned no bytes in {} s: {text}", s.name, plan.secs);
                    }
                    let r = Run {
                        server: s.name,
                        set,
                        conns,
                        bytes: get("bytes"),
                        duration_us: get("duration_us"),
                        requests: get("requests"),
                        errors: get("errors"),
                        cpu_ticks: after.saturating_sub(before),
                    };
                    tsv += &format!(
                        "{}\t{set}\t{conns}\t{rep}\t{}\t{}\t{}\t{}\t{}\t{CLK_TCK}\n",
                        s.name, r.bytes, r.duration_us, r.requests, r.errors, r.cpu_ticks
                    );
                    let f = r.figures();
                    let warn = if r.errors > 0.0 {
                        format!("  ({:.0} ERRORS, see the run's wrk output)", r.errors)
                    } else {
                        String::new()
                    };
                    note(ME, format!(
                        "  {set} c={conns} #{rep} {:15} {:7.3} GB/s {:9.1} req/s {:7.3} CPU-s/GB{warn}",
                        s.name, f.gbps, f.rps, f.cpu_s_per_gb
                    ));
                    runs.push(r);
                }
            }
            for line in point_lines(&runs, set, conns) {
                note(ME, line);
            }
        }
    }
    std::fs::write(work.join("results.tsv"), tsv)?;

    println!();
    println!(
        "reel node vs nginx {nginx_version}, medians of {} alternating runs of {}s per point; wrk {} threads, random asset per request",
        plan.repeats, plan.secs, args.threads
    );
    println!(
        "({}, data on {}; reel --shards {}; nginx worker_processes {}; wrk runs on the same host)",
        host_line(),
        fs.fstype,
        plan.shards,
        args.workers
    );
    println!(
        "(load average at the end: {}; a busy host makes every column noisy, see the per-repeat lines on stderr)",
        loadavg(3)
    );
    println!("GB = 10^9 bytes; CPU-s/GB = server utime+stime per GB sent (nginx: master + workers; reel: node process)");
    println!();
    let labels = [
        format!("large {} × {} MiB", plan.large_count, plan.large_mb),
        format!("small {} × {} MiB", plan.small_count, plan.small_mb),
    ];
    print!(
        "{}",
        table(&runs, &plan.conns, [&labels[0], &labels[1]], with_reel)
    );
    if args.keep {
        note(
            ME,
            format!("raw results: {}", work.join("results.tsv").display()),
        );
    }
    drop(servers);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(server: &'static str, set: &'static str, gb: f64, secs: f64, ticks: u64) -> Run {
        Run {
            server,
            set,
            conns: 8,
            bytes: gb * 1e9,
            duration_us: secs * 1e6,
            requests: 10.0 * secs,
            errors: 0.0,
            cpu_ticks: ticks,
        }
    }

    #[test]
    fn asset_ids_are_zero_padded() {
        assert_eq!(asset_id("large", 16, 2, 3), "large/03");
        assert_eq!(asset_id("small", 1000, 4, 7), "small/0007");
        assert_eq!(asset_id("small", 100_000, 4, 7), "small/00007");
    }

    #[test]
    fn figures_and_ratio_of_medians() {
        // 2 GB in 2 s with 100 ticks = 1 CPU-s: 1 GB/s, 0.5 CPU-s/GB.
        let f = run("reel", "large", 2.0, 2.0, 100).figures();
        assert_eq!(f.gbps, 1.0);
        assert_eq!(f.rps, 10.0);
        assert_eq!(f.cpu_s_per_gb, 0.5);
        let runs = vec![
            run("reel", "large", 3.0, 1.0, 100),
            run("nginx-sendfile", "large", 2.0, 1.0, 100),
            run("reel", "large", 1.0, 1.0, 100),
            run("nginx-sendfile", "large", 1.0, 1.0, 100),
            run("reel", "large", 2.0, 1.0, 100),
            run("nginx-sendfile", "large", 4.0, 1.0, 100),
        ];
        let p = point(&runs, "large", 8);
        assert_eq!(p["reel"].med.gbps, 2.0);
        assert_eq!(p["nginx-sendfile"].med.gbps, 2.0);
        assert_eq!(
            point_ratio(&p, "reel", "nginx-sendfile", |f| f.gbps),
            Some(1.0)
        );
        assert_eq!(point_ratio(&p, "reel", "nginx-directio", |f| f.gbps), None);
        let lines = point_lines(&runs, "large", 8);
        assert_eq!(
            lines[1],
            "  reel/nginx-sendfile bytes/s 1.00 (per repeat: 1.50 1.00 0.50)"
        );
        let t = table(&runs, &[8], ["large L", "small S"], true);
        assert!(
            t.contains("| large L | 8 | GB/s | 2.000 | 2.000 | — | 1.00× ✓ | — |"),
            "{t}"
        );
    }

    #[test]
    fn ratios_against_targets() {
        assert_eq!(fmt_ratio(Some(1.2), Some(1.0), false), "1.20× ✓");
        assert_eq!(fmt_ratio(Some(1.2), Some(1.0), true), "1.20× ✗");
        assert_eq!(fmt_ratio(None, Some(1.0), false), "—");
        assert_eq!(fmt_figure(150.4, true), "150");
        assert_eq!(fmt_figure(15.44, true), "15.4");
    }
}

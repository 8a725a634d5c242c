//! `reel load`: an open-loop HTTP load generator for `reel node`.
//!
//! **Open loop.** Requests arrive on a schedule fixed before the run starts: `--rate` requests
//! per second for `--warmup` + `--duration`, evenly spaced (`--arrival constant`) or with
//! exponential gaps drawn from `--seed` (`--arrival poisson`). Which asset (by `--popularity`)
//! and which range each request asks for is drawn from the same seed, so two runs with the same
//! arguments offer the same requests at the same offsets. The schedule never waits for the
//! node: when the node slows down, requests keep arriving and queue on the client side, as
//! they would from independent viewers. (A closed-loop client — send, wait, send — slows down
//! with the server and so hides exactly the latency one wants to see.)
//!
//! **Timing from the intended start.** Every request's latency runs from the instant the
//! schedule says it should start to the last byte of its response, not from when it was sent:
//! a request that had to wait for a free connection, or for the generator's thread to wake up,
//! counts that wait. This avoids coordinated omission. The service time (sent to last byte) is
//! reported beside it; the difference between the two is queueing on the client side.
//!
//! **Connections.** `--connections` worker threads each own one keep-alive HTTP/1.1 connection
//! (reel-http's blocking client: `TcpStream`, `TCP_NODELAY`). A worker that is free takes the next request of the
//! schedule: if it is early it sleeps until the request's intended start; if it is late (every
//! connection was busy) it sends at once. The schedule is computed as it is consumed, so a node
//! that falls far behind costs no memory: there is no queue of owed requests to bound.
//!
//! **Late and waited.** A request is *late* when a connection was free before its intended
//! start but the request went out more than 1 ms after it: the generator itself (a thread
//! woken late, a busy CPU) did not keep up, and the offered load was not what was asked. A
//! request *waited* when it was more than 1 ms overdue before any connection was free: the
//! node is slower than the offered rate allows with this many connections. Both are reported;
//! only the first one means the measurement is off.
//!
//! **The end.** Arrivals stop after `--warmup` + `--duration`. Requests already owed by then
//! are still sent for up to `--timeout` (so a backlog is measured, not dropped); what is still
//! owed after that is reported as `unsent`. Requests whose intended start falls in the warmup
//! are sent and shown in the progress lines but left out of the results. Ctrl-C stops the
//! arrivals at once and prints the summary of what ran.
//!
//! **Validation.** Every response is checked: the status (206 for a range, 200 for a whole
//! asset), a Content-Length equal to the length asked for and, for a range, a matching
//! Content-Range. A wrong status, a short body, a protocol error or a timeout counts as an error
//! of its kind (the connection is reopened after a protocol error); nothing the server sends
//! makes the generator panic.
//!
//! **Redirects.** Against `reel manager` (or any server that redirects), a 301/302/303/307/308
//! with a `Location` is followed: `http://` only, at most 5 hops, each destination on a
//! kept-alive connection of the worker's own (at most 16 per worker, the least recently used
//! closed first). The request counts by its final status; its latency still runs from the
//! intended start to the final last byte, and the redirect leg (sent to the end of the last
//! redirect read) is reported beside it with its share of those requests' latency. With
//! `--no-follow` the redirect itself is the valid answer (the manager measured alone): no
//! sizes are asked and every request is a whole-asset GET.
//!
//! What a request asks for is a [`Shape`]; the player mode of a later issue (sequential ranges
//! at a bitrate, stalls against a playback deadline) becomes another shape with its own
//! session state, on the same schedule, connections and histograms.
//!
//! The modules: [`schedule`] (arrivals and the offered count), [`popularity`] (which asset and
//! which range), [`target`] (the node's address and the assets to request), [`worker`]
//! (connections, requests, response checks), [`stats`] (per-worker figures and their merge) and
//! [`report`] (progress lines, the summary, JSON).

mod popularity;
mod report;
mod schedule;
mod stats;
mod target;
mod worker;

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use crate::units::{human_bytes, parse_duration, parse_duration_or_zero, parse_size};

pub use popularity::Popularity;
pub use schedule::Arrival;

use popularity::{parse_popularity, Picker, Shape};
use schedule::{Arrivals, OfferedCounter, Schedule};
use stats::{lock, WorkerStats};
use target::{check_id, head_assets, list_assets, resolve_target, Asset};
use worker::{open_for_setup, Shared};

/// Longest a thread sleeps before looking at the stop flag again.
const SLEEP_SLICE: Duration = Duration::from_millis(50);
/// Longest run (warmup and duration) accepted.
const RUN_MAX: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest `--timeout` accepted.
const TIMEOUT_MAX: Duration = Duration::from_secs(3600);

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// The node to load: HOST:PORT or http://HOST:PORT (plain HTTP/1.1).
    #[arg(long, value_name = "HOST:PORT")]
    pub target: String,
    /// Asset ids to request, comma-separated, most popular first (the rank order for
    /// `--popularity zipf`). Each one's size is asked with a HEAD before the load starts; an
    /// unknown id stops the run before any load is offered.
    #[arg(
        long,
        value_name = "ID,ID,...",
        value_delimiter = ',',
        required_unless_present_any = ["all_assets", "assets_file"],
        conflicts_with_all = ["all_assets", "assets_file"]
    )]
    pub assets: Vec<String>,
    /// Request every asset the node lists (`GET /assets`, all pages), ranked in id order.
    #[arg(long, conflicts_with = "assets_file")]
    pub all_assets: bool,
    /// Asset ids to request, one per line, most popular first (blank lines and lines starting
    /// with `#` are skipped): for libraries too long for --assets.
    #[arg(long, value_name = "FILE")]
    pub assets_file: Option<PathBuf>,
    /// Do not follow redirects: a 301/302/303/307/308 with a Location is the valid answer,
    /// timed on its own (e.g. `reel manager`'s routing alone). No sizes are asked (no HEADs)
    /// and every request is a whole-asset GET, so --range-bytes is refused. Without it, a
    /// redirect is followed (http:// only, at most 5 hops, a kept-alive connection per
    /// destination and worker), the request counts by its final status, and the redirect
    /// leg's latency and share are reported.
    #[arg(long)]
    pub no_follow: bool,
    /// Requests per second offered, whatever the node does (open loop).
    #[arg(long, value_name = "REQ_PER_S", value_parser = parse_rate)]
    pub rate: f64,
    /// How long to offer load and measure, after the warmup: seconds, or with a suffix
    /// (500ms, 20s, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Duration,
    /// Spacing of the arrivals: `constant` (every 1/rate s) or `poisson` (exponential gaps
    /// from --seed, mean 1/rate s).
    #[arg(long, value_enum, default_value_t = Arrival::Constant)]
    pub arrival: Arrival,
    /// Keep-alive connections, one worker thread each. A request that finds every connection
    /// busy waits for one, and that wait counts in its latency; too few connections show as
    /// "waited" in the summary.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,
    /// Size of each request's range, e.g. 64K or 1M: a random N-byte range aligned to N
    /// (`Range: bytes=a-b`, the last one clipped to the asset's size), answered 206. 0 asks
    /// for the whole asset with a plain GET, answered 200. [default: 1M; 0 with --no-follow]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub range_bytes: Option<u64>,
    /// Which asset each request picks: `uniform`, or `zipf:ALPHA` (ALPHA > 0; rank k, from 1,
    /// is picked with weight 1/k^ALPHA, the first asset listed being rank 1).
    #[arg(long, value_parser = parse_popularity, default_value = "uniform")]
    pub popularity: Popularity,
    /// Seed of the schedule: Poisson gaps, asset and range picks. Same seed, same requests.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print a progress line to stderr this often (offered/s, completed/s, MB/s, p50/p99 of
    /// the interval, errors).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub interval: Duration,
    /// Also write the summary as a JSON object to this file (snake_case fields, latencies
    /// in microseconds).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also write every measured request to this file as CSV, one line each in no particular
    /// order: `intended_unix_us,latency_us,ok` (its intended start in microseconds since the
    /// Unix epoch, intended start to last byte, 1 for a valid response, 0 for an error or
    /// timeout). For latency by time of day, e.g. to compare windows with and without some
    /// background activity.
    #[arg(long, value_name = "FILE")]
    pub latency_log: Option<PathBuf>,
    /// Run the schedule this long first and leave it out of the results (connections and
    /// caches warm up). 0 for none.
    #[arg(long, value_parser = parse_duration_or_zero, default_value = "0s")]
    pub warmup: Duration,
    /// Give up on a response (or a connect) after this long without progress, and count a
    /// timeout. Also how long requests still owed at the end are sent before the run stops.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,
}

/// The range size when none is given.
const RANGE_BYTES_DEFAULT: u64 = 1 << 20;
/// Most ids an `--assets-file` may list.
const ASSETS_FILE_MAX: usize = 100_000_000;

impl LoadArgs {
    /// The range size in effect: whole assets with `--no-follow`.
    fn effective_range_bytes(&self) -> u64 {
        if self.no_follow {
            0
        } else {
            self.range_bytes.unwrap_or(RANGE_BYTES_DEFAULT)
        }
    }
}

/// The ids of an `--assets-file`, checked.
fn read_assets_file(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the --assets-file {}", path.display()))?;
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let id = line.trim();
        if id.is_empty() || id.starts_with('#') {
            continue;
        }
        check_id(id).with_context(|| format!("{} line {}", path.display(), n + 1))?;
        if ids.len() >= ASSETS_FILE_MAX {
            bail!(
                "{} lists more than {ASSETS_FILE_MAX} ids; request fewer",
                path.display()
            );
        }
        ids.push(id.to_string());
    }
    Ok(ids)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 10_000_000.0 => Ok(r),
        _ => Err(format!(
            "the rate must be a number of requests per second greater than 0 (at most 10M), \
             e.g. --rate 500; got {s:?}"
        )),
    }
}

/// Ctrl-C (SIGINT) or SIGTERM: stops the arrivals, remembering when, so that the offered
/// count ends at the signal and not when a thread next looked. A second signal ends the
/// process at once (exit code 130).
struct Stop {
    flag: Arc<AtomicBool>,
    at: Arc<Mutex<Option<Instant>>>,
}

impl Stop {
    fn install() -> Result<Stop> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let flag = Arc::new(AtomicBool::new(false));
        let at = Arc::new(Mutex::new(None));
        for sig in [SIGINT, SIGTERM] {
            signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())
                .context("cannot install signal handler")?;
        }
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
            .context("cannot install signal handler")?;
        let (flag2, at2) = (flag.clone(), at.clone());
        // Detached: it ends after the first signal, or with the process.
        std::thread::Builder::new()
            .name("load-signals".into())
            .spawn(move || {
                if signals.forever().next().is_some() {
                    *lock(&at2) = Some(Instant::now());
                    flag2.store(true, Ordering::Release);
                }
            })
            .context("cannot start the signal thread")?;
        Ok(Stop { flag, at })
    }

    /// When a signal stopped the arrivals, if one did.
    fn at(&self) -> Option<Instant> {
        *lock(&self.at)
    }
}

/// Process CPU time (user, system) from `/proc/self/stat`, in USER_HZ ticks (100 per second).
fn process_cpu() -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    let tick = |n: u64| Duration::from_millis(n.saturating_mul(10));
    Some((tick(ticks(11)?), tick(ticks(12)?)))
}

pub fn run(args: &LoadArgs) -> Result<()> {
    let target = resolve_target(&args.target)?;
    let ids: Vec<String> = match &args.assets_file {
        Some(p) => read_assets_file(p)?,
        None => args
            .assets
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    };
    if !args.all_assets && ids.is_empty() {
        bail!("no assets given: pass --assets ID[,ID...], --assets-file FILE or --all-assets");
    }
    for id in &ids {
        check_id(id)?;
    }
    if args.no_follow && args.range_bytes.is_some_and(|n| n > 0) {
        bail!(
            "--no-follow sends whole-asset GETs (a redirect carries no size to range over); \
             drop --range-bytes"
        );
    }
    // Bounded, so that no instant computed from them can overflow.
    let end = args
        .warmup
        .checked_add(args.duration)
        .filter(|&d| d <= RUN_MAX)
        .ok_or_else(|| anyhow!("--warmup plus --duration must be at most 30 days"))?;
    if args.timeout > TIMEOUT_MAX {
        bail!("--timeout must be at most 1 hour, e.g. --timeout 10s");
    }
    // Create the JSON file now, so a bad path fails before the load rather than after it.
    let json_file = match &args.json {
        Some(p) => Some(
            File::create(p)
                .with_context(|| format!("cannot create the --json file {}", p.display()))?,
        ),
        None => None,
    };
    let log_file = match &args.latency_log {
        Some(p) => Some(
            File::create(p)
                .with_context(|| format!("cannot create the --latency-log file {}", p.display()))?,
        ),
        None => None,
    };
    let stop = Stop::install()?;

    let assets = if args.all_assets {
        let a = list_assets(&target, args.timeout)?;
        if a.is_empty() {
            bail!(
                "the node at {} has no assets to request; upload some first \
                 (curl -T FILE http://{}/assets/ID)",
                target.authority,
                target.authority
            );
        }
        a
    } else if args.no_follow {
        // Sizes are not asked: the answer timed is the redirect, not the asset.
        ids.into_iter()
            .map(|id| Asset::new(id, 0, &target.authority))
            .collect()
    } else {
        head_assets(&target, &ids, args.timeout)?
    };
    if stop.at().is_some() {
        bail!("interrupted before the load started");
    }
    let shape = match args.effective_range_bytes() {
        0 => Shape::Whole,
        n => Shape::Range(n),
    };
    let total_bytes: u64 = assets.iter().map(|a| a.size).sum();
    eprintln!(
        "reel load: {} at {} req/s ({} arrivals), {} assets ({}), {}, popularity {}, {} \
         connections, seed {}, warmup {:.1} s, duration {:.1} s",
        target.authority,
        args.rate,
        args.arrival,
        assets.len(),
        if args.no_follow {
            "sizes not asked".to_string()
        } else {
            human_bytes(total_bytes)
        },
        match shape {
            Shape::Whole if args.no_follow => "whole-asset GETs, redirects not followed".into(),
            Shape::Whole => "whole assets".to_string(),
            Shape::Range(n) => format!("{} ranges", human_bytes(n)),
        },
        args.popularity,
        args.connections,
        args.seed,
        args.warmup.as_secs_f64(),
        args.duration.as_secs_f64()
    );

    // Every connection is open before the first arrival, so connecting never counts as latency
    // (a reconnect during the run does).
    let mut conns = Vec::with_capacity(args.connections as usize);
    for _ in 0..args.connections {
        conns.push(open_for_setup(&target, args.timeout)?);
    }
    let stats: Vec<Arc<Mutex<WorkerStats>>> = (0..args.connections)
        .map(|_| WorkerStats::new(log_file.is_some()).map(|s| Arc::new(Mutex::new(s))))
        .collect::<Result<_>>()?;
    let cpu0 = process_cpu();

    let end_s = end.as_secs_f64();
    let warmup_s = args.warmup.as_secs_f64();
    let arrivals = Arrivals::new(args.arrival, args.rate, args.seed, end_s);
    let mut offered = OfferedCounter::new(arrivals.clone(), warmup_s);
    // A little slack, so the first arrivals do not find threads still starting.
    let t0 = Instant::now() + Duration::from_millis(20);
    let t_end = t0 + end;
    let shared = Arc::new(Shared {
        target: target.clone(),
        schedule: Mutex::new(Schedule {
            arrivals,
            picker: Picker::new(args.popularity, assets.len(), shape, args.seed),
            t0,
            warmup_s,
        }),
        assets,
        stop: stop.flag.clone(),
        send_until: t_end + args.timeout,
        timeout: args.timeout,
        follow: !args.no_follow,
    });
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    for (k, (conn, s)) in conns.into_iter().zip(&stats).enumerate() {
        let (sh, s) = (shared.clone(), s.clone());
        match std::thread::Builder::new()
            .name(format!("load-{k}"))
            .spawn(move || sh.worker(&s, conn))
        {
            Ok(h) => workers.push(h),
            Err(e) => {
                stop.flag.store(true, Ordering::Release);
                for h in workers {
                    let _ = h.join();
                }
                return Err(e).context("cannot start a worker thread");
            }
        }
    }

    report::watch(
        &workers,
        &stats,
        &mut offered,
        t0,
        t_end,
        args.interval,
        &stop,
    )?;
    for h in workers {
        if h.join().is_err() {
            bail!("a worker thread panicked; this is a bug in reel load");
        }
    }
    let stopped_at = stop.at();
    let measured_end = stopped_at.unwrap_or(t_end).min(t_end);
    offered.advance_to(measured_end.saturating_duration_since(t0).as_secs_f64());
    let duration_s = measured_end
        .saturating_duration_since(t0 + args.warmup)
        .as_secs_f64();
    let cpu = match (cpu0, process_cpu()) {
        (Some(a), Some(b)) => (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)),
        _ => (Duration::ZERO, Duration::ZERO),
    };

    let summary = report::summarize(
        args,
        &shared,
        &stats,
        offered.measured,
        duration_s,
        stopped_at.is_some(),
        cpu,
    )?;
    report::print_summary(&summary);
    if let (Some(f), Some(p)) = (json_file, &args.json) {
        report::write_json(f, p, &summary)?;
    }
    if let (Some(f), Some(p)) = (log_file, &args.latency_log) {
        stats::write_latency_log(f, &stats)
            .with_context(|| format!("cannot write the --latency-log file {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("800"), Ok(800.0));
        for s in ["0", "-1", "abc", "inf", "NaN", "1e9"] {
            assert!(parse_rate(s).expect_err(s).contains("--rate 500"), "{s}");
        }
    }
}

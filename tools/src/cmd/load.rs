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
//! (blocking `TcpStream`, `TCP_NODELAY`). A worker that is free takes the next request of the
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
//! What a request asks for is a [`Shape`]; the player mode of a later issue (sequential ranges
//! at a bitrate, stalls against a playback deadline) becomes another shape with its own
//! session state, on the same schedule, connections and histograms.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind as IoKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::units::{human_bytes, parse_duration, parse_duration_or_zero, parse_size};

/// A request sent more than this after its intended start is late (or waited, see the module
/// doc).
const LATE_THRESHOLD: Duration = Duration::from_millis(1);
/// Largest response head accepted.
const HEAD_MAX: usize = 64 << 10;
/// Page size asked of `GET /assets` (the node's maximum is 10 000).
const LIST_PAGE: u32 = 1000;
/// Largest body of an unexpected status (e.g. a 404's message) read to keep the connection.
const ERROR_BODY_MAX: u64 = 1 << 20;
/// Largest `GET /assets` page body accepted.
const LIST_BODY_MAX: u64 = 64 << 20;
/// Longest a thread sleeps before looking at the stop flag again.
const SLEEP_SLICE: Duration = Duration::from_millis(50);
/// Highest latency the histograms hold: one hour, in microseconds.
const HIST_MAX_US: u64 = 3_600_000_000;
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
        required_unless_present = "all_assets",
        conflicts_with = "all_assets"
    )]
    pub assets: Vec<String>,
    /// Request every asset the node lists (`GET /assets`, all pages), ranked in id order.
    #[arg(long)]
    pub all_assets: bool,
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
    /// for the whole asset with a plain GET, answered 200.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "1M")]
    pub range_bytes: u64,
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

/// How arrivals are spaced.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// Every 1/rate seconds.
    Constant,
    /// Exponential gaps with mean 1/rate seconds (a Poisson process).
    Poisson,
}

/// How requests spread over the assets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Popularity {
    Uniform,
    /// Rank k (from 1) has weight 1/k^alpha.
    Zipf(f64),
}

impl std::fmt::Display for Arrival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arrival::Constant => "constant",
            Arrival::Poisson => "poisson",
        })
    }
}

impl std::fmt::Display for Popularity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Popularity::Uniform => write!(f, "uniform"),
            Popularity::Zipf(a) => write!(f, "zipf:{a}"),
        }
    }
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

fn parse_popularity(s: &str) -> Result<Popularity, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("uniform") {
        return Ok(Popularity::Uniform);
    }
    if t.eq_ignore_ascii_case("zipf") {
        return Ok(Popularity::Zipf(1.0));
    }
    let Some(alpha) = t.strip_prefix("zipf:") else {
        return Err(format!(
            "unknown popularity {s:?}: use uniform or zipf:ALPHA, e.g. zipf:1.0"
        ));
    };
    match alpha.trim().parse::<f64>() {
        Ok(a) if a.is_finite() && a > 0.0 && a <= 100.0 => Ok(Popularity::Zipf(a)),
        _ => Err(format!(
            "zipf's alpha must be a number greater than 0 (and at most 100), e.g. zipf:1.0 \
             (or uniform for no skew); got {alpha:?}"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// The target and the assets.

/// Where the node listens, as given (for messages and the Host header) and resolved.
#[derive(Clone, Debug)]
struct Target {
    authority: String,
    addr: SocketAddr,
}

/// `HOST:PORT` or `http://HOST:PORT[/]` → the authority `HOST:PORT`.
fn parse_authority(s: &str) -> Result<String> {
    let help = "expected HOST:PORT or http://HOST:PORT, e.g. --target 127.0.0.1:8080";
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &t["http://".len()..]
    } else if lower.starts_with("https://") {
        bail!(
            "invalid --target {s:?}: https is not supported, reel node speaks plain HTTP; {help}"
        );
    } else if lower.contains("://") {
        bail!("invalid --target {s:?}: unknown scheme; {help}");
    } else {
        t
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) || rest.contains(char::is_whitespace) {
        bail!("invalid --target {s:?}: only a host and a port, no path; {help}");
    }
    let Some((host, port)) = rest.rsplit_once(':') else {
        bail!("invalid --target {s:?}: no port; {help}");
    };
    let host_ok = !host.is_empty() && (!host.contains(':') || host.starts_with('['));
    if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
        bail!("invalid --target {s:?}: {help}");
    }
    Ok(rest.to_string())
}

fn resolve_target(s: &str) -> Result<Target> {
    let authority = parse_authority(s)?;
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the host of --target {authority}"))?
        .next()
        .ok_or_else(|| anyhow!("the host of --target {authority} has no address"))?;
    Ok(Target { authority, addr })
}

/// Asset ids as the node accepts them: 1–255 bytes of `[A-Za-z0-9._/-]`, no empty or `..`
/// segment. Checked here so that a typo is named before a request line is built from it.
fn check_id(id: &str) -> Result<()> {
    let chars_ok = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b));
    let segments_ok = id.split('/').all(|seg| !seg.is_empty() && seg != "..");
    if id.is_empty() || id.len() > 255 || !chars_ok || !segments_ok {
        bail!(
            "invalid asset id {id:?}: ids are 1-255 bytes of [A-Za-z0-9._/-] with no empty or \
             '..' segment"
        );
    }
    Ok(())
}

/// An asset to request, with the start of its GET request prebuilt.
struct Asset {
    id: String,
    size: u64,
    /// `GET /assets/{id} HTTP/1.1\r\nHost: …\r\n`; the range header and the blank line follow.
    get_prefix: Vec<u8>,
}

impl Asset {
    fn new(id: String, size: u64, authority: &str) -> Asset {
        let get_prefix = format!("GET /assets/{id} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
        Asset {
            id,
            size,
            get_prefix,
        }
    }
}

/// Sizes of the assets named by `--assets`, one HEAD each.
fn head_assets(target: &Target, ids: &[String], timeout: Duration) -> Result<Vec<Asset>> {
    let mut conn = Conn::open_for_setup(target, timeout)?;
    let mut assets = Vec::with_capacity(ids.len());
    for id in ids {
        let req = format!(
            "HEAD /assets/{id} HTTP/1.1\r\nHost: {}\r\n\r\n",
            target.authority
        );
        let head = conn
            .send(req.as_bytes())
            .map_err(|f| anyhow!("HEAD /assets/{id} on {}: {}", target.authority, f.detail))?;
        match head.status {
            200 => {}
            404 => bail!(
                "asset {id:?} not found on {} (HEAD /assets/{id} answered 404); list the \
                 node's assets with `curl http://{}/assets` or use --all-assets",
                target.authority,
                target.authority
            ),
            s => bail!(
                "HEAD /assets/{id} on {} answered {s}, not 200",
                target.authority
            ),
        }
        let size = head.len.ok_or_else(|| {
            anyhow!("HEAD /assets/{id} answered without a Content-Length; is this a reel node?")
        })?;
        if size == 0 {
            bail!("asset {id:?} is empty (0 bytes): there is nothing to request; drop it from --assets");
        }
        if head.close {
            conn = Conn::open_for_setup(target, timeout)?;
        }
        assets.push(Asset::new(id.clone(), size, &target.authority));
    }
    Ok(assets)
}

#[derive(Deserialize)]
struct ListPage {
    assets: Vec<ListEntry>,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
struct ListEntry {
    id: String,
    size: u64,
}

/// Every asset the node lists, following the `next` cursor of `GET /assets` to the last page.
/// Empty assets are skipped (there is no byte to ask for).
fn list_assets(target: &Target, timeout: Duration) -> Result<Vec<Asset>> {
    let mut conn = Conn::open_for_setup(target, timeout)?;
    let mut assets = Vec::new();
    let mut after: Option<String> = None;
    let mut empty = 0u64;
    loop {
        let path = match &after {
            Some(a) => format!("/assets?limit={LIST_PAGE}&after={a}"),
            None => format!("/assets?limit={LIST_PAGE}"),
        };
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", target.authority);
        let (head, body) = conn
            .exchange_body(req.as_bytes(), LIST_BODY_MAX)
            .map_err(|f| anyhow!("GET {path} on {}: {}", target.authority, f.detail))?;
        if head.status != 200 {
            bail!(
                "GET {path} on {} answered {}: {}",
                target.authority,
                head.status,
                String::from_utf8_lossy(&body).trim()
            );
        }
        let page: ListPage = serde_json::from_slice(&body).with_context(|| {
            format!(
                "GET {path} on {} did not answer the JSON page of a reel node",
                target.authority
            )
        })?;
        for e in page.assets {
            if e.size == 0 {
                empty += 1;
                continue;
            }
            check_id(&e.id).context("the node listed an asset id it should not have")?;
            assets.push(Asset::new(e.id, e.size, &target.authority));
        }
        match page.next {
            // A cursor must move forward, or a misbehaving server would keep us here forever.
            Some(next) if after.as_ref().is_none_or(|a| next > *a) => after = Some(next),
            Some(next) => bail!(
                "GET {path} on {}: the cursor did not advance (next = {next:?})",
                target.authority
            ),
            None => break,
        }
        if head.close {
            conn = Conn::open_for_setup(target, timeout)?;
        }
    }
    if empty > 0 {
        eprintln!("reel load: skipping {empty} empty assets (0 bytes)");
    }
    Ok(assets)
}

// ---------------------------------------------------------------------------------------------
// The schedule: when each request arrives, and what it asks for.

/// Arrival offsets in seconds from the start of the run, up to `end_s` (exclusive).
#[derive(Clone, Debug)]
struct Arrivals {
    arrival: Arrival,
    rate: f64,
    rng: fastrand::Rng,
    k: u64,
    poisson_t_s: f64,
    end_s: f64,
    done: bool,
}

impl Arrivals {
    fn new(arrival: Arrival, rate: f64, seed: u64, end_s: f64) -> Arrivals {
        Arrivals {
            arrival,
            rate,
            rng: fastrand::Rng::with_seed(seed),
            k: 0,
            poisson_t_s: 0.0,
            end_s,
            done: false,
        }
    }
}

impl Iterator for Arrivals {
    type Item = f64;

    fn next(&mut self) -> Option<f64> {
        if self.done {
            return None;
        }
        let t = match self.arrival {
            // From the index, not by summing gaps, so rounding does not accumulate.
            Arrival::Constant => self.k as f64 / self.rate,
            Arrival::Poisson => {
                // 1 - U is in (0, 1], so the logarithm is finite and the gap non-negative.
                self.poisson_t_s += -(1.0 - self.rng.f64()).ln() / self.rate;
                self.poisson_t_s
            }
        };
        if t >= self.end_s {
            self.done = true;
            return None;
        }
        self.k += 1;
        Some(t)
    }
}

/// What a request asks of its asset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// The whole asset: a plain GET, answered 200.
    Whole,
    /// One random range of this many bytes, aligned to its size, answered 206.
    Range(u64),
}

/// Picks the asset and the range of each request.
struct Picker {
    /// Cumulative, normalised Zipf weights by rank (last = 1.0); `None` for uniform.
    zipf_cdf: Option<Vec<f64>>,
    shape: Shape,
    rng: fastrand::Rng,
}

fn zipf_cdf(n: usize, alpha: f64) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|k| {
            acc += (k as f64).powf(-alpha);
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    if let Some(last) = cdf.last_mut() {
        *last = 1.0;
    }
    cdf
}

impl Picker {
    fn new(popularity: Popularity, n: usize, shape: Shape, seed: u64) -> Picker {
        Picker {
            zipf_cdf: match popularity {
                Popularity::Uniform => None,
                Popularity::Zipf(alpha) => Some(zipf_cdf(n, alpha)),
            },
            shape,
            // A stream of its own, so the picks do not shift the Poisson gaps.
            rng: fastrand::Rng::with_seed(seed ^ 0x9E37_79B9_7F4A_7C15),
        }
    }

    /// The asset index and the range (first and last byte; `None` for the whole asset).
    fn pick(&mut self, assets: &[Asset]) -> (usize, Option<(u64, u64)>) {
        let n = assets.len();
        let i = match &self.zipf_cdf {
            None => self.rng.usize(..n),
            Some(cdf) => {
                let u = self.rng.f64();
                cdf.partition_point(|&c| c <= u).min(n - 1)
            }
        };
        let range = match self.shape {
            Shape::Whole => None,
            Shape::Range(len) => Some(aligned_range(assets[i].size, len, &mut self.rng)),
        };
        (i, range)
    }
}

/// A random `len`-byte range of an asset of `size` bytes (> 0), aligned to `len`, the last one
/// clipped to the size: (first byte, last byte).
fn aligned_range(size: u64, len: u64, rng: &mut fastrand::Rng) -> (u64, u64) {
    let slots = size.div_ceil(len);
    let first = rng.u64(..slots) * len;
    (first, first.saturating_add(len).min(size) - 1)
}

/// One request of the schedule.
#[derive(Clone, Copy, Debug)]
struct Job {
    intended: Instant,
    asset: usize,
    range: Option<(u64, u64)>,
    /// Not in the warmup: counts in the results.
    measured: bool,
}

/// The schedule as the workers consume it, one request at a time (behind a mutex).
struct Schedule {
    arrivals: Arrivals,
    picker: Picker,
    t0: Instant,
    warmup_s: f64,
}

impl Schedule {
    fn next_job(&mut self, assets: &[Asset]) -> Option<Job> {
        let t = self.arrivals.next()?;
        let intended = self.t0.checked_add(Duration::try_from_secs_f64(t).ok()?)?;
        let (asset, range) = self.picker.pick(assets);
        Some(Job {
            intended,
            asset,
            range,
            measured: t >= self.warmup_s,
        })
    }
}

/// Counts the arrivals that came due, split into warmup and measured, as time goes on: the
/// offered load, from the same arrivals the workers consume.
struct OfferedCounter {
    arrivals: Arrivals,
    pending: Option<f64>,
    warmup_s: f64,
    warmup: u64,
    measured: u64,
}

impl OfferedCounter {
    fn new(mut arrivals: Arrivals, warmup_s: f64) -> OfferedCounter {
        let pending = arrivals.next();
        OfferedCounter {
            arrivals,
            pending,
            warmup_s,
            warmup: 0,
            measured: 0,
        }
    }

    /// Counts the arrivals before `t_s`; returns how many there were since the last call.
    fn advance_to(&mut self, t_s: f64) -> u64 {
        let mut n = 0;
        while let Some(t) = self.pending.filter(|&t| t < t_s) {
            if t < self.warmup_s {
                self.warmup += 1;
            } else {
                self.measured += 1;
            }
            n += 1;
            self.pending = self.arrivals.next();
        }
        n
    }
}

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client: keep-alive, Content-Length bodies, read into a reusable buffer.

/// What went wrong with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ErrorKind {
    /// Connecting failed.
    Connect,
    /// The connection closed before a complete response head.
    Closed,
    /// No progress for `--timeout`.
    Timeout,
    /// Another socket error.
    Io,
    /// A response that is not valid HTTP/1.1 as we speak it (bad head, no Content-Length,
    /// chunked).
    Protocol,
    /// The connection closed inside the body.
    ShortBody,
    /// A status other than the one expected.
    Status(u16),
    /// The expected status, but a Content-Length other than the length asked for.
    WrongLength,
    /// A 206 whose Content-Range is not the range asked for.
    WrongRange,
}

impl ErrorKind {
    fn name(self) -> String {
        match self {
            ErrorKind::Connect => "connect".into(),
            ErrorKind::Closed => "closed".into(),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Io => "io".into(),
            ErrorKind::Protocol => "protocol".into(),
            ErrorKind::ShortBody => "short_body".into(),
            ErrorKind::Status(s) => format!("status_{s}"),
            ErrorKind::WrongLength => "wrong_length".into(),
            ErrorKind::WrongRange => "wrong_range".into(),
        }
    }
}

#[derive(Debug)]
struct Failure {
    kind: ErrorKind,
    detail: String,
    /// The failure is a keep-alive connection the server had already closed (nothing of the
    /// response arrived): worth one retry on a new connection.
    stale: bool,
    /// The response was read to its end: the connection can serve the next request.
    keep_conn: bool,
}

impl Failure {
    fn new(kind: ErrorKind, detail: impl Into<String>) -> Failure {
        Failure {
            kind,
            detail: detail.into(),
            stale: false,
            keep_conn: false,
        }
    }

    /// This failure left the connection at the start of the next response.
    fn keep_conn(mut self) -> Failure {
        self.keep_conn = true;
        self
    }

    fn io(e: &std::io::Error, what: &str) -> Failure {
        match e.kind() {
            // A socket timeout shows as EAGAIN.
            IoKind::TimedOut | IoKind::WouldBlock => Failure::new(
                ErrorKind::Timeout,
                format!("{what}: nothing arrived for --timeout"),
            ),
            _ => Failure::new(ErrorKind::Io, format!("{what}: {e}")),
        }
    }
}

/// The parts of a response head we use.
#[derive(Debug, Default)]
struct Head {
    status: u16,
    len: Option<u64>,
    close: bool,
    /// `Content-Range: bytes a-b/size`.
    content_range: Option<(u64, u64, u64)>,
}

struct Conn {
    r: BufReader<TcpStream>,
    line: Vec<u8>,
    /// Responses read on this connection.
    served: u64,
}

/// `cannot connect to HOST:PORT: connection refused; is `reel node` listening there?`
fn connect_message(authority: &str, e: &std::io::Error, timeout: Duration) -> String {
    let why = match e.kind() {
        IoKind::ConnectionRefused => "connection refused".to_string(),
        IoKind::TimedOut | IoKind::WouldBlock => format!("no answer within {timeout:?}"),
        _ => e.to_string(),
    };
    format!("cannot connect to {authority}: {why}; is `reel node` listening there?")
}

impl Conn {
    fn open(addr: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Conn {
            r: BufReader::with_capacity(64 << 10, s),
            line: Vec::with_capacity(256),
            served: 0,
        })
    }

    /// Opens a connection before the load, failing with the message that names the fix.
    fn open_for_setup(target: &Target, timeout: Duration) -> Result<Conn> {
        Conn::open(target.addr, timeout)
            .map_err(|e| anyhow!("{}", connect_message(&target.authority, &e, timeout)))
    }

    /// Sends `req` and reads the response head; the body (if any) is the caller's to read.
    fn send(&mut self, req: &[u8]) -> Result<Head, Failure> {
        if let Err(e) = self.r.get_mut().write_all(req) {
            let mut f = Failure::io(&e, "sending the request");
            f.stale = self.served > 0
                && matches!(
                    e.kind(),
                    IoKind::BrokenPipe | IoKind::ConnectionReset | IoKind::ConnectionAborted
                );
            return Err(f);
        }
        let head = self.read_head()?;
        self.served += 1;
        Ok(head)
    }

    /// Sends `req` and reads the whole response, keeping the body (at most `max` bytes).
    fn exchange_body(&mut self, req: &[u8], max: u64) -> Result<(Head, Vec<u8>), Failure> {
        let head = self.send(req)?;
        let len = head.len.ok_or_else(|| {
            Failure::new(ErrorKind::Protocol, "a response without Content-Length")
        })?;
        if len > max {
            return Err(Failure::new(
                ErrorKind::Protocol,
                format!("a body of {len} bytes, more than the {max} expected"),
            ));
        }
        let mut body = Vec::new();
        (&mut self.r)
            .take(len)
            .read_to_end(&mut body)
            .map_err(|e| Failure::io(&e, "reading the body"))?;
        if body.len() as u64 != len {
            return Err(Failure::new(
                ErrorKind::ShortBody,
                format!("the body ended after {} of {len} bytes", body.len()),
            ));
        }
        Ok((head, body))
    }

    /// Reads `len` body bytes into `buf`, piece by piece, and forgets them.
    fn discard(&mut self, len: u64, buf: &mut [u8]) -> Result<(), Failure> {
        let mut left = len;
        while left > 0 {
            let n = (left.min(buf.len() as u64)) as usize;
            match self.r.read(&mut buf[..n]) {
                Ok(0) => {
                    return Err(Failure::new(
                        ErrorKind::ShortBody,
                        format!("the body ended after {} of {len} bytes", len - left),
                    ))
                }
                Ok(got) => left -= got as u64,
                Err(e) if e.kind() == IoKind::Interrupted => {}
                Err(e) => return Err(Failure::io(&e, "reading the body")),
            }
        }
        Ok(())
    }

    /// Reads a response head, skipping interim (1xx) ones.
    fn read_head(&mut self) -> Result<Head, Failure> {
        let reused = self.served > 0;
        let mut head = Head::default();
        let mut total = 0usize;
        let mut first_line = true;
        loop {
            self.line.clear();
            let n = match self.r.read_until(b'\n', &mut self.line) {
                Ok(n) => n,
                Err(e) => {
                    let mut f = Failure::io(&e, "reading the response head");
                    f.stale = reused
                        && total == 0
                        && matches!(
                            e.kind(),
                            IoKind::ConnectionReset | IoKind::ConnectionAborted
                        );
                    return Err(f);
                }
            };
            if n == 0 {
                let mut f = Failure::new(
                    ErrorKind::Closed,
                    "the connection closed before a complete response head",
                );
                f.stale = reused && total == 0;
                return Err(f);
            }
            total += n;
            if total > HEAD_MAX {
                return Err(Failure::new(
                    ErrorKind::Protocol,
                    "a response head larger than 64 KiB",
                ));
            }
            let Ok(text) = std::str::from_utf8(&self.line) else {
                return Err(Failure::new(
                    ErrorKind::Protocol,
                    "a response head that is not UTF-8",
                ));
            };
            let text = text.trim_end_matches(['\r', '\n']);
            if first_line {
                first_line = false;
                head.status = parse_status_line(text)?;
                continue;
            }
            if text.is_empty() {
                if (100..200).contains(&head.status) {
                    // An interim response: the final one follows.
                    head = Head::default();
                    first_line = true;
                    continue;
                }
                return Ok(head);
            }
            parse_header(text, &mut head)?;
        }
    }
}

fn parse_status_line(line: &str) -> Result<u16, Failure> {
    let bad = || {
        Failure::new(
            ErrorKind::Protocol,
            format!("bad status line {:?}", truncate(line, 80)),
        )
    };
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(bad());
    }
    code.parse::<u16>()
        .ok()
        .filter(|c| (100..600).contains(c))
        .ok_or_else(bad)
}

fn parse_header(line: &str, head: &mut Head) -> Result<(), Failure> {
    let Some((name, value)) = line.split_once(':') else {
        return Err(Failure::new(
            ErrorKind::Protocol,
            format!("bad header line {:?}", truncate(line, 80)),
        ));
    };
    let value = value.trim();
    if name.eq_ignore_ascii_case("content-length") {
        let len = value.parse::<u64>().map_err(|_| {
            Failure::new(
                ErrorKind::Protocol,
                format!("bad Content-Length {:?}", truncate(value, 40)),
            )
        })?;
        if head.len.is_some_and(|l| l != len) {
            return Err(Failure::new(
                ErrorKind::Protocol,
                "two different Content-Length headers",
            ));
        }
        head.len = Some(len);
    } else if name.eq_ignore_ascii_case("transfer-encoding") {
        return Err(Failure::new(
            ErrorKind::Protocol,
            format!(
                "Transfer-Encoding {:?}: a reel node answers GETs with Content-Length",
                truncate(value, 40)
            ),
        ));
    } else if name.eq_ignore_ascii_case("connection") {
        head.close = value
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("close"));
    } else if name.eq_ignore_ascii_case("content-range") {
        head.content_range = parse_content_range(value);
    }
    Ok(())
}

/// `bytes a-b/size` → (a, b, size).
fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let (range, size) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, size.parse().ok()?))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// ---------------------------------------------------------------------------------------------
// Workers and their figures.

fn histogram() -> Result<Histogram<u64>> {
    // Microseconds, 1 us to 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).map_err(|e| anyhow!("histogram: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    /// Requests sent that finished, well or not.
    requests: u64,
    errors: u64,
    /// Body bytes of the valid responses.
    bytes: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.bytes += o.bytes;
    }
}

/// One worker's figures: the current interval (all requests, warmup included) and the
/// results (measured requests only).
struct WorkerStats {
    interval: Counts,
    interval_us: Histogram<u64>,
    total: Counts,
    /// Intended start to last byte, valid responses.
    latency_us: Histogram<u64>,
    /// Sent to last byte, valid responses.
    service_us: Histogram<u64>,
    errors: BTreeMap<ErrorKind, u64>,
    first_error: Option<String>,
    late: u64,
    late_max_us: u64,
    waited: u64,
    waited_max_us: u64,
    reconnects: u64,
    /// With `--latency-log`: (intended start, latency µs, valid) of every measured request.
    log: Option<Vec<(Instant, u64, bool)>>,
}

impl WorkerStats {
    fn new(log: bool) -> Result<WorkerStats> {
        Ok(WorkerStats {
            interval: Counts::default(),
            interval_us: histogram()?,
            total: Counts::default(),
            latency_us: histogram()?,
            service_us: histogram()?,
            errors: BTreeMap::new(),
            first_error: None,
            late: 0,
            late_max_us: 0,
            waited: 0,
            waited_max_us: 0,
            reconnects: 0,
            log: log.then(Vec::new),
        })
    }
}

/// What a worker learned about one request.
struct Outcome {
    result: Result<u64, Failure>,
    latency_us: u64,
    service_us: u64,
    /// How far after its intended start it was sent, and whether a connection was free before
    /// that start (then the lag is the generator's own: "late"; else "waited").
    lag_us: u64,
    free_early: bool,
    reconnects: u64,
}

impl WorkerStats {
    fn record(&mut self, job: &Job, asset_id: &str, o: Outcome) {
        let (bytes, error) = match &o.result {
            Ok(bytes) => (*bytes, None),
            Err(f) => (0, Some(f)),
        };
        self.interval.requests += 1;
        self.interval.bytes += bytes;
        match error {
            None => self.interval_us.saturating_record(o.latency_us),
            Some(_) => self.interval.errors += 1,
        }
        if !job.measured {
            return;
        }
        self.total.requests += 1;
        self.total.bytes += bytes;
        self.reconnects += o.reconnects;
        if let Some(log) = &mut self.log {
            log.push((job.intended, o.latency_us, error.is_none()));
        }
        let lag_late = o.lag_us > LATE_THRESHOLD.as_micros() as u64;
        if o.free_early {
            self.late += u64::from(lag_late);
            self.late_max_us = self.late_max_us.max(o.lag_us);
        } else {
            self.waited += u64::from(lag_late);
            self.waited_max_us = self.waited_max_us.max(o.lag_us);
        }
        match error {
            None => {
                self.latency_us.saturating_record(o.latency_us);
                self.service_us.saturating_record(o.service_us);
            }
            Some(f) => {
                self.total.errors += 1;
                *self.errors.entry(f.kind).or_insert(0) += 1;
                if self.first_error.is_none() {
                    let what = match job.range {
                        Some((a, b)) => format!("GET /assets/{asset_id} bytes={a}-{b}"),
                        None => format!("GET /assets/{asset_id}"),
                    };
                    self.first_error = Some(format!("{what}: {}", f.detail));
                }
            }
        }
    }
}

/// What the workers share.
struct Shared {
    target: Target,
    assets: Vec<Asset>,
    schedule: Mutex<Schedule>,
    stop: Arc<AtomicBool>,
    /// Requests still owed are not sent after this (the end of the arrivals + `--timeout`).
    send_until: Instant,
    timeout: Duration,
}

/// Sleeps until `deadline`; false if the stop flag was raised first.
fn sleep_until(deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(SLEEP_SLICE));
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Shared {
    fn worker(&self, stats: &Mutex<WorkerStats>, conn: Conn) {
        let mut conn = Some(conn);
        let mut buf = vec![0u8; 256 << 10];
        let mut req = Vec::with_capacity(512);
        loop {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let job = lock(&self.schedule).next_job(&self.assets);
            let Some(job) = job else { break };
            let taken = Instant::now();
            if taken > self.send_until {
                break;
            }
            let free_early = taken < job.intended;
            if free_early && !sleep_until(job.intended, &self.stop) {
                break;
            }
            let sent = Instant::now();
            let asset = &self.assets[job.asset];
            req.clear();
            req.extend_from_slice(&asset.get_prefix);
            if let Some((a, b)) = job.range {
                // Writing into a Vec cannot fail.
                let _ = write!(req, "Range: bytes={a}-{b}\r\n");
            }
            req.extend_from_slice(b"\r\n");
            let mut reconnects = 0;
            let result = self.request(&mut conn, &req, &job, &mut buf, &mut reconnects);
            let done = Instant::now();
            let outcome = Outcome {
                result,
                latency_us: micros(done.saturating_duration_since(job.intended)),
                service_us: micros(done.saturating_duration_since(sent)),
                lag_us: micros(sent.saturating_duration_since(job.intended)),
                free_early,
                reconnects,
            };
            lock(stats).record(&job, &asset.id, outcome);
        }
    }

    /// Sends one request on `conn` (opening it if needed; once more on a fresh connection if
    /// the kept-alive one turns out closed), checks the response head against what was asked
    /// before reading any body, then reads the body: its length, or the failure. The
    /// connection is dropped whenever what follows on it is in doubt.
    fn request(
        &self,
        conn: &mut Option<Conn>,
        req: &[u8],
        job: &Job,
        buf: &mut [u8],
        reconnects: &mut u64,
    ) -> Result<u64, Failure> {
        let mut retried = false;
        let (c, head) = loop {
            let c = match conn {
                Some(c) => c,
                None => {
                    *reconnects += 1;
                    let c = Conn::open(self.target.addr, self.timeout).map_err(|e| {
                        Failure::new(
                            ErrorKind::Connect,
                            connect_message(&self.target.authority, &e, self.timeout),
                        )
                    })?;
                    conn.insert(c)
                }
            };
            match c.send(req) {
                Ok(head) => break (c, head),
                Err(f) => {
                    *conn = None;
                    if f.stale && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(f);
                }
            }
        };
        let result = Self::check_and_read(c, &head, job, self.assets[job.asset].size, buf);
        if head.close || result.as_ref().is_err_and(|f| !f.keep_conn) {
            *conn = None;
        }
        result
    }

    /// The body length of a valid response (the body read), or why it is not valid. A body
    /// is only read when its length is known and sane, so a hostile length cannot keep a
    /// worker reading; a failure says whether the connection is still usable.
    fn check_and_read(
        c: &mut Conn,
        head: &Head,
        job: &Job,
        size: u64,
        buf: &mut [u8],
    ) -> Result<u64, Failure> {
        let (status, want) = match job.range {
            Some((a, b)) => (206, b - a + 1),
            None => (200, size),
        };
        if head.status != status {
            let f = Failure::new(
                ErrorKind::Status(head.status),
                format!("answered {} instead of {status}", head.status),
            );
            // A small error body (a 404's message) is read so that the connection stays
            // usable; for a large one a new connection is cheaper.
            return Err(match head.len.filter(|&l| l <= ERROR_BODY_MAX) {
                Some(len) => {
                    c.discard(len, buf)?;
                    f.keep_conn()
                }
                None => f,
            });
        }
        let Some(len) = head.len else {
            return Err(Failure::new(
                ErrorKind::Protocol,
                format!("a {} response without Content-Length", head.status),
            ));
        };
        if len != want {
            return Err(Failure::new(
                ErrorKind::WrongLength,
                format!("Content-Length {len} instead of {want}"),
            ));
        }
        c.discard(len, buf)?;
        if let Some((a, b)) = job.range {
            if head.content_range != Some((a, b, size)) {
                return Err(Failure::new(
                    ErrorKind::WrongRange,
                    format!(
                        "Content-Range {:?} instead of bytes {a}-{b}/{size}",
                        head.content_range
                    ),
                )
                .keep_conn());
            }
        }
        Ok(len)
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

/// Process CPU time (user, system) from `/proc/self/stat`, in USER_HZ ticks (100 per second).
fn process_cpu() -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    let tick = |n: u64| Duration::from_millis(n.saturating_mul(10));
    Some((tick(ticks(11)?), tick(ticks(12)?)))
}

/// The results: what is printed at the end and written with `--json`.
#[derive(Serialize, Debug)]
struct Summary {
    target: String,
    assets: usize,
    arrival: Arrival,
    popularity: String,
    /// 0 = whole assets.
    range_bytes: u64,
    connections: u32,
    seed: u64,
    rate_per_s: f64,
    warmup_s: f64,
    /// The measured window (after the warmup; shorter when interrupted).
    duration_s: f64,
    interrupted: bool,
    /// Arrivals in the measured window.
    offered: u64,
    offered_per_s: f64,
    /// Requests sent that finished, valid or not.
    requests: u64,
    /// Valid responses per second of the measured window.
    completed_per_s: f64,
    /// Body bytes of the valid responses.
    bytes: u64,
    bytes_per_s: f64,
    errors: u64,
    errors_by_kind: BTreeMap<String, u64>,
    first_error: Option<String>,
    /// Arrivals never sent (still owed when the run stopped).
    unsent: u64,
    /// Latency of valid responses, intended start to last byte.
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    mean_us: f64,
    /// Sent to last byte.
    service_p50_us: u64,
    service_p99_us: u64,
    service_max_us: u64,
    /// Sent more than 1 ms after the intended start although a connection was free.
    late: u64,
    late_max_us: u64,
    /// More than 1 ms overdue before a connection was free.
    waited: u64,
    waited_max_us: u64,
    reconnects: u64,
    /// CPU time of this process from the first arrival to the last response (setup and
    /// asset discovery excluded).
    cpu_user_s: f64,
    cpu_system_s: f64,
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

pub fn run(args: &LoadArgs) -> Result<()> {
    let target = resolve_target(&args.target)?;
    let ids: Vec<String> = args
        .assets
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if !args.all_assets && ids.is_empty() {
        bail!("no assets given: pass --assets ID[,ID...] or --all-assets");
    }
    for id in &ids {
        check_id(id)?;
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
    } else {
        head_assets(&target, &ids, args.timeout)?
    };
    if stop.at().is_some() {
        bail!("interrupted before the load started");
    }
    let shape = match args.range_bytes {
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
        human_bytes(total_bytes),
        match shape {
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
        conns.push(Conn::open_for_setup(&target, args.timeout)?);
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

    watch(
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

    let summary = summarize(
        args,
        &shared,
        &stats,
        offered.measured,
        duration_s,
        stopped_at.is_some(),
        cpu,
    )?;
    print_summary(&summary);
    if let (Some(mut f), Some(p)) = (json_file, &args.json) {
        let mut text = serde_json::to_vec_pretty(&summary).context("encoding the summary")?;
        text.push(b'\n');
        f.write_all(&text)
            .with_context(|| format!("cannot write the --json file {}", p.display()))?;
    }
    if let (Some(f), Some(p)) = (log_file, &args.latency_log) {
        write_latency_log(f, &stats)
            .with_context(|| format!("cannot write the --latency-log file {}", p.display()))?;
    }
    Ok(())
}

/// Writes the `--latency-log` CSV: intended starts as Unix microseconds, mapped through one
/// reading of both clocks.
fn write_latency_log(f: File, stats: &[Arc<Mutex<WorkerStats>>]) -> std::io::Result<()> {
    let (base, base_unix_us) = (
        Instant::now(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i128),
    );
    let mut out = std::io::BufWriter::new(f);
    writeln!(out, "intended_unix_us,latency_us,ok")?;
    for s in stats {
        let s = lock(s);
        for &(intended, latency_us, ok) in s.log.iter().flatten() {
            let before = base.saturating_duration_since(intended).as_micros() as i128;
            let after = intended.saturating_duration_since(base).as_micros() as i128;
            let unix_us = base_unix_us - before + after;
            writeln!(out, "{unix_us},{latency_us},{}", u8::from(ok))?;
        }
    }
    out.flush()
}

/// Prints a progress line every `interval` until every worker is done.
fn watch(
    workers: &[JoinHandle<()>],
    stats: &[Arc<Mutex<WorkerStats>>],
    offered: &mut OfferedCounter,
    t0: Instant,
    t_end: Instant,
    interval: Duration,
    stop: &Stop,
) -> Result<()> {
    let mut window_us = histogram()?;
    let mut last = t0;
    let mut next_tick = t0 + interval;
    loop {
        let finished = workers.iter().all(|h| h.is_finished());
        let now = Instant::now();
        let stopped_at = stop.at();
        // The last, partial interval is shown only if it is not too short to mean anything.
        if now >= next_tick || (finished && now.duration_since(last) >= interval / 4) {
            let arrived_until = stopped_at.unwrap_or(now).min(t_end);
            let arrived =
                offered.advance_to(arrived_until.saturating_duration_since(t0).as_secs_f64());
            let line = progress_line(
                stats,
                &mut window_us,
                arrived,
                now.duration_since(last),
                now.duration_since(t0),
                offered.warmup_s,
            );
            eprintln!("{line}");
            last = now;
            while next_tick <= now {
                next_tick += interval;
            }
        }
        if finished {
            return Ok(());
        }
        std::thread::sleep(
            next_tick
                .saturating_duration_since(Instant::now())
                .min(SLEEP_SLICE),
        );
    }
}

/// The progress line of the interval that just ended (`dt` long, ending `at` into the run);
/// takes the workers' interval figures and resets them.
fn progress_line(
    stats: &[Arc<Mutex<WorkerStats>>],
    window_us: &mut Histogram<u64>,
    arrived: u64,
    dt: Duration,
    at: Duration,
    warmup_s: f64,
) -> String {
    let mut w = Counts::default();
    window_us.reset();
    for s in stats {
        let mut s = lock(s);
        w.add(&s.interval);
        s.interval = Counts::default();
        // Same bounds on both sides, so adding cannot fail.
        let _ = window_us.add(&s.interval_us);
        s.interval_us.reset();
    }
    let secs = dt.as_secs_f64().max(1e-9);
    let ms = |q: f64| {
        if window_us.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}", window_us.value_at_quantile(q) as f64 / 1e3)
        }
    };
    let at_s = at.as_secs_f64();
    format!(
        "{at_s:>7.1}s  offered {:>6.0}/s  completed {:>6.0}/s  {:>7.1} MB/s  p50 {:>6} ms  \
         p99 {:>6} ms  errors {}{}",
        arrived as f64 / secs,
        (w.requests - w.errors) as f64 / secs,
        w.bytes as f64 / secs / 1e6,
        ms(0.5),
        ms(0.99),
        w.errors,
        // An interval is the warmup's when most of it is.
        if at_s - secs / 2.0 < warmup_s {
            "  (warmup)"
        } else {
            ""
        }
    )
}

fn summarize(
    args: &LoadArgs,
    shared: &Shared,
    stats: &[Arc<Mutex<WorkerStats>>],
    offered: u64,
    duration_s: f64,
    interrupted: bool,
    cpu: (Duration, Duration),
) -> Result<Summary> {
    let mut total = Counts::default();
    let mut latency_us = histogram()?;
    let mut service_us = histogram()?;
    let mut errors: BTreeMap<ErrorKind, u64> = BTreeMap::new();
    let mut first_error = None;
    let (mut late, mut late_max_us, mut waited, mut waited_max_us, mut reconnects) =
        (0, 0, 0, 0, 0);
    for s in stats {
        let s = lock(s);
        total.add(&s.total);
        latency_us
            .add(&s.latency_us)
            .map_err(|e| anyhow!("merging histograms: {e}"))?;
        service_us
            .add(&s.service_us)
            .map_err(|e| anyhow!("merging histograms: {e}"))?;
        for (k, n) in &s.errors {
            *errors.entry(*k).or_insert(0) += n;
        }
        first_error = first_error.or_else(|| s.first_error.clone());
        late += s.late;
        late_max_us = late_max_us.max(s.late_max_us);
        waited += s.waited;
        waited_max_us = waited_max_us.max(s.waited_max_us);
        reconnects += s.reconnects;
    }
    let per_s = |n: f64| {
        if duration_s > 0.0 {
            n / duration_s
        } else {
            0.0
        }
    };
    let q = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    let ok = total.requests - total.errors;
    Ok(Summary {
        target: shared.target.authority.clone(),
        assets: shared.assets.len(),
        arrival: args.arrival,
        popularity: args.popularity.to_string(),
        range_bytes: args.range_bytes,
        connections: args.connections,
        seed: args.seed,
        rate_per_s: args.rate,
        warmup_s: args.warmup.as_secs_f64(),
        duration_s,
        interrupted,
        offered,
        offered_per_s: per_s(offered as f64),
        requests: total.requests,
        completed_per_s: per_s(ok as f64),
        bytes: total.bytes,
        bytes_per_s: per_s(total.bytes as f64),
        errors: total.errors,
        errors_by_kind: errors.iter().map(|(k, n)| (k.name(), *n)).collect(),
        first_error,
        unsent: offered.saturating_sub(total.requests),
        p50_us: q(&latency_us, 0.5),
        p90_us: q(&latency_us, 0.9),
        p99_us: q(&latency_us, 0.99),
        p999_us: q(&latency_us, 0.999),
        max_us: latency_us.max(),
        mean_us: if latency_us.is_empty() {
            0.0
        } else {
            latency_us.mean()
        },
        service_p50_us: q(&service_us, 0.5),
        service_p99_us: q(&service_us, 0.99),
        service_max_us: service_us.max(),
        late,
        late_max_us,
        waited,
        waited_max_us,
        reconnects,
        cpu_user_s: cpu.0.as_secs_f64(),
        cpu_system_s: cpu.1.as_secs_f64(),
    })
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1e3)
}

fn print_summary(s: &Summary) {
    println!(
        "reel load: {} — {} assets, {}, {} arrivals, popularity {}, {} connections, seed {}",
        s.target,
        s.assets,
        if s.range_bytes == 0 {
            "whole assets".to_string()
        } else {
            format!("{} ranges", human_bytes(s.range_bytes))
        },
        s.arrival,
        s.popularity,
        s.connections,
        s.seed
    );
    if s.interrupted {
        println!(
            "  interrupted  after {:.1} s of measurement (Ctrl-C)",
            s.duration_s
        );
    }
    println!(
        "  offered      {:.1} req/s ({} requests in {:.1} s after {:.1} s warmup)",
        s.offered_per_s, s.offered, s.duration_s, s.warmup_s
    );
    println!(
        "  achieved     {:.1} req/s completed ({} valid of {} sent), {:.1} MB/s ({})",
        s.completed_per_s,
        s.requests - s.errors,
        s.requests,
        s.bytes_per_s / 1e6,
        human_bytes(s.bytes)
    );
    if s.requests == s.errors {
        println!("  latency      - (no valid response)");
    } else {
        println!(
            "  latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (intended start to last byte)",
            ms(s.p50_us),
            ms(s.p90_us),
            ms(s.p99_us),
            ms(s.p999_us),
            ms(s.max_us)
        );
        println!(
            "  service      p50 {}  p99 {}  max {}  (sent to last byte)",
            ms(s.service_p50_us),
            ms(s.service_p99_us),
            ms(s.service_max_us)
        );
    }
    if s.errors == 0 {
        println!("  errors       0");
    } else {
        let kinds: Vec<String> = s
            .errors_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!("  errors       {} ({})", s.errors, kinds.join(", "));
        if let Some(e) = &s.first_error {
            println!("               first: {e}");
        }
    }
    println!(
        "  generator    late {} (sent > 1 ms after the intended start with a connection free; \
         max lag {}), waited {} (no connection free; max {}), unsent {}, reconnects {}, CPU \
         {:.2} s user + {:.2} s system",
        s.late,
        ms(s.late_max_us),
        s.waited,
        ms(s.waited_max_us),
        s.unsent,
        s.reconnects,
        s.cpu_user_s,
        s.cpu_system_s
    );
    if s.late > 0 {
        println!(
            "               {} of {} requests went out late because this process was not run \
             on time (a busy CPU?); their delay counts in the latency, so part of the tail may \
             be the generator's",
            s.late, s.requests
        );
    }
    if s.waited > 0 || (s.unsent > 0 && !s.interrupted) {
        println!(
            "               requests queued for a free connection: the node (or --connections \
             {}) could not keep up with {:.0} req/s; the wait is in the latency",
            s.connections, s.rate_per_s
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        for (s, want) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("HTTP://localhost:80/", "localhost:80"),
            ("[::1]:8080", "[::1]:8080"),
        ] {
            assert_eq!(parse_authority(s).expect(s), want);
        }
        for s in [
            "127.0.0.1",
            "https://127.0.0.1:8080",
            "ftp://h:1",
            "http://h:1/assets",
            ":8080",
            "h:0",
            "h:99999",
            "::1:8080",
            "",
        ] {
            let e = parse_authority(s).expect_err(s).to_string();
            assert!(e.contains("HOST:PORT"), "{s}: {e}");
        }
    }

    #[test]
    fn arguments() {
        assert_eq!(parse_rate("800"), Ok(800.0));
        for s in ["0", "-1", "abc", "inf", "NaN", "1e9"] {
            assert!(parse_rate(s).expect_err(s).contains("--rate 500"), "{s}");
        }
        assert_eq!(parse_popularity("uniform"), Ok(Popularity::Uniform));
        assert_eq!(parse_popularity("zipf:1.2"), Ok(Popularity::Zipf(1.2)));
        for s in ["zipf:0", "zipf:-1", "zipf:x", "zipf:inf"] {
            assert!(
                parse_popularity(s).expect_err(s).contains("zipf:1.0"),
                "{s}"
            );
        }
        assert!(parse_popularity("pareto").is_err());
        assert!(check_id("movies/a-1.mp4").is_ok());
        for id in ["", "a b", "a//b", "../x", "a/..", "/a", "%41"] {
            assert!(check_id(id).is_err(), "{id:?}");
        }
    }

    #[test]
    fn constant_arrivals_are_exact() {
        let a: Vec<f64> = Arrivals::new(Arrival::Constant, 4.0, 1, 1.0).collect();
        assert_eq!(a, [0.0, 0.25, 0.5, 0.75]);
        assert_eq!(Arrivals::new(Arrival::Constant, 200.0, 1, 3.0).count(), 600);
    }

    #[test]
    fn poisson_arrivals_have_the_rate_and_follow_the_seed() {
        let a: Vec<f64> = Arrivals::new(Arrival::Poisson, 1000.0, 7, 10.0).collect();
        assert!((9_700..=10_300).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        let b: Vec<f64> = Arrivals::new(Arrival::Poisson, 1000.0, 7, 10.0).collect();
        assert_eq!(a, b);
        let c: Vec<f64> = Arrivals::new(Arrival::Poisson, 1000.0, 8, 10.0).collect();
        assert_ne!(a, c);
        // Coefficient of variation of exponential gaps is 1.
        let gaps: Vec<f64> = a.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        assert!(
            (0.9..1.1).contains(&(var.sqrt() / mean)),
            "{}",
            var.sqrt() / mean
        );
    }

    #[test]
    fn offered_counter_splits_warmup() {
        let mut c = OfferedCounter::new(Arrivals::new(Arrival::Constant, 10.0, 1, 3.0), 1.0);
        assert_eq!(c.advance_to(0.5), 5);
        assert_eq!(c.advance_to(2.0), 15);
        assert_eq!(c.advance_to(100.0), 10);
        assert_eq!((c.warmup, c.measured), (10, 20));
    }

    fn assets(sizes: &[u64]) -> Vec<Asset> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| Asset::new(format!("a{i}"), s, "h:1"))
            .collect()
    }

    #[test]
    fn ranges_are_aligned_and_clipped() {
        let a = assets(&[10_000]);
        let mut p = Picker::new(Popularity::Uniform, 1, Shape::Range(4096), 3);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let (i, r) = p.pick(&a);
            assert_eq!(i, 0);
            seen.insert(r.expect("a range"));
        }
        let want: std::collections::BTreeSet<_> = [(0, 4095), (4096, 8191), (8192, 9999)]
            .into_iter()
            .collect();
        assert_eq!(seen, want);
        // A range longer than the asset is the whole asset.
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(aligned_range(100, 1 << 20, &mut rng), (0, 99));
        let mut w = Picker::new(Popularity::Uniform, 1, Shape::Whole, 3);
        assert_eq!(w.pick(&a), (0, None));
    }

    #[test]
    fn zipf_ranks_follow_the_weights() {
        let a = assets(&[1, 1, 1, 1]);
        let mut p = Picker::new(Popularity::Zipf(1.0), 4, Shape::Whole, 5);
        let mut n = [0u32; 4];
        for _ in 0..100_000 {
            n[p.pick(&a).0] += 1;
        }
        // Weights 1, 1/2, 1/3, 1/4 over 25/12.
        for (k, &got) in n.iter().enumerate() {
            let want = 100_000.0 / (k + 1) as f64 * 12.0 / 25.0;
            assert!((got as f64 - want).abs() < want * 0.05, "rank {k}: {n:?}");
        }
        let cdf = zipf_cdf(3, 2.0);
        assert_eq!(cdf.last(), Some(&1.0));
    }

    #[test]
    fn response_heads() {
        let mut h = Head::default();
        assert_eq!(
            parse_status_line("HTTP/1.1 206 Partial Content").expect("valid"),
            206
        );
        for bad in [
            "",
            "HTTP/1.1",
            "HTTP/2 200 OK",
            "HTTP/1.1 2000 X",
            "HTTP/1.1 abc",
        ] {
            assert!(parse_status_line(bad).is_err(), "{bad:?}");
        }
        parse_header("Content-Length: 42", &mut h).expect("valid");
        parse_header("content-range: bytes 0-41/100", &mut h).expect("valid");
        parse_header("Connection: keep-alive, close", &mut h).expect("valid");
        assert_eq!(
            (h.len, h.content_range, h.close),
            (Some(42), Some((0, 41, 100)), true)
        );
        assert!(parse_header("Content-Length: 43", &mut h).is_err());
        assert!(parse_header("Content-Length: -1", &mut Head::default()).is_err());
        assert!(parse_header("Transfer-Encoding: chunked", &mut h).is_err());
        assert!(parse_header("no colon", &mut h).is_err());
        assert_eq!(parse_content_range("bytes */100"), None);
    }
}

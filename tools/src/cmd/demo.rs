//! `reel demo`: the README's "run it" command. No root, no setup: it formats two files in a new
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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use reel_node::{Node, NodeConfig, Tiers};
use reel_policy::PolicyConfig;
use reel_store::driver::{Driver, DriverConfig};
use reel_store::format::GeometryOptions;
use reel_store::{FormatOptions, PutOptions, Volume};

use crate::units::{human_bytes, parse_duration, parse_size};

const MIB: u64 = 1 << 20;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// How long to drive the load: seconds, or with a suffix (90s, 2m). The hot set shifts
    /// halfway.
    #[arg(long, value_parser = parse_duration, default_value = "60")]
    pub duration: Duration,
    /// Titles in the library (4–16 MiB each, deterministic pseudo-random content).
    #[arg(long, default_value_t = 30)]
    pub assets: u32,
    /// Requests per second offered by all clients together (paced; the tiering thresholds are
    /// derived from it).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Client threads, one keep-alive HTTP/1.1 connection each.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Size of the primary volume file: small on purpose, so it cannot hold the library.
    #[arg(long, value_parser = parse_size, default_value = "128M")]
    pub primary_size: u64,
    /// Where to make the demo's temporary directory (default /var/tmp; it must be on a
    /// filesystem with O_DIRECT, such as ext4 or xfs, not tmpfs).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the temporary directory (both volume files) afterwards.
    #[arg(long)]
    pub keep: bool,
}

// ---------------------------------------------------------------------------------------------
// The library: titles and their content.

/// splitmix64's output function: a good 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The content of title `seed` at byte `offset`: one mixed word per 8 bytes, so any range can be
/// generated (and checked) without generating what precedes it.
fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let word = |i: u64| mix((seed << 40) ^ i).to_le_bytes();
    let mut rest: &mut [u8] = buf;
    let skip = (offset % 8) as usize;
    let mut idx = offset / 8;
    if skip != 0 {
        let n = (8 - skip).min(rest.len());
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
        head.copy_from_slice(&word(idx)[skip..skip + n]);
        rest = tail;
        idx += 1;
    }
    let mut words = rest.chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&word(idx));
        idx += 1;
    }
    let tail = words.into_remainder();
    let n = tail.len();
    tail.copy_from_slice(&word(idx)[..n]);
}

/// A title's content as a reader (for `Volume::put`).
struct Content {
    seed: u64,
    offset: u64,
    left: u64,
}

impl Read for Content {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        fill(self.seed, self.offset, &mut buf[..n]);
        self.offset += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

struct Title {
    id: String,
    seed: u64,
    size: u64,
    /// A new release: uploaded over HTTP (lands on the primary); else back catalogue, ingested
    /// straight into the secondary.
    new_release: bool,
}

fn title_size(i: u32) -> u64 {
    // 4–16 MiB, not block-aligned.
    4 * MIB + mix(u64::from(i) ^ 0x5EED) % (12 * MIB + 1)
}

// ---------------------------------------------------------------------------------------------
// Registered buffers vs RLIMIT_MEMLOCK.

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

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client over std's TcpStream (keep-alive, Content-Length bodies).

struct Conn {
    r: BufReader<TcpStream>,
}

struct Head {
    status: u16,
    len: u64,
    close: bool,
    range_start: Option<u64>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            r: BufReader::with_capacity(256 << 10, s),
        })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.r.get_mut().write_all(bytes).context("sending")
    }

    fn head(&mut self) -> Result<Head> {
        let mut line = Vec::new();
        let mut head = Head {
            status: 0,
            len: 0,
            close: false,
            range_start: None,
        };
        let mut first = true;
        let mut total = 0;
        loop {
            line.clear();
            let n = self.r.read_until(b'\n', &mut line)?;
            if n == 0 {
                bail!("the node closed the connection before a complete response head");
            }
            total += n;
            if total > 64 << 10 {
                bail!("response head larger than 64 KiB");
            }
            let text = std::str::from_utf8(&line)
                .context("response head is not UTF-8")?
                .trim_end();
            if first {
                first = false;
                head.status = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .with_context(|| format!("bad status line {text:?}"))?;
                continue;
            }
            if text.is_empty() {
                return Ok(head);
            }
            let Some((name, value)) = text.split_once(':') else {
                bail!("bad header line {text:?}");
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                head.len = value
                    .parse()
                    .with_context(|| format!("bad Content-Length {value:?}"))?;
            } else if name.eq_ignore_ascii_case("connection") {
                head.close = value.eq_ignore_ascii_case("close");
            } else if name.eq_ignore_ascii_case("content-range") {
                head.range_start = value
                    .strip_prefix("bytes ")
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse().ok());
            }
        }
    }

    fn body_text(&mut self, len: u64) -> Result<String> {
        let mut body = Vec::new();
        (&mut self.r).take(len).read_to_end(&mut body)?;
        if body.len() as u64 != len {
            bail!("response body cut short");
        }
        String::from_utf8(body).context("response body is not UTF-8")
    }
}

/// PUTs a title (Content-Length body streamed from the generator); Ok once answered 201.
fn put_title(conn: &mut Conn, t: &Title, buf: &mut [u8]) -> Result<()> {
    let head = format!(
        "PUT /assets/{} HTTP/1.1\r\nHost: reel-demo\r\nContent-Type: video/mp4\r\nContent-Length: {}\r\n\r\n",
        t.id, t.size
    );
    conn.send(head.as_bytes())?;
    let mut sent = 0u64;
    while sent < t.size {
        let n = (t.size - sent).min(buf.len() as u64) as usize;
        fill(t.seed, sent, &mut buf[..n]);
        conn.send(&buf[..n])?;
        sent += n as u64;
    }
    let h = conn.head()?;
    let body = conn.body_text(h.len)?;
    if h.status != 201 {
        bail!("PUT {} answered {}: {}", t.id, h.status, body.trim());
    }
    Ok(())
}

/// The node's `/metrics` text.
fn scrape(conn: &mut Option<Conn>, addr: SocketAddr) -> Result<String> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(Conn::open(addr)?),
    };
    let res = (|| {
        c.send(b"GET /metrics HTTP/1.1\r\nHost: reel-demo\r\n\r\n")?;
        let h = c.head()?;
        let body = c.body_text(h.len)?;
        if h.status != 200 {
            bail!("GET /metrics answered {}", h.status);
        }
        Ok((body, h.close))
    })();
    match res {
        Ok((body, close)) => {
            if close {
                *conn = None;
            }
            Ok(body)
        }
        Err(e) => {
            *conn = None;
            Err(e)
        }
    }
}

/// The sum of a metric over its label sets, only those with `tier="…"` when `tier` is given.
fn metric(text: &str, name: &str, tier: Option<&str>) -> u64 {
    let label = tier.map(|t| format!("tier=\"{t}\""));
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| label.as_ref().is_none_or(|lab| l.contains(lab.as_str())))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// What the live view and the summary show of the node's metrics.
#[derive(Clone, Copy, Debug, Default)]
struct NodeFigures {
    promotions: u64,
    demotions: u64,
    evictions: u64,
    write_backs: u64,
    failures: u64,
    copied_bytes: u64,
    primary_used: u64,
    primary_capacity: u64,
    primary_assets: u64,
    secondary_used: u64,
    secondary_capacity: u64,
    secondary_assets: u64,
}

impl NodeFigures {
    fn parse(text: &str) -> NodeFigures {
        let dev = |name: &str, tier: &str| metric(text, name, Some(tier));
        NodeFigures {
            promotions: metric(text, "reel_promotions_total", None),
            demotions: metric(text, "reel_demotions_total", None),
            evictions: metric(text, "reel_evictions_total", None),
            write_backs: metric(text, "reel_write_backs_total", None),
            failures: metric(text, "reel_migration_failures_total", None),
            copied_bytes: metric(text, "reel_migration_bytes_total", None),
            primary_used: dev("reel_device_used_bytes", "primary"),
            primary_capacity: dev("reel_device_capacity_bytes", "primary"),
            primary_assets: dev("reel_device_assets", "primary"),
            secondary_used: dev("reel_device_used_bytes", "secondary"),
            secondary_capacity: dev("reel_device_capacity_bytes", "secondary"),
            secondary_assets: dev("reel_device_assets", "secondary"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The load.

/// Share of requests that go to the hot set (Zipf over its ranks); the rest pick any title.
const HOT_SHARE: f64 = 0.9;
/// Share of requests for the whole title; the others ask for one range of 256 KiB–2 MiB.
const FULL_SHARE: f64 = 0.5;
/// Promote at this share of all requests, demote below this one (converted to views per hour
/// from the offered rate; a range counts as the fraction of the title it covers, so a title's
/// views are at least `FULL_SHARE` of its requests).
const PROMOTE_SHARE: f64 = 0.02;
const DEMOTE_SHARE: f64 = 0.008;
/// Bytes compared per step when verifying a response.
const PIECE: usize = 256 << 10;

struct Load {
    addr: SocketAddr,
    titles: Vec<Title>,
    /// The two hot sets (indexes into `titles`, hottest first).
    hot: [Vec<usize>; 2],
    /// Cumulative Zipf weights of the hot ranks.
    zipf_cdf: Vec<f64>,
    primary: Arc<Volume>,
    rate: f64,
    t0: Instant,
    shift_at: Instant,
    end: Instant,
    issued: AtomicU64,
    stop: Arc<AtomicBool>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    requests: u64,
    full: u64,
    ranges: u64,
    bytes: u64,
    /// Bytes of responses whose title was on the primary when the request was sent.
    primary_bytes: u64,
    wrong_bytes: u64,
    wrong_responses: u64,
    errors: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.full += o.full;
        self.ranges += o.ranges;
        self.bytes += o.bytes;
        self.primary_bytes += o.primary_bytes;
        self.wrong_bytes += o.wrong_bytes;
        self.wrong_responses += o.wrong_responses;
        self.errors += o.errors;
    }
}

/// One client's figures: the window since the last live line, and totals per phase.
struct ClientStats {
    window: Counts,
    window_us: Histogram<u64>,
    phase: [Counts; 2],
    total_us: Histogram<u64>,
    first_error: Option<String>,
    first_wrong: Option<String>,
}

fn histogram() -> Result<Histogram<u64>> {
    // Microseconds, 1 us to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).map_err(|e| anyhow!("histogram: {e}"))
}

impl ClientStats {
    fn new() -> Result<ClientStats> {
        Ok(ClientStats {
            window: Counts::default(),
            window_us: histogram()?,
            phase: [Counts::default(); 2],
            total_us: histogram()?,
            first_error: None,
            first_wrong: None,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Request {
    title: usize,
    /// First and last byte; `None` for the whole title.
    range: Option<(u64, u64)>,
}

impl Request {
    fn describe(&self) -> String {
        self.range
            .map_or("(whole)".to_string(), |(a, b)| format!("bytes={a}-{b}"))
    }
}

impl Load {
    fn pick(&self, rng: &mut fastrand::Rng, phase: usize) -> Request {
        let hot = &self.hot[phase];
        let title = if rng.f64() < HOT_SHARE && !hot.is_empty() {
            let u = rng.f64() * self.zipf_cdf.last().copied().unwrap_or(1.0);
            let rank = self.zipf_cdf.partition_point(|&c| c <= u);
            hot[rank.min(hot.len() - 1)]
        } else {
            rng.usize(..self.titles.len())
        };
        let size = self.titles[title].size;
        let range = (rng.f64() >= FULL_SHARE).then(|| {
            let len = rng.u64((256 << 10)..=(2 * MIB)).min(size);
            let first = rng.u64(0..=size - len);
            (first, first + len - 1)
        });
        Request { title, range }
    }

    fn client(&self, k: usize, stats: &Mutex<ClientStats>) {
        let mut rng = fastrand::Rng::with_seed(0xC11E_0000 + k as u64);
        let mut conn: Option<Conn> = None;
        let mut got = vec![0u8; PIECE];
        let mut want = vec![0u8; PIECE];
        loop {
            let n = self.issued.fetch_add(1, Relaxed);
            let due = self.t0 + Duration::from_secs_f64(n as f64 / self.rate);
            if due >= self.end {
                break;
            }
            loop {
                if self.stop.load(Relaxed) {
                    return;
                }
                let now = Instant::now();
                if now >= due {
                    break;
                }
                std::thread::sleep((due - now).min(Duration::from_millis(100)));
            }
            let phase = usize::from(due >= self.shift_at);
            let req = self.pick(&mut rng, phase);
            let t = &self.titles[req.title];
            let on_primary = self.primary.get(&t.id).is_some();
            let start = Instant::now();
            let res = self.fetch(&mut conn, t, req.range, &mut got, &mut want);
            let us = start.elapsed().as_micros() as u64;
            let mut s = lock(stats);
            let mut c = Counts::default();
            match res {
                Ok(wrong) => {
                    let bytes = req.range.map_or(t.size, |(a, b)| b - a + 1);
                    c.requests = 1;
                    c.full = u64::from(req.range.is_none());
                    c.ranges = u64::from(req.range.is_some());
                    c.bytes = bytes;
                    c.primary_bytes = if on_primary { bytes } else { 0 };
                    c.wrong_bytes = wrong;
                    c.wrong_responses = u64::from(wrong > 0);
                    if wrong > 0 && s.first_wrong.is_none() {
                        s.first_wrong = Some(format!(
                            "GET {} {}: {wrong} bytes differ from the generator",
                            t.id,
                            req.describe()
                        ));
                    }
                    s.window_us.saturating_record(us.max(1));
                    s.total_us.saturating_record(us.max(1));
                }
                Err(e) => {
                    conn = None;
                    c.errors = 1;
                    if s.first_error.is_none() {
                        s.first_error = Some(format!("GET {} {}: {e:#}", t.id, req.describe()));
                    }
                }
            }
            s.window.add(&c);
            s.phase[phase].add(&c);
        }
    }

    /// GETs a title or a range of it and compares every byte with the generator. Returns the
    /// number of wrong bytes.
    fn fetch(
        &self,
        conn: &mut Option<Conn>,
        t: &Title,
        range: Option<(u64, u64)>,
        got: &mut [u8],
        want: &mut [u8],
    ) -> Result<u64> {
        let c = match conn {
            Some(c) => c,
            None => conn.insert(Conn::open(self.addr)?),
        };
        let (head, status, first, len) = match range {
            None => (
                format!("GET /assets/{} HTTP/1.1\r\nHost: reel-demo\r\n\r\n", t.id),
                200,
                0,
                t.size,
            ),
            Some((a, b)) => (
                format!(
                    "GET /assets/{} HTTP/1.1\r\nHost: reel-demo\r\nRange: bytes={a}-{b}\r\n\r\n",
                    t.id
                ),
                206,
                a,
                b - a + 1,
            ),
        };
        c.send(head.as_bytes())?;
        let h = c.head()?;
        if h.status != status {
            bail!("answered {} (expected {status})", h.status);
        }
        if h.len != len || h.range_start.unwrap_or(0) != first {
            bail!(
                "answered {} bytes from {:?}, expected {len} from {first}",
                h.len,
                h.range_start
            );
        }
        let mut wrong = 0u64;
        let mut pos = 0u64;
        while pos < len {
            let n = (len - pos).min(got.len() as u64) as usize;
            c.r.read_exact(&mut got[..n]).context("reading the body")?;
            fill(t.seed, first + pos, &mut want[..n]);
            if got[..n] != want[..n] {
                wrong += got[..n]
                    .iter()
                    .zip(&want[..n])
                    .filter(|(a, b)| a != b)
                    .count() as u64;
            }
            pos += n as u64;
        }
        if h.close {
            *conn = None;
        }
        Ok(wrong)
    }
}

// ---------------------------------------------------------------------------------------------
// The demo.

/// What the summary found wrong, reported after cleanup.
struct Verdict {
    wrong_bytes: u64,
    wrong_responses: u64,
    errors: u64,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    crate::require_io_uring()?;
    if !(4..=1000).contains(&args.assets) {
        bail!("--assets must be 4..=1000");
    }
    if !(args.rate.is_finite() && args.rate >= 1.0) {
        bail!("--rate must be at least 1 request per second");
    }
    if !(1..=64).contains(&args.clients) {
        bail!("--clients must be 1..=64");
    }
    if args.primary_size < 64 * MIB {
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

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e6
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn names(titles: &[Title], set: &[usize]) -> String {
    set.iter()
        .map(|&i| {
            let t = &titles[i];
            let n =
                t.id.trim_start_matches("demo/title-")
                    .trim_end_matches(".mp4");
            if t.new_release {
                format!("{n}*")
            } else {
                n.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The node's `/metrics`, scraped over a keep-alive connection of its own.
struct Scraper {
    addr: SocketAddr,
    conn: Option<Conn>,
    last: NodeFigures,
}

impl Scraper {
    /// The current figures (the previous ones if this scrape failed).
    fn figures(&mut self) -> NodeFigures {
        if let Ok(text) = scrape(&mut self.conn, self.addr) {
            self.last = NodeFigures::parse(&text);
        }
        self.last
    }
}

fn library(n: u32) -> Vec<Title> {
    (0..n)
        .map(|i| Title {
            id: format!("demo/title-{i:02}.mp4"),
            seed: u64::from(i) + 1,
            size: title_size(i),
            new_release: false,
        })
        .collect()
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
    let p_data = format_volume(&p_path, args.primary_size, bufs.chunk)?;
    let s_data = format_volume(&s_path, secondary_size, bufs.chunk)?;
    println!(
        "  primary    {:>9} file, {:>10} for data: small, cannot hold the library ({} titles, {})",
        human_bytes(args.primary_size),
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
    let mut scraper = Scraper {
        addr,
        conn: None,
        last: NodeFigures::default(),
    };

    // 3. New releases over HTTP: each lands on the primary, then is written back.
    upload_new_releases(addr, &titles, &mut scraper, stop)?;

    // 4. The skewed load, with a live line per second.
    let hot = hot_sets(&titles);
    let half = args.duration / 2;
    println!(
        "  load: {:.0} requests/s paced over {} keep-alive clients for {:.0?}; {:.0}% to a hot \
         set of {} (Zipf), the rest to any title; half whole titles, half 256 KiB–2 MiB ranges; \
         every response compared with the generator",
        args.rate,
        args.clients,
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
        rate: args.rate,
        t0,
        shift_at: t0 + half,
        end: t0 + args.duration,
        issued: AtomicU64::new(0),
        stop: stop.clone(),
    });
    let report = drive(&load, args.clients, &mut scraper)?;
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

fn ingest_back_catalogue(secondary: &Volume, titles: &[Title], chunk: u64) -> Result<()> {
    let t = Instant::now();
    let mut drv = Driver::new(&DriverConfig {
        ring_entries: 64,
        buf_size: chunk as usize,
        buf_count: 8,
        write_log: None,
    })?;
    let mut bytes = 0;
    let back: Vec<&Title> = titles.iter().filter(|t| !t.new_release).collect();
    for t in &back {
        let opts = PutOptions {
            content_type: Some("video/mp4".into()),
            size: Some(t.size),
            depth: None,
            created_unix_ns: None,
            io_max: None,
        };
        let mut body = Content {
            seed: t.seed,
            offset: 0,
            left: t.size,
        };
        secondary
            .put(&mut drv, &t.id, &mut body, &opts)
            .with_context(|| format!("ingesting {} into the secondary", t.id))?;
        bytes += t.size;
    }
    println!(
        "  back catalogue: {} titles, {} written straight into the secondary volume in {:.2?} \
         ({:.0} MB/s)",
        back.len(),
        human_bytes(bytes),
        t.elapsed(),
        mb_s(bytes, t.elapsed())
    );
    Ok(())
}

fn start_node(
    args: &DemoArgs,
    bufs: &Buffers,
    primary: &Arc<Volume>,
    secondary: &Arc<Volume>,
) -> Result<Node> {
    let views_per_h = |share: f64| args.rate * 3600.0 * FULL_SHARE * share;
    let copy_budget = 128 * MIB;
    let policy = PolicyConfig {
        promote_per_h: views_per_h(PROMOTE_SHARE),
        demote_per_h: views_per_h(DEMOTE_SHARE),
        min_residency_s: 5.0,
        retry_backoff_s: 5.0,
        ..PolicyConfig::default()
    };
    let cfg = NodeConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        shards: bufs.shards,
        read_buf_bytes: bufs.chunk as usize,
        read_bufs_per_shard: bufs.bufs_per_shard,
        ingest_workers: bufs.workers,
        rate_half_life: Duration::from_secs(5),
        policy: policy.clone(),
        throttle: reel_policy::ThrottleConfig {
            bytes_per_s_max: reel_policy::CopyBudget::from_bytes_per_s(copy_budget),
            ..reel_policy::ThrottleConfig::default()
        },
        ..NodeConfig::default()
    };
    let node = Node::start(
        cfg,
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
        policy.promote_per_h,
        policy.demote_per_h,
        human_bytes(copy_budget)
    );
    Ok(node)
}

fn upload_new_releases(
    addr: SocketAddr,
    titles: &[Title],
    scraper: &mut Scraper,
    stop: &AtomicBool,
) -> Result<()> {
    let news: Vec<&Title> = titles.iter().filter(|t| t.new_release).collect();
    let bytes: u64 = news.iter().map(|t| t.size).sum();
    let t = Instant::now();
    {
        let mut conn = Conn::open(addr)?;
        let mut buf = vec![0u8; MIB as usize];
        for t in &news {
            put_title(&mut conn, t, &mut buf)?;
        }
    }
    let put_time = t.elapsed();
    // Wait for the write-backs (the scheduler starts them within a second), at most 30 s.
    let mut written_back = 0;
    while t.elapsed() < Duration::from_secs(30) && !stop.load(Relaxed) {
        written_back = scraper.figures().write_backs;
        if written_back >= news.len() as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "  new releases: {} titles, {} uploaded with HTTP PUT in {:.2?} ({:.0} MB/s; each 201 \
         once durable on the primary); {} written back to the secondary after {:.1?}",
        news.len(),
        human_bytes(bytes),
        put_time,
        mb_s(bytes, put_time),
        written_back,
        t.elapsed()
    );
    Ok(())
}

/// The two hot sets, hottest first: first back catalogue (to be promoted) mixed with new
/// releases (on the primary already); then other titles, back catalogue first.
fn hot_sets(titles: &[Title]) -> [Vec<usize>; 2] {
    let hot_n = titles.len().div_ceil(4).clamp(1, 8);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut back: Vec<usize> = (0..titles.len())
        .filter(|&i| !titles[i].new_release)
        .collect();
    let mut news: Vec<usize> = (0..titles.len())
        .filter(|&i| titles[i].new_release)
        .collect();
    rng.shuffle(&mut back);
    rng.shuffle(&mut news);
    let mut first = Vec::new();
    let mut b = back.iter();
    let mut nr = news.iter().take((hot_n / 2).min(3));
    for rank in 0..hot_n {
        let next = if rank % 2 == 1 {
            nr.next().or_else(|| b.next())
        } else {
            b.next().or_else(|| nr.next())
        };
        if let Some(&i) = next {
            first.push(i);
        }
    }
    let mut second: Vec<usize> = back
        .iter()
        .chain(&news)
        .copied()
        .filter(|i| !first.contains(i))
        .take(hot_n)
        .collect();
    second.extend(first.iter().take(hot_n.saturating_sub(second.len())));
    [first, second]
}

/// What the clients measured.
struct Report {
    phase: [Counts; 2],
    latency_us: Histogram<u64>,
    elapsed: Duration,
    interrupted: bool,
    first_error: Option<String>,
    first_wrong: Option<String>,
}

/// Runs the clients until the end of the load (or Ctrl-C), printing a live line every second.
fn drive(load: &Arc<Load>, clients: usize, scraper: &mut Scraper) -> Result<Report> {
    let mut window_us = histogram()?;
    let mut latency_us = histogram()?;
    let stats: Vec<Arc<Mutex<ClientStats>>> = (0..clients)
        .map(|_| ClientStats::new().map(|s| Arc::new(Mutex::new(s))))
        .collect::<Result<_>>()?;
    let mut threads = Vec::new();
    for (k, s) in stats.iter().enumerate() {
        let (load2, s) = (load.clone(), s.clone());
        match std::thread::Builder::new()
            .name(format!("demo-client-{k}"))
            .spawn(move || load2.client(k, &s))
        {
            Ok(h) => threads.push(h),
            Err(e) => {
                load.stop.store(true, Relaxed);
                for h in threads {
                    let _ = h.join();
                }
                return Err(e).context("starting a client thread");
            }
        }
    }
    println!(
        "  {:>5} {:>6} {:>6} {:>7} {:>5}   {:<13} {:<13} {:>6} {:>6} {:>6} {:>6}",
        "time",
        "MB/s",
        "req/s",
        "p99 ms",
        "hit%",
        "primary",
        "secondary",
        "promo",
        "demo",
        "evict",
        "wback"
    );
    let t0 = load.t0;
    let mut shifted = false;
    let mut last = t0;
    for second in 1u64.. {
        let until = (t0 + Duration::from_secs(second)).min(load.end);
        while Instant::now() < until && !load.stop.load(Relaxed) {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
        let now = Instant::now();
        let mut w = Counts::default();
        window_us.reset();
        for s in &stats {
            let mut s = lock(s);
            w.add(&s.window);
            s.window = Counts::default();
            let _ = window_us.add(&s.window_us);
            s.window_us.reset();
        }
        let f = scraper.figures();
        if !shifted && now >= load.shift_at {
            shifted = true;
            println!(
                "  -- {:.0?}: the hot set shifts to {}",
                load.shift_at - t0,
                names(&load.titles, &load.hot[1])
            );
        }
        let dt = now.duration_since(last).as_secs_f64().max(1e-9);
        last = now;
        let p99 = if window_us.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", window_us.value_at_quantile(0.99) as f64 / 1e3)
        };
        let fill = |used: u64, cap: u64| format!("{:>4} MiB {:>3.0}%", used >> 20, pct(used, cap));
        println!(
            "  {:>4.0}s {:>6.0} {:>6.0} {:>7} {:>5.0}   {:<13} {:<13} {:>6} {:>6} {:>6} {:>6}",
            now.duration_since(t0).as_secs_f64(),
            w.bytes as f64 / dt / 1e6,
            w.requests as f64 / dt,
            p99,
            pct(w.primary_bytes, w.bytes),
            fill(f.primary_used, f.primary_capacity),
            fill(f.secondary_used, f.secondary_capacity),
            f.promotions,
            f.demotions,
            f.evictions,
            f.write_backs
        );
        if now >= load.end || load.stop.load(Relaxed) {
            break;
        }
    }
    let interrupted = load.stop.load(Relaxed);
    for h in threads {
        let _ = h.join();
    }
    let elapsed = t0.elapsed();
    let mut phase = [Counts::default(); 2];
    let (mut first_error, mut first_wrong) = (None, None);
    for s in &stats {
        let s = lock(s);
        phase[0].add(&s.phase[0]);
        phase[1].add(&s.phase[1]);
        let _ = latency_us.add(&s.total_us);
        first_error = first_error.or_else(|| s.first_error.clone());
        first_wrong = first_wrong.or_else(|| s.first_wrong.clone());
    }
    Ok(Report {
        phase,
        latency_us,
        elapsed,
        interrupted,
        first_error,
        first_wrong,
    })
}

/// Prints the summary; returns the totals.
fn print_summary(args: &DemoArgs, r: &Report, f: &NodeFigures) -> Counts {
    let mut all = r.phase[0];
    all.add(&r.phase[1]);
    let ms = |q: f64| r.latency_us.value_at_quantile(q) as f64 / 1e3;
    let ratio = |c: &Counts| {
        if c.bytes == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", c.primary_bytes as f64 / c.bytes as f64)
        }
    };
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let achieved = all.requests as f64 / secs;
    println!("reel demo: summary");
    if r.interrupted {
        println!("  interrupted after {:.1?}", r.elapsed);
    }
    println!(
        "  load         {secs:.1} s, {} clients, {} requests ({} whole titles, {} ranges), \
         {achieved:.1} req/s of {:.0} offered, {:.2} GB, {:.0} MB/s",
        args.clients,
        all.requests,
        all.full,
        all.ranges,
        args.rate,
        all.bytes as f64 / 1e9,
        all.bytes as f64 / secs / 1e6
    );
    if achieved < 0.8 * args.rate && !r.interrupted {
        println!(
            "               this machine did not keep up with the offered rate; the tiering \
             thresholds assume it, so fewer titles qualify (try --rate {:.0})",
            (achieved * 0.7).max(1.0)
        );
    }
    if !r.latency_us.is_empty() {
        println!(
            "  latency      p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (request sent \
             to last byte received)",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            r.latency_us.max() as f64 / 1e3
        );
    }
    println!(
        "  verified     {} responses, {:.2} GB compared with the generator: {} wrong bytes",
        all.requests,
        all.bytes as f64 / 1e9,
        all.wrong_bytes
    );
    println!(
        "  byte-hit     primary byte-hit ratio {} (first hot set {}, second {}): bytes of titles \
         on the primary when requested / all bytes",
        ratio(&all),
        ratio(&r.phase[0]),
        ratio(&r.phase[1])
    );
    println!(
        "  migrations   {} promotions, {} demotions, {} evictions, {} write-backs, {} failures; \
         {} copied between the tiers",
        f.promotions,
        f.demotions,
        f.evictions,
        f.write_backs,
        f.failures,
        human_bytes(f.copied_bytes)
    );
    println!(
        "  tiers        primary {} of {} used ({} titles), secondary {} of {} ({} titles)",
        human_bytes(f.primary_used),
        human_bytes(f.primary_capacity),
        f.primary_assets,
        human_bytes(f.secondary_used),
        human_bytes(f.secondary_capacity),
        f.secondary_assets
    );
    println!("  errors       {}", all.errors);
    if let Some(e) = &r.first_error {
        println!("               first: {e}");
    }
    if let Some(e) = &r.first_wrong {
        println!("  WRONG BYTES  first: {e}");
    }
    all
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

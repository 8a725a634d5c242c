//! The demo's load: client threads, one keep-alive connection each, paced together at the
//! offered rate; each request picks a title (mostly from the hot set of its phase) and the whole
//! of it or a range, and every byte of the response is compared with the generator.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use reel_http::client::{encode_request, Conn};
use reel_store::Volume;

use super::library::{fill, Title};
use super::{connect, MIB};

/// Share of requests that go to the hot set (Zipf over its ranks); the rest pick any title.
pub(super) const HOT_SHARE: f64 = 0.9;
/// Share of requests for the whole title; the others ask for one range of 256 KiB–2 MiB.
pub(super) const FULL_SHARE: f64 = 0.5;
/// Bytes compared per step when verifying a response.
const PIECE: usize = 256 << 10;

pub(super) struct Load {
    pub(super) addr: SocketAddr,
    pub(super) titles: Vec<Title>,
    /// The two hot sets (indexes into `titles`, hottest first).
    pub(super) hot: [Vec<usize>; 2],
    /// Cumulative Zipf weights of the hot ranks.
    pub(super) zipf_cdf: Vec<f64>,
    pub(super) primary: Arc<Volume>,
    pub(super) rate: f64,
    pub(super) t0: Instant,
    pub(super) shift_at: Instant,
    pub(super) end: Instant,
    pub(super) issued: AtomicU64,
    pub(super) stop: Arc<AtomicBool>,
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counts {
    pub(super) requests: u64,
    pub(super) full: u64,
    pub(super) ranges: u64,
    pub(super) bytes: u64,
    /// Bytes of responses whose title was on the primary when the request was sent.
    pub(super) primary_bytes: u64,
    pub(super) wrong_bytes: u64,
    pub(super) wrong_responses: u64,
    pub(super) errors: u64,
}

impl Counts {
    pub(super) fn add(&mut self, o: &Counts) {
        // Destructured, so that a new field cannot be left out of the sum.
        let Counts {
            requests,
            full,
            ranges,
            bytes,
            primary_bytes,
            wrong_bytes,
            wrong_responses,
            errors,
        } = *o;
        self.requests += requests;
        self.full += full;
        self.ranges += ranges;
        self.bytes += bytes;
        self.primary_bytes += primary_bytes;
        self.wrong_bytes += wrong_bytes;
        self.wrong_responses += wrong_responses;
        self.errors += errors;
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

pub(super) fn histogram() -> Result<Histogram<u64>> {
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
            None => conn.insert(connect(self.addr)?),
        };
        let target = format!("/assets/{}", t.id);
        let (req, status, first, len) = match range {
            None => (
                encode_request("GET", "reel-demo", &target, &[], None),
                200,
                0,
                t.size,
            ),
            Some((a, b)) => (
                encode_request(
                    "GET",
                    "reel-demo",
                    &target,
                    &[("Range", &format!("bytes={a}-{b}"))],
                    None,
                ),
                206,
                a,
                b - a + 1,
            ),
        };
        let h = c.send(&req)?;
        if h.status != status {
            bail!("answered {} (expected {status})", h.status);
        }
        let (got_len, range_start) = (h.content_length(), h.content_range().map(|r| r.0));
        if got_len != Some(len) || range_start.unwrap_or(0) != first {
            bail!(
                "answered {} bytes from {range_start:?}, expected {len} from {first}",
                got_len.unwrap_or(0)
            );
        }
        let mut wrong = 0u64;
        let mut pos = 0u64;
        while pos < len {
            let n = (len - pos).min(got.len() as u64) as usize;
            c.read_exact(&mut got[..n])?;
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

/// The two hot sets, hottest first: first back catalogue (to be promoted) mixed with new
/// releases (on the primary already); then other titles, back catalogue first.
pub(super) fn hot_sets(titles: &[Title]) -> [Vec<usize>; 2] {
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
pub(super) struct Report {
    pub(super) phase: [Counts; 2],
    pub(super) latency_us: Histogram<u64>,
    pub(super) elapsed: Duration,
    pub(super) interrupted: bool,
    pub(super) first_error: Option<String>,
    pub(super) first_wrong: Option<String>,
}

/// The running clients and their figures.
pub(super) struct Clients {
    threads: Vec<JoinHandle<()>>,
    stats: Vec<Arc<Mutex<ClientStats>>>,
}

impl Clients {
    /// Starts `n` client threads on `load`; if one cannot start, stops those that did.
    pub(super) fn start(load: &Arc<Load>, n: usize) -> Result<Clients> {
        let stats: Vec<Arc<Mutex<ClientStats>>> = (0..n)
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
        Ok(Clients { threads, stats })
    }

    /// Takes the figures of the window since the last call (resetting them): the counts, and
    /// the latencies into `window_us`.
    pub(super) fn take_window(&self, window_us: &mut Histogram<u64>) -> Counts {
        let mut w = Counts::default();
        window_us.reset();
        for s in &self.stats {
            let mut s = lock(s);
            w.add(&s.window);
            s.window = Counts::default();
            let _ = window_us.add(&s.window_us);
            s.window_us.reset();
        }
        w
    }

    /// Waits for the clients to end and merges what they measured (`t0` is the load's start).
    pub(super) fn finish(self, t0: Instant, interrupted: bool) -> Result<Report> {
        let mut latency_us = histogram()?;
        for h in self.threads {
            let _ = h.join();
        }
        let elapsed = t0.elapsed();
        let mut phase = [Counts::default(); 2];
        let (mut first_error, mut first_wrong) = (None, None);
        for s in &self.stats {
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
}

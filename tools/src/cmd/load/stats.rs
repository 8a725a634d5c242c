//! What the workers measure: per-worker counts and histograms for the current interval and for
//! the results, their merge at the end, and the `--latency-log` of every measured request.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;

use super::schedule::Job;
use super::worker::{Answer, ErrorKind, Failure};

/// A request sent more than this after its intended start is late (or waited, see the module
/// doc).
const LATE_THRESHOLD: Duration = Duration::from_millis(1);
/// Highest latency the histograms hold: one hour, in microseconds.
const HIST_MAX_US: u64 = 3_600_000_000;

pub(super) fn histogram() -> Result<Histogram<u64>> {
    // Microseconds, 1 us to 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).map_err(|e| anyhow!("histogram: {e}"))
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counts {
    /// Requests sent that finished, well or not.
    pub(super) requests: u64,
    pub(super) errors: u64,
    /// Body bytes of the valid responses.
    pub(super) bytes: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.bytes += o.bytes;
    }
}

/// Results of measured requests: one worker's, or all of them merged.
pub(super) struct Results {
    pub(super) total: Counts,
    /// Intended start to last byte, valid responses.
    pub(super) latency_us: Histogram<u64>,
    /// Sent to last byte, valid responses.
    pub(super) service_us: Histogram<u64>,
    pub(super) errors: BTreeMap<ErrorKind, u64>,
    pub(super) first_error: Option<String>,
    /// Sent more than 1 ms after the intended start although a connection was free.
    pub(super) late: Lag,
    /// More than 1 ms overdue before a connection was free.
    pub(super) waited: Lag,
    pub(super) reconnects: u64,
    pub(super) redirects: Redirects,
}

/// Valid requests whose first answer was a redirect, and the redirect leg of those followed.
pub(super) struct Redirects {
    /// Valid requests first answered with a redirect (followed, or not with `--no-follow`).
    pub(super) redirected: u64,
    /// Redirects followed (hops) by valid requests.
    pub(super) hops: u64,
    /// Sent to the end of the last redirect read, for valid requests that followed one.
    pub(super) leg_us: Histogram<u64>,
    /// Sums over the same requests, for the redirect leg's share of their latency.
    pub(super) leg_sum_us: u64,
    pub(super) latency_sum_us: u64,
}

impl Redirects {
    fn new() -> Result<Redirects> {
        Ok(Redirects {
            redirected: 0,
            hops: 0,
            leg_us: histogram()?,
            leg_sum_us: 0,
            latency_sum_us: 0,
        })
    }

    fn add(&mut self, o: &Redirects) -> Result<()> {
        self.redirected += o.redirected;
        self.hops += o.hops;
        self.leg_us
            .add(&o.leg_us)
            .map_err(|e| anyhow!("merging histograms: {e}"))?;
        self.leg_sum_us += o.leg_sum_us;
        self.latency_sum_us += o.latency_sum_us;
        Ok(())
    }

    /// The redirect leg's share of the latency of the requests that followed one (0 to 1).
    pub(super) fn share(&self) -> f64 {
        if self.latency_sum_us == 0 {
            0.0
        } else {
            self.leg_sum_us as f64 / self.latency_sum_us as f64
        }
    }
}

/// Requests sent more than [`LATE_THRESHOLD`] after their intended start, and the longest lag.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Lag {
    pub(super) count: u64,
    pub(super) max_us: u64,
}

impl Lag {
    fn record(&mut self, lag_us: u64) {
        self.count += u64::from(lag_us > LATE_THRESHOLD.as_micros() as u64);
        self.max_us = self.max_us.max(lag_us);
    }

    fn add(&mut self, o: Lag) {
        self.count += o.count;
        self.max_us = self.max_us.max(o.max_us);
    }
}

impl Results {
    fn new() -> Result<Results> {
        Ok(Results {
            total: Counts::default(),
            latency_us: histogram()?,
            service_us: histogram()?,
            errors: BTreeMap::new(),
            first_error: None,
            late: Lag::default(),
            waited: Lag::default(),
            reconnects: 0,
            redirects: Redirects::new()?,
        })
    }

    /// Adds another worker's results; the first error kept is the earliest worker's.
    fn add(&mut self, o: &Results) -> Result<()> {
        self.total.add(&o.total);
        self.latency_us
            .add(&o.latency_us)
            .map_err(|e| anyhow!("merging histograms: {e}"))?;
        self.service_us
            .add(&o.service_us)
            .map_err(|e| anyhow!("merging histograms: {e}"))?;
        for (k, n) in &o.errors {
            *self.errors.entry(*k).or_insert(0) += n;
        }
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.late.add(o.late);
        self.waited.add(o.waited);
        self.reconnects += o.reconnects;
        self.redirects.add(&o.redirects)
    }
}

/// One worker's figures: the current interval (all requests, warmup included) and the
/// results (measured requests only).
pub(super) struct WorkerStats {
    interval: Counts,
    interval_us: Histogram<u64>,
    results: Results,
    /// With `--latency-log`: (intended start, latency µs, valid) of every measured request.
    log: Option<Vec<(Instant, u64, bool)>>,
}

impl WorkerStats {
    pub(super) fn new(log: bool) -> Result<WorkerStats> {
        Ok(WorkerStats {
            interval: Counts::default(),
            interval_us: histogram()?,
            results: Results::new()?,
            log: log.then(Vec::new),
        })
    }
}

/// What a worker learned about one request.
pub(super) struct Outcome {
    pub(super) result: Result<Answer, Failure>,
    /// When it was sent, and when its response ended (or failed).
    pub(super) sent: Instant,
    pub(super) done: Instant,
    /// A connection was free before its intended start: then the lag from that start to
    /// `sent` is the generator's own ("late"), else the wait for a connection ("waited").
    pub(super) free_early: bool,
    pub(super) reconnects: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl WorkerStats {
    pub(super) fn record(&mut self, job: &Job, asset_id: &str, o: Outcome) {
        let latency_us = micros(o.done.saturating_duration_since(job.intended));
        let service_us = micros(o.done.saturating_duration_since(o.sent));
        let lag_us = micros(o.sent.saturating_duration_since(job.intended));
        let (bytes, error) = match &o.result {
            Ok(a) => (a.bytes, None),
            Err(f) => (0, Some(f)),
        };
        self.interval.requests += 1;
        self.interval.bytes += bytes;
        match error {
            None => self.interval_us.saturating_record(latency_us),
            Some(_) => self.interval.errors += 1,
        }
        if !job.measured {
            return;
        }
        let r = &mut self.results;
        r.total.requests += 1;
        r.total.bytes += bytes;
        r.reconnects += o.reconnects;
        if let Some(log) = &mut self.log {
            log.push((job.intended, latency_us, error.is_none()));
        }
        if o.free_early {
            r.late.record(lag_us);
        } else {
            r.waited.record(lag_us);
        }
        match error {
            None => {
                r.latency_us.saturating_record(latency_us);
                r.service_us.saturating_record(service_us);
                if let Ok(a) = &o.result {
                    let rd = &mut r.redirects;
                    rd.redirected += u64::from(a.redirected);
                    rd.hops += u64::from(a.hops);
                    if let Some(t) = a.redirect_done {
                        let leg_us = micros(t.saturating_duration_since(o.sent));
                        rd.leg_us.saturating_record(leg_us);
                        rd.leg_sum_us += leg_us;
                        rd.latency_sum_us += latency_us;
                    }
                }
            }
            Some(f) => {
                r.total.errors += 1;
                *r.errors.entry(f.kind).or_insert(0) += 1;
                if r.first_error.is_none() {
                    let what = match job.range {
                        Some((a, b)) => format!("GET /assets/{asset_id} bytes={a}-{b}"),
                        None => format!("GET /assets/{asset_id}"),
                    };
                    r.first_error = Some(format!("{what}: {}", f.detail));
                }
            }
        }
    }
}

/// Writes the `--latency-log` CSV: intended starts as Unix microseconds, mapped through one
/// reading of both clocks.
pub(super) fn write_latency_log(f: File, stats: &[Arc<Mutex<WorkerStats>>]) -> std::io::Result<()> {
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

/// Takes every worker's interval figures (resetting them): the counts, and the latencies into
/// `window_us`.
pub(super) fn take_interval(
    stats: &[Arc<Mutex<WorkerStats>>],
    window_us: &mut Histogram<u64>,
) -> Counts {
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
    w
}

/// Merges the workers' results.
pub(super) fn merge(stats: &[Arc<Mutex<WorkerStats>>]) -> Result<Results> {
    let mut all = Results::new()?;
    for s in stats {
        all.add(&lock(s).results)?;
    }
    Ok(all)
}

//! What `reel load` tells: a progress line per interval on stderr, the summary on stdout and,
//! with `--json`, the summary as JSON.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::schedule::{Arrival, OfferedCounter};
use super::stats::{histogram, merge, take_interval, Results, WorkerStats};
use super::worker::Shared;
use super::{LoadArgs, Stop, SLEEP_SLICE};
use crate::units::human_bytes;

/// The results: what is printed at the end and written with `--json`.
#[derive(Serialize, Debug)]
pub(super) struct Summary {
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
    /// Redirects are followed (false with `--no-follow`: a redirect is the valid answer).
    follow_redirects: bool,
    /// Valid requests whose first answer was a redirect.
    redirected: u64,
    /// Redirects followed by valid requests (hops).
    redirect_hops: u64,
    /// The redirect leg of valid requests that followed one: sent to the end of the last
    /// redirect read.
    redirect_p50_us: u64,
    redirect_p99_us: u64,
    redirect_max_us: u64,
    /// The redirect leg's share of those requests' latency (0 to 1).
    redirect_share: f64,
    /// CPU time of this process from the first arrival to the last response (setup and
    /// asset discovery excluded).
    cpu_user_s: f64,
    cpu_system_s: f64,
}

/// Prints a progress line every `interval` until every worker is done.
pub(super) fn watch(
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
    let w = take_interval(stats, window_us);
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

pub(super) fn summarize(
    args: &LoadArgs,
    shared: &Shared,
    stats: &[Arc<Mutex<WorkerStats>>],
    offered: u64,
    duration_s: f64,
    interrupted: bool,
    cpu: (Duration, Duration),
) -> Result<Summary> {
    let Results {
        total,
        latency_us,
        service_us,
        errors,
        first_error,
        late,
        waited,
        reconnects,
        redirects,
    } = merge(stats)?;
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
        range_bytes: args.effective_range_bytes(),
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
        late: late.count,
        late_max_us: late.max_us,
        waited: waited.count,
        waited_max_us: waited.max_us,
        reconnects,
        follow_redirects: shared.follow,
        redirected: redirects.redirected,
        redirect_hops: redirects.hops,
        redirect_p50_us: q(&redirects.leg_us, 0.5),
        redirect_p99_us: q(&redirects.leg_us, 0.99),
        redirect_max_us: redirects.leg_us.max(),
        redirect_share: redirects.share(),
        cpu_user_s: cpu.0.as_secs_f64(),
        cpu_system_s: cpu.1.as_secs_f64(),
    })
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1e3)
}

pub(super) fn print_summary(s: &Summary) {
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
    if !s.follow_redirects {
        println!(
            "  redirects    {} answered with a redirect, counted valid (--no-follow)",
            s.redirected
        );
    } else if s.redirect_hops > 0 {
        println!(
            "  redirect     p50 {}  p99 {}  max {}, {:.0}% of latency  ({} of {} valid requests \
             redirected, {} hops; sent to the last redirect read)",
            ms(s.redirect_p50_us),
            ms(s.redirect_p99_us),
            ms(s.redirect_max_us),
            s.redirect_share * 100.0,
            s.redirected,
            s.requests - s.errors,
            s.redirect_hops
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

/// Writes the summary as pretty JSON (and a newline) to the `--json` file.
pub(super) fn write_json(mut f: File, path: &Path, s: &Summary) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(s).context("encoding the summary")?;
    text.push(b'\n');
    f.write_all(&text)
        .with_context(|| format!("cannot write the --json file {}", path.display()))
}

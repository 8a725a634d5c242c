//! The migration benchmark's reports.
//!
//! Interleaved: each request is classed by its intended start (see [`stats::windows`]);
//! latency percentiles are over all requests of a class, from 1%-wide log buckets. The spread
//! comes from resampling whole cycles (a cycle = one idle window and the migrating window after
//! it) with replacement; the A/A line compares the idle windows of even cycles with those of odd
//! cycles, i.e. how far apart two samples of the same condition land on this host.
//!
//! Alternating: medians over the repeats of each condition and their ratios, per-repeat ratios,
//! and repeats with and without a commit of copies apart.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use crate::cmd::bench::migration::node::Sample;
use crate::cmd::bench::stats::{
    self, median, p99_ratio, phase_of, resampled_interval, window_of, Class, LogHistogram, Phase,
};

/// Target of the throughput ratio (with migration over without): at least this.
pub const TPUT_TARGET: f64 = 0.95;
/// Target of the p99 ratio: at most this.
pub const P99_TARGET: f64 = 1.10;

const MIB: f64 = 1048576.0;

/// One measured request of `reel load --latency-log`: intended start (Unix seconds), latency
/// in microseconds, valid response.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Request {
    pub t: f64,
    pub latency_us: u64,
    pub ok: bool,
}

/// Reads `reel load --latency-log` (`intended_unix_us,latency_us,ok`), sorted by time.
pub fn parse_latency_log(text: &str) -> Result<Vec<Request>> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    if header != "intended_unix_us,latency_us,ok" {
        bail!("unexpected latency log header {header:?}");
    }
    let mut rows = Vec::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let f: Vec<&str> = l.split(',').collect();
        let (Some(t), Some(lat), Some(ok)) = (f.first(), f.get(1), f.get(2)) else {
            bail!("bad latency log line {l:?}");
        };
        rows.push(Request {
            t: t.parse::<u64>()? as f64 / 1e6,
            latency_us: lat.parse()?,
            ok: *ok == "1",
        });
    }
    if rows.is_empty() {
        bail!("the latency log has no requests");
    }
    rows.sort_by(|a, b| a.t.total_cmp(&b.t));
    Ok(rows)
}

/// When the driver changed migration during an interleaved run (Unix seconds, in-process).
#[derive(Clone, Debug, Default)]
pub struct Toggles {
    pub start: f64,
    pub resumes: Vec<f64>,
    pub pauses: Vec<f64>,
    pub end: f64,
}

/// Per class and cycle: latency histogram of valid responses, requests, valid responses.
#[derive(Default)]
struct Cell {
    hist: LogHistogram,
    n: u64,
    ok: u64,
}

/// Pooled figures of one class.
struct Pooled {
    secs: f64,
    n: u64,
    ok: u64,
    rps: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
}

fn ms(v: f64) -> String {
    format!("{v:.2} ms")
}

/// A ratio with two decimals; "nan" when there is none (as the Python report printed it).
fn r2(v: f64) -> String {
    if v.is_nan() {
        "nan".to_string()
    } else {
        format!("{v:.2}")
    }
}

/// The head of a comparison table whose baseline (a) is `a`.
fn table_head(a: &str) -> String {
    format!(
        "| metric | (a) {a} | (b) migrating at the budget | (b)/(a) | target |\n\
         |---|---:|---:|---:|---|\n"
    )
}

/// A latency row of a report table: both values in ms and their ratio, no target.
fn latency_row(name: &str, a: f64, b: f64) -> String {
    format!(
        "| {name} latency | {} | {} | {:.2} | — |\n",
        ms(a),
        ms(b),
        b / a
    )
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "✓"
    } else {
        "✗"
    }
}

/// The interleaved report (markdown). `alone` is the copy rate with no foreground load, MiB/s.
pub fn interleaved(
    rows: &[Request],
    tg: &Toggles,
    poll: &[Sample],
    guard: f64,
    budget: u64,
    alone: f64,
) -> Result<String> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        bail!("the latency log has no requests");
    };
    if tg.resumes.is_empty() || tg.resumes.len() != tg.pauses.len() {
        bail!("the run needs as many pauses as resumes, at least one");
    }
    // The load's own schedule bounds the run (reel load starts sending a moment after it was
    // launched, and its last arrivals come before it exits).
    let start = tg.start.max(first.t);
    let end = tg.end.min(last.t);
    let (resumes, pauses) = (&tg.resumes[..], &tg.pauses[..]);
    let windows = stats::windows(start, end, resumes, pauses, guard);
    let n_cycles = resumes.len() + 1;

    let mut cells: BTreeMap<(Class, usize), Cell> = BTreeMap::new();
    for r in rows {
        let Some(w) = window_of(&windows, r.t) else {
            continue;
        };
        let c = cells.entry((w.class, w.cycle)).or_default();
        c.n += 1;
        if r.ok {
            c.ok += 1;
            c.hist.record(r.latency_us);
        }
    }
    let dur: BTreeMap<(Class, usize), f64> = windows
        .iter()
        .map(|w| ((w.class, w.cycle), (w.t1 - w.t0).max(0.0)))
        .collect();
    let empty = LogHistogram::default();
    let hist = |class: Class, k: usize| cells.get(&(class, k)).map_or(&empty, |c| &c.hist);
    let merged = |class: Class, ks: &mut dyn Iterator<Item = usize>| {
        LogHistogram::merged(ks.map(|k| hist(class, k)))
    };

    let pooled = |class: Class, cycles: std::ops::Range<usize>| {
        let h = merged(class, &mut cycles.clone());
        let secs: f64 = cycles
            .clone()
            .map(|k| dur.get(&(class, k)).copied().unwrap_or(0.0))
            .sum();
        let n: u64 = cycles
            .clone()
            .filter_map(|k| cells.get(&(class, k)))
            .map(|c| c.n)
            .sum();
        let ok: u64 = cycles
            .filter_map(|k| cells.get(&(class, k)))
            .map(|c| c.ok)
            .sum();
        Pooled {
            secs,
            n,
            ok,
            rps: if secs > 0.0 {
                ok as f64 / secs
            } else {
                f64::NAN
            },
            p50: h.quantile(0.5) / 1000.0,
            p90: h.quantile(0.9) / 1000.0,
            p99: h.quantile(0.99) / 1000.0,
            p999: h.quantile(0.999) / 1000.0,
        }
    };
    let mig_cycles: Vec<usize> = (0..resumes.len()).collect();
    let a = pooled(Class::Idle, 0..n_cycles);
    let b = pooled(Class::Migrating, 0..resumes.len());
    let tput = b.rps / a.rps;
    let p99 = b.p99 / a.p99;

    // Spread: resample cycles with replacement (both classes of a cycle together).
    let (lo, hi) = resampled_interval(&mig_cycles, 400, 1, |pick| {
        let hi = merged(Class::Idle, &mut pick.iter().copied());
        let hm = merged(Class::Migrating, &mut pick.iter().copied());
        p99_ratio(&hm, &hi)
    });

    // A/A: idle windows of even cycles against those of odd cycles.
    let he = merged(Class::Idle, &mut (0..n_cycles).filter(|k| k % 2 == 0));
    let ho = merged(Class::Idle, &mut (0..n_cycles).filter(|k| k % 2 == 1));
    let aa = p99_ratio(&he, &ho);

    let per_cycle: Vec<f64> = mig_cycles
        .iter()
        .map(|&k| p99_ratio(hist(Class::Migrating, k), hist(Class::Idle, k)))
        .filter(|r| !r.is_nan())
        .collect();

    // Copies: bytes copied per class, from the poller (each increment at its samples' midpoint).
    let mut copied: BTreeMap<Class, f64> = BTreeMap::new();
    let mut copied_strict = 0.0; // inside [resume, pause) only
    for s in poll.windows(2) {
        let (s0, s1) = (s[0], s[1]);
        if s1.bytes <= s0.bytes {
            continue;
        }
        let d = (s1.bytes - s0.bytes) as f64;
        let mid = (s0.t + s1.t) / 2.0;
        if let Some(w) = window_of(&windows, mid) {
            *copied.entry(w.class).or_default() += d;
        }
        if resumes
            .iter()
            .zip(pauses)
            .any(|(&r, &p)| r <= mid && mid < p)
        {
            copied_strict += d;
        }
    }
    let on_secs: f64 = resumes.iter().zip(pauses).map(|(r, p)| p - r).sum();
    let copy_rate = if on_secs > 0.0 {
        copied_strict / MIB / on_secs
    } else {
        0.0
    };

    // Commits of copies (a device flush pair, which stalls reads here) per migrating window.
    let hi_all = merged(Class::Idle, &mut (0..n_cycles));
    let commit_split = (!poll.is_empty()).then(|| {
        let commits_at = |t: f64| {
            poll.iter()
                .take_while(|s| s.t <= t)
                .last()
                .unwrap_or(&poll[0])
                .commits
        };
        let with_c: Vec<usize> = mig_cycles
            .iter()
            .copied()
            .filter(|&k| commits_at(pauses[k] + guard) > commits_at(resumes[k]))
            .collect();
        let without_c: Vec<usize> = mig_cycles
            .iter()
            .copied()
            .filter(|k| !with_c.contains(k))
            .collect();
        let ratio =
            |ks: &[usize]| p99_ratio(&merged(Class::Migrating, &mut ks.iter().copied()), &hi_all);
        let (rw, rwo) = (ratio(&with_c), ratio(&without_c));
        (with_c, rw, without_c, rwo)
    });

    // Does the cost grow the longer copies run? The first and second half of the copying and
    // the guard after the pause, each against all idle windows.
    let mut phase: BTreeMap<&str, LogHistogram> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.ok) {
        let name = match phase_of(resumes, pauses, guard, r.t) {
            Some(Phase::First) => "first",
            Some(Phase::Second) => "second",
            Some(Phase::After) => "after",
            None => continue,
        };
        phase.entry(name).or_default().record(r.latency_us);
    }
    let phase_p99 = |n: &str| phase.get(n).map_or(f64::NAN, |h| p99_ratio(h, &hi_all));

    let bud = budget as f64 / MIB;
    let mut o = table_head("migration paused");
    o += &format!(
        "| time measured | {:.0} s | {:.0} s | — | — |\n",
        a.secs, b.secs
    );
    o += &format!(
        "| requests (valid) | {} ({}) | {} ({}) | — | — |\n",
        a.n, a.ok, b.n, b.ok
    );
    o += &format!(
        "| valid responses/s | {:.1} | {:.1} | {tput:.3} {} | ≥ 0.95 |\n",
        a.rps,
        b.rps,
        mark(tput >= TPUT_TARGET)
    );
    o += &latency_row("p50", a.p50, b.p50);
    o += &latency_row("p90", a.p90, b.p90);
    o += &format!(
        "| p99 latency | {} | {} | **{p99:.2}** {} | ≤ 1.10 |\n",
        ms(a.p99),
        ms(b.p99),
        mark(p99 <= P99_TARGET)
    );
    o += &latency_row("p99.9", a.p999, b.p999);
    o += &format!(
        "| copy rate while resumed | — | {copy_rate:.1} MiB/s | {:.2} of the budget | budget {bud} MiB/s |\n",
        copy_rate / bud
    );
    o += "\n";
    let pc: Vec<String> = per_cycle.iter().map(|x| format!("{x:.2}")).collect();
    let pc_med = if per_cycle.is_empty() {
        String::new()
    } else {
        format!(" (median {:.2})", median(per_cycle.clone()))
    };
    o += &format!(
        "p99 ratio, 90% interval from resampling the {} cycles: {}–{}; per cycle (migrating window over the idle window before it): {}{pc_med}.\n",
        mig_cycles.len(),
        r2(lo),
        r2(hi),
        pc.join(" ")
    );
    o += &format!(
        "A/A, the idle windows of even cycles over those of odd cycles: p99 ratio {} (how far two samples of the same condition land on this host).\n",
        r2(aa)
    );
    if let Some((with_c, rw, without_c, rwo)) = commit_split {
        let cyc: Vec<String> = with_c.iter().map(|k| (k + 1).to_string()).collect();
        let cyc = if cyc.is_empty() {
            "none".to_string()
        } else {
            cyc.join(" ")
        };
        o += &format!(
            "Migrating windows with a commit of copies (cycles {cyc}): p99 ratio {}; without one ({} windows): {} (each against all idle windows; commits fall every --migration-commit-interval under load).\n",
            r2(rw),
            without_c.len(),
            r2(rwo)
        );
    }
    o += &format!(
        "p99 ratio by phase of the migrating windows (each against all idle windows): first half of the copying {}, second half {}, the {guard} s after the pause {} (a cost that grows with how long copies run shows as second > first).\n",
        r2(phase_p99("first")),
        r2(phase_p99("second")),
        r2(phase_p99("after"))
    );
    let c_idle = copied.get(&Class::Idle).copied().unwrap_or(0.0);
    let c_mig = copied.get(&Class::Migrating).copied().unwrap_or(0.0);
    o += &format!(
        "Bytes copied while classed idle: {:.0} MiB (a copy holds at its next chunk when paused; want about 0); within the {guard} s after each pause, counted as migrating: {:.0} MiB.\n",
        c_idle / MIB,
        (c_mig - copied_strict) / MIB
    );
    o += &format!(
        "Copy rate with no foreground load (one run before the measurement): {alone:.0} MiB/s ({:.2} of the budget).\n",
        alone / bud
    );
    if a.n != a.ok || b.n != b.ok {
        o += &format!(
            "WARNING: failed requests: idle {}, migrating {} (see reel load's output).\n",
            a.n - a.ok,
            b.n - b.ok
        );
    }
    Ok(o)
}

/// One run of the alternating design: the load's figures and the node's and host's counters.
#[derive(Clone, Debug, Default)]
pub struct RunRow {
    pub migrating: bool,
    pub rep: u32,
    pub bytes: f64,
    pub duration_us: f64,
    pub requests: f64,
    pub errors: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub mig_bytes: i64,
    pub promotions: i64,
    pub promotions_left: i64,
    pub copy_span_s: f64,
    pub copy_span_bytes: u64,
    pub load1: f64,
    pub host_busy: f64,
    pub node_cpu: f64,
    pub counters_moved: bool,
    pub disk_read: u64,
    pub disk_written: u64,
    pub disk_busy_ms: u64,
    pub commits: i64,
}

/// A run's figures in report units.
#[derive(Clone, Copy, Debug)]
struct Fig {
    rps: f64,
    mibps: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    copy: f64,
    span: Option<f64>,
    load: f64,
    host: f64,
    node: f64,
    dr: f64,
    dw: f64,
    dbusy: f64,
}

impl RunRow {
    /// Sets the load's figures: bytes and duration as given, the request count, errors and
    /// latency percentiles (µs) from `f` by the names both load generators use.
    pub fn set_load(&mut self, bytes: f64, duration_us: f64, f: impl Fn(&str) -> f64) {
        self.bytes = bytes;
        self.duration_us = duration_us;
        self.requests = f("requests");
        self.errors = f("errors");
        self.p50_us = f("p50_us");
        self.p90_us = f("p90_us");
        self.p99_us = f("p99_us");
        self.p999_us = f("p999_us");
    }

    fn fig(&self) -> Fig {
        let secs = self.duration_us / 1e6;
        Fig {
            rps: self.requests / secs,
            mibps: self.bytes / secs / MIB,
            p50: self.p50_us / 1000.0,
            p90: self.p90_us / 1000.0,
            p99: self.p99_us / 1000.0,
            p999: self.p999_us / 1000.0,
            copy: self.mig_bytes as f64 / MIB / secs,
            span: (self.copy_span_s > 0.0)
                .then(|| self.copy_span_bytes as f64 / MIB / self.copy_span_s),
            load: self.load1,
            host: self.host_busy * 100.0,
            node: self.node_cpu * 100.0,
            dr: self.disk_read as f64 / MIB / secs,
            dw: self.disk_written as f64 / MIB / secs,
            dbusy: self.disk_busy_ms as f64 / 10.0 / secs,
        }
    }

    /// The per-run line on stderr.
    pub fn line(&self, budget: u64) -> String {
        let f = self.fig();
        let secs = self.duration_us / 1e6;
        let cond = if self.migrating { "migrating" } else { "idle" };
        let mut line = format!(
            "  {cond:9} #{}  {:8.1} req/s {:7.1} MiB/s  p50 {:6.2} ms  p99 {:6.2} ms  p99.9 {:6.2} ms  load {:.2}  host CPU {:3.0}%  node CPU {:3.0}%  disk r/w {:.0}/{:.0} MiB/s busy {:.0}%",
            self.rep, f.rps, f.mibps, f.p50, f.p99, f.p999, f.load, f.host, f.node, f.dr, f.dw, f.dbusy
        );
        if self.migrating {
            line += &format!(
                "  copied {:.0} MiB = {:.1} MiB/s (budget {}), {} promotions left, {} commits",
                self.mig_bytes as f64 / MIB,
                self.mig_bytes as f64 / MIB / secs,
                budget as f64 / MIB,
                self.promotions_left,
                self.commits
            );
        }
        if self.errors > 0.0 {
            line += &format!("  ({} ERRORS)", self.errors);
        }
        line
    }
}

/// The alternating report (markdown). `alone` is (copy rate over the run, completion to
/// completion) with no foreground load, MiB/s; `disk` names the block device.
pub fn alternating(rows: &[RunRow], budget: u64, alone: (f64, f64), disk: &str) -> Result<String> {
    let idle: Vec<&RunRow> = rows.iter().filter(|r| !r.migrating).collect();
    let mig: Vec<&RunRow> = rows.iter().filter(|r| r.migrating).collect();
    if idle.is_empty() || mig.is_empty() {
        bail!(
            "the results lack runs of a condition: idle {}, migrating {}",
            idle.len(),
            mig.len()
        );
    }
    let fi: Vec<Fig> = idle.iter().map(|r| r.fig()).collect();
    let fm: Vec<Fig> = mig.iter().map(|r| r.fig()).collect();
    let med = |v: &[Fig], f: fn(&Fig) -> f64| median(v.iter().map(f).collect());
    let (a, b) = (&fi, &fm);
    let tput = med(b, |f| f.rps) / med(a, |f| f.rps);
    let p99 = med(b, |f| f.p99) / med(a, |f| f.p99);
    let pairs: Vec<(&Fig, &Fig)> = fi.iter().zip(&fm).collect();
    let pairs_t: Vec<String> = pairs
        .iter()
        .map(|(x, y)| format!("{:.3}", y.rps / x.rps))
        .collect();
    let pairs_p: Vec<String> = pairs
        .iter()
        .map(|(x, y)| format!("{:.2}", y.p99 / x.p99))
        .collect();
    let bud = budget as f64 / MIB;

    let mut o = table_head("no migration");
    o += &format!(
        "| requests/s | {:.0} | {:.0} | {tput:.3} {} | ≥ 0.95 |\n",
        med(a, |f| f.rps),
        med(b, |f| f.rps),
        mark(tput >= TPUT_TARGET)
    );
    o += &format!(
        "| MiB/s served | {:.0} | {:.0} | {:.3} | — |\n",
        med(a, |f| f.mibps),
        med(b, |f| f.mibps),
        med(b, |f| f.mibps) / med(a, |f| f.mibps)
    );
    type Pick = fn(&Fig) -> f64;
    let lat: [(&str, Pick); 4] = [
        ("p50", |f| f.p50),
        ("p90", |f| f.p90),
        ("p99", |f| f.p99),
        ("p99.9", |f| f.p999),
    ];
    for (name, pick) in lat {
        let (x, y) = (med(a, pick), med(b, pick));
        if name == "p99" {
            o += &format!(
                "| p99 latency | {} | {} | {p99:.2} {} | ≤ 1.10 |\n",
                ms(x),
                ms(y),
                mark(p99 <= P99_TARGET)
            );
        } else {
            o += &latency_row(name, x, y);
        }
    }
    let spans: Vec<f64> = fm.iter().filter_map(|f| f.span).collect();
    let span = if spans.is_empty() {
        String::new()
    } else {
        format!("; completion to completion {:.0} MiB/s", median(spans))
    };
    o += &format!(
        "| copy rate (reel_migration_bytes_total) | {:.0} MiB/s | {:.0} MiB/s{span} | {:.2} of the budget | budget {bud} MiB/s |\n",
        med(a, |f| f.copy), med(b, |f| f.copy), med(b, |f| f.copy) / bud
    );
    // A row of context, no target: the medians of (a) and (b) with `decimals` and `unit`.
    let context_row = |label: &str, decimals: usize, unit: &str, pick: Pick| {
        format!(
            "| {label} | {:.decimals$}{unit} | {:.decimals$}{unit} | — | — |\n",
            med(a, pick),
            med(b, pick)
        )
    };
    o += &context_row("load average (1 min) at the start", 2, "", |f| f.load);
    o += &context_row("host CPU busy (all cores)", 0, "%", |f| f.host);
    o += &context_row("reel node CPU (100% = one core)", 0, "%", |f| f.node);
    o += &format!(
        "| disk {disk} read / written (all processes) | {:.0} / {:.0} MiB/s | {:.0} / {:.0} MiB/s | — | — |\n",
        med(a, |f| f.dr), med(a, |f| f.dw), med(b, |f| f.dr), med(b, |f| f.dw)
    );
    o += &context_row(&format!("disk {disk} busy (io_ticks)"), 0, "%", |f| f.dbusy);
    o += "\n";
    let commits: Vec<String> = mig.iter().map(|r| r.commits.to_string()).collect();
    o += &format!(
        "Per repeat (b)/(a), in run order: requests/s {}; p99 {}; commits of copies during (b): {}.\n",
        pairs_t.join(" "),
        pairs_p.join(" "),
        commits.join(" ")
    );
    let split = |with: bool| -> Vec<(Fig, Fig)> {
        idle.iter()
            .zip(&mig)
            .filter(|(_, y)| (y.commits > 0) == with)
            .map(|(x, y)| (x.fig(), y.fig()))
            .collect()
    };
    for (label, with) in [
        ("with a commit (a device flush pair) during (b)", true),
        ("without a commit during (b)", false),
    ] {
        let sel = split(with);
        if !sel.is_empty() {
            o += &format!(
                "Repeats {label}: {}; median p99 ratio {:.2}, p50 ratio {:.2}.\n",
                sel.len(),
                median(sel.iter().map(|(x, y)| y.p99 / x.p99).collect()),
                median(sel.iter().map(|(x, y)| y.p50 / x.p50).collect())
            );
        }
    }
    o += &format!(
        "Copy rate with no foreground load (one run of the same length before the measurement): {:.0} MiB/s over the run, {:.0} MiB/s completion to completion ({:.2} of the budget).\n",
        alone.0,
        alone.1,
        alone.0 / bud
    );
    let mut notes = Vec::new();
    if rows.iter().any(|r| r.errors > 0.0) {
        notes.push("some runs had failed requests (non-2xx, timeouts, socket errors): see the load outputs (--keep)");
    }
    if idle.iter().any(|r| r.counters_moved) {
        notes.push("migration counters moved during an idle run: (a) was not migration-free");
    }
    if mig.iter().any(|r| r.promotions_left <= 0) {
        notes.push("in some migrating run the cold set was fully promoted before the end: copying did not last the whole run");
    }
    for n in notes {
        o += &format!("WARNING: {n}.\n");
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails, showing the report, unless it contains every one of `parts`.
    fn contains_all(report: &str, parts: &[&str]) {
        for part in parts {
            assert!(report.contains(part), "no {part:?} in:\n{report}");
        }
    }

    /// Requests every 10 ms from 0 to 50 s: latency 1000 µs while idle, 2000 µs while
    /// migrating (resumes at 10 and 30, pauses at 20 and 40), 3000 µs in the guard after a
    /// pause.
    fn run() -> (Vec<Request>, Toggles) {
        let tg = Toggles {
            start: 0.0,
            resumes: vec![10.0, 30.0],
            pauses: vec![20.0, 40.0],
            end: 50.0,
        };
        let rows = (0..5000)
            .map(|i| {
                let t = f64::from(i) / 100.0;
                let latency_us = match phase_of(&tg.resumes, &tg.pauses, 2.0, t) {
                    Some(Phase::After) => 3000,
                    Some(_) => 2000,
                    None => 1000,
                };
                Request {
                    t,
                    latency_us,
                    ok: true,
                }
            })
            .collect();
        (rows, tg)
    }

    #[test]
    fn missing_ratios_print_as_nan() {
        assert_eq!(r2(f64::NAN), "nan");
        assert_eq!(r2(1.234), "1.23");
    }

    #[test]
    fn latency_log_parses_and_sorts() {
        let rows = parse_latency_log("intended_unix_us,latency_us,ok\n2000000,5,1\n1000000,7,0\n")
            .expect("a log");
        assert_eq!(
            rows[0],
            Request {
                t: 1.0,
                latency_us: 7,
                ok: false
            }
        );
        assert_eq!(rows[1].latency_us, 5);
        assert!(parse_latency_log("a,b\n1,2\n").is_err());
        assert!(parse_latency_log("intended_unix_us,latency_us,ok\n").is_err());
    }

    #[test]
    fn interleaved_report_classes_windows() {
        let (rows, tg) = run();
        // Copies: 100 MiB during the first migrating window, none while idle.
        let poll = [
            Sample {
                t: 11.0,
                bytes: 0,
                promotions: 0,
                commits: 0,
            },
            Sample {
                t: 19.0,
                bytes: 100 << 20,
                promotions: 1,
                commits: 1,
            },
            Sample {
                t: 25.0,
                bytes: 100 << 20,
                promotions: 1,
                commits: 1,
            },
        ];
        let r = interleaved(&rows, &tg, &poll, 2.0, 128 << 20, 120.0).expect("report");
        // Idle: [2,10) + [22,30) + [42,49.99) (the last request bounds the run), 24 s;
        // migrating: 2 x 12 s.
        contains_all(
            &r,
            &[
                "| time measured | 24 s | 24 s | — | — |",
                "| requests (valid) | 2399 (2399) | 2400 (2400) |",
                "| valid responses/s | 100.0 | 100.0 | 1.000 ✓ | ≥ 0.95 |",
            ],
        );
        // Idle p99 1 ms; migrating p99 3 ms (the guard's 400 of 2400 requests). Ratios are of
        // bucket midpoints: 3000 µs and 1000 µs lie 110 buckets apart, 1.01^110 = 2.99; 2000 µs
        // and 1000 µs 69 apart, 1.01^69 = 1.99.
        contains_all(
            &r,
            &[
                "| p99 latency | 1.00 ms | 3.00 ms | **2.99** ✗ | ≤ 1.10 |",
                "| p50 latency | 1.00 ms | 1.99 ms | 1.99 | — |",
                "interval from resampling the 2 cycles: 2.99–2.99",
                "per cycle (migrating window over the idle window before it): 2.99 2.99 (median 2.99)",
                "A/A, the idle windows of even cycles over those of odd cycles: p99 ratio 1.00",
                "first half of the copying 1.99, second half 1.99, the 2 s after the pause 2.99",
                "(cycles 1): p99 ratio 2.99; without one (1 windows): 2.99",
            ],
        );
        // 100 MiB over 20 s resumed.
        contains_all(
            &r,
            &[
                "| copy rate while resumed | — | 5.0 MiB/s | 0.04 of the budget | budget 128 MiB/s |",
                "Bytes copied while classed idle: 0 MiB",
            ],
        );
        assert!(!r.contains("WARNING"), "{r}");
    }

    #[test]
    fn alternating_report_gives_ratios_of_medians() {
        let row = |migrating: bool, rep: u32, rps: f64, p99_ms: f64, commits: i64| RunRow {
            migrating,
            rep,
            bytes: rps * 10.0 * MIB,
            duration_us: 10e6,
            requests: rps * 10.0,
            p50_us: 1000.0,
            p90_us: 1000.0,
            p99_us: p99_ms * 1000.0,
            p999_us: p99_ms * 1000.0,
            promotions_left: 3,
            commits,
            ..RunRow::default()
        };
        let rows = vec![
            row(false, 1, 100.0, 2.0, 0),
            row(true, 1, 96.0, 2.2, 0),
            row(true, 2, 90.0, 3.0, 1),
            row(false, 2, 100.0, 2.0, 0),
            row(false, 3, 100.0, 2.0, 0),
            row(true, 3, 98.0, 2.4, 0),
        ];
        let r = alternating(&rows, 128 << 20, (120.0, 125.0), "vda").expect("report");
        contains_all(
            &r,
            &[
                "| requests/s | 100 | 96 | 0.960 ✓ | ≥ 0.95 |",
                "| p99 latency | 2.00 ms | 2.40 ms | 1.20 ✗ | ≤ 1.10 |",
                "requests/s 0.960 0.900 0.980; p99 1.10 1.50 1.20; commits of copies during (b): 0 1 0.",
                "Repeats with a commit (a device flush pair) during (b): 1; median p99 ratio 1.50",
                "Repeats without a commit during (b): 2; median p99 ratio 1.15",
                "120 MiB/s over the run, 125 MiB/s completion to completion (0.94 of the budget)",
            ],
        );
        assert!(alternating(&rows[..1], 1, (0.0, 0.0), "vda").is_err());
    }
}

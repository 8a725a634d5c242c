//! The migration benchmark's runs against a started node: settling, the copy-alone run, one
//! run of the alternating design, and the interleaved run with its in-process toggles.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::node::{self, Metrics, Node, Poller, Sample};
use super::report::{self, RunRow, Toggles};
use super::{LoadKind, MigrationArgs, Plan, RamTier, ME, MIB, POLL};
use crate::cmd::bench::harness::{
    self, host_cpu, host_line, loadavg, note, parse_result_line, proc_ticks, run_wrk, tail,
    unix_now, Disk, FsInfo, Proc, CLK_TCK,
};
use crate::cmd::bench::stats::completion_span;
/// Everything a run needs: the node, the asset ids and the host's counters.
pub(super) struct Bench<'a> {
    pub(super) args: &'a MigrationArgs,
    pub(super) plan: Plan,
    pub(super) work: PathBuf,
    pub(super) node: Node,
    pub(super) proc: Proc,
    pub(super) hot: Vec<String>,
    pub(super) cold: Vec<String>,
    pub(super) disk: Disk,
    pub(super) rate: u64,
    pub(super) load_desc: String,
}

pub(super) fn hot_id(i: u32) -> String {
    format!("hot/{i:02}")
}

pub(super) fn cold_id(i: u64) -> String {
    format!("cold/{i:02}")
}

/// Seeds of the uploads' data: hot asset i and cold asset i.
pub(super) const HOT_SEED: u64 = 1;
pub(super) const COLD_SEED: u64 = 1 << 32;

/// Host and node counters at one moment, for a run's CPU and disk figures.
struct Counters {
    m: Metrics,
    cpu: (u64, u64),
    node_ticks: u64,
    disk: harness::DiskSample,
    t: f64,
}

impl Bench<'_> {
    fn counters(&mut self) -> Result<Counters> {
        Ok(Counters {
            m: self.node.metrics()?,
            cpu: host_cpu(),
            node_ticks: proc_ticks(self.proc.pid()).unwrap_or(0),
            disk: self.disk.sample(),
            t: unix_now(),
        })
    }

    /// Waits until the hot set is clean on both tiers, the cold set on the secondary only and
    /// nothing is in flight.
    pub(super) fn wait_settled(&mut self, what: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut last = Instant::now();
        loop {
            self.proc.alive()?;
            let (settled, summary) =
                self.node
                    .state(&self.hot, &self.cold, self.plan.hot_bytes())?;
            if settled {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                bail!(
                    "not settled after {} s ({what}): {summary}",
                    timeout.as_secs()
                );
            }
            if last.elapsed() >= Duration::from_secs(15) {
                note(ME, format!("  waiting ({what}): {summary}"));
                last = Instant::now();
            }
            harness::sleep(Duration::from_millis(500))?;
        }
    }

    /// Pins the cold set to the primary and waits for the first promotion to start.
    fn pin_cold_and_wait(&mut self) -> Result<i64> {
        let before = self.node.metrics()?.get("reel_promotions_total");
        let cold = self.cold.clone();
        self.node.pin("primary", &cold)?;
        if !self
            .node
            .wait_promoting(self.plan.hot_bytes(), Duration::from_secs(15))?
        {
            bail!(
                "no promotion started within 15 s of pinning the cold set to primary: {}",
                self.node.metrics()?
            );
        }
        Ok(before)
    }

    /// Pins the cold set back to the secondary and waits for the drops.
    fn unpin_cold(&mut self, what: &str) -> Result<()> {
        let cold = self.cold.clone();
        self.node.pin("secondary", &cold)?;
        self.wait_settled(what, Duration::from_secs(300))
    }

    fn promotions_left(&self, m1: &Metrics, before_pin: i64) -> i64 {
        self.plan.cold_count as i64 - (m1.get("reel_promotions_total") - before_pin)
    }

    /// The copy rate the scheduler reaches with no foreground load: (over the run, completion
    /// to completion), MiB/s.
    pub(super) fn copy_alone(&mut self) -> Result<(f64, f64)> {
        self.wait_settled("before the copy-alone run", Duration::from_secs(300))?;
        let before_pin = self.pin_cold_and_wait()?;
        let poller = Poller::start(self.node.addr, POLL);
        let (m0, t0) = (self.node.metrics()?, unix_now());
        harness::sleep(Duration::from_secs(self.plan.secs))?;
        let (m1, t1) = (self.node.metrics()?, unix_now());
        let samples = poller.finish(Some(&self.work.join("runs/poll-alone.txt")))?;
        let bytes = m0.delta(&m1, "reel_migration_bytes_total");
        let rate = bytes as f64 / MIB / (t1 - t0);
        let (d, b) = completion_span(&bytes_series(&samples), t0, t1);
        let span = if d > 0.0 { b as f64 / MIB / d } else { 0.0 };
        if self.promotions_left(&m1, before_pin) <= 0 {
            note(
                ME,
                format!(
                    "WARNING: all {} cold assets were promoted before the copy-alone run ended",
                    self.plan.cold_count
                ),
            );
        }
        note(ME, format!(
            "copy alone (no foreground load, {}s): {rate:.1} MiB/s over the run, {span:.1} MiB/s completion to completion (budget {} MiB/s), load {}",
            self.plan.secs, self.args.budget as f64 / MIB, loadavg(1)
        ));
        self.unpin_cold("dropping the promoted cold set after the copy-alone run")?;
        Ok((rate, span))
    }

    pub(super) fn wrk_args(&self, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "-t".into(),
            self.args.threads.to_string(),
            "-c".into(),
            self.args.conns.to_string(),
            "-d".into(),
            format!("{}s", self.plan.secs),
            "--timeout".into(),
            "10s".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push("-s".into());
        v.push(self.work.join("wrk.lua").display().to_string());
        v
    }

    pub(super) fn url(&self) -> String {
        format!("http://{}/", self.node.addr)
    }

    /// `reel load` at the rate, with this binary.
    fn load_cmd(&self, duration: u64, seed: u32, json: &Path) -> Result<Command> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("load")
            .arg("--target")
            .arg(self.node.addr.to_string())
            .arg("--assets")
            .arg(self.hot.join(","))
            .arg("--rate")
            .arg(self.rate.to_string())
            .args(["--arrival", "poisson", "--duration"])
            .arg(format!("{duration}s"))
            .arg("--connections")
            .arg(self.args.open_conns.to_string())
            .arg("--range-bytes")
            .arg((self.args.range_kb << 10).to_string())
            .arg("--seed")
            .arg(seed.to_string())
            .arg("--json")
            .arg(json);
        Ok(cmd)
    }

    /// One load run of the alternating design: the load's figures into `row`.
    fn run_load(&self, cond: &str, rep: u32, row: &mut RunRow) -> Result<()> {
        let out = self.work.join(format!("runs/{cond}-{rep}.txt"));
        if self.args.load == LoadKind::Open {
            let json = out.with_extension("json");
            let mut cmd = self.load_cmd(self.plan.secs, rep, &json)?;
            harness::run_logged("reel load", &mut cmd, &out)?;
            let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)
                .with_context(|| format!("reading reel load's JSON {}", json.display()))?;
            let f = |k: &str| j[k].as_f64().unwrap_or(0.0);
            let duration_s = f("duration_s");
            row.set_load(f("bytes_per_s") * duration_s, duration_s * 1e6, f);
            return Ok(());
        }
        let text = run_wrk(&self.wrk_args(&["--latency"]), &self.url(), &out)?;
        let kv = parse_result_line(&text)
            .with_context(|| format!("wrk printed no RESULT line: {text}"))?;
        if !text.lines().any(|l| l.trim_start().starts_with("99% ")) {
            bail!("wrk --latency printed no 99% line: {text}");
        }
        let f = |k: &str| kv.get(k).copied().unwrap_or(0.0);
        row.set_load(f("bytes"), f("duration_us"), f);
        Ok(())
    }

    /// One run of the alternating design.
    pub(super) fn run_one(&mut self, migrating: bool, rep: u32) -> Result<RunRow> {
        let cond = if migrating { "migrating" } else { "idle" };
        self.proc.alive()?;
        self.wait_settled(&format!("before {cond} #{rep}"), Duration::from_secs(300))?;
        let mut poller = None;
        let mut before_pin = 0;
        if migrating {
            before_pin = self.pin_cold_and_wait()?;
            harness::sleep(Duration::from_secs_f64(self.args.lead))?;
            poller = Some(Poller::start(self.node.addr, POLL));
        }
        let mut row = RunRow {
            migrating,
            rep,
            load1: loadavg(1).parse().unwrap_or(0.0),
            ..RunRow::default()
        };
        let c0 = self.counters()?;
        self.run_load(cond, rep, &mut row)?;
        let c1 = self.counters()?;
        row.counters_moved = node::MOVING.iter().any(|k| c0.m.get(k) != c1.m.get(k));
        if c0.m.get("reel_migration_failures_total") != c1.m.get("reel_migration_failures_total") {
            note(
                ME,
                format!(
                    "WARNING: reel_migration_failures_total moved during {cond} #{rep} (see {})",
                    self.proc.log.display()
                ),
            );
        }
        row.mig_bytes = c0.m.delta(&c1.m, "reel_migration_bytes_total");
        row.promotions = c0.m.delta(&c1.m, "reel_promotions_total");
        row.commits = c0.m.delta(&c1.m, "reel_migration_commits_total");
        if let Some(p) = poller {
            let samples = p.finish(Some(&self.work.join(format!("runs/poll-{rep}.txt"))))?;
            // Promotions finished before the run started count against the cold set too.
            row.promotions_left = self.promotions_left(&c1.m, before_pin);
            // Completion to completion within the run.
            (row.copy_span_s, row.copy_span_bytes) =
                completion_span(&bytes_series(&samples), c0.t, c1.t);
            if row.promotions_left <= 0 {
                note(ME, format!("WARNING: all {} cold assets were promoted before the run ended: the copies did not last the whole run (raise --cold-count)", self.plan.cold_count));
            }
            if !row.counters_moved {
                note(
                    ME,
                    format!("WARNING: no migration counter moved during migrating #{rep}"),
                );
            }
        } else if row.counters_moved {
            note(
                ME,
                format!(
                    "WARNING: migration counters moved during the idle run #{rep}: {} -> {}",
                    c0.m, c1.m
                ),
            );
        }
        let busy = (c1.cpu.0 - c0.cpu.0) as f64;
        let all = (c1.cpu.1 - c0.cpu.1).max(1) as f64;
        row.host_busy = busy / all;
        row.node_cpu = (c1.node_ticks - c0.node_ticks) as f64 / CLK_TCK / (c1.t - c0.t);
        row.disk_read = c1.disk.read - c0.disk.read;
        row.disk_written = c1.disk.written - c0.disk.written;
        row.disk_busy_ms = c1.disk.busy_ms - c0.disk.busy_ms;
        note(ME, row.line(self.args.budget));
        if migrating {
            self.unpin_cold(&format!("dropping the promoted cold set after #{rep}"))?;
        }
        Ok(row)
    }

    /// The interleaved design: one long open-loop run; migration paused and resumed through
    /// PUT /migration every window, so both conditions share the same minutes of a noisy host.
    /// The cold set is pinned to the primary once, paused, before the load starts (a pin is a
    /// journal write: a device flush).
    pub(super) fn run_interleaved(&mut self, alone: f64) -> Result<()> {
        let (secs, repeats) = (self.plan.secs, self.plan.repeats);
        let total = 2 * u64::from(repeats) * secs + secs;
        self.wait_settled("before the interleaved run", Duration::from_secs(300))?;
        self.node.migration("paused=true")?;
        let before_pin = self.node.metrics()?.get("reel_promotions_total");
        let cold = self.cold.clone();
        self.node.pin("primary", &cold)?;
        harness::sleep(Duration::from_secs(2))?;
        let m = self.node.metrics()?;
        if m.get("reel_promotions_total") != before_pin
            || m.get("reel_policy_primary_bytes") != self.plan.hot_bytes() as i64
        {
            bail!("a promotion started while migration was paused: {m}");
        }
        let load_start = loadavg(3);
        note(ME, format!(
            "measuring: {repeats} cycles of ({secs}s idle, {secs}s migrating) in one run of {total}s (the first window idle, then alternating); {}; load average now {load_start}",
            self.load_desc
        ));
        let runs = self.work.join("runs");
        let log = runs.join("latency.csv");
        let out = runs.join("interleaved.txt");
        let poller = Poller::start(self.node.addr, POLL);
        let c0 = self.counters()?;
        let mut cmd = self.load_cmd(total, 1, &out.with_extension("json"))?;
        cmd.args(["--interval", "10s", "--latency-log"]).arg(&log);
        let load = Proc::spawn("reel load", &mut cmd, &out)?;
        // From here to the end of the load nothing starts a process: the toggles are PUTs on
        // this process's own connection, timed in-process.
        let mut tg = Toggles {
            start: unix_now(),
            ..Toggles::default()
        };
        let window = Duration::from_secs(secs);
        harness::sleep(window)?;
        for _ in 0..repeats {
            tg.resumes.push(unix_now());
            self.node.migration("paused=false")?;
            harness::sleep(window)?;
            tg.pauses.push(unix_now());
            self.node.migration("paused=true")?;
            harness::sleep(window)?;
        }
        let status = load.wait()?;
        if !status.success() {
            bail!("reel load failed ({status}): {}", tail(&out, 20));
        }
        tg.end = unix_now();
        let c1 = self.counters()?;
        let samples = poller.finish(Some(&runs.join("poll.txt")))?;
        for (k, &t) in tg.pauses.iter().enumerate() {
            if let Some(s) = samples.iter().take_while(|s| s.t <= t).last() {
                note(ME, format!(
                    "  cycle {}: at its pause, copied {} MiB, promotions {}, commits {} (totals since the node started)",
                    k + 1, s.bytes >> 20, s.promotions, s.commits
                ));
            }
        }
        let left = self.promotions_left(&c1.m, before_pin);
        if left <= 0 {
            note(ME, format!("WARNING: all {} cold assets were promoted before the run ended: the last migrating windows had nothing to copy (raise --cold-count)", self.plan.cold_count));
        }
        let (m0, m1) = (&c0.m, &c1.m);
        let commits = m0.delta(m1, "reel_migration_commits_total");
        let run_secs = tg.end - c0.t;
        let busy = (c1.cpu.0 - c0.cpu.0) as f64 / (c1.cpu.1 - c0.cpu.1).max(1) as f64;
        let node_cpu = (c1.node_ticks - c0.node_ticks) as f64 / CLK_TCK / run_secs;
        let dr = (c1.disk.read - c0.disk.read) as f64 / MIB / run_secs;
        let dw = (c1.disk.written - c0.disk.written) as f64 / MIB / run_secs;
        let commit_s = self
            .node
            .metric_text("reel_migration_commit_seconds_total")?;

        println!();
        println!("reel node foreground impact of background migration, interleaved: one open-loop run of {total}s,");
        println!("migration paused and resumed (PUT /migration) every {secs}s, {repeats} migrating windows; requests classed by intended start");
        self.print_setup_lines(None);
        println!(
            "(whole run: host CPU busy {:.0}%, reel node CPU {:.0}% of one core, disk {} read/written {dr:.0}/{dw:.0} MiB/s; load average before: {load_start}, after: {})",
            busy * 100.0, node_cpu * 100.0, self.disk.name(), loadavg(3)
        );
        println!("(commits of copies during the run: {commits}, {commit_s} s spent in all commits since the node started; promotions left at the end: {left})");
        if m1.has("reel_migration_slow_ios_total") {
            println!(
                "(copy backoff during the run: {} chunk I/Os slower than --copy-slow-io, about {} s paused after them)",
                m0.delta(m1, "reel_migration_slow_ios_total"),
                m0.delta(m1, "reel_migration_backoff_seconds_total")
            );
        }
        if m1.has("reel_migration_guard_probes_total") {
            println!(
                "(latency guard during the run: {} probes, about {} s without copies for them, {} decisions cut the rate; at the end: rate {} MiB/s, the last probe's p99 device read {} us)",
                m0.delta(m1, "reel_migration_guard_probes_total"),
                m0.delta(m1, "reel_migration_guard_probe_seconds_total"),
                m0.delta(m1, "reel_migration_guard_cuts_total"),
                m1.get("reel_migration_guard_bytes_per_second") >> 20,
                m1.get("reel_migration_guard_baseline_seconds_us")
            );
        }
        println!();
        let rows = report::parse_latency_log(&std::fs::read_to_string(&log)?)?;
        let text = report::interleaved(
            &rows,
            &tg,
            &samples,
            self.plan.guard as f64,
            self.args.budget,
            alone,
        )?;
        print!("{text}");
        Ok(())
    }

    /// The lines of the report's header that describe the load, the assets, the host and the
    /// node; `lead` adds when the load starts in (b) (alternating).
    pub(super) fn print_setup_lines(&self, lead: Option<f64>) {
        let p = &self.plan;
        let lead = lead.map_or(String::new(), |l| {
            format!(", the load starting {l} s after the first promotion started")
        });
        println!(
            "(load: {}; random {} KiB ranges of {} hot assets of {} MiB on the primary;",
            self.load_desc, self.args.range_kb, p.hot_count, p.hot_mb
        );
        println!(
            " migration: {} cold assets of {} MiB promoted secondary -> primary, --copy-budget {} MiB/s{lead}; --shards {})",
            p.cold_count, p.cold_mb, self.args.budget as f64 / MIB, self.args.shards
        );
        println!(
            "({}; {}; the load generator runs on the same host)",
            host_line(),
            self.volumes_where()
        );
        println!("(node: {})", self.node_cmd_text());
    }

    fn volumes_where(&self) -> String {
        let dir = self.args.dir.display();
        let (fstype, dev) =
            FsInfo::of(&self.args.dir).map_or(("?".into(), "?".into()), |f| (f.fstype, f.source));
        let disk = format!("in {dir} ({fstype}, device {dev})");
        match self.args.ram {
            None => format!("both volumes are files {disk}"),
            Some(RamTier::Primary) => format!("the primary is a loop device over a file in /dev/shm (RAM), the secondary a file {disk}"),
            Some(RamTier::Secondary) => format!("the primary is a file {disk}, the secondary a loop device over a file in /dev/shm (RAM)"),
        }
    }

    fn node_cmd_text(&self) -> String {
        std::fs::read_to_string(self.work.join("node-cmd.txt"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

/// The poller's (time, bytes copied) series.
fn bytes_series(samples: &[Sample]) -> Vec<(f64, u64)> {
    samples.iter().map(|s| (s.t, s.bytes)).collect()
}

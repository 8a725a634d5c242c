//! `reel bench migration`: what background migration costs the foreground. One `reel node`
//! with a primary and a secondary volume (files) serves a steady load of short range requests
//! over a "hot" set on the primary, with the scheduler idle and while it promotes a "cold" set
//! from the secondary at its full copy budget; it reports p50/p99 latency and throughput of each
//! and the ratios (with migration) / (without).
//!
//! Two designs (`--design`):
//! - interleaved (default with the open loop): one long `reel load` run at a fixed rate; every
//!   `--seconds` this driver pauses or resumes migration (PUT /migration?paused=..) itself, on a
//!   connection of its own and with the timestamps taken in-process, the first window paused,
//!   for `--repeats` migrating windows. No process starts at a toggle: a process start costs
//!   CPU, and on a small host that stalled the foreground right after each pause, which counts
//!   as migrating. `reel load --latency-log` records each request's intended start and latency;
//!   a request counts as "migrating" from a resume until `--guard` s after the next pause (what
//!   the copies leave behind, the device writing their data back, is charged to migration), as
//!   "idle" in the rest of each paused window. Both conditions thus share the same minutes of a
//!   noisy host, which alternating whole runs did not: there, two identical runs differed by up
//!   to 25% in p99. The report gives pooled percentiles per condition, the p99 ratio's 90%
//!   interval from resampling whole cycles, the per-cycle ratios, an A/A line (idle windows of
//!   even against odd cycles: the noise floor), the p99 ratio by phase and with/without a commit.
//! - alternating (the closed loop's only one): separate runs per condition, alternated
//!   (a b, b a, a b, …): (a) idle, nothing pinned differently, the migration counters must not
//!   move; (b) migrating, the cold set pinned to the primary, the load starting once the first
//!   promotion has started (plus `--lead`), the copies running at the budget for the whole run
//!   (checked: promotions must still be pending at the end); afterwards the cold set is pinned
//!   back to the secondary and the driver waits for the drops. During (b) the copy counter is
//!   sampled every 0.5 s for the rate from completion to completion.
//!
//! Load: every request is a random `--range-kb`-aligned range of a random hot asset, so
//! requests are many and short and p99 is meaningful. `--load open` (default) is `reel load`,
//! open loop, Poisson arrivals at `--rate` (default 60% of the closed-loop maximum measured in
//! the warm-up), latency from each request's intended start; `--load closed` is wrk as fast as
//! it goes (saturation). Before the measurement, one run of the same length promotes with no
//! foreground load, for the copy rate the scheduler reaches alone; then a warm-up with wrk.
//!
//! Everything (node, poller, volumes) is removed on exit, Ctrl-C included.

mod node;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::cmd::bench::harness::{
    self, check_interrupt, format_volume, free_port, host_cpu, host_line, is_root, loadavg,
    meminfo_kib, note, parse_result_line, proc_ticks, require_tools, run_wrk, unix_now, wrk_script,
    Disk, FsInfo, Proc, Scratch, CLK_TCK,
};
use crate::cmd::bench::stats::completion_span;
use crate::units::parse_size;
use node::{Metrics, Node, Poller, Sample};
use report::{RunRow, Toggles};

const ME: &str = "reel bench migration";
const MIB: f64 = 1048576.0;
const POLL: Duration = Duration::from_millis(500);

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Design {
    Interleaved,
    Alternating,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadKind {
    /// `reel load` at a fixed rate (the issue's steady load).
    Open,
    /// wrk as fast as it goes (saturation).
    Closed,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamTier {
    Primary,
    Secondary,
}

#[derive(Args, Debug)]
pub struct MigrationArgs {
    /// Sanity run: 8 s per window or run, 1 repeat (interleaved 2), hot set 8 × 32 MiB, cold
    /// assets of 64 MiB, guard 2 s (any flag given still overrides).
    #[arg(long)]
    pub quick: bool,
    /// interleaved (one run, migration toggled; the default with --load open) or alternating
    /// (separate runs per condition; the only one with --load closed).
    #[arg(long, value_enum)]
    pub design: Option<Design>,
    /// open (reel load at a fixed rate) or closed (wrk, saturating).
    #[arg(long, value_enum, default_value_t = LoadKind::Open)]
    pub load: LoadKind,
    /// Length of each window (interleaved) or run (alternating), seconds [default: 30].
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Migrating windows (interleaved) [default: 10] or runs of each condition (alternating)
    /// [default: 3].
    #[arg(long)]
    pub repeats: Option<u32>,
    /// Interleaved: seconds after each pause still counted as migrating, below --seconds
    /// [default: 10].
    #[arg(long)]
    pub guard: Option<u64>,
    /// reel node --copy-budget, bytes/s with k/M/G suffixes = powers of 1024; not 0 (= unlimited).
    #[arg(long, value_parser = parse_size, default_value = "128M")]
    pub budget: u64,
    /// Open loop: requests/s [default: 60% of the warm-up's closed-loop rate].
    #[arg(long)]
    pub rate: Option<u64>,
    /// Open loop: reel load connections.
    #[arg(long, default_value_t = 32)]
    pub open_conns: u32,
    /// wrk connections (the warm-up always uses wrk).
    #[arg(long, default_value_t = 16)]
    pub conns: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Hot assets [default: 16].
    #[arg(long)]
    pub hot_count: Option<u32>,
    /// Size of each hot asset in MiB [default: 32].
    #[arg(long)]
    pub hot_mb: Option<u64>,
    /// Size of each cold asset in MiB [default: 128].
    #[arg(long)]
    pub cold_mb: Option<u64>,
    /// Cold assets [default: enough for budget × (1.3 × seconds + 3 s + lead), interleaved
    /// budget × (1.15 × repeats × seconds + 3 s)].
    #[arg(long)]
    pub cold_count: Option<u64>,
    /// Size of each range request in KiB (offsets are multiples).
    #[arg(long, default_value_t = 1024)]
    pub range_kb: u64,
    /// Alternating: seconds between the first promotion's start and the load's start in (b)
    /// (0: the run includes the copy thread's initial burst; e.g. 3 for the steady state only).
    #[arg(long, default_value_t = 0.0)]
    pub lead: f64,
    /// reel node --shards.
    #[arg(long, default_value_t = 2)]
    pub shards: u32,
    /// More reel node flags, e.g. "--copy-yield-depth 0" or
    /// "--migration-commit-interval 120s" (split at spaces).
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    pub node_args: String,
    /// Parent of the scratch directory (not tmpfs: the volumes need O_DIRECT).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
    /// That tier's volume is a loop device over a file in /dev/shm (RAM) instead of a file in
    /// --dir (root, losetup): a stand-in for the two tiers on separate devices.
    #[arg(long, value_enum)]
    pub ram: Option<RamTier>,
    /// Keep the scratch directory (node log, load outputs, raw results).
    #[arg(long)]
    pub keep: bool,
}

/// The settings after `--quick` and the flags.
#[derive(Debug, PartialEq)]
struct Plan {
    design: Design,
    secs: u64,
    repeats: u32,
    guard: u64,
    hot_count: u32,
    hot_mb: u64,
    cold_mb: u64,
    cold_count: u64,
}

impl Plan {
    fn new(a: &MigrationArgs) -> Result<Plan> {
        let design = match (a.design, a.load) {
            (Some(Design::Interleaved), LoadKind::Closed) => {
                bail!("--design interleaved needs --load open (wrk keeps no per-request log)")
            }
            (Some(d), _) => d,
            (None, LoadKind::Open) => Design::Interleaved,
            (None, LoadKind::Closed) => Design::Alternating,
        };
        let q = a.quick;
        let inter = design == Design::Interleaved;
        let p = Plan {
            design,
            secs: a.seconds.unwrap_or(if q { 8 } else { 30 }),
            repeats: a.repeats.unwrap_or(match (q, inter) {
                (true, true) => 2,
                (true, false) => 1,
                (false, true) => 10,
                (false, false) => 3,
            }),
            guard: a.guard.unwrap_or(if q { 2 } else { 10 }),
            hot_count: a.hot_count.unwrap_or(if q { 8 } else { 16 }),
            hot_mb: a.hot_mb.unwrap_or(32),
            cold_mb: a.cold_mb.unwrap_or(if q { 64 } else { 128 }),
            cold_count: 0,
        };
        let positive = [
            ("--seconds", p.secs),
            ("--repeats", u64::from(p.repeats)),
            ("--conns", u64::from(a.conns)),
            ("--threads", u64::from(a.threads)),
            ("--hot-count", u64::from(p.hot_count)),
            ("--hot-mb", p.hot_mb),
            ("--cold-mb", p.cold_mb),
            ("--range-kb", a.range_kb),
            ("--shards", u64::from(a.shards)),
            ("--open-conns", u64::from(a.open_conns)),
            ("--rate", a.rate.unwrap_or(1)),
            ("--cold-count", a.cold_count.unwrap_or(1)),
        ];
        for (flag, v) in positive {
            if v == 0 {
                bail!("{flag} must be a positive whole number");
            }
        }
        if p.guard >= p.secs {
            bail!(
                "--guard must be a whole number of seconds below --seconds ({}), got {}",
                p.secs,
                p.guard
            );
        }
        if a.lead.is_nan() || a.lead < 0.0 {
            bail!("--lead must be a number of seconds >= 0, got {}", a.lead);
        }
        if a.conns < a.threads {
            bail!(
                "--conns ({}) must be >= --threads ({}) for wrk",
                a.conns,
                a.threads
            );
        }
        if p.hot_mb * 1024 < a.range_kb {
            bail!(
                "--range-kb ({}) is larger than a hot asset ({} MiB)",
                a.range_kb,
                p.hot_mb
            );
        }
        if a.budget == 0 {
            bail!("--budget must be > 0: 0 means unlimited copies, which this benchmark does not measure");
        }
        let cold_count = a
            .cold_count
            .unwrap_or_else(|| cold_count_for(&p, a.budget, a.lead));
        Ok(Plan { cold_count, ..p })
    }

    fn hot_bytes(&self) -> u64 {
        u64::from(self.hot_count) * (self.hot_mb << 20)
    }

    fn cold_bytes(&self) -> u64 {
        self.cold_count * (self.cold_mb << 20)
    }
}

/// Enough cold assets that the copies at the budget outlast the measurement: alternating, 1.3×
/// the run plus 3 s (the copy thread's 1 s burst, the wait for the first promotion, scheduler
/// ticks) plus the lead; interleaved, 1.15× every migrating window together plus 3 s. At least 2.
fn cold_count_for(p: &Plan, budget: u64, lead: f64) -> u64 {
    let secs = p.secs as f64;
    let copy_secs = match p.design {
        Design::Interleaved => 1.15 * f64::from(p.repeats) * secs + 3.0,
        Design::Alternating => 1.3 * secs + 3.0 + lead,
    };
    let n = (budget as f64 * copy_secs / (p.cold_mb << 20) as f64).ceil() as u64;
    n.max(2)
}

/// A volume in RAM: a loop device over a file in /dev/shm, detached and removed on drop.
struct RamVolume {
    file: tempfile::NamedTempFile,
    dev: String,
}

impl RamVolume {
    fn new(tier: &str, mib: u64) -> Result<RamVolume> {
        let file = tempfile::Builder::new()
            .prefix(&format!("reel-migration-impact-{tier}."))
            .tempfile_in("/dev/shm")
            .context("creating a file in /dev/shm")?;
        file.as_file().set_len(mib << 20)?;
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file.path())
            .output()
            .context("running losetup")?;
        if !out.status.success() {
            bail!(
                "losetup on {} failed: {}",
                file.path().display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(RamVolume { file, dev })
    }
}

impl Drop for RamVolume {
    fn drop(&mut self) {
        let ok = Command::new("losetup")
            .args(["-d", &self.dev])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            note(
                ME,
                format!(
                    "could not detach {} ({})",
                    self.dev,
                    self.file.path().display()
                ),
            );
        }
    }
}

/// Everything a run needs: the node, the asset ids and the host's counters.
struct Bench<'a> {
    args: &'a MigrationArgs,
    plan: Plan,
    work: PathBuf,
    node: Node,
    proc: Proc,
    hot: Vec<String>,
    cold: Vec<String>,
    disk: Disk,
    rate: u64,
    load_desc: String,
}

fn hot_id(i: u32) -> String {
    format!("hot/{i:02}")
}

fn cold_id(i: u64) -> String {
    format!("cold/{i:02}")
}

/// Seeds of the uploads' data: hot asset i and cold asset i.
const HOT_SEED: u64 = 1;
const COLD_SEED: u64 = 1 << 32;

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
    fn wait_settled(&mut self, what: &str, timeout: Duration) -> Result<()> {
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
    fn copy_alone(&mut self) -> Result<(f64, f64)> {
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

    fn wrk_args(&self, extra: &[&str]) -> Vec<String> {
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

    fn url(&self) -> String {
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
            row.bytes = f("bytes_per_s") * f("duration_s");
            row.duration_us = f("duration_s") * 1e6;
            row.requests = f("requests");
            row.errors = f("errors");
            row.p50_us = f("p50_us");
            row.p90_us = f("p90_us");
            row.p99_us = f("p99_us");
            row.p999_us = f("p999_us");
            return Ok(());
        }
        let text = run_wrk(&self.wrk_args(&["--latency"]), &self.url(), &out)?;
        let kv = parse_result_line(&text)
            .with_context(|| format!("wrk printed no RESULT line: {text}"))?;
        if !text.lines().any(|l| l.trim_start().starts_with("99% ")) {
            bail!("wrk --latency printed no 99% line: {text}");
        }
        let f = |k: &str| kv.get(k).copied().unwrap_or(0.0);
        row.bytes = f("bytes");
        row.duration_us = f("duration_us");
        row.requests = f("requests");
        row.errors = f("errors");
        row.p50_us = f("p50_us");
        row.p90_us = f("p90_us");
        row.p99_us = f("p99_us");
        row.p999_us = f("p999_us");
        Ok(())
    }

    /// One run of the alternating design.
    fn run_one(&mut self, migrating: bool, rep: u32) -> Result<RunRow> {
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
        const MOVING: [&str; 6] = [
            "reel_promotions_total",
            "reel_write_backs_total",
            "reel_demotions_total",
            "reel_evictions_total",
            "reel_migration_failures_total",
            "reel_migration_bytes_total",
        ];
        row.counters_moved = MOVING.iter().any(|k| c0.m.get(k) != c1.m.get(k));
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
    fn run_interleaved(&mut self, alone: f64) -> Result<()> {
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
    fn print_setup_lines(&self, lead: Option<f64>) {
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

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn run(args: &MigrationArgs) -> Result<()> {
    harness::install_interrupt()?;
    let plan = Plan::new(args)?;
    require_tools(&["wrk"])?;
    let budget = args.budget;
    let budget_mib = budget as f64 / MIB;
    let data_mib = (plan.hot_bytes() + plan.cold_bytes()) >> 20;
    // Both volumes hold every asset (the primary all of them while the cold set is promoted).
    // The metadata (checkpoints + journal) is about 3% of a volume and the policy keeps 2% free
    // for uploads and promotes freely only while more than 5% is free: leave 1/8 plus 256 MiB.
    let vol_mib = data_mib + data_mib / 8 + 256;
    let disk_vols = if let Some(tier) = args.ram {
        if !is_root() {
            bail!("--ram {tier:?} needs root (losetup); run as root or leave it out");
        }
        require_tools(&["losetup"])?;
        let shm = FsInfo::of(Path::new("/dev/shm"))?.avail_mib;
        let ram = meminfo_kib("MemAvailable") / 1024;
        // The rest of the host (node, load generator, page cache of the secondary) keeps 3 GiB.
        if shm < vol_mib || ram < vol_mib + 3072 {
            bail!("--ram: a {vol_mib} MiB volume in RAM needs that much free in /dev/shm ({shm} MiB) and 3 GiB more available memory ({ram} MiB); lower --repeats / --seconds / --budget");
        }
        1
    } else {
        2
    };
    let need = disk_vols * vol_mib + 512;
    let scratch = Scratch::new(ME, &args.dir, "reel-migration-impact.", args.keep)?;
    let fs = FsInfo::of(&args.dir)?;
    if fs.avail_mib < need {
        bail!(
            "not enough free space in {}: need {need} MiB ({disk_vols} volume(s) of {vol_mib} MiB + 512 MiB margin), have {} MiB; choose --dir elsewhere or lower --seconds / --budget / --cold-mb",
            args.dir.display(),
            fs.avail_mib
        );
    }
    let work = scratch.path().to_path_buf();
    std::fs::create_dir_all(work.join("runs"))?;
    let disk = Disk::of(&fs);
    if disk.dev.is_none() {
        note(
            ME,
            format!(
                "no /proc/diskstats line for {}: disk columns will be 0",
                fs.source
            ),
        );
    }

    note(ME, format!("scratch directory {}", work.display()));
    note(ME, format!(
        "hot set {} x {} MiB (pinned to primary), cold set {} x {} MiB (promoted during the runs: {} MiB = {:.1} s at the budget of {budget_mib} MiB/s; runs of {} s)",
        plan.hot_count, plan.hot_mb, plan.cold_count, plan.cold_mb, plan.cold_bytes() >> 20,
        plan.cold_bytes() as f64 / budget as f64, plan.secs
    ));
    let mut primary = work.join("primary.img").display().to_string();
    let mut secondary = work.join("secondary.img").display().to_string();
    let ram = match args.ram {
        Some(tier) => {
            let name = if tier == RamTier::Primary {
                "primary"
            } else {
                "secondary"
            };
            let v = RamVolume::new(name, vol_mib)?;
            note(
                ME,
                format!(
                    "the {name} volume is {}, a loop device over {} (RAM)",
                    v.dev,
                    v.file.path().display()
                ),
            );
            if tier == RamTier::Primary {
                primary.clone_from(&v.dev);
            } else {
                secondary.clone_from(&v.dev);
            }
            Some(v)
        }
        None => None,
    };
    note(
        ME,
        format!("formatting primary and secondary volumes of {vol_mib} MiB each"),
    );
    format_volume(
        Path::new(&primary),
        vol_mib,
        &work.join("format-primary.log"),
    )?;
    format_volume(
        Path::new(&secondary),
        vol_mib,
        &work.join("format-secondary.log"),
    )?;
    harness::raise_nofile();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut node_args: Vec<String> = vec![
        "node".into(),
        "--primary".into(),
        primary,
        "--secondary".into(),
        secondary,
        "--listen".into(),
        addr.to_string(),
        "--shards".into(),
        args.shards.to_string(),
        "--copy-budget".into(),
        budget.to_string(),
    ];
    node_args.extend(args.node_args.split_whitespace().map(str::to_string));
    std::fs::write(work.join("node-cmd.txt"), node_args.join(" "))?;
    note(ME, format!("starting: reel {}", node_args.join(" ")));
    let mut proc = Proc::spawn(
        "reel node",
        Command::new(std::env::current_exe()?).args(&node_args),
        &work.join("reel-node.log"),
    )?;
    proc.wait_ready(addr, Duration::from_secs(120))?;
    note(
        ME,
        proc.log_tail(50)
            .lines()
            .find(|l| l.contains("listening on"))
            .map_or(
                format!("reel node answers on http://{addr}"),
                str::to_string,
            ),
    );
    let mut node = Node::new(addr);
    node.check_metrics()?;

    let hot: Vec<String> = (0..plan.hot_count).map(hot_id).collect();
    let cold: Vec<String> = (0..plan.cold_count).map(cold_id).collect();
    // The setup's write-backs run with no budget (they are not measured; at a low budget, 30
    // cycles' worth of cold set took longer to write back than to measure); the budget is set
    // back below.
    node.migration("copy_budget=0")?;
    note(ME, format!("uploading {} hot and {} cold assets ({data_mib} MiB); write-backs run with no budget meanwhile", hot.len(), cold.len()));
    let t0 = Instant::now();
    for (i, id) in hot.iter().enumerate() {
        check_interrupt()?;
        node.upload(id, plan.hot_mb << 20, HOT_SEED + i as u64)?;
    }
    node.pin("primary", &hot)?;
    for (i, id) in cold.iter().enumerate() {
        check_interrupt()?;
        node.upload(id, plan.cold_mb << 20, COLD_SEED + i as u64)?;
    }
    node.pin("secondary", &cold)?;
    let t1 = Instant::now();
    note(ME, format!("uploaded in {:.1} s", (t1 - t0).as_secs_f64()));

    let rate = args.rate.unwrap_or(0);
    let mut b = Bench {
        args,
        plan,
        work: work.clone(),
        node,
        proc,
        hot,
        cold,
        disk,
        rate,
        load_desc: String::new(),
    };
    let settle = (b.plan.hot_bytes() + b.plan.cold_bytes()) / budget * 2 + 120;
    note(
        ME,
        format!("waiting for the write-backs and the cold set's drops (at most {settle} s)"),
    );
    b.wait_settled("initial write-back", Duration::from_secs(settle))?;
    let t2 = Instant::now();
    b.node.migration(&format!("copy_budget={budget}"))?;
    note(
        ME,
        format!(
            "settled {:.1} s after the last upload: {}; copy budget back at {budget_mib} MiB/s",
            (t2 - t1).as_secs_f64(),
            b.node.metrics()?
        ),
    );

    // Correctness: the first hot and cold asset are what was uploaded, and a range is a 206.
    let range = b.args.range_kb << 10;
    b.node.verify(&b.hot[0], b.plan.hot_mb << 20, HOT_SEED)?;
    b.node.verify(&b.cold[0], b.plan.cold_mb << 20, COLD_SEED)?;
    let got = b.node.range(&b.hot[0], range, 2 * range - 1)?;
    if got != (206, range as usize) {
        bail!(
            "a range GET of /assets/{} answered {got:?}, expected (206, {range})",
            b.hot[0]
        );
    }
    note(
        ME,
        format!(
            "verified: {} and {} match the uploads; a {} KiB range is answered 206",
            b.hot[0], b.cold[0], b.args.range_kb
        ),
    );

    // The closed-loop load: wrk with a random range of a random hot asset per request.
    let paths: String = b.hot.iter().map(|id| format!("/assets/{id}\n")).collect();
    std::fs::write(work.join("paths-hot"), paths)?;
    let nranges = b.plan.hot_mb * 1024 / b.args.range_kb;
    let script = wrk_script(
        &work.join("paths-hot"),
        &format!("Each request: a random {} KiB range (at a multiple of its size) of a random hot asset.\n-- done() prints the totals and the latency percentiles (microseconds) as key=value.", b.args.range_kb),
        &format!(
            "    local off = (math.random({nranges}) - 1) * {range}\n    return wrk.format(\"GET\", paths[math.random(#paths)],\n        {{ Range = string.format(\"bytes=%d-%d\", off, off + {range} - 1) }})"
        ),
        r#"    io.write(string.format(
        "RESULT bytes=%.0f duration_us=%.0f requests=%.0f errors=%.0f p50_us=%.0f p90_us=%.0f p99_us=%.0f p999_us=%.0f max_us=%.0f err_status=%.0f err_timeout=%.0f\n",
        summary.bytes, summary.duration, summary.requests,
        e.connect + e.read + e.write + e.status + e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency:percentile(99.9), latency.max, e.status, e.timeout))"#,
    );
    std::fs::write(work.join("wrk.lua"), script)?;

    let alone = b.copy_alone()?;

    note(
        ME,
        format!("warm-up: {}s of closed-loop wrk, not recorded", b.plan.secs),
    );
    let text = run_wrk(&b.wrk_args(&[]), &b.url(), &work.join("runs/warmup.txt"))
        .context("warm-up wrk")?;
    let warm_rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:")?.trim().parse::<f64>().ok())
        .with_context(|| format!("the warm-up wrk printed no Requests/sec: {text}"))?
        .round() as u64;
    if args.load == LoadKind::Open && args.rate.is_none() {
        b.rate = (warm_rps * 6 / 10).max(1);
    }
    let rate_text = if args.load == LoadKind::Open {
        format!(", {} req/s offered", b.rate)
    } else {
        String::new()
    };
    let kind = if args.load == LoadKind::Open {
        "open"
    } else {
        "closed"
    };
    note(
        ME,
        format!("closed-loop capacity (warm-up): {warm_rps} req/s; load: {kind}{rate_text}"),
    );
    b.load_desc = if args.load == LoadKind::Open {
        format!("reel load, open loop: Poisson arrivals at {} req/s (60% of the warm-up's closed-loop {warm_rps} req/s unless --rate), {} connections", b.rate, args.open_conns)
    } else {
        format!(
            "wrk -t {} -c {}, closed loop (saturating)",
            args.threads, args.conns
        )
    };

    if b.plan.design == Design::Interleaved {
        b.run_interleaved(alone.0)?;
    } else {
        let load_start = loadavg(3);
        note(ME, format!(
            "measuring: {} x (idle, migrating), alternating, {}s each; {}; load average now {load_start}",
            b.plan.repeats, b.plan.secs, b.load_desc
        ));
        let mut rows = Vec::new();
        for rep in 1..=b.plan.repeats {
            let order = if rep % 2 == 1 {
                [false, true]
            } else {
                [true, false]
            };
            for migrating in order {
                rows.push(b.run_one(migrating, rep)?);
            }
        }
        let tsv: String = rows.iter().map(|r| format!("{r:?}\n")).collect();
        std::fs::write(work.join("results.txt"), tsv)?;
        println!();
        println!("reel node foreground impact of background migration: medians of {} alternating runs of {}s per condition", b.plan.repeats, b.plan.secs);
        b.print_setup_lines(Some(args.lead));
        println!("(load average before measuring: {load_start}; at the end: {}; a busy host makes every number noisy, see the per-run lines on stderr)", loadavg(3));
        if args.load == LoadKind::Open {
            println!("MiB/s = 2^20 bytes/s of responses; latency percentiles from reel load's HdrHistogram, timed from each request's intended start");
        } else {
            println!("MiB/s = 2^20 bytes/s of responses; latency percentiles from wrk's histogram (closed loop: {} connections, one request each at a time)", args.conns);
        }
        println!();
        print!(
            "{}",
            report::alternating(&rows, budget, alone, b.disk.name())?
        );
    }
    if args.keep {
        note(ME, format!("raw results: {}", work.join("runs").display()));
    }
    // The node stops before its volumes go (the RAM volume's loop device, the scratch dir).
    drop(b);
    drop(ram);
    drop(scratch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: MigrationArgs,
    }

    fn plan(argv: &[&str]) -> Result<Plan> {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(argv.iter().copied()))?;
        Plan::new(&cli.args)
    }

    #[test]
    fn defaults_follow_the_design() {
        let p = plan(&[]).expect("defaults");
        assert_eq!(
            (p.design, p.secs, p.repeats, p.guard),
            (Design::Interleaved, 30, 10, 10)
        );
        assert_eq!((p.hot_count, p.hot_mb, p.cold_mb), (16, 32, 128));
        // 128 MiB/s x (1.15 x 10 x 30 s + 3 s) / 128 MiB = 348.
        assert_eq!(p.cold_count, 348);
        let p = plan(&["--load", "closed"]).expect("closed");
        assert_eq!((p.design, p.repeats), (Design::Alternating, 3));
        // 128 MiB/s x (1.3 x 30 s + 3 s + 0) / 128 MiB = 42.
        assert_eq!(p.cold_count, 42);
        let p = plan(&["--quick"]).expect("quick");
        assert_eq!(
            (p.secs, p.repeats, p.guard, p.hot_count, p.cold_mb),
            (8, 2, 2, 8, 64)
        );
        let p = plan(&[
            "--quick",
            "--design",
            "alternating",
            "--seconds",
            "5",
            "--cold-count",
            "3",
        ])
        .expect("flags override");
        assert_eq!((p.secs, p.repeats, p.cold_count), (5, 1, 3));
        assert_eq!(
            cold_count_for(
                &Plan {
                    cold_mb: 1 << 20,
                    ..p
                },
                1,
                0.0
            ),
            2,
            "at least 2"
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(plan(&["--load", "closed", "--design", "interleaved"]).is_err());
        assert!(plan(&["--guard", "30"]).is_err());
        assert!(plan(&["--budget", "0"]).is_err());
        assert!(plan(&["--conns", "1", "--threads", "2"]).is_err());
        assert!(plan(&["--range-kb", "65536"]).is_err());
        assert!(plan(&["--node-args", "--copy-yield-depth 0"]).is_ok());
    }
}

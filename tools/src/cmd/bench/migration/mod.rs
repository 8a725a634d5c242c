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

mod driver;
mod node;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::cmd::bench::harness::{
    self, check_interrupt, format_volume, free_port, is_root, loadavg, meminfo_kib, note,
    require_tools, run_wrk, wrk_script, Disk, FsInfo, Proc, Scratch,
};
use crate::units::parse_size;
use driver::{cold_id, hot_id, Bench, COLD_SEED, HOT_SEED};
use node::Node;

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

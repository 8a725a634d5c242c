//! `reel bench device DEV`: a read benchmark of a block device or regular file on the engine's
//! own data path — O_DIRECT `READ_FIXED` into the [`Driver`]'s registered buffers — reported in
//! fio's JSON shape so the two can be compared (see `compare_fio.rs`).
//!
//! The workload is fio's `--time_based` job: `iodepth` reads of `bs` bytes always in flight,
//! either sequential (wrapping at the end of the range) or at uniformly random `bs`-aligned
//! offsets of `[0, size)`, for `runtime`. Completion latency is measured per I/O from just before
//! it is handed to the kernel to just after the `io_uring_enter` that reaped it, as fio's `clat`.
//!
//! The loop is the hot path. Per iteration: wait for at least one completion (polling without
//! sleeping for up to `--idle-poll` first, then one blocking `io_uring_enter`), one clock read,
//! then for every completion that is ready a histogram record and a refill into the same buffer.
//! Refills are handed to the kernel every `--iodepth-batch-submit` pushes, like fio's option of
//! that name; the rest goes out with the next wait. The loop itself allocates nothing and reads
//! the clock once per iteration, not per I/O.
//!
//! The defaults come from measurements on the 2-vCPU KVM guest this was written on (virtio-blk,
//! ext4, a ~175k IOPS ceiling for 4 KiB reads, other tenants' I/O making single runs vary 2x):
//! - Batch 1 (a submit per read, fio's default), not "everything the loop reaped in one enter":
//!   a read held back in user space until the batch is complete is a read the device does not
//!   have. Whole-loop batches reached only ~0.72x fio's IOPS on a file; a submit per read matched
//!   it, at less CPU per I/O than fio.
//! - No idle polling (`--idle-poll 0`): reel needs less CPU per I/O than fio, so it runs out of
//!   work and sleeps in `io_uring_enter` about twice as often as fio, and each sleep costs a
//!   vCPU halt and wake-up. While other tenants loaded the machine, 4 KiB random reads on a file
//!   reached a median of 0.90x fio over 32 pairs of runs; 100 us of polling stopped the sleeps,
//!   but its effect on IOPS stayed within the noise. On a quiet machine both reach the device's
//!   ceiling (1.01x), and on the loop device polling cost throughput (0.98x against 1.03x, CPU
//!   per I/O doubled): the spinning thread takes a vCPU from the loop driver's worker. So
//!   polling is an option, adaptive (skipped after a wait longer than the window, so 1 MiB reads
//!   rarely spin), off by default.
//!
//! `--iodepth-batch-submit 0` gives the fewest system calls.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use reel_store::driver::{sys, Completion, Driver, DriverConfig, DriverError, Op};

use crate::cmd::bench::report::{
    percentile_key, Direction, Job, LatencyNs, Percentiles, Report, PERCENTILES,
};
use crate::thread_cpu::ThreadCpu;
use crate::units::{
    fio_size, human_bytes, human_count, human_ns, parse_duration, parse_duration_or_zero,
    parse_size,
};

/// Largest block size we accept: one registered buffer per in-flight read, and the kernel
/// takes at most `u32::MAX` bytes per READ_FIXED.
const BS_MAX: u64 = 64 << 20;
/// Upper bound of registered memory (`bs × iodepth`), so a typo cannot pin all of RAM.
const POOL_BYTES_MAX: u64 = 4 << 30;

#[derive(Args, Debug, Clone)]
pub struct BenchDeviceArgs {
    /// Block device or regular file to read (never written). A file must hold real data:
    /// unwritten extents read back as zeros without touching the device.
    pub device: PathBuf,
    /// Access pattern, as fio's --rw.
    #[arg(long, value_enum, default_value_t = Rw::Randread)]
    pub rw: Rw,
    /// Bytes per read, e.g. 4k or 1M (a multiple of 512 and of the device's logical block size).
    #[arg(long, value_parser = parse_size, default_value = "4k")]
    pub bs: u64,
    /// Reads kept in flight.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub iodepth: u32,
    /// How long each run lasts, e.g. 5, 10s or 500ms (time based, like fio --time_based).
    #[arg(long, value_parser = parse_duration, default_value = "5")]
    pub runtime: Duration,
    /// Bytes of the target to read, from offset 0 (default: all of it, rounded down to --bs).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Print fio-compatible JSON (`jobs[].read.{iops,bw_bytes,clat_ns.percentile}`).
    #[arg(long)]
    pub json: bool,
    /// Also run fio with the same parameters on the same target, alternating with reel, and
    /// print both and the ratio of medians (reel/fio).
    #[arg(long)]
    pub compare_fio: bool,
    /// Refills handed to the kernel per `io_uring_enter`, as fio's --iodepth_batch_submit
    /// (and passed to fio with --compare-fio). 1 (fio's default) submits each read as soon as
    /// its buffer is free, at one system call per read; 0 means --iodepth: one submit per loop
    /// for all the reads the loop reaped, the fewest system calls.
    #[arg(long, default_value_t = 1)]
    pub iodepth_batch_submit: u32,
    /// How long to keep polling for completions without sleeping before blocking in the kernel
    /// (0 = always block at once). Polling keeps the thread busy under load, as fio's costlier
    /// per-I/O work keeps fio busy; it saves a sleep and wake-up per completion (a vCPU halt on a
    /// virtual machine) at the price of CPU. Adaptive: skipped after a wait that took longer
    /// than this. E.g. 0, 50us, 100us.
    #[arg(long, value_parser = parse_duration_or_zero, default_value = "0")]
    pub idle_poll: Duration,
    /// Runs of each tool with --compare-fio.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// The fio binary to run with --compare-fio.
    #[arg(long, default_value = "fio")]
    pub fio_bin: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Rw {
    /// Sequential reads, wrapping at the end of the range.
    Read,
    /// Uniformly random bs-aligned reads.
    Randread,
}

impl Rw {
    /// fio's name for the pattern.
    pub fn fio_name(self) -> &'static str {
        match self {
            Rw::Read => "read",
            Rw::Randread => "randread",
        }
    }
}

/// A validated benchmark: what to read, how, for how long.
#[derive(Clone, Debug)]
pub struct Plan {
    pub path: PathBuf,
    pub rw: Rw,
    pub bs: u64,
    pub iodepth: u32,
    pub runtime: Duration,
    /// Bytes of the target to read, a multiple of `bs`.
    pub size: u64,
    pub is_block: bool,
    /// See [`BenchDeviceArgs::idle_poll`].
    pub idle_poll: Duration,
    /// See [`BenchDeviceArgs::iodepth_batch_submit`].
    pub iodepth_batch_submit: u32,
}

impl Plan {
    /// Checks the parameters against the target and sizes the read range.
    pub fn new(args: &BenchDeviceArgs) -> anyhow::Result<Plan> {
        let path = &args.device;
        let bs = args.bs;
        if bs == 0 || !bs.is_multiple_of(512) || bs > BS_MAX {
            bail!(
                "--bs {bs} is not usable for O_DIRECT: pass a multiple of 512 bytes up to {} \
                 (e.g. --bs 4k or --bs 1M)",
                human_bytes(BS_MAX)
            );
        }
        let pool = buf_size(bs) * u64::from(args.iodepth);
        if pool > POOL_BYTES_MAX {
            bail!(
                "--bs {} × --iodepth {} needs {} of registered buffers, more than the {} limit; \
                 lower --iodepth or --bs",
                human_bytes(bs),
                args.iodepth,
                human_bytes(pool),
                human_bytes(POOL_BYTES_MAX)
            );
        }
        let file = open_direct(path)?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        let is_block = meta.file_type().is_block_device();
        let target_bytes = if is_block {
            let lbs = sys::block_device_logical_block_size(&file).with_context(|| {
                format!("cannot read the logical block size of {}", path.display())
            })?;
            if lbs == 0 || !bs.is_multiple_of(u64::from(lbs)) {
                bail!(
                    "--bs {bs} is not a multiple of the logical block size ({lbs} bytes) of {}",
                    path.display()
                );
            }
            sys::block_device_size(&file)
                .with_context(|| format!("cannot read the size of {}", path.display()))?
        } else if meta.file_type().is_file() {
            meta.len()
        } else {
            bail!(
                "{} is neither a block device nor a regular file",
                path.display()
            );
        };
        let wanted = match args.size {
            Some(s) if s > target_bytes => bail!(
                "--size {s} is larger than {} ({target_bytes} bytes); pass a smaller --size",
                path.display()
            ),
            Some(s) => s,
            None => target_bytes,
        };
        let size = wanted / bs * bs;
        if size == 0 {
            bail!(
                "{} has {wanted} bytes to read, less than one --bs of {bs} bytes; use a larger \
                 target or a smaller --bs",
                path.display()
            );
        }
        Ok(Plan {
            path: path.clone(),
            rw: args.rw,
            bs,
            iodepth: args.iodepth,
            runtime: args.runtime,
            size,
            is_block,
            idle_poll: args.idle_poll,
            iodepth_batch_submit: args.iodepth_batch_submit.min(args.iodepth),
        })
    }

    /// One line naming the workload, for headers.
    pub fn describe(&self) -> String {
        let poll = if self.idle_poll.is_zero() {
            String::new()
        } else {
            format!(" idle_poll={}us", self.idle_poll.as_micros())
        };
        format!(
            "{} bs={} iodepth={} iodepth_batch_submit={}{poll} runtime={:.1}s size={} on {} ({})",
            self.rw.fio_name(),
            fio_size(self.bs),
            self.iodepth,
            self.iodepth_batch_submit,
            self.runtime.as_secs_f64(),
            human_bytes(self.size),
            self.path.display(),
            if self.is_block {
                "block device"
            } else {
                "regular file"
            }
        )
    }

    /// fio's spelling of the job's options, as in fio's `"job options"`.
    pub fn job_options(&self) -> std::collections::BTreeMap<String, String> {
        [
            ("filename", self.path.display().to_string()),
            ("rw", self.rw.fio_name().to_string()),
            ("bs", fio_size(self.bs)),
            ("iodepth", self.iodepth.to_string()),
            (
                "iodepth_batch_submit",
                self.iodepth_batch_submit.to_string(),
            ),
            ("idle_poll", format!("{}us", self.idle_poll.as_micros())),
            ("size", fio_size(self.size)),
            ("runtime", format!("{}ms", self.runtime.as_millis())),
            ("time_based", String::new()),
            ("direct", "1".to_string()),
            (
                "ioengine",
                "reel_store::driver (io_uring READ_FIXED)".to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

fn buf_size(bs: u64) -> u64 {
    bs.div_ceil(4096) * 4096
}

fn open_direct(path: &std::path::Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => anyhow::anyhow!(
                "{}: the filesystem does not support O_DIRECT (tmpfs?); put the file on ext4/xfs \
                 or use a block device",
                path.display()
            ),
            Some(libc::ENOENT) => anyhow::anyhow!(
                "{} does not exist; pass a block device or a file filled with data",
                path.display()
            ),
            _ => anyhow::Error::new(e).context(format!("cannot open {}", path.display())),
        })
}

/// What one run measured.
pub struct Measurement {
    pub io_bytes: u64,
    pub total_ios: u64,
    pub elapsed: Duration,
    pub clat_ns: Histogram<u64>,
    /// CPU spent by the benchmark thread during the run, if `/proc` told us.
    pub cpu: Option<ThreadCpu>,
    clat_ns_min: u64,
    clat_ns_max: u64,
    clat_ns_sum: u128,
    clat_ns_sum_sq: u128,
}

impl Measurement {
    fn new() -> anyhow::Result<Measurement> {
        Ok(Measurement {
            io_bytes: 0,
            total_ios: 0,
            elapsed: Duration::ZERO,
            // 1 ns .. 1 h at 3 significant digits (fio's buckets are coarser).
            clat_ns: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .context("creating the latency histogram")?,
            cpu: None,
            clat_ns_min: u64::MAX,
            clat_ns_max: 0,
            clat_ns_sum: 0,
            clat_ns_sum_sq: 0,
        })
    }

    #[inline]
    fn record(&mut self, bytes: usize, clat_ns: u64) {
        self.io_bytes += bytes as u64;
        self.total_ios += 1;
        self.clat_ns.saturating_record(clat_ns.max(1));
        self.clat_ns_min = self.clat_ns_min.min(clat_ns);
        self.clat_ns_max = self.clat_ns_max.max(clat_ns);
        self.clat_ns_sum += u128::from(clat_ns);
        self.clat_ns_sum_sq += u128::from(clat_ns) * u128::from(clat_ns);
    }

    pub fn iops(&self) -> f64 {
        self.total_ios as f64 / self.elapsed.as_secs_f64()
    }

    /// The run in fio's shape. Min, max, mean and stddev are exact; percentiles come from the
    /// histogram (3 significant digits).
    pub fn to_job(&self, jobname: &str, plan: &Plan) -> Job {
        let secs = self.elapsed.as_secs_f64();
        let bw_bytes = (self.io_bytes as f64 / secs) as u64;
        let n = self.total_ios;
        let (mean, stddev) = if n == 0 {
            (0.0, 0.0)
        } else {
            let mean = self.clat_ns_sum as f64 / n as f64;
            let var = (self.clat_ns_sum_sq as f64 / n as f64 - mean * mean).max(0.0);
            (mean, var.sqrt())
        };
        let percentile = if n == 0 {
            Percentiles::default()
        } else {
            Percentiles(
                PERCENTILES
                    .iter()
                    .map(|&p| {
                        // The histogram answers with its bucket's highest value, which may lie
                        // beyond the exact extremes.
                        let ns = self.clat_ns.value_at_quantile(p / 100.0);
                        (
                            percentile_key(p),
                            ns.clamp(self.clat_ns_min, self.clat_ns_max),
                        )
                    })
                    .collect(),
            )
        };
        let runtime_ns = self.elapsed.as_nanos().max(1) as f64;
        let pct = |d: Duration| d.as_nanos() as f64 * 100.0 / runtime_ns;
        Job {
            jobname: jobname.to_string(),
            error: 0,
            job_options: plan.job_options(),
            usr_cpu: self.cpu.map_or(0.0, |c| pct(c.user)),
            sys_cpu: self.cpu.map_or(0.0, |c| pct(c.system)),
            ctx: self.cpu.map_or(0, |c| c.ctx_switches),
            read: Direction {
                io_bytes: self.io_bytes,
                io_kbytes: self.io_bytes / 1024,
                bw_bytes,
                bw: bw_bytes / 1024,
                iops: self.iops(),
                runtime: self.elapsed.as_millis() as u64,
                total_ios: n,
                clat_ns: LatencyNs {
                    min: if n == 0 { 0 } else { self.clat_ns_min },
                    max: self.clat_ns_max,
                    mean,
                    stddev,
                    n,
                    percentile,
                },
            },
        }
    }
}

/// The next offset to read: sequential wrapping at `size`, or uniform random `bs`-aligned.
struct Offsets {
    rw: Rw,
    bs: u64,
    size: u64,
    blocks: u64,
    next: u64,
    rng: fastrand::Rng,
}

impl Offsets {
    fn new(plan: &Plan) -> Offsets {
        Offsets {
            rw: plan.rw,
            bs: plan.bs,
            size: plan.size,
            blocks: plan.size / plan.bs,
            next: 0,
            rng: fastrand::Rng::new(),
        }
    }

    #[inline]
    fn next(&mut self) -> u64 {
        match self.rw {
            Rw::Read => {
                let off = self.next;
                self.next += self.bs;
                if self.next >= self.size {
                    self.next = 0;
                }
                off
            }
            Rw::Randread => self.rng.u64(0..self.blocks) * self.bs,
        }
    }
}

/// Runs the workload once on the engine's driver and measures it.
pub fn run_engine(plan: &Plan) -> anyhow::Result<Measurement> {
    let file = open_direct(&plan.path)?;
    let fd = file.as_raw_fd();
    let qd = plan.iodepth as usize;
    let len = plan.bs as usize;
    let mut drv = Driver::new(&DriverConfig {
        ring_entries: plan.iodepth.next_power_of_two().max(8),
        buf_size: buf_size(plan.bs) as usize,
        buf_count: qd,
        ..DriverConfig::default()
    })
    .context("cannot set up the io_uring driver")?;
    let mut offsets = Offsets::new(plan);
    let mut m = Measurement::new()?;
    let read_failed = |e: DriverError| {
        let hint = match &e {
            DriverError::Io { source, .. } if source.raw_os_error() == Some(libc::EINVAL) => {
                "; O_DIRECT needs --bs and offsets aligned to the device's logical block size"
            }
            _ => "",
        };
        anyhow::Error::new(e).context(format!("read of {} failed{hint}", plan.path.display()))
    };

    // Submission time of the read in flight on each buffer, indexed by buffer.
    let cpu_start = ThreadCpu::now();
    let start = Instant::now();
    let deadline = start + plan.runtime;
    let mut issued_at = vec![start; qd];
    for _ in 0..qd {
        let Some(buf) = drv.alloc_buf() else {
            bail!("the driver's buffer pool is smaller than --iodepth {qd}");
        };
        let i = buf.index();
        drv.push(read_op(fd, buf, len, offsets.next()), u64::from(i))
            .map_err(read_failed)?;
    }

    // Refills are handed to the kernel every `submit_batch` pushes (fio's iodepth_batch_submit);
    // the remainder goes out with the next wait.
    let submit_batch = match plan.iodepth_batch_submit {
        0 => qd,
        n => n as usize,
    };
    let mut queued = 0usize;
    // Idle polling is adaptive: it is worth its CPU only while completions keep arriving within
    // the polling window (4 KiB reads), not when each takes longer (1 MiB reads), so poll only
    // after an iteration that found its completion within the window.
    let mut loop_start = start;
    let mut idle_poll = plan.idle_poll;
    let end = loop {
        let first = next_completion(&mut drv, idle_poll).map_err(read_failed)?;
        if first.is_none() && drv.in_flight() == 0 {
            bail!("no read is in flight any more; the driver lost track of the workload");
        }
        let now = Instant::now();
        idle_poll = if now - loop_start <= plan.idle_poll {
            plan.idle_poll
        } else {
            Duration::ZERO
        };
        loop_start = now;
        let stop = now >= deadline;
        let mut next = first;
        while let Some(c) = next.take().or_else(|| drv.pop()) {
            let Some(buf) = c.buf else {
                bail!("the driver returned a read completion without its buffer");
            };
            let i = buf.index() as usize;
            match c.result {
                Ok(n) => {
                    let clat = now.saturating_duration_since(issued_at[i]);
                    m.record(n, clat.as_nanos() as u64);
                }
                Err(e) => {
                    drv.free_buf(buf);
                    return Err(read_failed(e));
                }
            }
            if stop {
                drv.free_buf(buf);
                continue;
            }
            issued_at[i] = now;
            drv.push(read_op(fd, buf, len, offsets.next()), i as u64)
                .map_err(read_failed)?;
            queued += 1;
            if queued == submit_batch {
                drv.submit().map_err(read_failed)?;
                queued = 0;
            }
        }
        // What is still queued goes out with the next wait.
        queued = 0;
        if stop {
            break now;
        }
    };
    m.elapsed = end - start;
    m.cpu = cpu_start.and_then(|a| Some(ThreadCpu::now()?.since(&a)));

    // Let the reads still in flight finish; they are not counted (the run ended at `end`).
    while drv.in_flight() > 0 {
        drv.wait().map_err(read_failed)?;
        while let Some(c) = drv.pop() {
            if let Some(b) = c.buf {
                drv.free_buf(b);
            }
        }
    }
    drop(drv);
    drop(file);
    Ok(m)
}

/// A read of `len` bytes at `offset` into the start of `buf`: every I/O the benchmark issues.
fn read_op(fd: std::os::fd::RawFd, buf: reel_store::driver::Buf, len: usize, offset: u64) -> Op {
    Op::Read {
        fd,
        buf,
        buf_offset: 0,
        len,
        offset,
    }
}

/// Submits what the caller queued and returns the first completion (more may be ready to
/// [`Driver::pop`]).
///
/// With a zero `idle_poll` this is one `io_uring_enter` that submits and sleeps until a
/// completion arrives. Otherwise it first polls without sleeping (each poll an `io_uring_enter`
/// that submits, and runs deferred completions if the kernel flagged any) for up to `idle_poll`
/// and only then sleeps, like Seastar's reactor idle polling: under load the thread never goes
/// idle, which on a virtual machine saves the halt/wake-up of the vCPU on every completion.
fn next_completion(
    drv: &mut Driver,
    idle_poll: Duration,
) -> Result<Option<Completion>, DriverError> {
    if !idle_poll.is_zero() {
        drv.poll()?;
        if let Some(c) = drv.pop() {
            return Ok(Some(c));
        }
        let spin_start = Instant::now();
        while spin_start.elapsed() < idle_poll {
            drv.poll()?;
            if let Some(c) = drv.pop() {
                return Ok(Some(c));
            }
        }
    }
    // Submits what is queued and sleeps until at least one completion is ready.
    drv.wait()?;
    Ok(drv.pop())
}

/// `reel bench device`.
pub fn run_cli(args: &BenchDeviceArgs) -> anyhow::Result<()> {
    crate::require_io_uring()?;
    let plan = Plan::new(args)?;
    if args.compare_fio {
        return crate::cmd::bench::compare_fio::run(&plan, args.runs, &args.fio_bin, args.json);
    }
    let m = run_engine(&plan)?;
    let job = m.to_job("reel", &plan);
    if args.json {
        let report = Report {
            fio_version: None,
            reel_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            jobs: vec![job],
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("reel bench device: {}", plan.describe());
        print!("{}", job_text(&job));
    }
    Ok(())
}

/// fio-like human summary of one job.
pub fn job_text(job: &Job) -> String {
    let r = &job.read;
    let c = &r.clat_ns;
    let pct: Vec<String> = [1.0, 50.0, 90.0, 99.0, 99.9, 99.99]
        .iter()
        .filter_map(|&p| c.at(p).map(|v| format!("p{p}={}", human_ns(v as f64))))
        .collect();
    let cpu = match job.cpu_ns_per_io() {
        Some(ns) => format!(
            "  cpu: usr={:.1}%, sys={:.1}%, ctx={}, {} of CPU per I/O\n",
            job.usr_cpu,
            job.sys_cpu,
            job.ctx,
            human_ns(ns)
        ),
        None => String::new(),
    };
    format!(
        "  read: IOPS={}, BW={}/s ({:.1} MB/s), {} in {:.2} s\n  clat: min={}, mean={}, \
         stddev={}, max={}\n  clat percentiles: {}\n{cpu}",
        human_count(r.iops),
        human_bytes(r.bw_bytes),
        r.bw_bytes as f64 / 1e6,
        human_bytes(r.io_bytes),
        r.runtime as f64 / 1000.0,
        human_ns(c.min as f64),
        human_ns(c.mean),
        human_ns(c.stddev),
        human_ns(c.max as f64),
        pct.join(" ")
    )
}

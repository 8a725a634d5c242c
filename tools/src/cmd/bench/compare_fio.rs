//! `reel bench device --compare-fio`: runs the same workload with the engine and with fio on the
//! same target, alternating in ABBA order (reel, fio, fio, reel, …) so drift in the device or the
//! host hits both alike, and prints both and the ratio of medians (reel/fio).
//!
//! The fio job is the fairest peer we know for the engine's read path: `--ioengine=io_uring
//! --direct=1 --fixedbufs=1` (fio also reads into registered buffers with `READ_FIXED`),
//! `--time_based` with the same runtime, `bs`, `iodepth` and byte range, `--readonly`.
//! Files are *not* registered (`--registerfiles` off), because the engine's driver does not
//! register files either. For `randread`, `--norandommap` makes fio pick offsets uniformly with
//! replacement, which is what reel does (fio's default random map would visit each block once
//! per pass and cost fio CPU), and `--randrepeat=0` gives each fio run a fresh seed, as each reel
//! run has (fio's default repeats the same offsets in every run, which a cache below the guest,
//! such as the host's page cache under a virtual disk, would reward). `--iodepth_batch_submit` is passed through, so both tools hand
//! reads to the kernel in the same batches (1 by default: each read as soon as its buffer is
//! free). Everything else is fio's default: reap at least one completion per wait, then all
//! that are ready (`iodepth_batch_complete_min=1`), as reel does.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::cmd::bench::device::{job_text, run_engine, Plan, Rw};
use crate::cmd::bench::report::{Job, Report};
use crate::cmd::bench::stats::median;
use crate::units::{fio_size, human_bytes, human_count, human_ns};

/// Target ratio of medians (reel/fio) for throughput.
pub const RATIO_TARGET: f64 = 0.95;

#[derive(Serialize)]
struct Comparison {
    workload: std::collections::BTreeMap<String, String>,
    fio_version: String,
    fio_command: Vec<String>,
    runs: Runs,
    median: Medians,
    /// reel / fio, of the medians.
    ratio: Summary,
    /// reel / fio IOPS of each pair of neighbouring runs, in run order: their spread shows how
    /// much of a difference is noise of the device or the host.
    paired_iops_ratios: Vec<f64>,
}

#[derive(Serialize)]
struct Runs {
    reel: Vec<Job>,
    fio: Vec<Job>,
}

#[derive(Serialize)]
struct Medians {
    reel: Summary,
    fio: Summary,
}

#[derive(Serialize, Clone, Copy)]
struct Summary {
    iops: f64,
    bw_bytes: f64,
    clat_ns_p50: f64,
    clat_ns_p99: f64,
    /// CPU time (user + system) per I/O of the benchmarking thread (reel) or job (fio);
    /// NaN when unknown.
    cpu_ns_per_io: f64,
}

impl Summary {
    fn of(jobs: &[Job]) -> Summary {
        let med = |f: &dyn Fn(&Job) -> f64| median(jobs.iter().map(f).collect());
        Summary {
            iops: med(&|j| j.read.iops),
            bw_bytes: med(&|j| j.read.bw_bytes as f64),
            clat_ns_p50: med(&|j| j.read.clat_ns.at(50.0).unwrap_or(0) as f64),
            clat_ns_p99: med(&|j| j.read.clat_ns.at(99.0).unwrap_or(0) as f64),
            cpu_ns_per_io: med(&|j| j.cpu_ns_per_io().unwrap_or(f64::NAN)),
        }
    }

    fn ratio(a: Summary, b: Summary) -> Summary {
        let r = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
        Summary {
            iops: r(a.iops, b.iops),
            bw_bytes: r(a.bw_bytes, b.bw_bytes),
            clat_ns_p50: r(a.clat_ns_p50, b.clat_ns_p50),
            clat_ns_p99: r(a.clat_ns_p99, b.clat_ns_p99),
            cpu_ns_per_io: r(a.cpu_ns_per_io, b.cpu_ns_per_io),
        }
    }
}

/// fio's `--filename` treats `:` as a separator between files; escape it.
fn fio_filename(path: &Path) -> String {
    path.display().to_string().replace(':', "\\:")
}

/// The fio command line for `plan` (without the binary).
pub fn fio_args(plan: &Plan) -> Vec<String> {
    let mut a = vec![
        "--name=fio".to_string(),
        format!("--filename={}", fio_filename(&plan.path)),
        "--ioengine=io_uring".to_string(),
        "--direct=1".to_string(),
        "--fixedbufs=1".to_string(),
        format!("--rw={}", plan.rw.fio_name()),
        format!("--bs={}", fio_size(plan.bs)),
        format!("--iodepth={}", plan.iodepth),
        format!("--iodepth_batch_submit={}", plan.iodepth_batch_submit),
        format!("--size={}", fio_size(plan.size)),
        format!("--runtime={}ms", plan.runtime.as_millis()),
        "--time_based".to_string(),
        "--readonly".to_string(),
        "--output-format=json".to_string(),
    ];
    if plan.rw == Rw::Randread {
        a.push("--norandommap".to_string());
        a.push("--randrepeat=0".to_string());
    }
    a
}

fn fio_version(fio: &Path) -> anyhow::Result<String> {
    match Command::new(fio).arg("--version").output() {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        }
        Ok(out) => bail!(
            "`{} --version` failed ({}): {}",
            fio.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "fio is not installed (no `{}` on PATH); install it with `apt-get install fio` \
             (Debian/Ubuntu) or `dnf install fio` (Fedora), pass its path with --fio-bin, or \
             drop --compare-fio",
            fio.display()
        ),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot run {}", fio.display()))),
    }
}

fn run_fio(fio: &Path, args: &[String]) -> anyhow::Result<Job> {
    let out = Command::new(fio)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", fio.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "fio failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout.trim()
        );
    }
    // fio may print notes before the JSON document.
    let json = stdout
        .find('{')
        .map(|i| &stdout[i..])
        .context("fio printed no JSON")?;
    let report: Report = serde_json::from_str(json).context("cannot parse fio's JSON output")?;
    let Some(job) = report.jobs.into_iter().next() else {
        bail!("fio's JSON output has no jobs");
    };
    if job.error != 0 {
        bail!(
            "fio's job failed with error {} ({})",
            job.error,
            std::io::Error::from_raw_os_error(job.error as i32)
        );
    }
    Ok(job)
}

pub fn run(plan: &Plan, runs: u32, fio: &Path, json: bool) -> anyhow::Result<()> {
    let fio_version = fio_version(fio)?;
    let args = fio_args(plan);
    let mut fio_command = vec![fio.display().to_string()];
    fio_command.extend(args.iter().cloned());
    if !json {
        println!("reel vs fio: {}", plan.describe());
        println!("fio command: {}", fio_command.join(" "));
        println!("{runs} runs of each, alternating reel and fio in ABBA order ({fio_version})");
    }
    let mut reel_jobs = Vec::new();
    let mut fio_jobs = Vec::new();
    for i in 1..=runs {
        // ABBA order (reel, fio, fio, reel, …): neither tool always runs first, so a device
        // that is faster or slower after a pause, or drifts, favours neither.
        let reel_first = i % 2 == 1;
        for reel_turn in [reel_first, !reel_first] {
            if reel_turn {
                let job = run_engine(plan)?.to_job("reel", plan);
                eprintln!("run {i}/{runs} reel: {}", one_line(&job));
                reel_jobs.push(job);
            } else {
                let job = run_fio(fio, &args)?;
                eprintln!("run {i}/{runs} fio:  {}", one_line(&job));
                fio_jobs.push(job);
            }
        }
    }
    let median_reel = Summary::of(&reel_jobs);
    let median_fio = Summary::of(&fio_jobs);
    let ratio = Summary::ratio(median_reel, median_fio);
    let paired_iops_ratios: Vec<f64> = reel_jobs
        .iter()
        .zip(&fio_jobs)
        .map(|(r, f)| r.read.iops / f.read.iops)
        .collect();
    if json {
        let c = Comparison {
            workload: plan.job_options(),
            fio_version,
            fio_command,
            runs: Runs {
                reel: reel_jobs,
                fio: fio_jobs,
            },
            median: Medians {
                reel: median_reel,
                fio: median_fio,
            },
            ratio,
            paired_iops_ratios,
        };
        println!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(());
    }
    println!();
    for (name, jobs) in [("reel", &reel_jobs), ("fio", &fio_jobs)] {
        for (i, j) in jobs.iter().enumerate() {
            println!("{name} run {}:", i + 1);
            print!("{}", job_text(j));
        }
    }
    println!();
    println!(
        "{:<14} {:>12} {:>14} {:>12} {:>12} {:>12}",
        "median", "IOPS", "BW", "clat p50", "clat p99", "CPU per I/O"
    );
    for (name, s) in [("reel", median_reel), ("fio", median_fio)] {
        println!(
            "{:<14} {:>12} {:>14} {:>12} {:>12} {:>12}",
            name,
            human_count(s.iops),
            format!("{}/s", human_bytes(s.bw_bytes as u64)),
            human_ns(s.clat_ns_p50),
            human_ns(s.clat_ns_p99),
            if s.cpu_ns_per_io.is_nan() {
                "?".to_string()
            } else {
                human_ns(s.cpu_ns_per_io)
            }
        );
    }
    println!(
        "{:<14} {:>12} {:>14} {:>12} {:>12} {:>12}",
        "ratio reel/fio",
        format!("{:.3}", ratio.iops),
        format!("{:.3}", ratio.bw_bytes),
        format!("{:.3}", ratio.clat_ns_p50),
        format!("{:.3}", ratio.clat_ns_p99),
        format!("{:.3}", ratio.cpu_ns_per_io)
    );
    let pairs: Vec<String> = paired_iops_ratios
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect();
    println!(
        "reel/fio IOPS of each pair of runs: {} (median {:.3})",
        pairs.join(" "),
        median(paired_iops_ratios.clone())
    );
    let verdict = if ratio.iops >= RATIO_TARGET && ratio.bw_bytes >= RATIO_TARGET {
        "meets"
    } else {
        "MISSES"
    };
    println!("throughput {verdict} the target of >= {RATIO_TARGET}x fio (higher is better; for latency lower is better)");
    Ok(())
}

fn one_line(job: &Job) -> String {
    let r = &job.read;
    format!(
        "{:>9} IOPS {:>12}/s  clat p50 {:>9}  p99 {:>9}  CPU/IO {:>9}",
        human_count(r.iops),
        human_bytes(r.bw_bytes),
        human_ns(r.clat_ns.at(50.0).unwrap_or(0) as f64),
        human_ns(r.clat_ns.at(99.0).unwrap_or(0) as f64),
        job.cpu_ns_per_io().map_or("?".to_string(), human_ns)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fio_filename_escapes_colons() {
        assert_eq!(fio_filename(Path::new("/a:b/c")), "/a\\:b/c");
    }
}

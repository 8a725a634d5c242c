//! `reel demo`: the embedded default. No root, no setup: formats a file-backed volume in a
//! temporary directory, ingests synthetic media assets through the engine (streaming, per-chunk
//! checksums), reads every byte back verified, deletes some, closes and reopens the volume (crash
//! recovery runs), checks the survivors, benchmarks the engine's read path on the volume file,
//! prints a summary and cleans up.
//!
//! (This is the engine-only first version; the tiering and cluster issues grow it into a node,
//! a manager and a skewed streaming load.)

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use reel_engine::driver::{Driver, DriverConfig};
use reel_engine::{FormatOptions, PutOptions, Volume};

use crate::bench_device::{run_engine, BenchDeviceArgs, Plan, Rw};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Directory for the volume file (default: a new temporary directory under /var/tmp, which
    /// must be on a filesystem with O_DIRECT, not tmpfs).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Number of assets to ingest.
    #[arg(long, default_value_t = 24)]
    pub assets: u32,
    /// Seconds per read benchmark run.
    #[arg(long, default_value_t = 2)]
    pub bench_seconds: u64,
    /// Keep the volume file afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// A deterministic synthetic asset of `len` bytes (a reader of unknown length).
struct Synthetic {
    rng: fastrand::Rng,
    left: u64,
}

impl Read for Synthetic {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        self.rng.fill(&mut buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

fn synthetic(seed: u64, len: u64) -> Synthetic {
    Synthetic {
        rng: fastrand::Rng::with_seed(seed),
        left: len,
    }
}

fn asset_len(i: u32) -> u64 {
    // A media-like mix: a few large files, many mid-sized segments, some small ones.
    match i % 6 {
        0 => 64 << 20,
        1 | 2 => (4 << 20) + i as u64 * 4099,
        3 => 12_345 + i as u64,
        _ => (17 << 20) + 1,
    }
}

fn fill_file(path: &std::path::Path, size: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        rng.fill(&mut buf);
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

pub fn run(args: &DemoArgs) -> Result<()> {
    crate::require_io_uring()?;
    let (dir, tmp) = match &args.dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("reel-demo.")
                .tempdir_in("/var/tmp")
                .context("creating a temporary directory under /var/tmp")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let path = dir.join("demo-volume.img");
    let total: u64 = (0..args.assets).map(asset_len).sum();
    let size = (total * 2).max(256 << 20).div_ceil(1 << 20) << 20;
    println!("reel demo: a file-backed volume in {}", dir.display());

    // Fill the file with real bytes first: preallocated but unwritten regions read back as
    // zeros without touching the device, which would flatter the read benchmark below.
    fill_file(&path, size).with_context(|| format!("writing {}", path.display()))?;
    let sb = Volume::format(
        &path,
        &FormatOptions {
            size: None,
            force: true,
            ..Default::default()
        },
    )
    .with_context(|| format!("formatting {}", path.display()))?;
    println!(
        "  formatted {} MiB: journal {} KiB, checkpoint slots 2 x {} KiB, data {} MiB, chunk {} KiB",
        sb.volume_bytes >> 20,
        sb.journal_bytes >> 10,
        sb.checkpoint_slot_bytes >> 10,
        (sb.data_blocks * 4096) >> 20,
        sb.chunk_size >> 10
    );
    let mut drv = Driver::new(&DriverConfig {
        ring_entries: 64,
        buf_size: 1 << 20,
        buf_count: 16,
        write_log: None,
    })?;

    // 1. Ingest.
    let vol = Volume::open(&path)?;
    let t = Instant::now();
    for i in 0..args.assets {
        let len = asset_len(i);
        let id = format!("demo/title-{:02}/video.mp4", i);
        // Half announce their length (like Content-Length), half stream with unknown length.
        let opts = PutOptions {
            content_type: Some("video/mp4".into()),
            size: (i % 2 == 0).then_some(len),
            depth: None,
        };
        vol.put(&mut drv, &id, &mut synthetic(i as u64, len), &opts)
            .with_context(|| format!("ingesting {id}"))?;
    }
    let ingest = t.elapsed();
    println!(
        "  ingested {} assets, {} MiB in {:.2?} ({:.0} MB/s, each durable before the next)",
        args.assets,
        total >> 20,
        ingest,
        mb_s(total, ingest)
    );

    // 2. Read everything back, verifying each chunk's crc32c, and compare with the source.
    let t = Instant::now();
    let mut read = 0u64;
    for a in vol.list() {
        let i: u32 = a
            .id()
            .trim_start_matches("demo/title-")
            .split('/')
            .next()
            .and_then(|n| n.parse().ok())
            .context("demo id")?;
        let mut expect = synthetic(i as u64, a.size());
        let mut want = vec![0u8; vol.chunk_size() as usize];
        for c in 0..a.chunk_count() as u64 {
            let got = vol.read_chunk_verified(&mut drv, &a, c)?;
            expect.read_exact(&mut want[..got.len()])?;
            if got != want[..got.len()] {
                bail!("{} chunk {c}: bytes differ from what was ingested", a.id());
            }
            read += got.len() as u64;
        }
    }
    let verify = t.elapsed();
    println!(
        "  read back and verified {} MiB in {:.2?} ({:.0} MB/s, crc32c per chunk)",
        read >> 20,
        verify,
        mb_s(read, verify)
    );

    // 3. Delete a third, close, reopen: recovery rebuilds the catalog and free space.
    let ids: Vec<String> = vol.list().iter().map(|a| a.id().to_string()).collect();
    let mut deleted = 0;
    for id in ids.iter().step_by(3) {
        vol.delete(&mut drv, id)?;
        deleted += 1;
    }
    let before = vol.stats();
    drop(vol);
    let t = Instant::now();
    let vol = Volume::open(&path)?;
    let r = vol.open_report();
    let after = vol.stats();
    println!(
        "  deleted {deleted}, reopened in {:.2?}: checkpoint generation {}, {} journal records replayed, {} assets",
        t.elapsed(),
        r.checkpoint_generation,
        r.records_replayed,
        r.assets
    );
    if after.assets != before.assets
        || after.used_bytes != before.used_bytes
        || after.used_bytes + after.free_bytes != after.capacity_bytes
    {
        bail!("recovery disagrees with the state before close: {before:?} vs {after:?}");
    }
    let bad = vol.scrub(&mut drv)?;
    if !bad.is_empty() {
        bail!("scrub found damage: {bad:?}");
    }
    println!(
        "  space: {} MiB used, {} MiB free of {} MiB; scrub clean",
        after.used_bytes >> 20,
        after.free_bytes >> 20,
        after.capacity_bytes >> 20
    );
    drop(vol);
    drop(drv);

    // 4. The engine's read path against the volume file.
    println!("  read benchmark on the volume file ({} s each; `reel bench device --compare-fio` compares with fio):", args.bench_seconds);
    for (rw, bs, name) in [
        (Rw::Read, 1u64 << 20, "seq 1M"),
        (Rw::Randread, 4096, "rand 4k"),
    ] {
        let bench = BenchDeviceArgs {
            device: path.clone(),
            rw,
            bs,
            iodepth: 32,
            runtime: Duration::from_secs(args.bench_seconds.max(1)),
            size: None,
            json: false,
            compare_fio: false,
            iodepth_batch_submit: 1,
            idle_poll: Duration::ZERO,
            runs: 1,
            fio_bin: PathBuf::from("fio"),
        };
        let m = run_engine(&Plan::new(&bench)?)?;
        println!(
            "    {name:>7} QD32: {:>8.0} IOPS {:>7.0} MB/s   latency p50 {:>6.1} us, p99 {:>6.1} us",
            m.iops(),
            m.io_bytes as f64 / m.elapsed.as_secs_f64() / 1e6,
            m.clat_ns.value_at_quantile(0.5) as f64 / 1e3,
            m.clat_ns.value_at_quantile(0.99) as f64 / 1e3
        );
    }
    if args.keep {
        println!("  kept {}", path.display());
        if let Some(t) = tmp {
            let _ = t.keep();
        }
    } else if args.dir.is_some() {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    println!("reel demo: done");
    Ok(())
}

//! Memory per catalog entry: builds N catalog entries (default 1M; `REEL_MEM_ASSETS=10000000`
//! for the full 10M) of 2 extents each and reports the heap bytes they hold, per entry and
//! projected to 10M, against the goal of 10M assets in at most 1.5 GiB.
//!
//! Each configuration runs in a fresh child process (this binary re-executed with
//! `REEL_MEM_CONFIG` set) so its RSS delta is not polluted by the previous one's freed memory.
//! Configurations: the engine's `catalog::Asset` in `catalog::new_map()` inserted as `Volume`
//! does, and the `packed` prototype (`reel_benches::packed`), each with 1 crc per asset (a small
//! asset) and 256 crcs (a 256 MiB asset at 1 MiB chunks).
//!
//! Four measures per entry:
//! - requested: live bytes requested from the allocator (a counting `#[global_allocator]`);
//! - glibc model: the same allocations rounded as glibc malloc does (8-byte header, 16-byte
//!   granularity, 32-byte minimum; mmap'd page-rounded above 128 KiB);
//! - jemalloc model: rounded to jemalloc's size classes (no per-allocation header), to show what
//!   switching the node's global allocator would change;
//! - RSS: the growth of the process's resident set (`VmRSS`), which is what the node pays with
//!   the system allocator (glibc) this binary uses.
//!
//! Run: `cargo bench -p reel-benches --bench catalog_memory`. Choose configurations with
//! `REEL_MEM_CONFIG=engine-1,packed-1` and the count with `REEL_MEM_ASSETS=10000000` (the
//! 256-crc configurations need about 14 GiB of RAM at 10M).

// The counting allocator must implement `GlobalAlloc`, an unsafe trait; this file's only unsafe
// code is that impl and the calls it forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use reel_benches::packed::{build_packed_catalog, PackedAsset};
use reel_benches::{build_catalog, entry_record, CONTENT_TYPE};
use reel_engine::catalog::Asset;
use reel_engine::format::Extent;

/// 1.5 GiB for 10M assets.
const GOAL_BYTES_FOR_10M: f64 = 1.5 * GIB;
const GIB: f64 = (1u64 << 30) as f64;
const TEN_MILLION: f64 = 10_000_000.0;
const CONFIGS: [&str; 4] = ["engine-1", "engine-256", "packed-1", "packed-256"];

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_GLIBC_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_JEMALLOC_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_ALLOCS: AtomicUsize = AtomicUsize::new(0);
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);

/// What glibc's malloc really takes for a request of `size` bytes (x86_64 defaults).
fn glibc_chunk_bytes(size: usize) -> usize {
    const MMAP_THRESHOLD: usize = 128 * 1024;
    if size >= MMAP_THRESHOLD {
        (size + 16).div_ceil(4096) * 4096
    } else {
        ((size + 8).div_ceil(16) * 16).max(32)
    }
}

/// What jemalloc would take for `size` bytes: 8, then multiples of 16 up to 128, then four
/// classes per doubling; page-rounded from 16 KiB on (untouched tail pages are not resident).
fn jemalloc_class_bytes(size: usize) -> usize {
    if size <= 8 {
        8
    } else if size <= 128 {
        size.div_ceil(16) * 16
    } else if size < 16 * 1024 {
        let step = size.next_power_of_two() / 8;
        size.div_ceil(step) * step
    } else {
        size.div_ceil(4096) * 4096
    }
}

/// `System`, counting live bytes (requested and glibc-rounded) and live allocations.
struct Counting;

fn note_alloc(size: usize) {
    let live = LIVE_BYTES.fetch_add(size, Ordering::Relaxed) + size;
    PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
    LIVE_GLIBC_BYTES.fetch_add(glibc_chunk_bytes(size), Ordering::Relaxed);
    LIVE_JEMALLOC_BYTES.fetch_add(jemalloc_class_bytes(size), Ordering::Relaxed);
    LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
}

fn note_dealloc(size: usize) {
    LIVE_BYTES.fetch_sub(size, Ordering::Relaxed);
    LIVE_GLIBC_BYTES.fetch_sub(glibc_chunk_bytes(size), Ordering::Relaxed);
    LIVE_JEMALLOC_BYTES.fetch_sub(jemalloc_class_bytes(size), Ordering::Relaxed);
    LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `System`; the counting touches only atomics
// and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract (non-zero size), which is
        // `System.alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note_alloc(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note_alloc(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller guarantees `ptr` came from this allocator (hence from `System`)
        // with this `layout`.
        unsafe { System.dealloc(ptr, layout) };
        note_dealloc(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `ptr` came from this allocator (hence from `System`)
        // with `layout`, and that `new_size` is valid for it.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note_dealloc(layout.size());
            note_alloc(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Clone, Copy)]
struct Snapshot {
    bytes: usize,
    glibc_bytes: usize,
    jemalloc_bytes: usize,
    allocs: usize,
    rss_bytes: u64,
}

fn snapshot() -> Snapshot {
    Snapshot {
        bytes: LIVE_BYTES.load(Ordering::Relaxed),
        glibc_bytes: LIVE_GLIBC_BYTES.load(Ordering::Relaxed),
        jemalloc_bytes: LIVE_JEMALLOC_BYTES.load(Ordering::Relaxed),
        allocs: LIVE_ALLOCS.load(Ordering::Relaxed),
        rss_bytes: rss_bytes(),
    }
}

/// Resident set size from `/proc/self/status` (`VmRSS`, in kB).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// One allocation's cost: (requested, glibc-rounded, jemalloc-rounded) bytes.
fn part(size: usize) -> [f64; 3] {
    [
        size as f64,
        glibc_chunk_bytes(size) as f64,
        jemalloc_class_bytes(size) as f64,
    ]
}

/// Ids sampled for the breakdown: four titles, so every category (id length) is represented as
/// often as in the whole catalog.
const BREAKDOWN_SAMPLE: u64 = 64;

/// The allocations one asset makes in each layout, computed from the types and averaged over
/// [`BREAKDOWN_SAMPLE`] ids (the rest of the measured total is the hash table).
fn parts(layout: &str, chunks: u32) -> Vec<(&'static str, [f64; 3])> {
    let mut sum: Vec<(&'static str, [f64; 3])> = Vec::new();
    for i in 0..BREAKDOWN_SAMPLE {
        let rec = entry_record(i, chunks);
        let id = rec.id.len();
        let one = match layout {
            "engine" => vec![
                (
                    "papaya node Box<(Box<str>, Arc<Asset>)>",
                    part(std::mem::size_of::<(Box<str>, Arc<Asset>)>()),
                ),
                ("map key: 2nd copy of the id (Box<str>)", part(id)),
                (
                    "Arc<Asset> (2 counters + Asset)",
                    part(16 + std::mem::size_of::<Asset>()),
                ),
                ("Asset.id Box<str>", part(id)),
                ("Asset.content_type Box<str>", part(CONTENT_TYPE.len())),
                (
                    "Asset.extents Box<[Extent]> (16 B each)",
                    part(rec.extents.len() * std::mem::size_of::<Extent>()),
                ),
                ("Asset.crcs Box<[u32]>", part(rec.crcs.len() * 4)),
            ],
            _ => vec![
                (
                    "papaya node Box<(PackedAsset, ())>",
                    part(std::mem::size_of::<PackedAsset>()),
                ),
                (
                    "Arc<[u8]> (2 counters + fixed 22 + id + 8/extent + 4/crc)",
                    part(PackedAsset::new(&rec, 0, 1).arc_alloc_bytes()),
                ),
            ],
        };
        if sum.is_empty() {
            sum = one.iter().map(|(name, _)| (*name, [0.0; 3])).collect();
        }
        for ((_, acc), (_, cost)) in sum.iter_mut().zip(one) {
            for (a, c) in acc.iter_mut().zip(cost) {
                *a += c / BREAKDOWN_SAMPLE as f64;
            }
        }
    }
    sum
}

fn run_config(config: &str, n: u64) {
    let (layout, chunks) = match config {
        "engine-1" => ("engine", 1),
        "engine-256" => ("engine", 256),
        "packed-1" => ("packed", 1),
        "packed-256" => ("packed", 256),
        other => panic!("unknown REEL_MEM_CONFIG {other:?}; one of {CONFIGS:?}"),
    };
    let before = snapshot();
    PEAK_BYTES.store(before.bytes, Ordering::Relaxed);
    let t0 = Instant::now();
    // Keep the catalog alive until after the snapshot.
    let catalog: Box<dyn std::any::Any> = match layout {
        "engine" => Box::new(build_catalog(n, chunks)),
        _ => Box::new(build_packed_catalog(n, chunks)),
    };
    let build_s = t0.elapsed().as_secs_f64();
    let after = snapshot();
    let peak = PEAK_BYTES.load(Ordering::Relaxed);

    let nf = n as f64;
    let per = |a: usize, b: usize| (a.saturating_sub(b)) as f64 / nf;
    let bytes_per_entry = per(after.bytes, before.bytes);
    let glibc_per_entry = per(after.glibc_bytes, before.glibc_bytes);
    let jemalloc_per_entry = per(after.jemalloc_bytes, before.jemalloc_bytes);
    let allocs_per_entry = per(after.allocs, before.allocs);
    let rss_per_entry = after.rss_bytes.saturating_sub(before.rss_bytes) as f64 / nf;
    let peak_per_entry = per(peak, before.bytes);

    println!(
        "== {config}: {n} assets ({layout} layout, 2 extents, {chunks} crc(s) each), built in \
         {build_s:.1} s"
    );
    println!(
        "   per entry: requested {bytes_per_entry:.1} B, glibc model {glibc_per_entry:.1} B, \
         jemalloc model {jemalloc_per_entry:.1} B, RSS {rss_per_entry:.1} B, \
         {allocs_per_entry:.2} allocations (peak requested during build {peak_per_entry:.1} B)"
    );
    println!(
        "   total: requested {:.3} GiB, glibc model {:.3} GiB, jemalloc model {:.3} GiB, RSS \
         delta {:.3} GiB",
        after.bytes.saturating_sub(before.bytes) as f64 / GIB,
        after.glibc_bytes.saturating_sub(before.glibc_bytes) as f64 / GIB,
        after.jemalloc_bytes.saturating_sub(before.jemalloc_bytes) as f64 / GIB,
        after.rss_bytes.saturating_sub(before.rss_bytes) as f64 / GIB,
    );
    println!(
        "   breakdown per asset, average over {BREAKDOWN_SAMPLE} ids (requested / glibc chunk / \
         jemalloc class):"
    );
    let mut sums = [0.0f64; 3];
    for (name, cost) in parts(layout, chunks) {
        println!(
            "     {:>7.1} / {:>7.1} / {:>7.1} B  {name}",
            cost[0], cost[1], cost[2]
        );
        for (s, c) in sums.iter_mut().zip(cost) {
            *s += c;
        }
    }
    println!(
        "     {:>7.1} / {:>7.1} / {:>7.1} B  hash table slots and the rest (measured total minus \
         the above)",
        bytes_per_entry - sums[0],
        glibc_per_entry - sums[1],
        jemalloc_per_entry - sums[2],
    );
    println!(
        "     (papaya's table is 9 B per slot, a power of two of them at up to ~95 % load, and \
         keeps the previous table while a resize is under way: 1M assets is such a moment)"
    );
    let projected = rss_per_entry.max(glibc_per_entry) * TEN_MILLION;
    let verdict = if projected <= GOAL_BYTES_FOR_10M {
        "MEETS"
    } else {
        "MISSES"
    };
    println!(
        "   verdict: {verdict} the goal: 10M such assets ≈ {:.2} GiB (max of RSS and glibc model \
         per entry at {n}, {:.0} B/entry) vs ≤ 1.50 GiB ({:.0} B/entry)",
        projected / GIB,
        projected / TEN_MILLION,
        GOAL_BYTES_FOR_10M / TEN_MILLION,
    );
    drop(catalog);
}

fn main() {
    let n: u64 = match std::env::var("REEL_MEM_ASSETS") {
        Ok(v) => v
            .parse()
            .expect("REEL_MEM_ASSETS must be a number of assets"),
        Err(_) => 1_000_000,
    };
    // One configuration: run it here. None or several: run each in a child process.
    let configs: Vec<String> = match std::env::var("REEL_MEM_CONFIG") {
        Ok(list) => list.split(',').map(|c| c.trim().to_string()).collect(),
        Err(_) => CONFIGS.iter().map(|c| c.to_string()).collect(),
    };
    if let [config] = configs.as_slice() {
        run_config(config, n);
        return;
    }
    let exe = std::env::current_exe().expect("path of this benchmark binary");
    for config in &configs {
        let status = std::process::Command::new(&exe)
            .env("REEL_MEM_CONFIG", config)
            .env("REEL_MEM_ASSETS", n.to_string())
            .status()
            .expect("re-run this benchmark for one configuration");
        assert!(status.success(), "configuration {config} failed: {status}");
    }
}

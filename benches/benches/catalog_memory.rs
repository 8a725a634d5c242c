//! Memory per catalog entry: builds N catalog entries (default 1M; `REEL_MEM_ASSETS=10000000`
//! for the full 10M) of 2 extents each, exactly as `Volume` does at open, and reports the memory
//! they hold, per entry and for 10M, against the goal of 10M assets in at most 1.5 GiB.
//!
//! Two measures per entry:
//! - RSS: the growth of the process's resident set (`VmRSS`) — what the node really pays with
//!   the system allocator (glibc), headers and rounding included. This is the figure that counts.
//! - requested: live bytes and allocations requested from the allocator (counted by
//!   `stats_alloc`, so this file needs no `unsafe`).
//!
//! Each configuration runs in a fresh child process (this binary re-executed with
//! `REEL_MEM_CONFIG` set) so that its RSS is not polluted by the previous one's freed memory.
//! Configurations: 1 crc per asset (a small asset) and 256 crcs (a 256 MiB asset at 1 MiB
//! chunks; the crcs cost 4 bytes per MiB stored, whatever the layout).
//!
//! Run: `cargo bench -p reel-benches --bench catalog_memory`
//! (`REEL_MEM_CONFIG=small` or `large` for one; `REEL_MEM_ASSETS=10000000` for 10M).

use std::alloc::System;
use std::time::Instant;

use reel_benches::build_catalog;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const GIB: f64 = (1u64 << 30) as f64;
const GOAL_BYTES_FOR_10M: f64 = 1.5 * GIB;
const TEN_MILLION: f64 = 10_000_000.0;
const CONFIGS: [(&str, u32); 2] = [("small", 1), ("large", 256)];

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS in /proc/self/status")
}

fn run_config(name: &str, chunks: u32, n: u64) {
    let rss_before = rss_bytes();
    let region = Region::new(GLOBAL);
    let t0 = Instant::now();
    let catalog = build_catalog(n, chunks);
    let built = t0.elapsed();
    let change = region.change();
    let rss_after = rss_bytes();
    assert_eq!(catalog.len() as u64, n);

    let per = |bytes: f64| bytes / n as f64;
    let live = change.bytes_allocated as f64 - change.bytes_deallocated as f64
        + change.bytes_reallocated as f64;
    let allocs = change.allocations as f64 - change.deallocations as f64;
    let rss = rss_after.saturating_sub(rss_before) as f64;
    let rss_per_entry = per(rss);
    let projected = rss_per_entry * TEN_MILLION;
    println!("catalog memory, {name} assets ({chunks} crc{} each, 2 extents, ~37-byte ids), {n} entries, built in {built:.2?}:", if chunks == 1 { "" } else { "s" });
    println!(
        "   per entry: RSS {rss_per_entry:.1} B, requested {:.1} B in {:.2} allocations",
        per(live),
        per(allocs)
    );
    println!(
        "   total RSS {:.3} GiB; 10M entries ≈ {:.2} GiB",
        rss / GIB,
        projected / GIB
    );
    if chunks == 1 {
        let verdict = if projected <= GOAL_BYTES_FOR_10M {
            "MEETS"
        } else {
            "MISSES"
        };
        println!("   verdict: {verdict} the goal of 10M assets in ≤ 1.5 GiB");
    } else {
        println!("   (large assets: the crcs dominate, 4 B per MiB stored; the 1.5 GiB goal is for small assets)");
    }
    drop(catalog);
}

fn main() {
    // Criterion-style arguments (`--bench`) are ignored.
    let n: u64 = std::env::var("REEL_MEM_ASSETS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    if let Ok(config) = std::env::var("REEL_MEM_CHILD") {
        let (name, chunks) = CONFIGS
            .iter()
            .find(|(c, _)| *c == config)
            .copied()
            .expect("known configuration");
        run_config(name, chunks, n);
        return;
    }
    let wanted: Vec<String> = match std::env::var("REEL_MEM_CONFIG") {
        Ok(list) => list.split(',').map(str::to_string).collect(),
        Err(_) => CONFIGS.iter().map(|(c, _)| c.to_string()).collect(),
    };
    let exe = std::env::current_exe().expect("own path");
    for config in wanted {
        assert!(
            CONFIGS.iter().any(|(c, _)| *c == config),
            "unknown REEL_MEM_CONFIG {config:?}; one of small, large"
        );
        let status = std::process::Command::new(&exe)
            .env("REEL_MEM_CHILD", &config)
            .env("REEL_MEM_ASSETS", n.to_string())
            .status()
            .expect("run configuration in a child process");
        assert!(status.success(), "configuration {config} failed");
    }
}

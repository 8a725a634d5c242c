//! What request-rate counting costs on the serving path, against what serving costs.
//!
//! Every served request calls [`RateWriter::record`] once (slot of the asset, bytes asked). The
//! goal: counting costs < 1% of serving a 64 KiB range from a buffer, and it scales with the
//! number of shard threads (each owns its own writer and table, so they share no line).
//!
//! - `rate/record/*`: one `record(slot, 65536)`, slots from a precomputed random sequence over
//!   1M slots (16 MB of counters: misses L1/L2, hits a 32 MiB L3 unless other processes crowd
//!   it out), over 10M slots (160 MB: past the L3, so mostly DRAM and TLB misses), and over 1024
//!   hot slots (stay in L1/L2).
//! - `rate/serve_64k_from_buffer`: the reference, user-space only (see [`serve_loop`]).
//! - `rate/scaling/<N>threads`: N threads, each with its own writer, recording into random
//!   slots of 1M at once; the time is wall time per record of one thread, the throughput is the
//!   aggregate over all threads. The machine this was written on has 2 cores: N > 2 measures
//!   oversubscription.
//! - `rate/report`: not a criterion benchmark: a manual timing (`Instant`, fastest of several
//!   rounds) that prints, for each slot distribution, the cost of a record as a share of serving
//!   against the 1% target, both back-to-back (as `rate/record/*`) and interleaved with serving
//!   (one record per range copied: the marginal cost where it is paid), then the scaling table
//!   for random and hot slots. It runs last.
//!
//! Run: `cargo bench -p reel-benches --bench rate` (about 35 s), or with a filter such as
//! `rate/record`, `rate/scaling` or `rate/report`. `cargo test --benches` runs it all once,
//! with the report on tiny counts.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use reel_engine::tier::rate::{RateCounters, RateWriter};

/// The range a request asks for: what `record` counts and what the reference copies.
const RANGE_BYTES: usize = 64 << 10;
const SLOTS_1M: u32 = 1_000_000;
const SLOTS_10M: u32 = 10_000_000;
/// Distinct slots of the cache-hot variant (popular assets spread over the 1M slots).
const HOT_SLOTS: usize = 1024;
/// Precomputed slots, read in order (4 MiB, streamed: the prefetcher hides it).
const SEQ_LEN: usize = 1 << 20;
const SEQ_MASK: usize = SEQ_LEN - 1;
/// Counting may cost at most this fraction of serving.
const TARGET: f64 = 0.01;
const REPORT: &str = "rate/report";

/// `SEQ_LEN` slots drawn uniformly from `0..slots`.
fn random_slots(slots: u32, seed: u64) -> Vec<u32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..SEQ_LEN).map(|_| rng.u32(0..slots)).collect()
}

/// `SEQ_LEN` slots drawn uniformly from `HOT_SLOTS` random slots of the 1M.
fn hot_slots(seed: u64) -> Vec<u32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let hot: Vec<u32> = (0..HOT_SLOTS).map(|_| rng.u32(0..SLOTS_1M)).collect();
    (0..SEQ_LEN).map(|_| hot[rng.usize(0..HOT_SLOTS)]).collect()
}

/// One writer over a table preallocated for `slots` (as the scheduler does with
/// `ensure_slots`, so no record allocates).
fn one_writer(slots: u32) -> (Arc<RateCounters>, RateWriter) {
    let (counters, mut writers) = RateCounters::new(1);
    counters.ensure_slots(slots);
    let writer = writers.pop().expect("one writer per shard");
    (counters, writer)
}

/// `records` records of `RANGE_BYTES` through `w`, slots read from `seq` from `start` on. The
/// time includes the loop and the sequence read, so it overstates `record` slightly.
fn record_loop(w: &RateWriter, seq: &[u32], start: usize, records: u64) -> Duration {
    let mut k = start;
    let t0 = Instant::now();
    for _ in 0..records {
        k = (k + 1) & SEQ_MASK;
        w.record(black_box(seq[k]), RANGE_BYTES as u64);
    }
    t0.elapsed()
}

/// The reference: "serving a 64 KiB range from a buffer", modelled in user space as copying
/// 64 KiB from a preallocated buffer into another (a memcpy, both buffers cache-hot) in a plain
/// loop, with no checksum. The real send path costs more: the node's `write_all` to the socket
/// adds a syscall and the kernel's copy into socket buffers (and, when the chunk is not in
/// memory, a device read and the crc check). So the ratio record/serve computed against this
/// reference is conservative: the true share of counting is smaller.
fn serve_loop(src: &[u8], dst: &mut [u8], ranges: u64) -> Duration {
    let t0 = Instant::now();
    for _ in 0..ranges {
        dst.copy_from_slice(black_box(src));
        black_box(&mut *dst);
    }
    t0.elapsed()
}

/// [`serve_loop`] with one record per range, as the shard does it: the marginal cost of
/// counting in the context of serving (the copy has evicted the counters from L1/L2).
fn serve_record_loop(
    src: &[u8],
    dst: &mut [u8],
    w: &RateWriter,
    seq: &[u32],
    start: usize,
    ranges: u64,
) -> Duration {
    let mut k = start;
    let t0 = Instant::now();
    for _ in 0..ranges {
        k = (k + 1) & SEQ_MASK;
        w.record(black_box(seq[k]), RANGE_BYTES as u64);
        dst.copy_from_slice(black_box(src));
        black_box(&mut *dst);
    }
    t0.elapsed()
}

/// The latency of a record whose miss nothing overlaps: the slot's counters are loaded first
/// (`totals`) and the next slot's position depends on the loaded value, so no two misses
/// overlap, as they can in [`record_loop`] (out-of-order execution runs ahead to the next
/// records). A reference for reading the other figures, not a bound: in
/// [`serve_record_loop`] the pending counter store can also hold back the copy's stores behind
/// it (x86 stores leave the store buffer in order).
fn dependent_record_loop(
    counters: &RateCounters,
    w: &RateWriter,
    seq: &[u32],
    records: u64,
) -> Duration {
    let mut k = 0usize;
    let t0 = Instant::now();
    for _ in 0..records {
        let slot = seq[k];
        let (requests, _) = counters.totals(slot);
        w.record(slot, RANGE_BYTES as u64);
        // `requests` never reaches 2^63, so this adds 0; but the compiler and the CPU cannot
        // know, so the next slot's address waits for this load.
        k = (k + 1 + (requests >> 63) as usize) & SEQ_MASK;
    }
    t0.elapsed()
}

/// `writers.len()` threads, each owning one writer, record `records` times each into slots of
/// `seq` (each thread from its own offset). Returns the wall time of the work (first start to
/// last end, thread spawning excluded) and the writers, in order.
fn threaded_records(
    writers: Vec<RateWriter>,
    seq: &[u32],
    records: u64,
) -> (Duration, Vec<RateWriter>) {
    let n = writers.len();
    let barrier = Barrier::new(n);
    let done: Vec<(RateWriter, Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = writers
            .into_iter()
            .enumerate()
            .map(|(t, w)| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let t0 = Instant::now();
                    record_loop(&w, seq, t * (SEQ_LEN / n), records);
                    (w, t0, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("recording thread panicked"))
            .collect()
    });
    let start = done.iter().map(|d| d.1).min().expect("at least one thread");
    let end = done.iter().map(|d| d.2).max().expect("at least one thread");
    (end - start, done.into_iter().map(|d| d.0).collect())
}

/// Shards and writers for `n` threads, every table preallocated for `slots`.
fn writers_for(n: usize, slots: u32) -> (Arc<RateCounters>, Vec<RateWriter>) {
    let (counters, writers) = RateCounters::new(n);
    counters.ensure_slots(slots);
    (counters, writers)
}

/// 1, 2, 4 and the available parallelism. This machine has 2 cores: N > 2 measures
/// oversubscription (threads time-sharing a core), not more parallel counting.
fn thread_counts() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts = vec![1, 2, 4, cores];
    counts.sort_unstable();
    counts.dedup();
    counts
}

fn record(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate");
    g.throughput(Throughput::Elements(1));
    let cases = [
        ("1M_random", SLOTS_1M, random_slots(SLOTS_1M, 1)),
        ("10M_random", SLOTS_10M, random_slots(SLOTS_10M, 2)),
        ("hot_1k", SLOTS_1M, hot_slots(3)),
    ];
    for (name, slots, seq) in &cases {
        let (_counters, w) = one_writer(*slots);
        g.bench_function(BenchmarkId::new("record", name), |b| {
            let mut start = 0;
            b.iter_custom(|iters| {
                start = (start + iters as usize) & SEQ_MASK;
                record_loop(&w, seq, start, iters)
            })
        });
    }
    g.finish();
}

fn serve(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate");
    g.throughput(Throughput::Bytes(RANGE_BYTES as u64));
    let mut rng = fastrand::Rng::with_seed(4);
    let src: Vec<u8> = (0..RANGE_BYTES).map(|_| rng.u8(..)).collect();
    let mut dst = vec![0u8; RANGE_BYTES];
    g.bench_function("serve_64k_from_buffer", |b| {
        b.iter_custom(|iters| serve_loop(&src, &mut dst, iters))
    });
    g.finish();
}

fn scaling(c: &mut Criterion) {
    let seq = random_slots(SLOTS_1M, 5);
    let mut g = c.benchmark_group("rate");
    g.sample_size(10);
    for n in thread_counts() {
        let (_counters, mut writers) = writers_for(n, SLOTS_1M);
        // Time per iteration = wall time per record of one thread, while all N record; the
        // throughput is the aggregate: N records per iteration.
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("scaling", format!("{n}threads")), |b| {
            b.iter_custom(|iters| {
                let (wall, back) = threaded_records(std::mem::take(&mut writers), &seq, iters);
                writers = back;
                wall
            })
        });
    }
    g.finish();
}

/// Best (smallest) of `rounds` runs of `f`: the run least disturbed by the rest of the machine.
fn best_of(rounds: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..rounds).map(|_| f()).min().unwrap_or_default()
}

fn ns_per(d: Duration, n: u64) -> f64 {
    d.as_secs_f64() * 1e9 / n as f64
}

fn verdict(share: f64) -> &'static str {
    if share < TARGET {
        "meets the target"
    } else {
        "MISSES the target"
    }
}

/// What `rate/report` does under criterion's command line: run (in bench or test mode, the
/// latter with tiny counts), list, or skip (a filter that does not match it, `--ignored`).
/// Criterion's filter is a regex; a plain substring match covers the usual filters.
enum ReportMode {
    Run { quick: bool },
    List,
    Skip,
}

fn report_mode() -> ReportMode {
    // Criterion's options that take a value (the value is not a filter).
    const WITH_VALUE: [&str; 20] = [
        "-c",
        "--color",
        "--colour",
        "-s",
        "--save-baseline",
        "-b",
        "--baseline",
        "--baseline-lenient",
        "--format",
        "--profile-time",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--plotting-backend",
        "--output-format",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let mut filter = None;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if WITH_VALUE.contains(&a) {
            i += 2;
            continue;
        }
        if !a.starts_with('-') && filter.is_none() {
            filter = Some(a);
        }
        i += 1;
    }
    let selected = match filter {
        None => true,
        Some(f) if has("--exact") => f == REPORT,
        Some(f) => REPORT.contains(f),
    };
    if !selected || has("--ignored") {
        ReportMode::Skip
    } else if has("--list") {
        ReportMode::List
    } else {
        ReportMode::Run {
            quick: !has("--bench") || has("--test"),
        }
    }
}

/// Counting interleaved with serving: blocks of `block` ranges served with and without a
/// record each, alternating (ABBA, so a drift in the machine's speed hits both alike). Returns
/// ns per range without and with counting, each the fastest of its blocks (the least disturbed
/// by other processes).
fn interleaved(
    src: &[u8],
    dst: &mut [u8],
    w: &RateWriter,
    seq: &[u32],
    block: u64,
    blocks: usize,
) -> (f64, f64) {
    let (mut plain, mut counted) = (Duration::MAX, Duration::MAX);
    for b in 0..blocks {
        let start = b * block as usize;
        let mut run_plain = |dst: &mut [u8]| plain = plain.min(serve_loop(src, dst, block));
        let mut run_counted = |dst: &mut [u8]| {
            counted = counted.min(serve_record_loop(src, dst, w, seq, start, block))
        };
        if b % 2 == 0 {
            run_plain(dst);
            run_counted(dst);
        } else {
            run_counted(dst);
            run_plain(dst);
        }
    }
    (ns_per(plain, block), ns_per(counted, block))
}

/// The manual timing: prints what counting costs as a share of serving, and the scaling table.
fn report(_: &mut Criterion) {
    let quick = match report_mode() {
        ReportMode::Run { quick } => quick,
        ReportMode::List => {
            println!("{REPORT}: benchmark");
            return;
        }
        ReportMode::Skip => return,
    };
    // About 0.1–0.5 s per measure, 10 s in all on this machine; tiny counts in test mode.
    let scale: u64 = if quick { 1 } else { 1000 };
    let rounds = if quick { 1 } else { 3 };
    let records = 4_000 * scale;
    let ranges = 20 * scale;
    let (block, blocks) = if quick { (10, 2) } else { (500, 200) };

    let mut rng = fastrand::Rng::with_seed(4);
    let src: Vec<u8> = (0..RANGE_BYTES).map(|_| rng.u8(..)).collect();
    let mut dst = vec![0u8; RANGE_BYTES];
    let serve_ns = ns_per(
        best_of(rounds, || serve_loop(&src, &mut dst, ranges)),
        ranges,
    );
    eprintln!(
        "{REPORT}: serving a 64 KiB range from a buffer (user-space memcpy, cache-hot; the real \
         send path adds a syscall and a kernel copy, so the shares below are conservative): \
         {serve_ns:.0} ns = {:.1} GB/s",
        RANGE_BYTES as f64 / serve_ns
    );
    let line = |what: &str, ns: f64| {
        let share = ns / serve_ns;
        eprintln!(
            "{REPORT}: counting costs {ns:.1} ns = {:.2}% of serving a 64 KiB range \
             (target < 1%): {} — {what}",
            share * 100.0,
            verdict(share)
        );
    };

    let cases = [
        // Control: one counter line, which the copy pushes out of L1 but not out of L2. What
        // this costs interleaved with serving is the floor of that measure.
        ("one slot", SLOTS_1M, vec![7u32; SEQ_LEN]),
        ("hot 1024 slots", SLOTS_1M, hot_slots(3)),
        ("1M random slots", SLOTS_1M, random_slots(SLOTS_1M, 1)),
        ("10M random slots", SLOTS_10M, random_slots(SLOTS_10M, 2)),
    ];
    for (what, slots, seq) in &cases {
        let (counters, w) = one_writer(*slots);
        let ns = ns_per(
            best_of(rounds, || record_loop(&w, seq, 0, records)),
            records,
        );
        line(&format!("{what}, back-to-back records"), ns);
        let (plain, counted) = interleaved(&src, &mut dst, &w, seq, block, blocks);
        line(
            &format!(
                "{what}, one record per range served ({counted:.0} ns per range with, \
                 {plain:.0} ns without)"
            ),
            (counted - plain).max(0.0),
        );
        if *slots == SLOTS_10M {
            let dependent = records / 10;
            let ns = ns_per(
                best_of(rounds, || {
                    dependent_record_loop(&counters, &w, seq, dependent)
                }),
                dependent,
            );
            eprintln!(
                "{REPORT}: for reference, a record whose miss nothing overlaps (dependent \
                 chain, {what}): {ns:.1} ns"
            );
        }
    }

    // Scaling: N threads, each its own writer and table. With random slots, N tables of 16 MB
    // soon outgrow the L3, so that column also measures cache capacity; the hot column is the
    // counting itself.
    let random = random_slots(SLOTS_1M, 5);
    let hot = hot_slots(6);
    let per_thread = records / 2;
    eprintln!(
        "{REPORT}: scaling, {per_thread} records per thread, each thread its own shard (this \
         machine has 2 cores: N > 2 is oversubscribed)"
    );
    eprintln!(
        "{REPORT}:             1M random slots per shard             hot 1024 slots per shard"
    );
    eprintln!(
        "{REPORT}:   threads  ns/record/thread  Mrecords/s  vs 1     ns/record/thread  \
         Mrecords/s  vs 1"
    );
    let mut one_thread = [None, None];
    for n in thread_counts() {
        let (_counters, mut writers) = writers_for(n, SLOTS_1M);
        let mut cells = String::new();
        for (i, seq) in [&random, &hot].into_iter().enumerate() {
            let wall = best_of(rounds, || {
                let (wall, back) = threaded_records(std::mem::take(&mut writers), seq, per_thread);
                writers = back;
                wall
            });
            let aggregate = (n as u64 * per_thread) as f64 / wall.as_secs_f64() / 1e6;
            let base = *one_thread[i].get_or_insert(aggregate);
            cells.push_str(&format!(
                "  {:>16.2}  {aggregate:>10.1}  {:>4.2}×",
                ns_per(wall, per_thread),
                aggregate / base
            ));
        }
        eprintln!("{REPORT}:   {n:>7}{cells}");
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = record, serve, scaling, report
}
criterion_main!(benches);

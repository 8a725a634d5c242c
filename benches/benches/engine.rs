//! Criterion benchmarks of the engine's hot in-memory paths:
//!
//! - `catalog`: id → asset lookup in a 1M-asset catalog, as `Volume::get` does it: hit and miss
//!   over 2^18 random ids (mostly DRAM misses), hit over 1024 ids (cache-hot), hit with two
//!   threads looking up at once.
//! - `journal`: encode, and decode + checksum verify + payload decode, of a Put record for a
//!   1-chunk and a 256-chunk asset, and of a Delete.
//! - `crc32c`: one 1 MiB chunk (the per-chunk checksum every read verifies).
//!
//! Run: `cargo bench -p reel-benches --bench engine` (append a filter such as `catalog/`).
//! The catalog group runs last, so that the journal benchmarks allocate from a heap that has not
//! just held and freed millions of catalog allocations.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reel_benches::{asset_id, build_catalog, entry_record, missing_asset_id};
use reel_store::catalog::Catalog;
use reel_store::format::{decode_record, encode_record, Record};

/// Assets in the benchmark catalog.
const CATALOG_ASSETS: u64 = 1_000_000;
/// Distinct ids probed, in random order: enough that the touched entries do not all stay in
/// the CPU caches, as with a real request mix over a large catalog.
const PROBE_IDS: usize = 1 << 18;
/// Distinct ids probed by the cache-hot variant.
const HOT_IDS: usize = 1024;
const JOURNAL_SEED: u32 = 0x5eed_1234;

fn probe_ids(hit: bool) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..PROBE_IDS)
        .map(|_| {
            let i = rng.u64(0..CATALOG_ASSETS);
            if hit {
                asset_id(i)
            } else {
                missing_asset_id(i)
            }
        })
        .collect()
}

fn lookup(map: &Catalog, id: &str) -> bool {
    // Exactly `Volume::get`: hash the id, pin, look up, clone the asset handle out.
    map.get(id).is_some()
}

fn catalog(c: &mut Criterion) {
    let map = build_catalog(CATALOG_ASSETS, 1);
    let hits = probe_ids(true);
    let misses = probe_ids(false);
    let mut g = c.benchmark_group("catalog");
    g.throughput(Throughput::Elements(1));

    g.bench_function("lookup_hit_1M", |b| {
        let mut k = 0usize;
        b.iter(|| {
            k = (k + 1) % PROBE_IDS;
            assert!(lookup(&map, black_box(&hits[k])));
        })
    });

    // The same lookup over 1024 ids that stay in the CPU caches: the cost without DRAM misses.
    g.bench_function("lookup_hit_1M_hot1k", |b| {
        let mut k = 0usize;
        b.iter(|| {
            k = (k + 1) % HOT_IDS;
            assert!(lookup(&map, black_box(&hits[k])));
        })
    });

    g.bench_function("lookup_miss_1M", |b| {
        let mut k = 0usize;
        b.iter(|| {
            k = (k + 1) % PROBE_IDS;
            assert!(!lookup(&map, black_box(&misses[k])));
        })
    });

    // Two threads look up concurrently; the reported time is per lookup on one thread while
    // the other also looks up (aggregate throughput is twice the reported rate).
    g.bench_function("lookup_hit_1M_2threads", |b| {
        b.iter_custom(|iters| {
            let start = Arc::new(Barrier::new(2));
            let per_thread: Vec<Duration> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..2usize)
                    .map(|t| {
                        let (map, hits, start) = (&map, &hits, start.clone());
                        s.spawn(move || {
                            let mut k = t * (PROBE_IDS / 2);
                            start.wait();
                            let t0 = Instant::now();
                            for _ in 0..iters {
                                k = (k + 1) % PROBE_IDS;
                                assert!(lookup(map, black_box(&hits[k])));
                            }
                            t0.elapsed()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("lookup thread panicked"))
                    .collect()
            });
            per_thread.iter().sum::<Duration>() / 2
        })
    });
    drop(map);
    g.finish();
}

fn journal(c: &mut Criterion) {
    let mut g = c.benchmark_group("journal");
    let cases = [
        ("put_1chunk", Record::Put(entry_record(123_456, 1))),
        ("put_256chunks", Record::Put(entry_record(123_456, 256))),
        (
            "delete",
            Record::Delete {
                id: asset_id(123_456),
            },
        ),
    ];
    for (name, record) in &cases {
        let mut encoded = Vec::new();
        encode_record(&mut encoded, JOURNAL_SEED, record, 42, 40, 0xdead_beef);
        g.throughput(Throughput::Bytes(encoded.len() as u64));

        let mut out = Vec::with_capacity(encoded.len());
        g.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(encode_record(
                    &mut out,
                    JOURNAL_SEED,
                    black_box(record),
                    42,
                    40,
                    0xdead_beef,
                ))
            })
        });

        g.bench_function(format!("decode_verify_{name}"), |b| {
            b.iter(|| {
                let (header, payload) =
                    decode_record(black_box(&encoded), JOURNAL_SEED).expect("valid record");
                let decoded = Record::decode_payload(header.kind, payload).expect("valid payload");
                black_box(decoded)
            })
        });
        // The decoder is only worth timing if it round-trips.
        let (header, payload) = decode_record(&encoded, JOURNAL_SEED).expect("valid record");
        assert_eq!(
            &Record::decode_payload(header.kind, payload).expect("valid payload"),
            record
        );
    }
    g.finish();
}

fn crc32c_chunk(c: &mut Criterion) {
    const CHUNK: usize = 1 << 20;
    let mut g = c.benchmark_group("crc32c");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    let mut rng = fastrand::Rng::with_seed(3);
    let chunk: Vec<u8> = (0..CHUNK).map(|_| rng.u8(..)).collect();
    g.bench_function("1MiB", |b| {
        b.iter(|| black_box(crc32c::crc32c(black_box(&chunk))))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = crc32c_chunk, journal, catalog
}
criterion_main!(benches);

//! Shared fixtures for the benchmarks in `benches/`: realistic asset ids and catalogs built the
//! way `Volume` builds them.
//!
//! Nothing here is used by the engine; it exists so `engine.rs` and `catalog_memory.rs` measure
//! the same data.

use reel_store::catalog::{Asset, Catalog};
use reel_store::format::{EntryRecord, Extent, CHUNK_SIZE_DEFAULT};

/// Content type given to every generated asset (the common case for a video store).
pub const CONTENT_TYPE: &str = "video/mp4";

const CATEGORIES: [&str; 4] = ["movies", "series", "clips", "trailers"];

/// A realistic, unique asset id for index `i`: 16 segments per title, e.g.
/// `movies/2024/title-123456/seg-0001.mp4` (34–39 bytes; 37 on average over many ids).
pub fn asset_id(i: u64) -> String {
    let title = i / 16;
    let segment = i % 16 + 1;
    let category = CATEGORIES[(title % CATEGORIES.len() as u64) as usize];
    let year = 2015 + (title / 4) % 11;
    format!("{category}/{year}/title-{title:06}/seg-{segment:04}.mp4")
}

/// An id that is never produced by [`asset_id`] (same shape, so hashing costs the same).
pub fn missing_asset_id(i: u64) -> String {
    let title = i / 16;
    let segment = i % 16 + 1;
    format!("movies/2024/title-{title:06}/seg-{segment:04}.mkv")
}

/// The journal/checkpoint form of asset `i`: two extents and `chunks` per-chunk crc32c values
/// (one chunk is a small asset; 256 chunks is a 256 MiB asset at the default 1 MiB chunk).
pub fn entry_record(i: u64, chunks: u32) -> EntryRecord {
    let chunk_bytes = u64::from(CHUNK_SIZE_DEFAULT);
    let size = if chunks <= 1 {
        // Just under one chunk, so the asset has exactly one crc.
        chunk_bytes - 4096
    } else {
        u64::from(chunks) * chunk_bytes
    };
    let blocks_total = size.div_ceil(4096);
    let first = blocks_total / 2;
    let second = blocks_total - first;
    // Two non-adjacent extents, as after fragmentation.
    let base = i * (blocks_total + 64);
    EntryRecord {
        id: asset_id(i),
        content_type: Some(CONTENT_TYPE.to_string()),
        size,
        created_unix_ns: 1_700_000_000_000_000_000 + i * 1_000,
        extents: vec![
            Extent {
                start: base,
                blocks: u32::try_from(first).expect("extent fits u32 blocks"),
            },
            Extent {
                start: base + first + 32,
                blocks: u32::try_from(second).expect("extent fits u32 blocks"),
            },
        ],
        crcs: (0..chunks.max(1))
            .map(|c| (i as u32).wrapping_mul(0x9e37_79b9) ^ c)
            .collect(),
    }
}

/// A catalog of `n` assets with `chunks` crcs each, built the way `Volume` builds it at open.
pub fn build_catalog(n: u64, chunks: u32) -> Catalog {
    let catalog = Catalog::new();
    for i in 0..n {
        let slot = u32::try_from(i).expect("slot fits u32");
        catalog.insert(Asset::from_record(&entry_record(i, chunks), slot));
    }
    catalog
}

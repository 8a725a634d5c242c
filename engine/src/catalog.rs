//! The in-memory catalog: asset id → [`Asset`], readable lock-free from every shard.
//!
//! Readers look an id up in a `papaya` hash map (lock-free reads, epoch-based reclamation of
//! map nodes) and clone the `Arc<Asset>` they get: that clone is what keeps the asset's extents
//! alive while a read (or a whole stream) is in progress. Writers are serialized by the volume's
//! write lock.
//!
//! Reclamation: an asset's extents return to the allocator only from `Asset::drop`, i.e. once the
//! catalog no longer holds it (delete or replace, already durable in the journal) **and** the
//! map's epoch has passed **and** every reader has dropped its clone. That is the only path by
//! which a committed extent becomes free again while the volume is open.

use std::sync::{Arc, Mutex};

use crate::format::{Extent, BLOCK};

/// Extents and catalog slots released by dropped assets, drained by the allocator.
#[derive(Debug, Default)]
pub struct Reclaim {
    inner: Mutex<ReclaimInner>,
}

#[derive(Debug, Default)]
pub struct ReclaimInner {
    pub extents: Vec<Extent>,
    pub slots: Vec<u32>,
}

impl Reclaim {
    pub fn take(&self) -> ReclaimInner {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *g)
    }
}

/// One stored asset, immutable once committed.
#[derive(Debug)]
pub struct Asset {
    pub id: Box<str>,
    pub content_type: Option<Box<str>>,
    pub size: u64,
    pub created_unix_ns: u64,
    pub extents: Box<[Extent]>,
    /// crc32c of each `chunk_size` piece of the asset (the last one may be shorter).
    pub crcs: Box<[u32]>,
    /// Dense index for per-asset tables (request-rate counters); reused after the asset is gone.
    pub slot: u32,
    reclaim: Arc<Reclaim>,
}

impl Drop for Asset {
    fn drop(&mut self) {
        let mut g = self.reclaim.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.extents.extend_from_slice(&self.extents);
        g.slots.push(self.slot);
    }
}

/// One block-aligned piece of device I/O that serves part of an asset range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Byte offset in the asset where this segment's aligned read starts.
    pub asset_offset: u64,
    /// Device byte offset (block aligned).
    pub dev_offset: u64,
    /// Bytes to read (block aligned).
    pub len: u64,
}

impl Asset {
    /// Builds an asset entry. The volume builds its own; this is public for benchmarks and
    /// tests that measure the catalog without a device. Dropping it hands its extents and slot
    /// to `reclaim`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: Box<str>,
        content_type: Option<Box<str>>,
        size: u64,
        created_unix_ns: u64,
        extents: Box<[Extent]>,
        crcs: Box<[u32]>,
        slot: u32,
        reclaim: Arc<Reclaim>,
    ) -> Asset {
        Asset {
            id,
            content_type,
            size,
            created_unix_ns,
            extents,
            crcs,
            slot,
            reclaim,
        }
    }

    /// Strong validator: a digest of the per-chunk checksums and the size, so it changes
    /// whenever a byte does (and is the same on every node holding the same bytes).
    pub fn etag(&self) -> String {
        format!("\"{:08x}-{:x}\"", self.checksum(), self.size)
    }

    /// crc32c over the little-endian per-chunk crc32c values.
    pub fn checksum(&self) -> u32 {
        let mut c = 0;
        for crc in self.crcs.iter() {
            c = crc32c::crc32c_append(c, &crc.to_le_bytes());
        }
        c
    }

    pub fn allocated_bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.bytes()).sum()
    }

    /// Maps the asset byte range `[offset, offset + len)` onto block-aligned device reads.
    /// The first segment starts at or before `offset` (at a block boundary); the caller drops
    /// `offset - first.asset_offset` bytes. The range must lie within the asset.
    pub fn segments(&self, data_offset: u64, offset: u64, len: u64) -> Vec<Segment> {
        segments_of(&self.extents, data_offset, offset, len)
    }
}

/// Maps asset bytes `[offset, offset + len)`, rounded out to blocks, onto the device through a
/// list of extents laid end to end.
pub fn segments_of(extents: &[Extent], data_offset: u64, offset: u64, len: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    if len == 0 {
        return out;
    }
    let start = offset / BLOCK * BLOCK;
    let end = (offset + len).div_ceil(BLOCK) * BLOCK;
    let mut ext_asset_start = 0u64; // asset byte where the current extent starts
    for e in extents {
        let ext_end = ext_asset_start + e.bytes();
        let s = start.max(ext_asset_start);
        let t = end.min(ext_end);
        if s < t {
            out.push(Segment {
                asset_offset: s,
                dev_offset: data_offset + e.start * BLOCK + (s - ext_asset_start),
                len: t - s,
            });
        }
        if ext_end >= end {
            break;
        }
        ext_asset_start = ext_end;
    }
    out
}

pub type CatalogMap = papaya::HashMap<Box<str>, Arc<Asset>>;

pub fn new_map() -> CatalogMap {
    papaya::HashMap::builder()
        // Retire removed nodes promptly: a deleted asset's extents are reclaimed when its node is.
        .collector(seize_collector())
        .build()
}

fn seize_collector() -> seize::Collector {
    seize::Collector::new().batch_size(1)
}

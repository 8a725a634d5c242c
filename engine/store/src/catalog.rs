//! The in-memory catalog: asset id → [`Asset`], readable lock-free from every shard.
//!
//! **Readers** look an id up in a `papaya` hash map (lock-free reads, epoch-based reclamation of
//! map nodes) and clone the [`Asset`] they get — one atomic increment. That clone is what keeps
//! the asset's extents from being reused while a read, or a whole stream, is in progress.
//! **Writers** are serialized by the volume's write lock.
//!
//! **Memory.** An asset is one allocation: a `triomphe::ThinArc` (an 8-byte pointer, no weak
//! count) holding a 24-byte header and, in one byte slice, the id, the extents packed to 8 bytes
//! (40-bit start, 24-bit length; longer extents are split) and the per-chunk crc32c values. The
//! map is keyed by a 64-bit keyed hash of the id, not by a copy of it, so replacing an asset is a
//! single value swap (a reader never sees it missing) and the id is stored once. Two ids with the
//! same 64-bit hash share a bucket. Content types are interned. See ARCHITECTURE.md for the
//! measured bytes per asset.
//!
//! **Reclamation.** When an asset leaves the map (deleted or replaced, already durable in the
//! journal), the volume keeps a clone in its retired list. Its extents and slot return to the
//! allocator once that clone is the last one: the map's epoch has passed and every reader has let
//! go. That is the only way a committed extent becomes free while the volume is open.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use triomphe::ThinArc;

use crate::format::{EntryRecord, Extent, BLOCK};

/// Longest extent one packed entry holds (24 bits of blocks, 64 GiB); longer ones are split.
pub const PACKED_BLOCKS_MAX: u32 = (1 << 24) - 1;
/// Data-region blocks addressable by a packed extent (40 bits: 4 EiB).
pub const PACKED_START_MAX: u64 = (1 << 40) - 1;
/// Most in-memory extents per asset.
pub const PACKED_EXTENTS_MAX: usize = u16::MAX as usize;

/// Fixed part of an [`Asset`].
#[derive(Debug, Clone, Copy)]
struct Header {
    size: u64,
    created_unix_ns: u64,
    slot: u32,
    /// 0: none; otherwise an index into the process-wide content-type table.
    content_type: u8,
    id_len: u8,
    extent_count: u16,
}

/// One stored asset, immutable once committed. Cloning it is one atomic increment; holding a
/// clone keeps its extents from being reused.
#[derive(Clone)]
pub struct Asset(ThinArc<Header, u8>);

impl std::fmt::Debug for Asset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asset")
            .field("id", &self.id())
            .field("size", &self.size())
            .field("extents", &self.extents().collect::<Vec<_>>())
            .field("chunks", &self.chunk_count())
            .finish()
    }
}

/// Process-wide interned content types (a node sees a handful: video/mp4, video/mp2t, …).
/// Append-only: a slot is set once and never changes, so reading one is a single atomic load
/// (no shared read-modify-write on the serving path).
static CONTENT_TYPES: [OnceLock<&'static str>; 255] = [const { OnceLock::new() }; 255];
static CONTENT_TYPES_WRITER: Mutex<()> = Mutex::new(());

fn find_content_type(ct: &str) -> Result<u8, Option<usize>> {
    for (i, slot) in CONTENT_TYPES.iter().enumerate() {
        match slot.get() {
            Some(&c) if c == ct => return Ok(i as u8 + 1),
            Some(_) => {}
            None => return Err(Some(i)),
        }
    }
    Err(None)
}

/// Interns a content type; `None` when the table (255 entries) is full.
fn intern_content_type(ct: &str) -> Option<u8> {
    if let Ok(i) = find_content_type(ct) {
        return Some(i);
    }
    let _writer = CONTENT_TYPES_WRITER
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    match find_content_type(ct) {
        Ok(i) => Some(i),
        Err(Some(free)) => {
            // Leaked on purpose: at most 255 strings of at most 255 bytes for the process's life.
            let _ = CONTENT_TYPES[free].set(Box::leak(ct.to_string().into_boxed_str()));
            Some(free as u8 + 1)
        }
        Err(None) => None,
    }
}

impl Asset {
    /// Builds an asset entry from its record. Content types beyond the 255 the process interns
    /// are dropped (logged). The volume builds its own; this is public for benches and tests.
    pub fn from_record(rec: &EntryRecord, slot: u32) -> Asset {
        assert!(!rec.id.is_empty() && rec.id.len() <= u8::MAX as usize);
        let content_type = match rec.content_type.as_deref() {
            None => 0,
            Some(ct) => intern_content_type(ct).unwrap_or_else(|| {
                tracing::warn!(id = %rec.id, ct, "more than 255 distinct content types; this one is not kept");
                0
            }),
        };
        let mut packed: Vec<u64> = Vec::with_capacity(rec.extents.len());
        for e in &rec.extents {
            assert!(
                e.end() <= PACKED_START_MAX,
                "extent {e:?} beyond the packed range"
            );
            let (mut start, mut left) = (e.start, e.blocks);
            while left > 0 {
                let n = left.min(PACKED_BLOCKS_MAX);
                packed.push(start | (n as u64) << 40);
                start += n as u64;
                left -= n;
            }
        }
        assert!(packed.len() <= PACKED_EXTENTS_MAX, "too many extents");
        let mut bytes = Vec::with_capacity(rec.id.len() + packed.len() * 8 + rec.crcs.len() * 4);
        bytes.extend_from_slice(rec.id.as_bytes());
        for p in &packed {
            bytes.extend_from_slice(&p.to_le_bytes());
        }
        for c in &rec.crcs {
            bytes.extend_from_slice(&c.to_le_bytes());
        }
        let header = Header {
            size: rec.size,
            created_unix_ns: rec.created_unix_ns,
            slot,
            content_type,
            id_len: rec.id.len() as u8,
            extent_count: packed.len() as u16,
        };
        Asset(ThinArc::from_header_and_slice(header, &bytes))
    }

    fn header(&self) -> &Header {
        &self.0.header.header
    }

    fn tail(&self) -> &[u8] {
        &self.0.slice
    }

    pub fn id(&self) -> &str {
        // Ids are validated ASCII when the record is decoded or ingested.
        std::str::from_utf8(&self.tail()[..self.header().id_len as usize]).unwrap_or("")
    }

    pub fn size(&self) -> u64 {
        self.header().size
    }

    pub fn created_unix_ns(&self) -> u64 {
        self.header().created_unix_ns
    }

    /// Dense index for per-asset tables (request-rate counters); reused only after the asset is
    /// gone and no reader holds it.
    pub fn slot(&self) -> u32 {
        self.header().slot
    }

    pub fn content_type(&self) -> Option<&'static str> {
        match self.header().content_type {
            0 => None,
            i => CONTENT_TYPES
                .get(i as usize - 1)
                .and_then(|slot| slot.get().copied()),
        }
    }

    fn extents_bytes(&self) -> &[u8] {
        let start = self.header().id_len as usize;
        &self.tail()[start..start + self.header().extent_count as usize * 8]
    }

    fn crc_bytes(&self) -> &[u8] {
        let start = self.header().id_len as usize + self.header().extent_count as usize * 8;
        &self.tail()[start..]
    }

    /// The extents the asset's bytes occupy, in order.
    pub fn extents(&self) -> impl ExactSizeIterator<Item = Extent> + '_ {
        self.extents_bytes().chunks_exact(8).map(|b| {
            let v = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            Extent {
                start: v & PACKED_START_MAX,
                blocks: (v >> 40) as u32,
            }
        })
    }

    /// Number of chunks (and of crc32c values).
    pub fn chunk_count(&self) -> usize {
        self.crc_bytes().len() / 4
    }

    /// crc32c of each `chunk_size` piece of the asset (the last one may be shorter).
    pub fn crcs(&self) -> impl ExactSizeIterator<Item = u32> + '_ {
        self.crc_bytes()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The crc32c of chunk `i`, if it exists.
    pub fn crc(&self, i: usize) -> Option<u32> {
        self.crc_bytes()
            .get(i * 4..i * 4 + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn allocated_bytes(&self) -> u64 {
        self.extents().map(|e| e.bytes()).sum()
    }

    pub(crate) fn allocated_blocks(&self) -> u64 {
        self.extents().map(|e| e.blocks as u64).sum()
    }

    /// Strong validator: a digest of the per-chunk checksums and the size, so it changes
    /// whenever a byte does (and is the same on every node holding the same bytes).
    pub fn etag(&self) -> String {
        format!("\"{:08x}-{:x}\"", self.checksum(), self.size())
    }

    /// crc32c over the little-endian per-chunk crc32c values.
    pub fn checksum(&self) -> u32 {
        crc32c::crc32c(self.crc_bytes())
    }

    /// The journal/checkpoint form of this entry (extents as stored in memory).
    pub fn to_record(&self) -> EntryRecord {
        EntryRecord {
            id: self.id().to_string(),
            content_type: self.content_type().map(str::to_string),
            size: self.size(),
            created_unix_ns: self.created_unix_ns(),
            extents: self.extents().collect(),
            crcs: self.crcs().collect(),
        }
    }

    /// Maps the asset byte range `[offset, offset + len)` onto block-aligned device reads.
    /// The first segment starts at or before `offset` (at a block boundary); the caller drops
    /// `offset - first.asset_offset` bytes. The range must lie within the asset.
    pub fn segments(&self, data_offset: u64, offset: u64, len: u64) -> Vec<Segment> {
        segments_of(self.extents(), data_offset, offset, len)
    }

    /// True when both handles are the same version of the asset (the same allocation).
    pub fn ptr_eq(a: &Asset, b: &Asset) -> bool {
        std::ptr::eq(a.0.ptr(), b.0.ptr())
    }

    /// True when no one but the caller holds this asset.
    pub(crate) fn is_last_reference(&self) -> bool {
        ThinArc::strong_count(&self.0) == 1
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

/// Maps asset bytes `[offset, offset + len)`, rounded out to blocks, onto the device through a
/// list of extents laid end to end.
pub fn segments_of(
    extents: impl IntoIterator<Item = Extent>,
    data_offset: u64,
    offset: u64,
    len: u64,
) -> Vec<Segment> {
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

/// What the map holds under one id hash: almost always one asset.
#[derive(Clone)]
enum Bucket {
    One(Asset),
    /// Ids whose 64-bit keyed hashes collide (expected never in practice).
    Many(Arc<[Asset]>),
}

impl Bucket {
    fn find(&self, id: &str) -> Option<&Asset> {
        match self {
            Bucket::One(a) => (a.id() == id).then_some(a),
            Bucket::Many(v) => v.iter().find(|a| a.id() == id),
        }
    }
}

/// The map's keys are already uniformly distributed hashes: pass them through.
#[derive(Clone, Copy, Default)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

#[derive(Clone, Copy, Default)]
pub struct BuildPassThrough;

impl BuildHasher for BuildPassThrough {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

/// id → asset, lock-free for readers. Mutations must be serialized by the caller (the volume's
/// write lock): each is a read-modify-write of one bucket.
pub struct Catalog {
    map: papaya::HashMap<u64, Bucket, BuildPassThrough>,
    keys: RandomState,
    count: AtomicUsize,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::new()
    }
}

impl Catalog {
    pub fn new() -> Catalog {
        Catalog {
            map: papaya::HashMap::builder()
                .hasher(BuildPassThrough)
                // Retire removed nodes promptly: a deleted asset's extents are reclaimed once
                // its node is.
                .collector(seize::Collector::new().batch_size(1))
                .build(),
            keys: RandomState::new(),
            count: AtomicUsize::new(0),
        }
    }

    fn key(&self, id: &str) -> u64 {
        self.keys.hash_one(id)
    }

    /// Lock-free lookup; the returned clone keeps the asset's extents alive.
    pub fn get(&self, id: &str) -> Option<Asset> {
        let m = self.map.pin();
        m.get(&self.key(id)).and_then(|b| b.find(id)).cloned()
    }

    /// Inserts or replaces (atomically for readers). Returns the replaced asset.
    pub fn insert(&self, asset: Asset) -> Option<Asset> {
        let k = self.key(asset.id());
        let m = self.map.pin();
        let (bucket, old) = match m.get(&k) {
            None => (Bucket::One(asset), None),
            Some(b) => {
                let old = b.find(asset.id()).cloned();
                let mut v: Vec<Asset> = match b {
                    Bucket::One(a) => vec![a.clone()],
                    Bucket::Many(v) => v.to_vec(),
                };
                v.retain(|a| a.id() != asset.id());
                v.push(asset);
                (
                    if v.len() == 1 {
                        Bucket::One(v.remove(0))
                    } else {
                        Bucket::Many(v.into())
                    },
                    old,
                )
            }
        };
        m.insert(k, bucket);
        if old.is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        old
    }

    /// Removes an asset; returns it.
    pub fn remove(&self, id: &str) -> Option<Asset> {
        let k = self.key(id);
        let m = self.map.pin();
        let b = m.get(&k)?;
        let old = b.find(id)?.clone();
        match b {
            Bucket::One(_) => {
                m.remove(&k);
            }
            Bucket::Many(v) => {
                let mut v: Vec<Asset> = v.iter().filter(|a| a.id() != id).cloned().collect();
                m.insert(
                    k,
                    if v.len() == 1 {
                        Bucket::One(v.remove(0))
                    } else {
                        Bucket::Many(v.into())
                    },
                );
            }
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
        Some(old)
    }

    /// Every asset, in no particular order.
    pub fn all(&self) -> Vec<Asset> {
        let m = self.map.pin();
        let mut out = Vec::with_capacity(m.len());
        for (_, b) in m.iter() {
            match b {
                Bucket::One(a) => out.push(a.clone()),
                Bucket::Many(v) => out.extend(v.iter().cloned()),
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Test hook: the map's key for an id, so tests can force two ids into one bucket.
    #[doc(hidden)]
    pub fn insert_with_key_for_test(&self, key_of: &str, asset: Asset) {
        let k = self.key(key_of);
        let m = self.map.pin();
        let mut v: Vec<Asset> = match m.get(&k) {
            None => Vec::new(),
            Some(Bucket::One(a)) => vec![a.clone()],
            Some(Bucket::Many(v)) => v.to_vec(),
        };
        let before = v.len();
        v.retain(|a| a.id() != asset.id());
        if v.len() == before {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        v.push(asset);
        m.insert(
            k,
            if v.len() == 1 {
                Bucket::One(v.remove(0))
            } else {
                Bucket::Many(v.into())
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, extents: Vec<Extent>, crcs: Vec<u32>) -> EntryRecord {
        EntryRecord {
            id: id.into(),
            content_type: Some("video/mp4".into()),
            size: 123,
            created_unix_ns: 9,
            extents,
            crcs,
        }
    }

    #[test]
    fn packs_and_unpacks() {
        let r = rec(
            "a/b.mp4",
            vec![
                Extent {
                    start: 5,
                    blocks: 7,
                },
                Extent {
                    start: (1 << 39) + 3,
                    blocks: 1,
                },
            ],
            vec![1, 2, 0xdead_beef],
        );
        let a = Asset::from_record(&r, 4);
        assert_eq!(
            (a.id(), a.size(), a.created_unix_ns(), a.slot()),
            ("a/b.mp4", 123, 9, 4)
        );
        assert_eq!(a.content_type(), Some("video/mp4"));
        assert_eq!(a.to_record(), r);
        assert_eq!(a.crc(2), Some(0xdead_beef));
        assert_eq!(a.crc(3), None);
    }

    #[test]
    fn long_extents_are_split() {
        let r = rec(
            "x",
            vec![Extent {
                start: 10,
                blocks: PACKED_BLOCKS_MAX * 2 + 5,
            }],
            vec![],
        );
        let a = Asset::from_record(&r, 0);
        let ex: Vec<Extent> = a.extents().collect();
        assert_eq!(ex.len(), 3);
        assert_eq!(
            ex.iter().map(|e| e.blocks as u64).sum::<u64>(),
            PACKED_BLOCKS_MAX as u64 * 2 + 5
        );
        assert_eq!(ex[1].start, 10 + PACKED_BLOCKS_MAX as u64);
    }

    #[test]
    fn colliding_ids_share_a_bucket() {
        let c = Catalog::new();
        let a = Asset::from_record(&rec("a", vec![], vec![]), 0);
        let b = Asset::from_record(&rec("b", vec![], vec![]), 1);
        c.insert(a);
        c.insert_with_key_for_test("a", b);
        assert_eq!(c.get("a").map(|x| x.slot()), Some(0));
        assert_eq!((c.all().len(), c.len()), (2, 2));
        // Replace inside the bucket, then remove one of the two.
        let b2 = Asset::from_record(&rec("b", vec![], vec![]), 7);
        c.insert_with_key_for_test("a", b2);
        assert_eq!(c.all().len(), 2);
        assert_eq!(c.remove("a").map(|x| x.slot()), Some(0));
        assert_eq!(
            c.all().iter().map(|x| x.slot()).collect::<Vec<_>>(),
            vec![7]
        );
        assert!(c.get("a").is_none());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn replace_is_atomic_and_returns_the_old() {
        let c = Catalog::new();
        assert!(c
            .insert(Asset::from_record(&rec("k", vec![], vec![]), 1))
            .is_none());
        let old = c.insert(Asset::from_record(&rec("k", vec![], vec![]), 2));
        assert_eq!(old.map(|a| a.slot()), Some(1));
        assert_eq!(c.get("k").map(|a| a.slot()), Some(2));
        assert_eq!(c.len(), 1);
    }
}

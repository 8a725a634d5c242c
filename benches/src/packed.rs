//! Prototype: a catalog entry in one allocation, measured by `catalog_memory.rs` against the
//! engine's `catalog::Asset` (it is not used by the engine).
//!
//! The engine's entry costs seven heap allocations per asset: the papaya node, the key (a second
//! copy of the id), the `Arc<Asset>`, the id, the content type, the extents and the crcs. Under
//! glibc each allocation pays an 8-byte header and rounds up to 16 bytes with a 32-byte minimum,
//! so the small ones cost far more than they hold. This prototype keeps everything an asset
//! needs in one `Arc<[u8]>` and uses that value itself as the key of a `papaya::HashSet`
//! (hashed and compared by its id bytes, looked up with `&[u8]` through `Borrow`), leaving two
//! allocations per asset: the papaya node and the `Arc`.
//!
//! What it gives up, and how the engine would cope:
//! - No `Drop` hook (the engine's `Asset::drop` returns extents to the allocator). Instead the
//!   volume keeps removed entries in a writer-owned retired list and, on each commit, frees the
//!   extents of those for which `Arc::try_unwrap` succeeds (the map node and every reader have
//!   let go); the writer is already serialized, and `try_unwrap` synchronizes with the last
//!   reader's drop. That also removes the per-asset `Arc<Reclaim>`.
//! - The content type is an index into a per-volume interned table (`u8`, 0 = none).
//! - The crc count is not stored: it is `size.div_ceil(chunk_size)`, an invariant the engine
//!   already keeps.
//!
//! Layout of the bytes (little-endian, like the on-disk entry):
//! ```text
//! 0   size             u64
//! 8   created_unix_ns  u64
//! 16  slot             u32
//! 20  content_type     u8   0 = none, k = interned type k - 1
//! 21  id_len           u8   (ids are at most 255 bytes)
//! 22  id               [u8; id_len]
//! ..  extents          [start u40, blocks u24] × n   (n from the remaining length)
//! ..  crcs             [u32] × size.div_ceil(chunk_size)
//! ```
//!
//! Extents take 8 bytes here instead of the on-disk 12: a 40-bit start addresses 4 PiB of
//! 4 KiB blocks, and an extent longer than 2^24 - 1 blocks (64 GiB) would be kept as several
//! adjacent in-memory extents. That keeps the allocation of a typical asset (id up to 45 bytes,
//! 2 extents, 1 crc) at or below 104 bytes, glibc's 112-byte chunk.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use reel_engine::format::{EntryRecord, Extent, CHUNK_SIZE_DEFAULT};

const P_SIZE: usize = 0;
const P_CREATED_UNIX_NS: usize = P_SIZE + 8;
const P_SLOT: usize = P_CREATED_UNIX_NS + 8;
const P_CONTENT_TYPE: usize = P_SLOT + 4;
const P_ID_LEN: usize = P_CONTENT_TYPE + 1;
const P_FIXED_LEN: usize = P_ID_LEN + 1;
const _: () = assert!(P_FIXED_LEN == 22);
/// In-memory extent: start block (40 bits) then block count (24 bits), little-endian.
const P_EXTENT_LEN: usize = 8;
const P_EXTENT_START_MAX: u64 = (1 << 40) - 1;
const P_EXTENT_BLOCKS_MAX: u32 = (1 << 24) - 1;

/// One asset's catalog entry in a single allocation. Cloning it clones the `Arc`.
#[derive(Clone, Debug)]
pub struct PackedAsset(Arc<[u8]>);

/// The catalog built from [`PackedAsset`]s: lock-free reads, like `catalog::CatalogMap`.
pub type PackedCatalog = papaya::HashSet<PackedAsset>;

/// A set with the same collector settings as `catalog::new_map`.
pub fn new_packed_catalog() -> PackedCatalog {
    papaya::HashSet::builder()
        .collector(seize::Collector::new().batch_size(1))
        .build()
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

impl PackedAsset {
    /// Packs `rec`. `content_type` is the interned index + 1 (0 = none). The record's crc count
    /// must be `size.div_ceil(CHUNK_SIZE_DEFAULT)`, its id at most 255 bytes and its extents
    /// within the 40/24-bit limits (the prototype does not split long extents).
    pub fn new(rec: &EntryRecord, slot: u32, content_type: u8) -> PackedAsset {
        let chunks = rec.size.div_ceil(u64::from(CHUNK_SIZE_DEFAULT));
        assert_eq!(rec.crcs.len() as u64, chunks, "crc count follows from size");
        let id_len = u8::try_from(rec.id.len()).expect("asset ids are at most 255 bytes");
        let len =
            P_FIXED_LEN + rec.id.len() + rec.extents.len() * P_EXTENT_LEN + rec.crcs.len() * 4;
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(&rec.size.to_le_bytes());
        b.extend_from_slice(&rec.created_unix_ns.to_le_bytes());
        b.extend_from_slice(&slot.to_le_bytes());
        b.push(content_type);
        b.push(id_len);
        b.extend_from_slice(rec.id.as_bytes());
        for e in &rec.extents {
            assert!(e.start <= P_EXTENT_START_MAX && e.blocks <= P_EXTENT_BLOCKS_MAX);
            let packed = e.start | u64::from(e.blocks) << 40;
            b.extend_from_slice(&packed.to_le_bytes());
        }
        for c in &rec.crcs {
            b.extend_from_slice(&c.to_le_bytes());
        }
        assert_eq!(b.len(), len);
        PackedAsset(Arc::from(b))
    }

    fn id_end(&self) -> usize {
        P_FIXED_LEN + usize::from(self.0[P_ID_LEN])
    }

    fn crcs_start(&self) -> usize {
        self.0.len() - self.crc_count() * 4
    }

    fn crc_count(&self) -> usize {
        usize::try_from(self.size().div_ceil(u64::from(CHUNK_SIZE_DEFAULT)))
            .expect("crc count fits usize")
    }

    pub fn id_bytes(&self) -> &[u8] {
        &self.0[P_FIXED_LEN..self.id_end()]
    }

    /// The id; it was a `&str` when packed, so this cannot fail.
    pub fn id(&self) -> &str {
        std::str::from_utf8(self.id_bytes()).expect("packed from a str")
    }

    pub fn size(&self) -> u64 {
        le_u64(&self.0, P_SIZE)
    }

    pub fn created_unix_ns(&self) -> u64 {
        le_u64(&self.0, P_CREATED_UNIX_NS)
    }

    pub fn slot(&self) -> u32 {
        le_u32(&self.0, P_SLOT)
    }

    pub fn content_type_index(&self) -> u8 {
        self.0[P_CONTENT_TYPE]
    }

    pub fn extents(&self) -> impl Iterator<Item = Extent> + '_ {
        self.0[self.id_end()..self.crcs_start()]
            .chunks_exact(P_EXTENT_LEN)
            .map(|e| {
                let packed = le_u64(e, 0);
                Extent {
                    start: packed & P_EXTENT_START_MAX,
                    blocks: (packed >> 40) as u32,
                }
            })
    }

    pub fn crcs(&self) -> impl Iterator<Item = u32> + '_ {
        self.0[self.crcs_start()..]
            .chunks_exact(4)
            .map(|c| le_u32(c, 0))
    }

    /// Heap bytes of the `Arc` allocation (two counters + the bytes, rounded to 8).
    pub fn arc_alloc_bytes(&self) -> usize {
        (16 + self.0.len()).div_ceil(8) * 8
    }
}

// Hash, Eq and Borrow all go through the id bytes, so `set.get(id.as_bytes())` finds the entry.
impl Hash for PackedAsset {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id_bytes().hash(state);
    }
}

impl PartialEq for PackedAsset {
    fn eq(&self, other: &Self) -> bool {
        self.id_bytes() == other.id_bytes()
    }
}

impl Eq for PackedAsset {}

impl Borrow<[u8]> for PackedAsset {
    fn borrow(&self) -> &[u8] {
        self.id_bytes()
    }
}

/// A packed catalog of `n` assets with `chunks` crcs each (content type interned as index 1).
pub fn build_packed_catalog(n: u64, chunks: u32) -> PackedCatalog {
    let set = new_packed_catalog();
    {
        let s = set.pin();
        for i in 0..n {
            let slot = u32::try_from(i).expect("slot fits u32");
            s.insert(PackedAsset::new(&crate::entry_record(i, chunks), slot, 1));
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field() {
        for chunks in [1, 256] {
            let rec = crate::entry_record(12345, chunks);
            let p = PackedAsset::new(&rec, 7, 1);
            assert_eq!(p.id(), rec.id);
            assert_eq!(p.size(), rec.size);
            assert_eq!(p.created_unix_ns(), rec.created_unix_ns);
            assert_eq!(p.slot(), 7);
            assert_eq!(p.content_type_index(), 1);
            assert_eq!(p.extents().collect::<Vec<_>>(), rec.extents);
            assert_eq!(p.crcs().collect::<Vec<_>>(), rec.crcs);
        }
    }

    #[test]
    fn set_finds_by_id_bytes() {
        let set = build_packed_catalog(100, 1);
        let s = set.pin();
        let id = crate::asset_id(42);
        let got = s.get(id.as_bytes()).expect("present");
        assert_eq!(got.id(), id);
        assert!(s.get(crate::missing_asset_id(42).as_bytes()).is_none());
    }
}

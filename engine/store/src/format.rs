//! The on-device format, byte for byte. `engine/store/FORMAT.md` describes the same layout in prose;
//! the offset constants here are chained so that the two cannot drift silently (each field's
//! offset is the previous one's plus its size, checked at compile time against the table there).
//!
//! Every decoder in this module treats its input as untrusted: it checks bounds and checksums
//! and returns [`FormatError`] naming the structure and the field, never panics.

use std::fmt;

/// Current format version. Bump it, and add a line to FORMAT.md's version log and a fixture
/// image under `engine/store/tests/fixtures/`, whenever a byte below changes meaning.
pub const FORMAT_VERSION: u32 = 1;

/// Bytes of one metadata block; every metadata structure starts on a block boundary, and all
/// I/O is a multiple of it (O_DIRECT).
pub const BLOCK_SIZE: u32 = 4096;
pub const BLOCK: u64 = BLOCK_SIZE as u64;

/// Default asset chunk: the unit of per-chunk crc32c (and of streaming reads).
pub const CHUNK_SIZE_DEFAULT: u32 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Superblock: two copies, at byte 0 (copy A) and at byte 4096 (copy B); each one block long.
// ---------------------------------------------------------------------------------------------

pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"REELVOL\0";
pub const SUPERBLOCK_COPY_OFFSETS: [u64; 2] = [0, BLOCK];

pub const SB_MAGIC: usize = 0; // [u8; 8]
pub const SB_VERSION: usize = SB_MAGIC + 8; // u32
pub const SB_FLAGS: usize = SB_VERSION + 4; // u32, zero
pub const SB_UUID: usize = SB_FLAGS + 4; // [u8; 16]
pub const SB_BLOCK_SIZE: usize = SB_UUID + 16; // u32
pub const SB_CHUNK_SIZE: usize = SB_BLOCK_SIZE + 4; // u32
pub const SB_VOLUME_BYTES: usize = SB_CHUNK_SIZE + 4; // u64
pub const SB_CHECKPOINT_OFFSET: usize = SB_VOLUME_BYTES + 8; // u64
pub const SB_CHECKPOINT_SLOT_BYTES: usize = SB_CHECKPOINT_OFFSET + 8; // u64
pub const SB_JOURNAL_OFFSET: usize = SB_CHECKPOINT_SLOT_BYTES + 8; // u64
pub const SB_JOURNAL_BYTES: usize = SB_JOURNAL_OFFSET + 8; // u64
pub const SB_DATA_OFFSET: usize = SB_JOURNAL_BYTES + 8; // u64
pub const SB_DATA_BLOCKS: usize = SB_DATA_OFFSET + 8; // u64
pub const SB_CREATED_UNIX_NS: usize = SB_DATA_BLOCKS + 8; // u64
pub const SB_CRC: usize = SB_CREATED_UNIX_NS + 8; // u32 over bytes [0, SB_CRC)
pub const SB_LEN: usize = SB_CRC + 4;
const _: () = assert!(SB_VERSION == 8 && SB_UUID == 16 && SB_BLOCK_SIZE == 32);
const _: () =
    assert!(SB_VOLUME_BYTES == 40 && SB_DATA_BLOCKS == 88 && SB_CRC == 104 && SB_LEN == 108);
const _: () = assert!(SB_LEN <= BLOCK_SIZE as usize);

/// Where the metadata regions start. The checkpoint slots follow the two superblocks.
pub const CHECKPOINT_REGION_OFFSET: u64 = 2 * BLOCK;

// ---------------------------------------------------------------------------------------------
// Checkpoint slot: a header block, then `payload_bytes` of encoded catalog entries.
// ---------------------------------------------------------------------------------------------

pub const CHECKPOINT_MAGIC: [u8; 8] = *b"REELCKPT";
pub const CK_MAGIC: usize = 0; // [u8; 8]
pub const CK_VERSION: usize = CK_MAGIC + 8; // u32
pub const CK_RESERVED: usize = CK_VERSION + 4; // u32, zero
pub const CK_GENERATION: usize = CK_RESERVED + 4; // u64
pub const CK_LAST_SEQ: usize = CK_GENERATION + 8; // u64
pub const CK_ENTRY_COUNT: usize = CK_LAST_SEQ + 8; // u64
pub const CK_PAYLOAD_BYTES: usize = CK_ENTRY_COUNT + 8; // u64
pub const CK_PAYLOAD_CRC: usize = CK_PAYLOAD_BYTES + 8; // u32 (seeded)
pub const CK_HEADER_CRC: usize = CK_PAYLOAD_CRC + 4; // u32 (seeded) over [0, CK_HEADER_CRC)
pub const CK_LEN: usize = CK_HEADER_CRC + 4;
/// The payload starts one block after the slot start.
pub const CK_PAYLOAD_OFFSET: u64 = BLOCK;
const _: () =
    assert!(CK_GENERATION == 16 && CK_PAYLOAD_CRC == 48 && CK_HEADER_CRC == 52 && CK_LEN == 56);

// ---------------------------------------------------------------------------------------------
// Journal record: a 40-byte header, then the payload; records are 8-byte aligned within a
// batch, and every batch starts on a block boundary.
// ---------------------------------------------------------------------------------------------

pub const RECORD_MAGIC: [u8; 4] = *b"RJRN";
pub const RH_MAGIC: usize = 0; // [u8; 4]
pub const RH_KIND: usize = RH_MAGIC + 4; // u8
pub const RH_RESERVED: usize = RH_KIND + 1; // [u8; 3], zero
pub const RH_SEQ: usize = RH_RESERVED + 3; // u64
pub const RH_BATCH_FIRST_SEQ: usize = RH_SEQ + 8; // u64
pub const RH_PREV_CRC: usize = RH_BATCH_FIRST_SEQ + 8; // u32
pub const RH_PAYLOAD_LEN: usize = RH_PREV_CRC + 4; // u32
pub const RH_RESERVED2: usize = RH_PAYLOAD_LEN + 4; // u32, zero
pub const RH_CRC: usize = RH_RESERVED2 + 4; // u32 (seeded) over [0, RH_CRC) ++ payload
pub const RH_LEN: usize = RH_CRC + 4;
const _: () = assert!(
    RH_SEQ == 8 && RH_BATCH_FIRST_SEQ == 16 && RH_PREV_CRC == 24 && RH_CRC == 36 && RH_LEN == 40
);
/// Largest payload a record may carry (bounds a corrupted length before we trust it).
pub const RECORD_PAYLOAD_MAX: u32 = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// Payload: an asset entry (see below). Creates or replaces the asset.
    Put = 1,
    /// Payload: `id_len: u16, id: [u8; id_len]`.
    Delete = 2,
    /// First record of every journal lap. Payload: `generation: u64` of the checkpoint the lap
    /// continues from.
    LapStart = 3,
}

impl RecordKind {
    pub fn from_u8(v: u8) -> Option<RecordKind> {
        match v {
            1 => Some(RecordKind::Put),
            2 => Some(RecordKind::Delete),
            3 => Some(RecordKind::LapStart),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Asset entry (Put payload and checkpoint payload element), variable length:
// ---------------------------------------------------------------------------------------------

pub const EN_ID_LEN: usize = 0; // u16
pub const EN_CONTENT_TYPE_LEN: usize = EN_ID_LEN + 2; // u8
pub const EN_FLAGS: usize = EN_CONTENT_TYPE_LEN + 1; // u8, zero
pub const EN_EXTENT_COUNT: usize = EN_FLAGS + 1; // u32
pub const EN_SIZE: usize = EN_EXTENT_COUNT + 4; // u64
pub const EN_CREATED_UNIX_NS: usize = EN_SIZE + 8; // u64
pub const EN_CHUNK_COUNT: usize = EN_CREATED_UNIX_NS + 8; // u32
pub const EN_RESERVED: usize = EN_CHUNK_COUNT + 4; // u32, zero
pub const EN_FIXED_LEN: usize = EN_RESERVED + 4;
/// Then: id bytes, content-type bytes, `extent_count` × extent, `chunk_count` × u32 crc32c.
pub const EXTENT_LEN: usize = 12; // start_block: u64, blocks: u32
const _: () = assert!(EN_SIZE == 8 && EN_CHUNK_COUNT == 24 && EN_FIXED_LEN == 32);

/// Limits that bound what a decoder accepts.
pub const ID_LEN_MAX: usize = reel_id::ID_LEN_MAX;
pub const CONTENT_TYPE_LEN_MAX: usize = 255;
pub const EXTENTS_PER_ASSET_MAX: usize = u16::MAX as usize;

/// A run of data-region blocks (4 KiB each), relative to the start of the data region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Extent {
    pub start: u64,
    pub blocks: u32,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.start + self.blocks as u64
    }
    pub fn bytes(&self) -> u64 {
        self.blocks as u64 * BLOCK
    }
}

/// A decoded asset entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRecord {
    pub id: String,
    pub content_type: Option<String>,
    pub size: u64,
    pub created_unix_ns: u64,
    pub extents: Vec<Extent>,
    pub crcs: Vec<u32>,
}

/// What a decoder found wrong. Device bytes are untrusted: every failure is one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("{structure}: bad magic")]
    BadMagic { structure: &'static str },
    #[error("{structure}: format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        structure: &'static str,
        found: u32,
        supported: u32,
    },
    #[error("{structure}: checksum mismatch (expected {expected:#010x}, actual {actual:#010x})")]
    ChecksumMismatch {
        structure: &'static str,
        expected: u32,
        actual: u32,
    },
    #[error("{structure}: field {field} is invalid: {detail}")]
    Invalid {
        structure: &'static str,
        field: &'static str,
        detail: String,
    },
    #[error("{structure}: truncated (needed {needed} bytes at offset {offset}, have {have})")]
    Truncated {
        structure: &'static str,
        offset: usize,
        needed: usize,
        have: usize,
    },
}

fn invalid(structure: &'static str, field: &'static str, detail: impl fmt::Display) -> FormatError {
    FormatError::Invalid {
        structure,
        field,
        detail: detail.to_string(),
    }
}

/// Bounds-checked little-endian cursor over untrusted bytes.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    structure: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8], structure: &'static str) -> Self {
        Reader {
            bytes,
            pos: 0,
            structure,
        }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(FormatError::Truncated {
                structure: self.structure,
                offset: self.pos,
                needed: n,
                have: self.bytes.len().saturating_sub(self.pos),
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, FormatError> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(a))
    }
    pub fn u32(&mut self) -> Result<u32, FormatError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    pub fn u64(&mut self) -> Result<u64, FormatError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
/// Reads a little-endian u32 at a constant offset of a buffer whose length was checked first.
fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The per-volume checksum seed: crc32c of the volume uuid. Seeding every journal record and
/// checkpoint with it means bytes left on the device by an earlier volume never verify.
pub fn crc_seed(uuid: &[u8; 16]) -> u32 {
    crc32c::crc32c(uuid)
}

// ---------------------------------------------------------------------------------------------
// Superblock
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: [u8; 16],
    pub block_size: u32,
    pub chunk_size: u32,
    pub volume_bytes: u64,
    pub checkpoint_offset: u64,
    pub checkpoint_slot_bytes: u64,
    pub journal_offset: u64,
    pub journal_bytes: u64,
    pub data_offset: u64,
    pub data_blocks: u64,
    pub created_unix_ns: u64,
}

/// Optional overrides of the computed geometry (tests and fixtures use small regions).
#[derive(Clone, Debug, Default)]
pub struct GeometryOptions {
    pub checkpoint_slot_bytes: Option<u64>,
    pub journal_bytes: Option<u64>,
    pub chunk_size: Option<u32>,
}

fn round_down(v: u64, to: u64) -> u64 {
    v / to * to
}

/// The smallest volume we format: room for the metadata and a little data.
pub const VOLUME_BYTES_MIN: u64 = 1 << 20;

impl Superblock {
    /// Lays out a volume of `volume_bytes`. Metadata is sized from the volume: each checkpoint
    /// slot 1/128 of it (min 256 KiB, max 2 GiB), the journal 1/64 (min 256 KiB, max 256 MiB: open reads the whole journal).
    pub fn layout(
        volume_bytes: u64,
        uuid: [u8; 16],
        created_unix_ns: u64,
        opts: &GeometryOptions,
    ) -> Result<Superblock, FormatError> {
        let volume_bytes = round_down(volume_bytes, BLOCK);
        if volume_bytes < VOLUME_BYTES_MIN {
            return Err(invalid(
                "superblock",
                "volume_bytes",
                format!("{volume_bytes} bytes is below the minimum of {VOLUME_BYTES_MIN}"),
            ));
        }
        let chunk_size = opts.chunk_size.unwrap_or(CHUNK_SIZE_DEFAULT);
        if chunk_size < BLOCK_SIZE
            || !chunk_size.is_multiple_of(BLOCK_SIZE)
            || chunk_size > 64 << 20
        {
            return Err(invalid(
                "superblock",
                "chunk_size",
                format!("{chunk_size} must be a multiple of 4096 up to 64 MiB"),
            ));
        }
        let ck = opts
            .checkpoint_slot_bytes
            .unwrap_or_else(|| (volume_bytes / 128).clamp(256 << 10, 2 << 30));
        let ck = round_down(ck, BLOCK).max(2 * BLOCK);
        let jn = opts
            .journal_bytes
            .unwrap_or_else(|| (volume_bytes / 64).clamp(256 << 10, 256 << 20));
        let jn = round_down(jn, BLOCK).max(4 * BLOCK);
        let checkpoint_offset = CHECKPOINT_REGION_OFFSET;
        let journal_offset = checkpoint_offset + 2 * ck;
        let data_offset = journal_offset + jn;
        if data_offset + BLOCK > volume_bytes {
            return Err(invalid("superblock", "volume_bytes", format!("{volume_bytes} bytes leaves no room for data after {data_offset} bytes of metadata")));
        }
        let data_blocks = (volume_bytes - data_offset) / BLOCK;
        Ok(Superblock {
            uuid,
            block_size: BLOCK_SIZE,
            chunk_size,
            volume_bytes,
            checkpoint_offset,
            checkpoint_slot_bytes: ck,
            journal_offset,
            journal_bytes: jn,
            data_offset,
            data_blocks,
            created_unix_ns,
        })
    }

    pub fn checkpoint_slot_offset(&self, slot: usize) -> u64 {
        self.checkpoint_offset + slot as u64 * self.checkpoint_slot_bytes
    }

    /// Bytes of catalog a checkpoint slot can hold.
    pub fn checkpoint_payload_max(&self) -> u64 {
        self.checkpoint_slot_bytes - CK_PAYLOAD_OFFSET
    }

    pub fn encode(&self) -> [u8; BLOCK_SIZE as usize] {
        let mut b = [0u8; BLOCK_SIZE as usize];
        b[SB_MAGIC..SB_MAGIC + 8].copy_from_slice(&SUPERBLOCK_MAGIC);
        put_u32(&mut b, SB_VERSION, FORMAT_VERSION);
        put_u32(&mut b, SB_FLAGS, 0);
        b[SB_UUID..SB_UUID + 16].copy_from_slice(&self.uuid);
        put_u32(&mut b, SB_BLOCK_SIZE, self.block_size);
        put_u32(&mut b, SB_CHUNK_SIZE, self.chunk_size);
        put_u64(&mut b, SB_VOLUME_BYTES, self.volume_bytes);
        put_u64(&mut b, SB_CHECKPOINT_OFFSET, self.checkpoint_offset);
        put_u64(&mut b, SB_CHECKPOINT_SLOT_BYTES, self.checkpoint_slot_bytes);
        put_u64(&mut b, SB_JOURNAL_OFFSET, self.journal_offset);
        put_u64(&mut b, SB_JOURNAL_BYTES, self.journal_bytes);
        put_u64(&mut b, SB_DATA_OFFSET, self.data_offset);
        put_u64(&mut b, SB_DATA_BLOCKS, self.data_blocks);
        put_u64(&mut b, SB_CREATED_UNIX_NS, self.created_unix_ns);
        let crc = crc32c::crc32c(&b[..SB_CRC]);
        put_u32(&mut b, SB_CRC, crc);
        b
    }

    /// True when the block starts with the superblock magic (whatever else is wrong with it).
    pub fn has_magic(block: &[u8]) -> bool {
        block.len() >= 8 && block[..8] == SUPERBLOCK_MAGIC
    }

    pub fn decode(b: &[u8]) -> Result<Superblock, FormatError> {
        const S: &str = "superblock";
        if b.len() < SB_LEN {
            return Err(FormatError::Truncated {
                structure: S,
                offset: 0,
                needed: SB_LEN,
                have: b.len(),
            });
        }
        if !Self::has_magic(b) {
            return Err(FormatError::BadMagic { structure: S });
        }
        let expected = get_u32(b, SB_CRC);
        let actual = crc32c::crc32c(&b[..SB_CRC]);
        if expected != actual {
            return Err(FormatError::ChecksumMismatch {
                structure: S,
                expected,
                actual,
            });
        }
        let version = get_u32(b, SB_VERSION);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                structure: S,
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[SB_UUID..SB_UUID + 16]);
        let sb = Superblock {
            uuid,
            block_size: get_u32(b, SB_BLOCK_SIZE),
            chunk_size: get_u32(b, SB_CHUNK_SIZE),
            volume_bytes: get_u64(b, SB_VOLUME_BYTES),
            checkpoint_offset: get_u64(b, SB_CHECKPOINT_OFFSET),
            checkpoint_slot_bytes: get_u64(b, SB_CHECKPOINT_SLOT_BYTES),
            journal_offset: get_u64(b, SB_JOURNAL_OFFSET),
            journal_bytes: get_u64(b, SB_JOURNAL_BYTES),
            data_offset: get_u64(b, SB_DATA_OFFSET),
            data_blocks: get_u64(b, SB_DATA_BLOCKS),
            created_unix_ns: get_u64(b, SB_CREATED_UNIX_NS),
        };
        sb.validate()?;
        Ok(sb)
    }

    /// Checks the geometry is self-consistent (a checksum only proves the bytes are what was
    /// written, not that the writer was sane).
    fn validate(&self) -> Result<(), FormatError> {
        const S: &str = "superblock";
        if self.block_size != BLOCK_SIZE {
            return Err(invalid(S, "block_size", self.block_size));
        }
        if self.chunk_size < BLOCK_SIZE || !self.chunk_size.is_multiple_of(BLOCK_SIZE) {
            return Err(invalid(S, "chunk_size", self.chunk_size));
        }
        let aligned = [
            self.checkpoint_offset,
            self.checkpoint_slot_bytes,
            self.journal_offset,
            self.journal_bytes,
            self.data_offset,
        ]
        .iter()
        .all(|v| v % BLOCK == 0);
        if !aligned {
            return Err(invalid(S, "geometry", "a region is not block aligned"));
        }
        let ok = self.checkpoint_offset == CHECKPOINT_REGION_OFFSET
            && self.checkpoint_slot_bytes >= 2 * BLOCK
            && Some(self.journal_offset)
                == self
                    .checkpoint_slot_bytes
                    .checked_mul(2)
                    .and_then(|v| v.checked_add(self.checkpoint_offset))
            && Some(self.data_offset) == self.journal_offset.checked_add(self.journal_bytes)
            && self.journal_bytes >= 4 * BLOCK
            && self.data_blocks >= 1
            && self
                .data_blocks
                .checked_mul(BLOCK)
                .and_then(|d| d.checked_add(self.data_offset))
                .is_some_and(|end| end <= self.volume_bytes);
        if !ok {
            return Err(invalid(S, "geometry", format!("{self:?}")));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoint header
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointHeader {
    pub generation: u64,
    pub last_seq: u64,
    pub entry_count: u64,
    pub payload_bytes: u64,
    pub payload_crc: u32,
}

impl CheckpointHeader {
    /// Encodes the header block; returns it and the header crc (journal laps chain to it).
    pub fn encode(&self, seed: u32) -> ([u8; BLOCK_SIZE as usize], u32) {
        let mut b = [0u8; BLOCK_SIZE as usize];
        b[..8].copy_from_slice(&CHECKPOINT_MAGIC);
        put_u32(&mut b, CK_VERSION, FORMAT_VERSION);
        put_u64(&mut b, CK_GENERATION, self.generation);
        put_u64(&mut b, CK_LAST_SEQ, self.last_seq);
        put_u64(&mut b, CK_ENTRY_COUNT, self.entry_count);
        put_u64(&mut b, CK_PAYLOAD_BYTES, self.payload_bytes);
        put_u32(&mut b, CK_PAYLOAD_CRC, self.payload_crc);
        let crc = crc32c::crc32c_append(seed, &b[..CK_HEADER_CRC]);
        put_u32(&mut b, CK_HEADER_CRC, crc);
        (b, crc)
    }

    /// Decodes and verifies a header block; returns it and its crc.
    pub fn decode(
        b: &[u8],
        seed: u32,
        payload_max: u64,
    ) -> Result<(CheckpointHeader, u32), FormatError> {
        const S: &str = "checkpoint header";
        if b.len() < CK_LEN {
            return Err(FormatError::Truncated {
                structure: S,
                offset: 0,
                needed: CK_LEN,
                have: b.len(),
            });
        }
        if b[..8] != CHECKPOINT_MAGIC {
            return Err(FormatError::BadMagic { structure: S });
        }
        let expected = get_u32(b, CK_HEADER_CRC);
        let actual = crc32c::crc32c_append(seed, &b[..CK_HEADER_CRC]);
        if expected != actual {
            return Err(FormatError::ChecksumMismatch {
                structure: S,
                expected,
                actual,
            });
        }
        let version = get_u32(b, CK_VERSION);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                structure: S,
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let h = CheckpointHeader {
            generation: get_u64(b, CK_GENERATION),
            last_seq: get_u64(b, CK_LAST_SEQ),
            entry_count: get_u64(b, CK_ENTRY_COUNT),
            payload_bytes: get_u64(b, CK_PAYLOAD_BYTES),
            payload_crc: get_u32(b, CK_PAYLOAD_CRC),
        };
        if h.payload_bytes > payload_max {
            return Err(invalid(
                S,
                "payload_bytes",
                format!("{} exceeds the slot's {payload_max}", h.payload_bytes),
            ));
        }
        Ok((h, expected))
    }
}

// ---------------------------------------------------------------------------------------------
// Journal records
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Put(EntryRecord),
    Delete { id: String },
    LapStart { generation: u64 },
}

impl Record {
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Put(_) => RecordKind::Put,
            Record::Delete { .. } => RecordKind::Delete,
            Record::LapStart { .. } => RecordKind::LapStart,
        }
    }

    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Record::Put(e) => e.encode(out),
            Record::Delete { id } => {
                out.extend_from_slice(&(id.len() as u16).to_le_bytes());
                out.extend_from_slice(id.as_bytes());
            }
            Record::LapStart { generation } => out.extend_from_slice(&generation.to_le_bytes()),
        }
    }

    pub fn decode_payload(kind: RecordKind, payload: &[u8]) -> Result<Record, FormatError> {
        let mut r = Reader::new(payload, "journal record");
        let rec = match kind {
            RecordKind::Put => Record::Put(EntryRecord::decode(&mut r)?),
            RecordKind::Delete => {
                let n = r.u16()? as usize;
                Record::Delete {
                    id: decode_id(r.take(n)?, "journal record")?,
                }
            }
            RecordKind::LapStart => Record::LapStart {
                generation: r.u64()?,
            },
        };
        if r.pos() != payload.len() {
            return Err(invalid(
                "journal record",
                "payload_len",
                format!("{} trailing bytes", payload.len() - r.pos()),
            ));
        }
        Ok(rec)
    }
}

/// The fixed part of a journal record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub seq: u64,
    pub batch_first_seq: u64,
    pub prev_crc: u32,
    pub payload_len: u32,
    pub crc: u32,
}

/// Total bytes a record occupies in a batch (header + payload, padded to 8).
pub fn record_span(payload_len: usize) -> usize {
    (RH_LEN + payload_len).div_ceil(8) * 8
}

/// Appends one encoded record (header + payload + padding to 8 bytes) to `out`; returns its crc.
pub fn encode_record(
    out: &mut Vec<u8>,
    seed: u32,
    record: &Record,
    seq: u64,
    batch_first_seq: u64,
    prev_crc: u32,
) -> u32 {
    let start = out.len();
    out.resize(start + RH_LEN, 0);
    record.encode_payload(out);
    let payload_len = out.len() - start - RH_LEN;
    let h = &mut out[start..start + RH_LEN];
    h[RH_MAGIC..RH_MAGIC + 4].copy_from_slice(&RECORD_MAGIC);
    h[RH_KIND] = record.kind() as u8;
    put_u64(h, RH_SEQ, seq);
    put_u64(h, RH_BATCH_FIRST_SEQ, batch_first_seq);
    put_u32(h, RH_PREV_CRC, prev_crc);
    put_u32(h, RH_PAYLOAD_LEN, payload_len as u32);
    let crc = crc32c::crc32c_append(
        crc32c::crc32c_append(seed, &out[start..start + RH_CRC]),
        &out[start + RH_LEN..],
    );
    put_u32(&mut out[start..], RH_CRC, crc);
    out.resize(start + record_span(payload_len), 0);
    crc
}

/// Why a journal position does not hold a valid record (the replay stops there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordProblem {
    /// Zeroes or foreign bytes: no record was ever written here (or padding).
    NoMagic,
    /// The header claims more bytes than the journal has.
    Truncated,
    Invalid(FormatError),
}

/// Decodes the record at the start of `b` (which extends to the end of the journal region) and
/// verifies its checksum. Returns the header and the payload slice.
pub fn decode_record(b: &[u8], seed: u32) -> Result<(RecordHeader, &[u8]), RecordProblem> {
    const S: &str = "journal record";
    if b.len() < RH_LEN || b[RH_MAGIC..RH_MAGIC + 4] != RECORD_MAGIC {
        return Err(RecordProblem::NoMagic);
    }
    let payload_len = get_u32(b, RH_PAYLOAD_LEN);
    if payload_len > RECORD_PAYLOAD_MAX {
        return Err(RecordProblem::Invalid(invalid(
            S,
            "payload_len",
            payload_len,
        )));
    }
    let end = RH_LEN + payload_len as usize;
    if end > b.len() {
        return Err(RecordProblem::Truncated);
    }
    let expected = get_u32(b, RH_CRC);
    let actual = crc32c::crc32c_append(crc32c::crc32c_append(seed, &b[..RH_CRC]), &b[RH_LEN..end]);
    if expected != actual {
        return Err(RecordProblem::Invalid(FormatError::ChecksumMismatch {
            structure: S,
            expected,
            actual,
        }));
    }
    let kind = RecordKind::from_u8(b[RH_KIND])
        .ok_or_else(|| RecordProblem::Invalid(invalid(S, "kind", b[RH_KIND])))?;
    Ok((
        RecordHeader {
            kind,
            seq: get_u64(b, RH_SEQ),
            batch_first_seq: get_u64(b, RH_BATCH_FIRST_SEQ),
            prev_crc: get_u32(b, RH_PREV_CRC),
            payload_len,
            crc: expected,
        },
        &b[RH_LEN..end],
    ))
}

// ---------------------------------------------------------------------------------------------
// Asset entries
// ---------------------------------------------------------------------------------------------

pub use reel_id::validate_id;

fn decode_id(b: &[u8], structure: &'static str) -> Result<String, FormatError> {
    let s = std::str::from_utf8(b).map_err(|_| invalid(structure, "id", "not UTF-8"))?;
    validate_id(s).map_err(|e| invalid(structure, "id", e))?;
    Ok(s.to_string())
}

/// Number of chunks (crc32c values) of an asset of `size` bytes.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(chunk_size as u64)
}

impl EntryRecord {
    pub fn encoded_len(&self) -> usize {
        EN_FIXED_LEN
            + self.id.len()
            + self.content_type.as_ref().map_or(0, |c| c.len())
            + self.extents.len() * EXTENT_LEN
            + self.crcs.len() * 4
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let ct = self.content_type.as_deref().unwrap_or("");
        assert!(self.id.len() <= ID_LEN_MAX && ct.len() <= CONTENT_TYPE_LEN_MAX);
        assert!(self.extents.len() <= EXTENTS_PER_ASSET_MAX);
        let start = out.len();
        out.resize(start + EN_FIXED_LEN, 0);
        let h = &mut out[start..];
        put_u16(h, EN_ID_LEN, self.id.len() as u16);
        h[EN_CONTENT_TYPE_LEN] = ct.len() as u8;
        put_u32(h, EN_EXTENT_COUNT, self.extents.len() as u32);
        put_u64(h, EN_SIZE, self.size);
        put_u64(h, EN_CREATED_UNIX_NS, self.created_unix_ns);
        put_u32(h, EN_CHUNK_COUNT, self.crcs.len() as u32);
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(ct.as_bytes());
        for e in &self.extents {
            out.extend_from_slice(&e.start.to_le_bytes());
            out.extend_from_slice(&e.blocks.to_le_bytes());
        }
        for c in &self.crcs {
            out.extend_from_slice(&c.to_le_bytes());
        }
    }

    /// Decodes one entry. Structural checks only; the volume checks extents against its
    /// geometry and the chunk count against its chunk size.
    pub fn decode(r: &mut Reader<'_>) -> Result<EntryRecord, FormatError> {
        const S: &str = "asset entry";
        let id_len = r.u16()? as usize;
        let ct_len = r.u8()? as usize;
        let _flags = r.u8()?;
        let extent_count = r.u32()? as usize;
        let size = r.u64()?;
        let created_unix_ns = r.u64()?;
        let chunk_count = r.u32()? as usize;
        let _reserved = r.u32()?;
        if id_len == 0 || id_len > ID_LEN_MAX {
            return Err(invalid(S, "id_len", id_len));
        }
        if extent_count > EXTENTS_PER_ASSET_MAX {
            return Err(invalid(S, "extent_count", extent_count));
        }
        let id = decode_id(r.take(id_len)?, S)?;
        let content_type = if ct_len == 0 {
            None
        } else {
            let b = r.take(ct_len)?;
            let s = std::str::from_utf8(b).map_err(|_| invalid(S, "content_type", "not UTF-8"))?;
            Some(s.to_string())
        };
        // Bound allocations by what the input can actually hold before allocating.
        let extents_bytes = extent_count
            .checked_mul(EXTENT_LEN)
            .ok_or_else(|| invalid(S, "extent_count", extent_count))?;
        let extent_bytes = r.take(extents_bytes)?;
        let mut er = Reader::new(extent_bytes, S);
        let mut extents = Vec::with_capacity(extent_count);
        let mut blocks_total: u64 = 0;
        for _ in 0..extent_count {
            let start = er.u64()?;
            let blocks = er.u32()?;
            if blocks == 0 || start.checked_add(blocks as u64).is_none() {
                return Err(invalid(
                    S,
                    "extent",
                    format!("start {start} blocks {blocks}"),
                ));
            }
            blocks_total += blocks as u64;
            extents.push(Extent { start, blocks });
        }
        if blocks_total.checked_mul(BLOCK).is_none_or(|cap| cap < size) {
            return Err(invalid(
                S,
                "size",
                format!("{size} bytes do not fit in {blocks_total} blocks"),
            ));
        }
        let crc_bytes = r.take(
            chunk_count
                .checked_mul(4)
                .ok_or_else(|| invalid(S, "chunk_count", chunk_count))?,
        )?;
        let mut cr = Reader::new(crc_bytes, S);
        let mut crcs = Vec::with_capacity(chunk_count);
        for _ in 0..chunk_count {
            crcs.push(cr.u32()?);
        }
        Ok(EntryRecord {
            id,
            content_type,
            size,
            created_unix_ns,
            extents,
            crcs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> EntryRecord {
        EntryRecord {
            id: "movies/a.mp4".into(),
            content_type: Some("video/mp4".into()),
            size: 5 << 20,
            created_unix_ns: 7,
            extents: vec![
                Extent {
                    start: 3,
                    blocks: 1000,
                },
                Extent {
                    start: 2000,
                    blocks: 280,
                },
            ],
            crcs: vec![1, 2, 3, 4, 5],
        }
    }

    #[test]
    fn superblock_roundtrip_and_corruption() {
        let sb =
            Superblock::layout(64 << 20, [9; 16], 1, &GeometryOptions::default()).expect("layout");
        let b = sb.encode();
        assert_eq!(Superblock::decode(&b), Ok(sb.clone()));
        for i in 0..SB_LEN {
            let mut c = b;
            c[i] ^= 0x40;
            assert!(
                Superblock::decode(&c).is_err(),
                "flip at {i} went unnoticed"
            );
        }
        assert!(matches!(
            Superblock::decode(&b[..10]),
            Err(FormatError::Truncated { .. })
        ));
    }

    #[test]
    fn record_roundtrip_and_every_bit_flip_detected() {
        let rec = Record::Put(entry());
        let mut out = Vec::new();
        let crc = encode_record(&mut out, 42, &rec, 10, 9, 77);
        assert_eq!(out.len() % 8, 0);
        let (h, payload) = decode_record(&out, 42).expect("decodes");
        assert_eq!(
            (h.seq, h.batch_first_seq, h.prev_crc, h.crc),
            (10, 9, 77, crc)
        );
        assert_eq!(Record::decode_payload(h.kind, payload), Ok(rec));
        assert!(
            decode_record(&out, 43).is_err(),
            "another volume's seed must not verify"
        );
        for i in 0..RH_LEN + entry().encoded_len() {
            let mut c = out.clone();
            c[i] ^= 1;
            assert!(
                decode_record(&c, 42).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn entry_decoder_rejects_lies_without_panicking() {
        let mut out = Vec::new();
        entry().encode(&mut out);
        // Every truncation is an error, never a panic.
        for n in 0..out.len() {
            assert!(EntryRecord::decode(&mut Reader::new(&out[..n], "t")).is_err());
        }
        // A huge extent count is refused before allocating.
        let mut c = out.clone();
        c[EN_EXTENT_COUNT..EN_EXTENT_COUNT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(EntryRecord::decode(&mut Reader::new(&c, "t")).is_err());
        let mut c = out;
        c[EN_SIZE..EN_SIZE + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(EntryRecord::decode(&mut Reader::new(&c, "t")).is_err());
    }
}

//! A volume: one device (or O_DIRECT file) in the Reelstore format — formatting, recovery,
//! the journal and checkpoints, deletes and reads. Ingest lives in `ingest.rs`.
//!
//! Invariants:
//! - An asset is in the catalog only after its data and its journal record are durable.
//! - The catalog holds exactly the state of the journal up to `next_seq - 1` whenever the write
//!   lock is free; the allocator holds the complement of the catalog's extents, minus extents
//!   reserved by ingests in progress and extents of retired assets a reader may still hold.
//! - A batch is written only after the previous one is durable (one batch in flight), and every
//!   batch starts on a block boundary, so an acknowledged record is never rewritten.
//! - After any metadata write or sync fails, the volume is poisoned: no further writes, because
//!   the device state is unknown (cf. PostgreSQL's fsync lesson). Reads keep working.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::alloc::Allocator;
use crate::catalog::{Asset, Catalog, PACKED_BLOCKS_MAX, PACKED_EXTENTS_MAX, PACKED_START_MAX};
use crate::driver::{sys, Buf, Driver, DriverConfig, Op};
use crate::error::{EngineError, Result};
use crate::format::{
    self, chunk_count, decode_record, encode_record, CheckpointHeader, EntryRecord, Extent,
    FormatError, GeometryOptions, Reader, Record, RecordProblem, Superblock, BLOCK, BLOCK_SIZE,
    CK_PAYLOAD_OFFSET, SUPERBLOCK_COPY_OFFSETS,
};

/// Options of [`Volume::format`].
#[derive(Clone, Debug, Default)]
pub struct FormatOptions {
    /// For a regular file: its size (created or resized). For a block device: use only this many
    /// bytes of it (default: all).
    pub size: Option<u64>,
    /// Overwrite a target that holds a Reelstore volume or a filesystem signature.
    pub force: bool,
    pub geometry: GeometryOptions,
}

/// What recovery found when the volume was opened (also logged).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Superblock copies (0 = A, 1 = B) that were damaged and rewritten from the other copy.
    pub superblock_repaired: Vec<usize>,
    /// The newest checkpoint slot was unreadable and the other one was used.
    pub checkpoint_fallback: bool,
    pub checkpoint_generation: u64,
    pub records_replayed: u64,
    /// Bytes of a torn (never acknowledged) tail batch that were cut.
    pub torn_tail_cut: bool,
    pub assets: u64,
}

/// Space accounting, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeStats {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// Held by ingests in progress.
    pub reserved_bytes: u64,
    /// Held by deleted or replaced assets that a reader may still be reading.
    pub reclaim_pending_bytes: u64,
    pub assets: u64,
    pub journal_used_bytes: u64,
    pub journal_bytes: u64,
    pub checkpoint_generation: u64,
    pub catalog_encoded_bytes: u64,
    pub checkpoint_payload_max_bytes: u64,
}

pub(crate) struct WriteState {
    pub(crate) alloc: Allocator,
    next_seq: u64,
    prev_crc: u32,
    /// Byte offset inside the journal region where the next batch goes (block aligned).
    journal_head: u64,
    ckpt_generation: u64,
    /// The slot (0 or 1) that holds the checkpoint `ckpt_generation`.
    ckpt_slot: usize,
    /// Sum of the encoded sizes of all catalog entries: what the next checkpoint needs.
    catalog_bytes: u64,
    next_slot: u32,
    slots_free: Vec<u32>,
    pub(crate) reserved_blocks: u64,
    /// Assets that left the catalog (deleted or replaced) while a reader may still hold them.
    retired: Vec<Asset>,
    /// Their blocks.
    pending_blocks: u64,
    /// Blocks of all assets in the catalog.
    used_blocks: u64,
    poisoned: Option<String>,
    /// Assets published by [`Volume::publish_volatile`] and not yet journaled: visible, their
    /// data written but not known durable. A crash forgets them (their extents are free after
    /// recovery); [`Volume::commit_volatile`] or a checkpoint makes them durable.
    volatile: Vec<Asset>,
    /// Assets dropped by [`Volume::drop_if`]: their Delete record is written but not yet synced,
    /// so a power cut may bring them back, and their blocks must not be reused until a sync
    /// covers the record (the asset would come back pointing at someone else's bytes). The next
    /// synced journal write moves them to `retired`.
    dropped_unsynced: Vec<Asset>,
    /// When the oldest entry of `volatile` or `dropped_unsynced` got there (None while both are
    /// empty). An upper bound on the age of the oldest still there: one leaving early does not
    /// make it younger.
    volatile_since: Option<Instant>,
}

impl WriteState {
    /// Returns reserved extents (written or not, never published) to the allocator.
    pub(crate) fn unreserve(&mut self, extents: impl IntoIterator<Item = Extent>) {
        for e in extents {
            self.reserved_blocks -= e.blocks as u64;
            self.alloc.free(e);
        }
    }

    /// A free catalog slot.
    fn take_slot(&mut self) -> u32 {
        self.slots_free.pop().unwrap_or_else(|| {
            self.next_slot += 1;
            self.next_slot - 1
        })
    }
}

pub struct Volume {
    path: PathBuf,
    dev: Device,
    pub(crate) sb: Superblock,
    seed: u32,
    catalog: Catalog,
    pub(crate) w: Mutex<WriteState>,
    report: OpenReport,
}

pub(crate) fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> EngineError + 'a {
    move |source| EngineError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

fn corrupted(what: &'static str, offset: u64) -> impl FnOnce(FormatError) -> EngineError {
    move |source| EngineError::Corrupted {
        what,
        offset,
        source,
    }
}

/// A small driver for metadata I/O at format and open time.
fn metadata_driver() -> Result<Driver> {
    Ok(Driver::new(&DriverConfig {
        ring_entries: 16,
        buf_size: 1 << 20,
        buf_count: 2,
        write_log: None,
    })?)
}

/// An open device or file, holding the volume lock.
///
/// Two locks, for two dangers. `flock` on the fd that carries the I/O keeps a second node off
/// the volume; because io_uring requests hold a reference to that file, a killed node's lock lasts
/// until its ring has finished every in-flight write, so a successor never recovers while late
/// writes can still land. A graceful drop unlocks explicitly, because the caller's ring may keep a
/// reference to the file a little longer (requests finished on io_uring's worker threads are
/// freed only at the ring's next wait). On a block device an `O_EXCL` open on a separate fd, which
/// io_uring never sees, additionally keeps mounts and other exclusive openers away.
struct Device {
    file: File,
    _exclusive: Option<File>,
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

struct Target {
    dev: Device,
    size: u64,
    is_block: bool,
}

fn open_target(path: &Path, create_size: Option<u64>) -> Result<Target> {
    let exists = path.exists();
    if !exists && create_size.is_none() {
        return Err(EngineError::BadTarget {
            path: path.to_path_buf(),
            detail: "does not exist; pass --size to create a file-backed volume".into(),
        });
    }
    let is_block = exists
        && std::fs::metadata(path)
            .map_err(io_err(path, "stat"))?
            .file_type()
            .is_block_device();
    let mut oo = OpenOptions::new();
    oo.read(true).write(true).custom_flags(libc::O_DIRECT);
    if !exists {
        oo.create(true);
    }
    let busy = |e: &std::io::Error| e.raw_os_error() == Some(libc::EBUSY);
    // A process that was just killed may still hold the device for a moment: io_uring tears its
    // ring down asynchronously, and requests in flight keep the file referenced. So a busy
    // device or lock is retried for a short while before it is reported.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let dev = loop {
        let exclusive = if is_block {
            match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_EXCL)
                .open(path)
            {
                Ok(f) => Some(f),
                Err(e) if busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
                Err(e) if busy(&e) => {
                    return Err(EngineError::Locked {
                        path: path.to_path_buf(),
                    })
                }
                Err(e) => {
                    return Err(EngineError::Io {
                        path: path.to_path_buf(),
                        what: "open",
                        source: e,
                    })
                }
            }
        } else {
            None
        };
        let file = oo.open(path).map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                EngineError::BadTarget {
                    path: path.to_path_buf(),
                    detail: "the filesystem does not support O_DIRECT (tmpfs?); put the volume file on ext4/xfs or use a block device".into(),
                }
            } else {
                EngineError::Io { path: path.to_path_buf(), what: "open", source: e }
            }
        })?;
        match file.try_lock() {
            Ok(()) => {
                break Device {
                    file,
                    _exclusive: exclusive,
                }
            }
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(EngineError::Locked {
                    path: path.to_path_buf(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(EngineError::Io {
                    path: path.to_path_buf(),
                    what: "lock",
                    source: e,
                })
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let file = &dev.file;
    let size = if is_block {
        let lbs = sys::block_device_logical_block_size(file).map_err(io_err(path, "BLKSSZGET"))?;
        if lbs == 0 || lbs > BLOCK_SIZE || !BLOCK_SIZE.is_multiple_of(lbs) {
            return Err(EngineError::BadTarget {
                path: path.to_path_buf(),
                detail: format!(
                    "logical block size {lbs} is not supported (must divide {BLOCK_SIZE})"
                ),
            });
        }
        sys::block_device_size(file).map_err(io_err(path, "BLKGETSIZE64"))?
    } else {
        file.metadata().map_err(io_err(path, "stat"))?.len()
    };
    Ok(Target {
        dev,
        size,
        is_block,
    })
}

/// Names a known on-device signature in the first bytes of a target, if any.
fn detect_signature(head: &[u8]) -> Option<String> {
    let at = |off: usize, sig: &[u8]| {
        head.len() >= off + sig.len() && &head[off..off + sig.len()] == sig
    };
    for (i, &off) in SUPERBLOCK_COPY_OFFSETS.iter().enumerate() {
        let off = off as usize;
        if head.len() >= off + BLOCK as usize && Superblock::has_magic(&head[off..]) {
            return Some(match Superblock::decode(&head[off..off + BLOCK as usize]) {
                Ok(sb) => format!(
                    "a Reelstore volume (uuid {})",
                    uuid::Uuid::from_bytes(sb.uuid)
                ),
                Err(_) => format!(
                    "a (damaged) Reelstore volume superblock, copy {}",
                    ["A", "B"][i]
                ),
            });
        }
    }
    let sigs: &[(usize, &[u8], &str)] = &[
        (1080, &[0x53, 0xEF], "an ext2/3/4 filesystem"),
        (0, b"XFSB", "an XFS filesystem"),
        (65600, b"_BHRfS_M", "a btrfs filesystem"),
        (4086, b"SWAPSPACE2", "a swap area"),
        (4086, b"SWAP-SPACE", "a swap area"),
        (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
        (512, b"EFI PART", "a GPT partition table"),
        (512, b"LABELONE", "an LVM physical volume"),
        (3, b"NTFS    ", "an NTFS filesystem"),
        (0, b"hsqs", "a squashfs filesystem"),
        (1024, &[0x10, 0x20, 0xF5, 0xF2], "an F2FS filesystem"),
        (32769, b"CD001", "an ISO 9660 filesystem"),
        (
            510,
            &[0x55, 0xAA],
            "a DOS partition table or FAT boot sector",
        ),
    ];
    sigs.iter()
        .find(|(off, sig, _)| at(*off, sig))
        .map(|(_, _, name)| name.to_string())
}

/// How long opening waits for a device or lock held by a process that is going away.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

const SIGNATURE_SCAN_BYTES: u64 = 17 * BLOCK; // covers btrfs's superblock at 64 KiB

impl Volume {
    /// Writes a fresh, empty volume onto `path` (a block device, or a regular file that is
    /// created or resized to `opts.size`). Refuses a target holding a Reelstore volume or a known
    /// filesystem signature unless `opts.force`.
    pub fn format(path: &Path, opts: &FormatOptions) -> Result<Superblock> {
        let t = open_target(path, opts.size)?;
        let fd = t.dev.file.as_raw_fd();
        let mut drv = metadata_driver()?;
        if t.size > 0 && !opts.force {
            let n = SIGNATURE_SCAN_BYTES.min(t.size / BLOCK * BLOCK);
            if n > 0 {
                let head = drv.read_to_vec(fd, 0, n as usize)?;
                if let Some(what) = detect_signature(&head) {
                    return Err(EngineError::AlreadyFormatted {
                        path: path.to_path_buf(),
                        what,
                    });
                }
            }
        }
        let size = if t.is_block {
            match opts.size {
                Some(s) if s > t.size => {
                    return Err(EngineError::BadTarget {
                        path: path.to_path_buf(),
                        detail: format!("--size {s} is larger than the device ({} bytes)", t.size),
                    })
                }
                Some(s) => s,
                None => t.size,
            }
        } else {
            match opts.size {
                Some(s) => {
                    t.dev.file.set_len(s).map_err(io_err(path, "resize"))?;
                    // Preallocate so O_DIRECT writes need no block allocation later; best effort.
                    let _ = sys::preallocate(&t.dev.file, s);
                    s
                }
                None if t.size == 0 => {
                    return Err(EngineError::BadTarget {
                        path: path.to_path_buf(),
                        detail: "is empty; pass --size".into(),
                    })
                }
                None => t.size,
            }
        };
        let uuid = *uuid::Uuid::new_v4().as_bytes();
        let sb = Superblock::layout(size, uuid, now_unix_ns(), &opts.geometry).map_err(|e| {
            EngineError::BadTarget {
                path: path.to_path_buf(),
                detail: e.to_string(),
            }
        })?;
        let seed = format::crc_seed(&sb.uuid);

        // 1. Invalidate any old superblocks first, so a crash mid-format leaves "not a volume",
        //    never an old superblock in front of new metadata.
        drv.write_from_slice(fd, 0, &[0u8; 2 * BLOCK_SIZE as usize])?;
        drv.sync(fd)?;
        // 2. An empty checkpoint (generation 1) in slot 0; slot 1 cleared.
        let payload_crc = crc32c::crc32c_append(seed, &[]);
        let hdr = CheckpointHeader {
            generation: 1,
            last_seq: 0,
            entry_count: 0,
            payload_bytes: 0,
            payload_crc,
        };
        let (block, ck_crc) = hdr.encode(seed);
        drv.write_from_slice(fd, sb.checkpoint_slot_offset(0), &block)?;
        drv.write_from_slice(
            fd,
            sb.checkpoint_slot_offset(1),
            &[0u8; BLOCK_SIZE as usize],
        )?;
        // 3. The journal's first lap starts right after it.
        let mut batch = Vec::new();
        encode_record(
            &mut batch,
            seed,
            &Record::LapStart { generation: 1 },
            1,
            1,
            ck_crc,
        );
        batch.resize(batch.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
        drv.write_from_slice(fd, sb.journal_offset, &batch)?;
        drv.sync(fd)?;
        // 4. Superblocks last: the volume exists once they are durable.
        let sbb = sb.encode();
        for off in SUPERBLOCK_COPY_OFFSETS {
            drv.write_from_slice(fd, off, &sbb)?;
        }
        drv.sync(fd)?;
        tracing::info!(path = %path.display(), size, uuid = %uuid::Uuid::from_bytes(uuid), "formatted volume");
        Ok(sb)
    }

    /// Opens a volume and recovers it: picks a valid superblock copy (repairing the other),
    /// loads the newest valid checkpoint, replays the journal up to its first invalid record
    /// (a torn tail is cut; a damaged record followed by later durable ones is corruption),
    /// and derives free space from the catalog.
    pub fn open(path: &Path) -> Result<Volume> {
        let t = open_target(path, None)?;
        let fd = t.dev.file.as_raw_fd();
        let mut drv = metadata_driver()?;
        let mut report = OpenReport::default();
        if t.size < 2 * BLOCK {
            return Err(EngineError::NotAVolume {
                path: path.to_path_buf(),
            });
        }

        // Superblock.
        let head = drv.read_to_vec(fd, 0, 2 * BLOCK as usize)?;
        let copies: Vec<std::result::Result<Superblock, FormatError>> = (0..2)
            .map(|i| Superblock::decode(&head[i * BLOCK as usize..(i + 1) * BLOCK as usize]))
            .collect();
        let sb = match (&copies[0], &copies[1]) {
            (Ok(a), Ok(b)) if a == b => a.clone(),
            (Ok(a), _) => {
                report.superblock_repaired.push(1);
                a.clone()
            }
            (Err(_), Ok(b)) => {
                report.superblock_repaired.push(0);
                b.clone()
            }
            (Err(ea), Err(_)) => {
                if !Superblock::has_magic(&head) && !Superblock::has_magic(&head[BLOCK as usize..])
                {
                    return Err(EngineError::NotAVolume {
                        path: path.to_path_buf(),
                    });
                }
                return Err(EngineError::Corrupted {
                    what: "superblock (both copies)",
                    offset: 0,
                    source: ea.clone(),
                });
            }
        };
        if sb.data_blocks > PACKED_START_MAX {
            return Err(EngineError::Inconsistent {
                what: "superblock",
                detail: format!(
                    "{} data blocks exceed the {} this build addresses",
                    sb.data_blocks, PACKED_START_MAX
                ),
            });
        }
        if sb.volume_bytes > t.size {
            return Err(EngineError::Inconsistent {
                what: "superblock",
                detail: format!(
                    "volume is {} bytes but the device holds only {}",
                    sb.volume_bytes, t.size
                ),
            });
        }
        let seed = format::crc_seed(&sb.uuid);

        // Checkpoint: newest valid generation wins.
        let mut candidates = Vec::new();
        let mut newest_damaged = None::<(usize, FormatError)>;
        for slot in 0..2 {
            let off = sb.checkpoint_slot_offset(slot);
            let blk = drv.read_to_vec(fd, off, BLOCK as usize)?;
            match CheckpointHeader::decode(&blk, seed, sb.checkpoint_payload_max()) {
                Ok((h, crc)) => candidates.push((slot, h, crc)),
                Err(FormatError::BadMagic { .. }) => {} // never written (slot 1 after format)
                Err(e) => newest_damaged = Some((slot, e)),
            }
        }
        candidates.sort_by_key(|c| std::cmp::Reverse(c.1.generation));
        let mut chosen = None;
        for (i, (slot, h, crc)) in candidates.iter().enumerate() {
            let off = sb.checkpoint_slot_offset(*slot) + CK_PAYLOAD_OFFSET;
            let len = h.payload_bytes.div_ceil(BLOCK) * BLOCK;
            let payload = drv.read_to_vec(fd, off, len as usize)?;
            let payload = &payload[..h.payload_bytes as usize];
            let actual = crc32c::crc32c_append(seed, payload);
            if actual != h.payload_crc {
                tracing::warn!(
                    slot,
                    generation = h.generation,
                    "checkpoint payload checksum mismatch; trying the other slot"
                );
                newest_damaged = Some((
                    *slot,
                    FormatError::ChecksumMismatch {
                        structure: "checkpoint payload",
                        expected: h.payload_crc,
                        actual,
                    },
                ));
                continue;
            }
            match decode_checkpoint(payload, h.entry_count) {
                Ok(entries) => {
                    report.checkpoint_fallback = i > 0 || newest_damaged.is_some();
                    chosen = Some((*slot, *h, *crc, entries));
                    break;
                }
                Err(e) => newest_damaged = Some((*slot, e)),
            }
        }
        let Some((ck_slot, ck, ck_crc, entries)) = chosen else {
            let (slot, e) = newest_damaged.unwrap_or((
                0,
                FormatError::BadMagic {
                    structure: "checkpoint header",
                },
            ));
            return Err(EngineError::Corrupted {
                what: "checkpoint (both slots)",
                offset: sb.checkpoint_slot_offset(slot),
                source: e,
            });
        };
        report.checkpoint_generation = ck.generation;

        let mut state: BTreeMap<String, EntryRecord> = BTreeMap::new();
        for e in entries {
            check_entry(&sb, &e)?;
            if state.insert(e.id.clone(), e).is_some() {
                return Err(EngineError::Inconsistent {
                    what: "checkpoint",
                    detail: "an asset id appears twice".into(),
                });
            }
        }

        // Journal replay.
        let journal = drv.read_to_vec(fd, sb.journal_offset, sb.journal_bytes as usize)?;
        let replay = replay_journal(&journal, seed, &ck, ck_crc, &sb, &mut state)?;
        report.records_replayed = replay.records;
        report.torn_tail_cut = replay.torn;

        // Free space is the complement of what the catalog uses.
        let mut used: Vec<Extent> = state
            .values()
            .flat_map(|e| e.extents.iter().copied())
            .collect();
        let alloc = Allocator::from_used(sb.data_blocks, &mut used).map_err(|c| {
            EngineError::Inconsistent {
                what: "catalog",
                detail: c.to_string(),
            }
        })?;

        let alloc_free_blocks = alloc.free_blocks();
        let catalog = Catalog::new();
        let mut catalog_bytes = 0;
        let mut next_slot = 0u32;
        for e in state.into_values() {
            let a = Asset::from_record(&e, next_slot);
            catalog_bytes += encoded_len(&a);
            catalog.insert(a);
            next_slot += 1;
        }
        report.assets = next_slot as u64;

        let vol = Volume {
            path: path.to_path_buf(),
            dev: t.dev,
            sb: sb.clone(),
            seed,
            catalog,
            w: Mutex::new(WriteState {
                alloc,
                next_seq: replay.next_seq,
                prev_crc: replay.prev_crc,
                journal_head: replay.head,
                ckpt_generation: ck.generation,
                ckpt_slot: ck_slot,
                catalog_bytes,
                next_slot,
                slots_free: Vec::new(),
                reserved_blocks: 0,
                retired: Vec::new(),
                pending_blocks: 0,
                used_blocks: sb.data_blocks - alloc_free_blocks,
                poisoned: None,
                volatile: Vec::new(),
                dropped_unsynced: Vec::new(),
                volatile_since: None,
            }),
            report: OpenReport::default(),
        };
        {
            let mut w = vol.lock();
            if !replay.lap_started {
                // The newest checkpoint was written but its lap never started (crash in between):
                // start it now, before any other record.
                w.journal_head = 0;
                w.prev_crc = ck_crc;
                vol.append_batch(
                    &mut drv,
                    &mut w,
                    &[Record::LapStart {
                        generation: ck.generation,
                    }],
                )?;
            }
            if report.checkpoint_fallback {
                // Rewrite the damaged slot with a fresh checkpoint so both are valid again.
                vol.checkpoint_locked(&mut drv, &mut w)?;
            }
        }
        for &copy in &report.superblock_repaired {
            drv.write_from_slice(fd, SUPERBLOCK_COPY_OFFSETS[copy], &sb.encode())?;
            drv.sync(fd)?;
        }
        if report != OpenReport::default() {
            tracing::info!(path = %path.display(), ?report, "recovered volume");
        }
        Ok(Volume { report, ..vol })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The device's fd, for the shard's data path (READ_FIXED with [`Asset::segments`]).
    pub fn fd(&self) -> RawFd {
        self.dev.file.as_raw_fd()
    }

    /// Byte offset of the data region on the device.
    pub fn data_offset(&self) -> u64 {
        self.sb.data_offset
    }

    pub fn chunk_size(&self) -> u32 {
        self.sb.chunk_size
    }

    /// Lock-free lookup.
    pub fn get(&self, id: &str) -> Option<Asset> {
        self.catalog.get(id)
    }

    /// All assets, sorted by id.
    pub fn list(&self) -> Vec<Asset> {
        let mut v = self.catalog.all();
        v.sort_unstable_by(|a, b| a.id().cmp(b.id()));
        v
    }

    pub fn len(&self) -> usize {
        self.catalog.len()
    }

    pub fn is_empty(&self) -> bool {
        self.catalog.is_empty()
    }

    pub fn stats(&self) -> VolumeStats {
        let mut w = self.lock();
        self.reclaim_locked(&mut w);
        VolumeStats {
            capacity_bytes: self.sb.data_blocks * BLOCK,
            used_bytes: w.used_blocks * BLOCK,
            free_bytes: w.alloc.free_blocks() * BLOCK,
            reserved_bytes: w.reserved_blocks * BLOCK,
            reclaim_pending_bytes: w.pending_blocks * BLOCK,
            assets: self.catalog.len() as u64,
            journal_used_bytes: w.journal_head,
            journal_bytes: self.sb.journal_bytes,
            checkpoint_generation: w.ckpt_generation,
            catalog_encoded_bytes: w.catalog_bytes,
            checkpoint_payload_max_bytes: self.sb.checkpoint_payload_max(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, WriteState> {
        self.w.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns extents and slots of dropped assets to the allocator.
    pub(crate) fn reclaim_locked(&self, w: &mut WriteState) {
        let mut i = 0;
        while i < w.retired.len() {
            if w.retired[i].is_last_reference() {
                let a = w.retired.swap_remove(i);
                for e in a.extents() {
                    w.alloc.free(e);
                }
                w.pending_blocks -= a.allocated_blocks();
                w.slots_free.push(a.slot());
            } else {
                i += 1;
            }
        }
    }

    pub(crate) fn check_writable(&self, w: &WriteState) -> Result<()> {
        match &w.poisoned {
            Some(reason) => Err(EngineError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Deletes an asset. Its record is durable when this returns; its extents become free once
    /// no reader holds the asset any more. Returns false if there was no such asset.
    pub fn delete(&self, drv: &mut Driver, id: &str) -> Result<bool> {
        self.delete_if(drv, id, &|_| true)
    }

    /// Deletes `id` only if `cond`, given the current version, says yes; `cond` runs under the
    /// write lock, so no put can slip in between (a migration drops exactly the version it
    /// checked, never a newer upload). Returns whether it deleted.
    pub fn delete_if(
        &self,
        drv: &mut Driver,
        id: &str,
        cond: &dyn Fn(&Asset) -> bool,
    ) -> Result<bool> {
        self.remove_if(drv, id, cond, true)
    }

    /// Drops `id` if `cond` (as in [`Volume::delete_if`]) says yes, **without** waiting for the
    /// drop to be durable: the Delete record is written but not synced, so no device flush (each
    /// stalls foreground reads). For a copy whose content another volume holds durably (a
    /// migration's demotion or eviction): if a power cut loses the record, the copy comes back
    /// whole, which loses nothing. Its blocks are reused only after a sync covers the record:
    /// the next synced journal write (any upload, delete or commit), [`Volume::commit_volatile`],
    /// or an ingest that would otherwise run out of space. A volatile copy is simply forgotten.
    pub fn drop_if(
        &self,
        drv: &mut Driver,
        id: &str,
        cond: &dyn Fn(&Asset) -> bool,
    ) -> Result<bool> {
        self.remove_if(drv, id, cond, false)
    }

    /// [`Volume::delete_if`] (`durable`) or [`Volume::drop_if`].
    fn remove_if(
        &self,
        drv: &mut Driver,
        id: &str,
        cond: &dyn Fn(&Asset) -> bool,
        durable: bool,
    ) -> Result<bool> {
        let mut w = self.lock();
        self.check_writable(&w)?;
        if durable && w.dropped_unsynced.iter().any(|a| a.id() == id) {
            // A drop's Delete of this id is not yet durable: a power cut could bring that copy
            // back after this delete is acknowledged. Make it durable first.
            self.sync_dropped_locked(drv, &mut w)?;
        }
        let Some(old) = self.get(id) else {
            return Ok(false);
        };
        if !cond(&old) {
            return Ok(false);
        }
        let delta = -(encoded_len(&old) as i64);
        let volatile = w.volatile.iter().any(|v| Asset::ptr_eq(v, &old));
        if volatile {
            // Never journaled (a volatile copy): the journal does not know it, and a Delete of
            // an unknown id would read as corruption at recovery. Forgetting it is the delete.
            w.catalog_bytes = w.catalog_bytes.saturating_sub(encoded_len(&old));
        } else {
            let records = [Record::Delete { id: id.to_string() }];
            self.commit_with(drv, &mut w, &records, delta, durable)?;
        }
        self.catalog.remove(id);
        if volatile || durable {
            self.retire(&mut w, old);
            self.reclaim_locked(&mut w);
        } else {
            // Reclaimable once a sync covers the record (`journal_synced`).
            let blocks = old.allocated_blocks();
            w.used_blocks -= blocks;
            w.pending_blocks += blocks;
            w.dropped_unsynced.push(old);
            w.volatile_since.get_or_insert_with(Instant::now);
        }
        Ok(true)
    }

    /// Bytes of dropped assets whose Delete is not yet synced ([`Volume::drop_if`]): not free
    /// until the next sync.
    pub fn dropped_unsynced_bytes(&self) -> u64 {
        self.lock()
            .dropped_unsynced
            .iter()
            .map(|a| a.allocated_blocks() * BLOCK)
            .sum()
    }

    /// Syncs the Delete records of [`Volume::drop_if`] and lets their blocks be reclaimed.
    /// Returns whether there were any.
    pub(crate) fn sync_dropped_locked(&self, drv: &mut Driver, w: &mut WriteState) -> Result<bool> {
        if w.dropped_unsynced.is_empty() {
            return Ok(false);
        }
        if let Err(e) = drv.sync(self.fd()) {
            w.poisoned = Some(format!("journal sync failed: {e}"));
            return Err(e.into());
        }
        self.journal_synced(w);
        Ok(true)
    }

    /// Every journal write so far is durable: lazily dropped assets become reclaimable.
    fn journal_synced(&self, w: &mut WriteState) {
        let dropped = std::mem::take(&mut w.dropped_unsynced);
        w.retired.extend(dropped);
        if w.volatile.is_empty() {
            w.volatile_since = None;
        }
        self.reclaim_locked(w);
    }

    /// Makes an asset whose data is already durable visible: journals it, then publishes it.
    pub(crate) fn publish(
        &self,
        drv: &mut Driver,
        w: &mut WriteState,
        rec: EntryRecord,
    ) -> Result<Asset> {
        let mut out = self.publish_batch(drv, w, vec![rec])?;
        Ok(out.pop().expect("one record in, one asset out"))
    }

    /// Journals records (ids distinct, data already durable) as one batch: one journal write and
    /// one sync for all of them. Then publishes them. All or none.
    fn publish_batch(
        &self,
        drv: &mut Driver,
        w: &mut WriteState,
        recs: Vec<EntryRecord>,
    ) -> Result<Vec<Asset>> {
        let mut assets = Vec::with_capacity(recs.len());
        let mut delta = 0i64;
        for rec in &recs {
            let slot = w.take_slot();
            let asset = Asset::from_record(rec, slot);
            let old = self.get(&rec.id);
            delta += encoded_len(&asset) as i64 - old.as_ref().map_or(0, |o| encoded_len(o) as i64);
            assets.push(asset);
        }
        let records: Vec<Record> = recs.into_iter().map(Record::Put).collect();
        let committed = self
            .check_metadata_room(w, delta)
            .and_then(|()| self.commit(drv, w, &records, delta));
        if let Err(e) = committed {
            w.slots_free.extend(assets.iter().map(Asset::slot));
            return Err(e);
        }
        for asset in &assets {
            let blocks = asset.allocated_blocks();
            w.reserved_blocks -= blocks;
            w.used_blocks += blocks;
            if let Some(old) = self.catalog.insert(asset.clone()) {
                self.retire(w, old);
            }
        }
        self.reclaim_locked(w);
        Ok(assets)
    }

    /// Group commit of prepared ingests ([`crate::Ingest::prepare`]): one sync makes all their
    /// data durable; then, under the write lock, each one's condition is asked (given the
    /// catalog's current version of its id, as in [`crate::Ingest::finish_if`]) and those it
    /// accepts are journaled as one batch (one write, one sync) and published. Returns, in order,
    /// the published asset or `None` for a declined one (its space is released; so is a later
    /// duplicate of an id already in the batch). On error nothing is published.
    pub fn publish_prepared(
        &self,
        drv: &mut Driver,
        items: Vec<(crate::ingest::Prepared<'_>, &crate::ingest::PublishCond<'_>)>,
    ) -> Result<Vec<Option<Asset>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // Data first, then the records that point at it.
        drv.sync(self.fd())?;
        let count = items.len();
        let mut w = self.lock();
        // Declined and failed records give their space back here, under the lock already held
        // (a Prepared's own drop would take it again).
        let mut taken = Vec::new();
        let mut recs = Vec::new();
        let writable = self.check_writable(&w);
        for (k, (mut p, cond)) in items.into_iter().enumerate() {
            let Some(rec) = p.take_record() else { continue };
            if writable.is_err()
                || recs.iter().any(|r: &EntryRecord| r.id == rec.id)
                || !cond(self.get(&rec.id).as_ref())
            {
                w.unreserve(rec.extents);
                continue;
            }
            taken.push(k);
            recs.push(rec);
        }
        writable?;
        let mut res: Vec<Option<Asset>> = vec![None; count];
        if recs.is_empty() {
            return Ok(res);
        }
        let extents: Vec<Extent> = recs.iter().flat_map(|r| r.extents.clone()).collect();
        match self.publish_batch(drv, &mut w, recs) {
            Ok(assets) => {
                for (k, a) in taken.into_iter().zip(assets) {
                    res[k] = Some(a);
                }
                Ok(res)
            }
            Err(e) => {
                w.unreserve(extents);
                Err(e)
            }
        }
    }

    /// Publishes a prepared copy at once, **without** making it durable: it is visible and
    /// served from now on, but neither its data nor a journal record is synced, so a crash
    /// forgets it (its space is free after recovery) until [`Volume::commit_volatile`] or a
    /// checkpoint makes it durable. For migration copies, whose source still holds the asset:
    /// losing one loses no acknowledged data, and the device flushes that durability costs
    /// (each stalls foreground reads) are paid rarely and in batches.
    ///
    /// Published only if `cond` (under the write lock, given the current version) says yes
    /// **and** the id has no current version: replacing one would retire (and free) extents
    /// that the journal still names, which after a crash would point at reused space. Use
    /// [`Volume::publish_prepared`] to replace.
    pub fn publish_volatile(
        &self,
        p: crate::ingest::Prepared<'_>,
        cond: &crate::ingest::PublishCond<'_>,
    ) -> Result<Option<Asset>> {
        let mut p = p;
        let mut w = self.lock();
        let Some(rec) = p.take_record() else {
            return Ok(None);
        };
        if let Err(e) = self.check_writable(&w) {
            w.unreserve(rec.extents);
            return Err(e);
        }
        let cur = self.get(&rec.id);
        if cur.is_some() || !cond(cur.as_ref()) {
            w.unreserve(rec.extents);
            return Ok(None);
        }
        let slot = w.take_slot();
        let asset = Asset::from_record(&rec, slot);
        let delta = encoded_len(&asset) as i64;
        // A checkpoint would have to hold it too.
        if let Err(e) = self.check_metadata_room(&w, delta) {
            w.slots_free.push(slot);
            w.unreserve(rec.extents);
            return Err(e);
        }
        w.catalog_bytes += delta as u64;
        let blocks = asset.allocated_blocks();
        w.reserved_blocks -= blocks;
        w.used_blocks += blocks;
        self.catalog.insert(asset.clone());
        w.volatile.push(asset.clone());
        w.volatile_since.get_or_insert_with(Instant::now);
        Ok(Some(asset))
    }

    /// Whether `a` is durable here (not a volatile copy still waiting for its commit).
    pub fn is_durable(&self, a: &Asset) -> bool {
        !self.lock().volatile.iter().any(|v| Asset::ptr_eq(v, a))
    }

    /// Volatile copies still current (count, bytes).
    pub fn volatile_stats(&self) -> (u64, u64) {
        let w = self.lock();
        w.volatile
            .iter()
            .filter(|a| self.get(a.id()).is_some_and(|c| Asset::ptr_eq(&c, a)))
            .fold((0, 0), |(n, b), a| (n + 1, b + a.size()))
    }

    /// When the oldest volatile copy still waiting for its commit was published (None if none
    /// waits): what a commit deadline is measured from.
    pub fn volatile_since(&self) -> Option<Instant> {
        self.lock().volatile_since
    }

    /// Makes every volatile copy published so far durable: one sync for their data, then their
    /// records (those still current: a copy deleted or replaced since is not journaled, so it
    /// cannot come back) in journal batches, synced. Returns how many were journaled.
    pub fn commit_volatile(&self, drv: &mut Driver) -> Result<usize> {
        let snapshot: Vec<Asset> = self.lock().volatile.clone();
        let snapshot_at = Instant::now();
        if snapshot.is_empty() {
            let mut w = self.lock();
            self.check_writable(&w)?;
            self.sync_dropped_locked(drv, &mut w)?;
            return Ok(0);
        }
        // Their data writes completed before they were published: this sync covers them.
        drv.sync(self.fd())?;
        let mut w = self.lock();
        self.check_writable(&w)?;
        let in_snapshot = |v: &Asset| snapshot.iter().any(|a| Asset::ptr_eq(v, a));
        // Still volatile (a checkpoint since made them durable otherwise) and still current.
        let recs: Vec<Record> = w
            .volatile
            .iter()
            .filter(|v| in_snapshot(v))
            .filter(|v| self.get(v.id()).is_some_and(|c| Asset::ptr_eq(&c, v)))
            .map(|v| Record::Put(v.to_record()))
            .collect();
        w.volatile.retain(|v| !in_snapshot(v));
        // Those published during the sync wait for the next commit (published after the
        // snapshot: not older than it). Lazily dropped ones are synced by the journal batch.
        w.volatile_since = (!w.volatile.is_empty()).then_some(snapshot_at);
        if recs.is_empty() {
            self.sync_dropped_locked(drv, &mut w)?;
        }
        // Batches of at most a quarter of the journal (a batch must fit in one lap).
        let max = self.sb.journal_bytes / 4;
        let mut start = 0;
        while start < recs.len() {
            let mut end = start + 1;
            while end < recs.len() && batch_len(&recs[start..=end]) <= max {
                end += 1;
            }
            self.commit(drv, &mut w, &recs[start..end], 0)?;
            start = end;
        }
        Ok(recs.len())
    }

    /// An asset left the catalog: its space is reclaimed once no reader holds it.
    fn retire(&self, w: &mut WriteState, old: Asset) {
        // A volatile copy that leaves the catalog is never journaled; its handle there would
        // keep its space from being reclaimed.
        w.volatile.retain(|v| !Asset::ptr_eq(v, &old));
        if w.volatile.is_empty() && w.dropped_unsynced.is_empty() {
            w.volatile_since = None;
        }
        let blocks = old.allocated_blocks();
        w.used_blocks -= blocks;
        w.pending_blocks += blocks;
        w.retired.push(old);
    }

    fn check_metadata_room(&self, w: &WriteState, delta: i64) -> Result<()> {
        let needed = (w.catalog_bytes as i64 + delta).max(0) as u64;
        if needed > self.sb.checkpoint_payload_max() {
            return Err(EngineError::MetadataFull {
                needed_bytes: needed,
                max_bytes: self.sb.checkpoint_payload_max(),
            });
        }
        Ok(())
    }

    /// Appends records to the journal durably, checkpointing first when the journal is full.
    fn commit(
        &self,
        drv: &mut Driver,
        w: &mut WriteState,
        records: &[Record],
        catalog_delta: i64,
    ) -> Result<()> {
        self.commit_with(drv, w, records, catalog_delta, true)
    }

    /// [`Volume::commit`], synced or (`sync` false: durable at the next sync, or lost whole or
    /// torn by a power cut before it) not.
    fn commit_with(
        &self,
        drv: &mut Driver,
        w: &mut WriteState,
        records: &[Record],
        catalog_delta: i64,
        sync: bool,
    ) -> Result<()> {
        let len = batch_len(records);
        if len > self.sb.journal_bytes - BLOCK {
            return Err(EngineError::RecordTooLarge {
                bytes: len,
                journal_bytes: self.sb.journal_bytes,
            });
        }
        if w.journal_head + len > self.sb.journal_bytes {
            self.checkpoint_locked(drv, w)?;
        }
        self.append_batch_with(drv, w, records, sync)?;
        w.catalog_bytes = (w.catalog_bytes as i64 + catalog_delta).max(0) as u64;
        Ok(())
    }

    /// Writes one batch at the journal head and syncs it. Poisons the volume on failure.
    fn append_batch(&self, drv: &mut Driver, w: &mut WriteState, records: &[Record]) -> Result<()> {
        self.append_batch_with(drv, w, records, true)
    }

    /// [`Volume::append_batch`], synced only if `sync`. An unsynced batch may be lost or torn by a
    /// power cut, and then ends the journal at recovery; every later batch was unsynced too
    /// (a synced one makes all earlier writes durable), so none is acknowledged.
    fn append_batch_with(
        &self,
        drv: &mut Driver,
        w: &mut WriteState,
        records: &[Record],
        sync: bool,
    ) -> Result<()> {
        let mut buf = Vec::with_capacity(batch_len(records) as usize);
        let first = w.next_seq;
        let mut prev = w.prev_crc;
        for (i, r) in records.iter().enumerate() {
            prev = encode_record(&mut buf, self.seed, r, first + i as u64, first, prev);
        }
        buf.resize(buf.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
        assert!(
            w.journal_head.is_multiple_of(BLOCK)
                && w.journal_head + buf.len() as u64 <= self.sb.journal_bytes
        );
        let fd = self.fd();
        let res = drv
            .write_from_slice(fd, self.sb.journal_offset + w.journal_head, &buf)
            .and_then(|()| if sync { drv.sync(fd) } else { Ok(()) });
        if let Err(e) = res {
            w.poisoned = Some(format!("journal write failed: {e}"));
            return Err(e.into());
        }
        if sync {
            self.journal_synced(w);
        }
        w.journal_head += buf.len() as u64;
        w.next_seq = first + records.len() as u64;
        w.prev_crc = prev;
        Ok(())
    }

    /// Forces a checkpoint now (normally taken when the journal fills up).
    pub fn checkpoint(&self, drv: &mut Driver) -> Result<()> {
        let mut w = self.lock();
        self.check_writable(&w)?;
        self.checkpoint_locked(drv, &mut w)
    }

    /// Writes the whole catalog into the other checkpoint slot, then starts a new journal lap.
    fn checkpoint_locked(&self, drv: &mut Driver, w: &mut WriteState) -> Result<()> {
        let mut payload = Vec::with_capacity(w.catalog_bytes as usize);
        let mut count = 0u64;
        // Order does not matter in a checkpoint; no need to sort millions of ids.
        for a in self.catalog.all() {
            a.to_record().encode(&mut payload);
            count += 1;
        }
        let max = self.sb.checkpoint_payload_max();
        if payload.len() as u64 > max {
            return Err(EngineError::MetadataFull {
                needed_bytes: payload.len() as u64,
                max_bytes: max,
            });
        }
        let generation = w.ckpt_generation + 1;
        let slot = 1 - w.ckpt_slot;
        let hdr = CheckpointHeader {
            generation,
            last_seq: w.next_seq - 1,
            entry_count: count,
            payload_bytes: payload.len() as u64,
            payload_crc: crc32c::crc32c_append(self.seed, &payload),
        };
        let (hblock, hcrc) = hdr.encode(self.seed);
        payload.resize(payload.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
        let fd = self.fd();
        let off = self.sb.checkpoint_slot_offset(slot);
        let res = drv
            .write_from_slice(fd, off + CK_PAYLOAD_OFFSET, &payload)
            .and_then(|()| drv.write_from_slice(fd, off, &hblock))
            .and_then(|()| drv.sync(fd));
        if let Err(e) = res {
            w.poisoned = Some(format!("checkpoint write failed: {e}"));
            return Err(e.into());
        }
        // The checkpoint is durable: the old lap is no longer needed. Start the new one.
        w.ckpt_generation = generation;
        w.ckpt_slot = slot;
        // The checkpoint holds every catalog entry, and its sync came after their data writes
        // completed: the volatile ones are durable now.
        w.volatile.clear();
        w.volatile_since = None;
        w.journal_head = 0;
        w.prev_crc = hcrc;
        self.append_batch(drv, w, &[Record::LapStart { generation }])?;
        tracing::debug!(generation, entries = count, "checkpoint written");
        Ok(())
    }

    /// Reads asset bytes `[offset, offset + len)` into `out` (appended). With `verify`, whole
    /// chunks are read and checked against their crc32c first. Convenience path (it copies);
    /// the streaming path reads [`Asset::segments`] into registered buffers instead.
    pub fn read(
        &self,
        drv: &mut Driver,
        asset: &Asset,
        offset: u64,
        len: u64,
        verify: bool,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > asset.size()) {
            return Err(EngineError::Range {
                offset,
                len,
                size: asset.size(),
            });
        }
        if len == 0 {
            return Ok(());
        }
        let chunk = self.sb.chunk_size as u64;
        if verify {
            let first = offset / chunk;
            let last = (offset + len - 1) / chunk;
            for c in first..=last {
                let data = self.read_chunk_verified(drv, asset, c)?;
                let cs = c * chunk;
                let s = offset.max(cs) - cs;
                let e = (offset + len).min(cs + data.len() as u64) - cs;
                out.extend_from_slice(&data[s as usize..e as usize]);
            }
            return Ok(());
        }
        for seg in asset.segments(self.sb.data_offset, offset, len) {
            let data = drv.read_to_vec(self.fd(), seg.dev_offset, seg.len as usize)?;
            let s = offset.max(seg.asset_offset) - seg.asset_offset;
            let e = (offset + len).min(seg.asset_offset + seg.len) - seg.asset_offset;
            out.extend_from_slice(&data[s as usize..e as usize]);
        }
        Ok(())
    }

    /// Reads asset bytes `[offset, offset + len)` into the registered buffer `buf` with
    /// O_DIRECT `READ_FIXED` — no copy. The read is widened to block boundaries, so the bytes
    /// asked for are `buf[skip..skip + len]` (returned as `skip`). `len` plus the alignment slack
    /// must fit the buffer: `offset % 4096 + len` ≤ buffer size. The buffer always comes back.
    pub fn read_into(
        &self,
        drv: &mut Driver,
        asset: &Asset,
        offset: u64,
        len: u64,
        buf: Buf,
    ) -> (Result<usize>, Buf) {
        if offset.checked_add(len).is_none_or(|end| end > asset.size()) {
            return (
                Err(EngineError::Range {
                    offset,
                    len,
                    size: asset.size(),
                }),
                buf,
            );
        }
        let segs = asset.segments(self.sb.data_offset, offset, len);
        let total: u64 = segs.iter().map(|s| s.len).sum();
        if total > drv.buf_size() as u64 {
            return (
                Err(EngineError::Driver(
                    crate::driver::DriverError::BufferRange {
                        offset: 0,
                        len: total as usize,
                        buf_size: drv.buf_size(),
                    },
                )),
                buf,
            );
        }
        let skip = segs
            .first()
            .map_or(0, |s| (offset - s.asset_offset) as usize);
        let mut buf = buf;
        let mut at = 0usize;
        for s in segs {
            let (res, b) = drv.run(Op::Read {
                fd: self.fd(),
                buf,
                buf_offset: at,
                len: s.len as usize,
                offset: s.dev_offset,
            });
            buf = b.expect("reads give their buffer back");
            if let Err(e) = res {
                return (Err(e.into()), buf);
            }
            at += s.len as usize;
        }
        (Ok(skip), buf)
    }

    /// Reads chunk `c` of an asset and verifies its crc32c.
    pub fn read_chunk_verified(&self, drv: &mut Driver, asset: &Asset, c: u64) -> Result<Vec<u8>> {
        self.read_chunk_verified_in(drv, asset, c, None)
    }

    /// [`Volume::read_chunk_verified`] in reads of at most `io_max` bytes (rounded down to whole
    /// blocks, at least one), one after another (see [`crate::PutOptions::io_max`]).
    pub fn read_chunk_verified_in(
        &self,
        drv: &mut Driver,
        asset: &Asset,
        c: u64,
        io_max: Option<usize>,
    ) -> Result<Vec<u8>> {
        let buf = drv.alloc_buf_blocking()?;
        let (res, buf) = self.read_chunk_verified_into(drv, asset, c, io_max, buf);
        let out = res.map(|_| {
            let clen = self.chunk_len(asset, c) as usize;
            drv.buf(&buf)[..clen].to_vec()
        });
        drv.free_buf(buf);
        out
    }

    /// The length of chunk `c` of `asset` (the last one may be short; 0 past the end).
    fn chunk_len(&self, asset: &Asset, c: u64) -> u64 {
        let chunk = self.sb.chunk_size as u64;
        chunk.min(asset.size().saturating_sub(c * chunk))
    }

    /// Reads chunk `c` of an asset into the start of the registered buffer `buf` (with
    /// O_DIRECT `READ_FIXED`, in reads of at most `io_max` bytes, one after another) and checks
    /// its crc32c: no copy. Returns the crc, so that a copy to another volume need not compute
    /// it again ([`crate::Ingest::fill_chunk_with`]). The chunk's bytes are
    /// `buf[..len]`, `len` being the chunk size or, for the last chunk, the rest of the asset.
    /// The buffer always comes back.
    pub fn read_chunk_verified_into(
        &self,
        drv: &mut Driver,
        asset: &Asset,
        c: u64,
        io_max: Option<usize>,
        buf: Buf,
    ) -> (Result<u32>, Buf) {
        let cs = c.saturating_mul(self.sb.chunk_size as u64);
        let clen = self.chunk_len(asset, c);
        let Some(expected) = asset.crc(c as usize).filter(|_| clen > 0) else {
            return (
                Err(EngineError::Range {
                    offset: cs,
                    len: clen,
                    size: asset.size(),
                }),
                buf,
            );
        };
        let mut ios = Vec::new();
        let mut at = 0usize;
        for s in asset.segments(self.sb.data_offset, cs, clen) {
            ios.push((s.dev_offset, at, s.len as usize));
            at += s.len as usize;
        }
        if at > drv.buf_size() {
            let err = crate::driver::DriverError::BufferRange {
                offset: 0,
                len: at,
                buf_size: drv.buf_size(),
            };
            return (Err(err.into()), buf);
        }
        let mut buf = buf;
        for (dev, boff, n) in crate::ingest::split_io(ios, io_max) {
            let (res, b) = drv.run(Op::Read {
                fd: self.fd(),
                buf,
                buf_offset: boff,
                len: n,
                offset: dev,
            });
            buf = b.expect("reads give their buffer back");
            if let Err(e) = res {
                return (Err(e.into()), buf);
            }
        }
        let actual = crc32c::crc32c(&drv.buf(&buf)[..clen as usize]);
        if actual != expected {
            let err = EngineError::ChecksumMismatch {
                id: asset.id().to_string(),
                chunk: c,
                expected,
                actual,
            };
            return (Err(err), buf);
        }
        (Ok(actual), buf)
    }

    /// Reads every chunk of every asset and checks its crc32c. Returns the damaged ones.
    pub fn scrub(&self, drv: &mut Driver) -> Result<Vec<EngineError>> {
        let mut bad = Vec::new();
        for a in self.list() {
            for c in 0..a.chunk_count() as u64 {
                match self.read_chunk_verified(drv, &a, c) {
                    Ok(_) => {}
                    Err(e @ EngineError::ChecksumMismatch { .. }) => bad.push(e),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(bad)
    }
}

/// Bytes an asset takes in a checkpoint (what `to_record().encoded_len()` would say, without
/// building the record).
fn encoded_len(a: &Asset) -> u64 {
    (format::EN_FIXED_LEN
        + a.id().len()
        + a.content_type().map_or(0, str::len)
        + a.extents().len() * format::EXTENT_LEN
        + a.chunk_count() * 4) as u64
}

fn batch_len(records: &[Record]) -> u64 {
    let mut n = 0;
    let mut tmp = Vec::new();
    for r in records {
        tmp.clear();
        r.encode_payload(&mut tmp);
        n += format::record_span(tmp.len());
    }
    (n as u64).div_ceil(BLOCK) * BLOCK
}

fn decode_checkpoint(
    payload: &[u8],
    count: u64,
) -> std::result::Result<Vec<EntryRecord>, FormatError> {
    let mut r = Reader::new(payload, "checkpoint payload");
    let mut out = Vec::new();
    for _ in 0..count {
        out.push(EntryRecord::decode(&mut r)?);
    }
    if r.pos() != payload.len() {
        return Err(FormatError::Invalid {
            structure: "checkpoint payload",
            field: "entry_count",
            detail: format!(
                "{count} entries leave {} bytes unread",
                payload.len() - r.pos()
            ),
        });
    }
    Ok(out)
}

/// Geometry checks the entry decoder cannot make on its own.
fn check_entry(sb: &Superblock, e: &EntryRecord) -> Result<()> {
    let packed = e
        .extents
        .iter()
        .map(|x| x.blocks.div_ceil(PACKED_BLOCKS_MAX) as usize)
        .sum::<usize>();
    if packed > PACKED_EXTENTS_MAX {
        return Err(EngineError::Inconsistent {
            what: "asset entry",
            detail: format!(
                "{:?}: {} extents are more than an asset may have",
                e.id,
                e.extents.len()
            ),
        });
    }
    if e.extents.iter().any(|x| x.end() > sb.data_blocks) {
        return Err(EngineError::Inconsistent {
            what: "asset entry",
            detail: format!("{:?}: extent outside the data region", e.id),
        });
    }
    if e.crcs.len() as u64 != chunk_count(e.size, sb.chunk_size) {
        return Err(EngineError::Inconsistent {
            what: "asset entry",
            detail: format!(
                "{:?}: {} chunk checksums for {} bytes",
                e.id,
                e.crcs.len(),
                e.size
            ),
        });
    }
    Ok(())
}

struct Replay {
    next_seq: u64,
    prev_crc: u32,
    head: u64,
    records: u64,
    torn: bool,
    lap_started: bool,
}

/// Replays the journal lap that continues checkpoint `ck` into `state`.
fn replay_journal(
    j: &[u8],
    seed: u32,
    ck: &CheckpointHeader,
    ck_crc: u32,
    sb: &Superblock,
    state: &mut BTreeMap<String, EntryRecord>,
) -> Result<Replay> {
    let mut pos = 0usize;
    let mut expected = ck.last_seq + 1;
    let mut prev = ck_crc;
    let mut records = 0u64;
    let blk = BLOCK as usize;
    let stop: Option<RecordProblem> = loop {
        if pos >= j.len() {
            break None;
        }
        match decode_record(&j[pos..], seed) {
            Ok((h, payload)) if h.seq == expected && h.prev_crc == prev => {
                let rec = Record::decode_payload(h.kind, payload)
                    .map_err(corrupted("journal record", sb.journal_offset + pos as u64))?;
                match rec {
                    Record::LapStart { generation } => {
                        if records != 0 || generation != ck.generation {
                            return Err(EngineError::Inconsistent {
                                what: "journal",
                                detail: format!("lap start for generation {generation} at seq {} (checkpoint is {})", h.seq, ck.generation),
                            });
                        }
                    }
                    _ if records == 0 => {
                        return Err(EngineError::Inconsistent {
                            what: "journal",
                            detail: "lap does not begin with a lap start".into(),
                        })
                    }
                    Record::Put(e) => {
                        check_entry(sb, &e)?;
                        state.insert(e.id.clone(), e);
                    }
                    Record::Delete { id } => {
                        if state.remove(&id).is_none() {
                            return Err(EngineError::Inconsistent {
                                what: "journal",
                                detail: format!("delete of unknown asset {id:?} at seq {}", h.seq),
                            });
                        }
                    }
                }
                records += 1;
                expected += 1;
                prev = h.crc;
                pos += format::record_span(h.payload_len as usize);
                // The rest of a block after a batch's last record is zero padding.
                if !pos.is_multiple_of(blk)
                    && (blk - pos % blk < format::RH_LEN || j[pos..pos + 4] == [0; 4])
                {
                    pos = pos.div_ceil(blk) * blk;
                }
            }
            Ok((h, payload)) => {
                if pos == 0 && h.kind == format::RecordKind::LapStart {
                    if let Ok(Record::LapStart { generation }) =
                        Record::decode_payload(h.kind, payload)
                    {
                        if generation > ck.generation {
                            return Err(EngineError::Inconsistent {
                                what: "checkpoint",
                                detail: format!(
                                    "checkpoint generation {generation} is damaged and its journal lap has replaced the one after generation {}; the catalog cannot be rebuilt",
                                    ck.generation
                                ),
                            });
                        }
                    }
                }
                break Some(RecordProblem::NoMagic); // stale: another lap or a cut tail
            }
            Err(p) => break Some(p),
        }
    };
    let head = pos.div_ceil(blk) * blk;
    // Tell a torn tail from damage: a batch is written only after the previous one is durable,
    // so a valid batch start beyond this point with a higher first seq proves the record at
    // `expected` was once durable.
    let mut scan = head;
    while scan + format::RH_LEN <= j.len() {
        if let Ok((h, _)) = decode_record(&j[scan..], seed) {
            if h.seq == h.batch_first_seq && h.batch_first_seq > expected {
                return Err(EngineError::Corrupted {
                    what: "journal",
                    offset: sb.journal_offset + pos as u64,
                    source: match &stop {
                        Some(RecordProblem::Invalid(e)) => e.clone(),
                        _ => FormatError::Invalid {
                            structure: "journal record",
                            field: "seq",
                            detail: format!("record {expected} is missing but later record {} survives at journal byte {scan}", h.seq),
                        },
                    },
                });
            }
        }
        scan += blk;
    }
    let torn = matches!(
        stop,
        Some(RecordProblem::Invalid(_)) | Some(RecordProblem::Truncated)
    );
    Ok(Replay {
        next_seq: expected,
        prev_crc: prev,
        head: head as u64,
        records,
        torn,
        lap_started: records > 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let mut b = vec![0u8; SIGNATURE_SCAN_BYTES as usize];
        assert_eq!(detect_signature(&b), None);
        b[1080] = 0x53;
        b[1081] = 0xEF;
        assert_eq!(
            detect_signature(&b).as_deref(),
            Some("an ext2/3/4 filesystem")
        );
        let mut b = vec![0u8; SIGNATURE_SCAN_BYTES as usize];
        b[65600..65608].copy_from_slice(b"_BHRfS_M");
        assert_eq!(detect_signature(&b).as_deref(), Some("a btrfs filesystem"));
    }
}

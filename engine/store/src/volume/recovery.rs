//! Formatting a volume and opening (recovering) it: superblock copies, the newest valid
//! checkpoint, journal replay up to the first invalid record, and free space derived from the
//! catalog.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;

use crate::alloc::Allocator;
use crate::catalog::{Asset, Catalog, PACKED_BLOCKS_MAX, PACKED_EXTENTS_MAX, PACKED_START_MAX};
use crate::driver::sys;
use crate::error::{EngineError, Result};
use crate::format::{
    self, chunk_count, decode_record, encode_record, CheckpointHeader, EntryRecord, Extent,
    FormatError, Reader, Record, RecordProblem, Superblock, BLOCK, BLOCK_SIZE, CK_PAYLOAD_OFFSET,
    SUPERBLOCK_COPY_OFFSETS,
};

use super::device::{detect_signature, open_target, SIGNATURE_SCAN_BYTES};
use super::journal::encoded_len;
use super::{
    corrupted, io_err, metadata_driver, now_unix_ns, FormatOptions, OpenReport, Volume, WriteState,
};

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

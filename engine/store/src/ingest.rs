//! Streaming ingest: bytes arrive in pieces of any size (from a socket or a reader of unknown
//! length), are gathered into chunk-sized registered buffers, checksummed, and written with
//! O_DIRECT `WRITE_FIXED` to extents reserved as the asset grows — several chunks in flight.
//! [`Ingest::finish`] trims the reservation, makes the data durable, and only then journals
//! and publishes the asset.
//!
//! A reservation that fails (no space) loses no byte: the chunk stays in its buffer, so the
//! caller can make room and go on, or move the whole ingest to another volume of the same chunk
//! size with [`Ingest::spill_into`] (the chunks written so far are read back, checked against
//! their crc32c and copied).
//!
//! Invariants:
//! - Reserved extents are out of the allocator and invisible to readers until publication.
//! - Extents go back to the allocator only after every write into them has completed (a late
//!   write must never land in space another asset now owns).

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::catalog::{segments_of, Asset, PACKED_BLOCKS_MAX};
use crate::driver::{Buf, Driver, Op};
use crate::error::{EngineError, Result};
use crate::format::{
    validate_id, EntryRecord, Extent, BLOCK, CONTENT_TYPE_LEN_MAX, EXTENTS_PER_ASSET_MAX,
};
use crate::io_split::split_io;
use crate::volume::{now_unix_ns, Volume};
pub use crate::volume::{Prepared, PublishCond};

/// Options of an ingest.
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    pub content_type: Option<String>,
    /// The exact size when known up front (e.g. from Content-Length): reserved in one go, and a
    /// body of another length is an error.
    pub size: Option<u64>,
    /// Chunks written concurrently (default 4).
    pub depth: Option<usize>,
    /// The creation time to record (it is what `Last-Modified` shows). `None`: the time of
    /// publication. Copies between tiers pass the original's, so a migration never changes an
    /// asset's `Last-Modified` (and an `If-Range` date keeps matching).
    pub created_unix_ns: Option<u64>,
    /// The largest single write I/O: a chunk is written in pieces of at most this many bytes
    /// (rounded down to whole blocks, at least one), one after another. `None`: a chunk (or
    /// each of its contiguous segments) in one write. Background copies set it so that a
    /// foreground read queued behind a copy write on a device that serves requests in order
    /// waits for one piece, not a whole chunk.
    pub io_max: Option<usize>,
}

/// Tags of ingest writes: top bit set, then a per-ingest number, then a per-write number.
const TAG_INGEST: u64 = 1 << 63;
const TAG_WRITE_BITS: u32 = 24;
static INGEST_NO: AtomicU64 = AtomicU64::new(1);

const GROW_BYTES_MIN: u64 = 64 << 20;
const GROW_BYTES_MAX: u64 = 1 << 30;

struct PendingWrite {
    tag: u64,
    /// (device offset, buffer offset, len) still to write after the one in flight.
    rest: Vec<(u64, usize, usize)>,
}

/// An asset being written. Call [`Ingest::finish`] or [`Ingest::abort`]; dropping it otherwise
/// leaks its reservation until the volume is reopened (logged).
pub struct Ingest<'v> {
    vol: &'v Volume,
    id: String,
    content_type: Option<String>,
    expected_size: Option<u64>,
    extents: Vec<Extent>,
    reserved_bytes: u64,
    /// Bytes accepted so far.
    size: u64,
    crcs: Vec<u32>,
    cur: Option<Buf>,
    cur_fill: usize,
    /// The crc32c of the current chunk, when [`Ingest::fill_chunk_with`] filled it (verified
    /// against its source), so that it is not computed again.
    known_crc: Option<u32>,
    chunk: usize,
    depth: usize,
    io_max: Option<usize>,
    writes: Vec<PendingWrite>,
    tag_base: u64,
    next_write: u64,
    grow_bytes: u64,
    failed: Option<String>,
    closed: bool,
    created_unix_ns: Option<u64>,
}

impl Volume {
    /// Starts an ingest of asset `id`.
    pub fn ingest(&self, drv: &Driver, id: &str, opts: &PutOptions) -> Result<Ingest<'_>> {
        validate_id(id).map_err(|reason| EngineError::InvalidId {
            id: id.to_string(),
            reason,
        })?;
        if let Some(ct) = &opts.content_type {
            if ct.len() > CONTENT_TYPE_LEN_MAX || !ct.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(EngineError::InvalidContentType);
            }
        }
        let chunk = self.chunk_size() as usize;
        if chunk > drv.buf_size() {
            return Err(EngineError::BadTarget {
                path: self.path().to_path_buf(),
                detail: format!(
                    "chunk size {chunk} exceeds the driver's buffer size {}",
                    drv.buf_size()
                ),
            });
        }
        self.check_writable(&self.lock())?;
        let no = INGEST_NO.fetch_add(1, Ordering::Relaxed) & ((1 << (63 - TAG_WRITE_BITS)) - 1);
        Ok(Ingest {
            vol: self,
            id: id.to_string(),
            content_type: opts.content_type.clone(),
            expected_size: opts.size,
            extents: Vec::new(),
            reserved_bytes: 0,
            size: 0,
            crcs: Vec::new(),
            cur: None,
            cur_fill: 0,
            known_crc: None,
            chunk,
            depth: opts.depth.unwrap_or(4).clamp(1, 64),
            io_max: opts.io_max,
            writes: Vec::new(),
            tag_base: TAG_INGEST | (no << TAG_WRITE_BITS),
            next_write: 0,
            grow_bytes: GROW_BYTES_MIN,
            failed: None,
            closed: false,
            created_unix_ns: opts.created_unix_ns,
        })
    }

    /// Ingests a whole asset from a reader (of known or unknown length). Returns once the asset
    /// is durable and visible.
    pub fn put(
        &self,
        drv: &mut Driver,
        id: &str,
        body: &mut dyn Read,
        opts: &PutOptions,
    ) -> Result<Asset> {
        let mut ing = self.ingest(drv, id, opts)?;
        match ing.fill_from(drv, body) {
            Ok(()) => ing.finish(drv),
            Err(e) => {
                ing.abort(drv);
                Err(e)
            }
        }
    }
}

impl<'v> Ingest<'v> {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Bytes accepted so far.
    pub fn len(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Appends bytes (copied into registered buffers).
    pub fn write(&mut self, drv: &mut Driver, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let buf = self.current_buf(drv)?;
            let n = (self.chunk - self.cur_fill).min(data.len());
            drv.buf_mut(&buf)[self.cur_fill..self.cur_fill + n].copy_from_slice(&data[..n]);
            self.cur = Some(buf);
            self.accept(drv, n)?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Reads `body` to its end straight into registered buffers. After an error the bytes
    /// accepted so far stay (see [`EngineError::NoSpace`] in [`Ingest::write_tail`]): calling it
    /// again first retries writing a full chunk that could not be reserved, then reads on.
    pub fn fill_from(&mut self, drv: &mut Driver, body: &mut dyn Read) -> Result<()> {
        loop {
            if self.cur.is_some() && self.cur_fill == self.chunk {
                self.flush_chunk(drv)?;
            }
            let buf = self.current_buf(drv)?;
            let fill = self.cur_fill;
            let res = body.read(&mut drv.buf_mut(&buf)[fill..self.chunk]);
            self.cur = Some(buf);
            match res {
                Ok(0) => return Ok(()),
                Ok(n) => self.accept(drv, n)?,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(EngineError::Source { source }),
            }
        }
    }

    /// Fills the next chunk in place, for copies between volumes of the same chunk size:
    /// `fill` gets a registered buffer, reads the chunk's `len` bytes into its start, checks
    /// them and returns the buffer with their crc32c (as [`Volume::read_chunk_verified_into`]
    /// does). The bytes are thus neither copied nor checksummed again. Only at a chunk boundary,
    /// and `len` must be a whole chunk or, for the last one, the rest of the announced size.
    /// [`Ingest::write_filled`] writes the chunk.
    pub fn fill_chunk_with(
        &mut self,
        drv: &mut Driver,
        len: usize,
        fill: impl FnOnce(&mut Driver, Buf) -> (Result<u32>, Buf),
    ) -> Result<()> {
        let end = self.size + len as u64;
        if let Some(exp) = self.expected_size.filter(|&e| end > e) {
            return Err(EngineError::SizeMismatch {
                expected: exp,
                actual: end,
            });
        }
        let last = self.expected_size == Some(end);
        if self.cur_fill != 0 || len == 0 || len > self.chunk || (len < self.chunk && !last) {
            return Err(EngineError::BadTarget {
                path: self.vol.path().to_path_buf(),
                detail: format!(
                    "a filled chunk of {len} bytes at offset {} does not fit this volume's \
                     chunks of {} bytes (copies need volumes of one chunk size)",
                    self.size, self.chunk
                ),
            });
        }
        let buf = self.current_buf(drv)?;
        let (res, buf) = fill(drv, buf);
        self.cur = Some(buf);
        let crc = res?;
        self.known_crc = Some(crc);
        self.cur_fill = len;
        self.size += len as u64;
        Ok(())
    }

    /// Writes the chunk [`Ingest::fill_chunk_with`] filled and waits until it is written, so
    /// the caller can time the write and nothing of the copy is in the device queue meanwhile.
    pub fn write_filled(&mut self, drv: &mut Driver) -> Result<()> {
        self.flush_chunk(drv)?;
        self.drain(drv)
    }

    /// Writes the partly filled last chunk now that the body has ended, so that running out of
    /// space shows here, with every byte kept, rather than in [`Ingest::finish`] (which gives
    /// everything up). On [`EngineError::NoSpace`] the chunk stays in its buffer: the caller may
    /// make room and call this again, or [`Ingest::spill_into`] another volume. No byte may be
    /// added after it succeeded.
    pub fn write_tail(&mut self, drv: &mut Driver) -> Result<()> {
        self.flush_chunk(drv)
    }

    fn current_buf(&mut self, drv: &mut Driver) -> Result<Buf> {
        if let Some(b) = self.cur.take() {
            return Ok(b);
        }
        if !self.size.is_multiple_of(self.chunk as u64) {
            // A short chunk was written ([`Ingest::write_tail`]): it must stay the last one.
            return Err(EngineError::BadTarget {
                path: self.vol.path().to_path_buf(),
                detail: format!(
                    "ingest of {:?}: bytes after its last chunk was written",
                    self.id
                ),
            });
        }
        loop {
            if self.writes.len() < self.depth {
                if let Some(b) = drv.alloc_buf() {
                    self.cur_fill = 0;
                    return Ok(b);
                }
            }
            if self.writes.is_empty() {
                return Err(EngineError::Driver(crate::driver::DriverError::Busy {
                    limit: drv.buf_count(),
                }));
            }
            self.reap_one(drv)?;
        }
    }

    fn accept(&mut self, drv: &mut Driver, n: usize) -> Result<()> {
        self.known_crc = None;
        self.cur_fill += n;
        self.size += n as u64;
        if let Some(exp) = self.expected_size {
            if self.size > exp {
                return Err(EngineError::SizeMismatch {
                    expected: exp,
                    actual: self.size,
                });
            }
        }
        if self.cur_fill == self.chunk {
            self.flush_chunk(drv)?;
        }
        Ok(())
    }

    /// Checksums the current chunk and submits its write(s). If its reservation fails (no
    /// space, above all), nothing changes: the chunk stays in `cur`, its crc not recorded, so the
    /// caller can make room and retry, or spill the ingest to another volume, without losing a
    /// byte.
    fn flush_chunk(&mut self, drv: &mut Driver) -> Result<()> {
        let Some(buf) = self.cur.take() else {
            return Ok(());
        };
        let fill = self.cur_fill;
        if fill == 0 {
            drv.free_buf(buf);
            return Ok(());
        }
        let data_len = fill;
        let io_len = fill.div_ceil(BLOCK as usize) * BLOCK as usize;
        {
            let b = drv.buf_mut(&buf);
            let crc = self
                .known_crc
                .take()
                .unwrap_or_else(|| crc32c::crc32c(&b[..data_len]));
            self.crcs.push(crc);
            b[data_len..io_len].fill(0);
        }
        let chunk_start = (self.crcs.len() as u64 - 1) * self.chunk as u64;
        if let Err(e) = self.reserve(drv, chunk_start + io_len as u64) {
            self.known_crc = self.crcs.pop();
            self.cur = Some(buf);
            return Err(e);
        }
        let parts: Vec<(u64, usize, usize)> = segments_of(
            self.extents.iter().copied(),
            self.vol.data_offset(),
            chunk_start,
            io_len as u64,
        )
        .iter()
        .map(|s| {
            (
                s.dev_offset,
                (s.asset_offset - chunk_start) as usize,
                s.len as usize,
            )
        })
        .collect();
        let mut parts = split_io(parts, self.io_max);
        let (dev, boff, len) = parts.remove(0);
        let tag = self.tag_base | (self.next_write & ((1 << TAG_WRITE_BITS) - 1));
        self.next_write += 1;
        drv.push(
            Op::Write {
                fd: self.vol.fd(),
                buf,
                buf_offset: boff,
                len,
                offset: dev,
            },
            tag,
        )?;
        drv.submit()?;
        self.writes.push(PendingWrite { tag, rest: parts });
        self.cur_fill = 0;
        Ok(())
    }

    /// Grows the reservation to cover asset bytes `[0, upto)`. Short of space, it first syncs
    /// the volume's lazy drops ([`Volume::drop_if`]), whose blocks are free after that.
    fn reserve(&mut self, drv: &mut Driver, upto: u64) -> Result<()> {
        if upto <= self.reserved_bytes {
            return Ok(());
        }
        let mut w = self.vol.lock();
        self.vol.check_writable(&w)?;
        self.vol.reclaim_locked(&mut w);
        if let Some(exp) = self.expected_size {
            // An announced size that cannot fit fails now, before it takes every free extent
            // and starves other uploads for as long as its client keeps sending.
            let need = (exp.div_ceil(BLOCK) * BLOCK).saturating_sub(self.reserved_bytes);
            if need > w.alloc.free_blocks() * BLOCK {
                self.vol.sync_dropped_locked(drv, &mut w)?;
            }
            let free = w.alloc.free_blocks() * BLOCK;
            if need > free {
                return Err(EngineError::NoSpace {
                    needed_bytes: need,
                    free_bytes: free,
                });
            }
        }
        while self.reserved_bytes < upto {
            let want_bytes = match self.expected_size {
                Some(exp) => exp.div_ceil(BLOCK) * BLOCK - self.reserved_bytes,
                None => {
                    let g = self.grow_bytes;
                    self.grow_bytes = (g * 2).min(GROW_BYTES_MAX);
                    g.max(upto - self.reserved_bytes)
                }
            }
            .max(upto - self.reserved_bytes);
            if self.extents.len() >= EXTENTS_PER_ASSET_MAX {
                return Err(EngineError::TooFragmented {
                    max: EXTENTS_PER_ASSET_MAX,
                });
            }
            // Extents stay within what one packed catalog extent holds (64 GiB).
            let Some(e) = w
                .alloc
                .alloc((want_bytes / BLOCK).min(PACKED_BLOCKS_MAX as u64))
            else {
                if self.vol.sync_dropped_locked(drv, &mut w)? {
                    continue;
                }
                return Err(EngineError::NoSpace {
                    needed_bytes: upto - self.reserved_bytes,
                    free_bytes: 0,
                });
            };
            w.reserved_blocks += e.blocks as u64;
            self.reserved_bytes += e.bytes();
            // Coalesce with the previous extent when the allocator handed out the next blocks.
            match self.extents.last_mut() {
                Some(last)
                    if last.end() == e.start
                        && last.blocks as u64 + e.blocks as u64 <= PACKED_BLOCKS_MAX as u64 =>
                {
                    last.blocks += e.blocks;
                }
                _ => self.extents.push(e),
            }
        }
        Ok(())
    }

    /// Waits for one of this ingest's writes to finish and handles it.
    fn reap_one(&mut self, drv: &mut Driver) -> Result<()> {
        let base = self.tag_base;
        let mine = move |t: u64| t & !((1 << TAG_WRITE_BITS) - 1) == base;
        let Some(c) = drv.wait_where(mine)? else {
            self.writes.clear();
            return Ok(());
        };
        let Some(i) = self.writes.iter().position(|w| w.tag == c.tag) else {
            if let Some(b) = c.buf {
                drv.free_buf(b);
            }
            return Ok(());
        };
        let buf = c.buf.expect("writes carry a buffer");
        if let Err(e) = c.result {
            self.writes.swap_remove(i);
            drv.free_buf(buf);
            self.failed = Some(e.to_string());
            return Err(e.into());
        }
        if self.writes[i].rest.is_empty() {
            self.writes.swap_remove(i);
            drv.free_buf(buf);
        } else {
            let (dev, boff, len) = self.writes[i].rest.remove(0);
            drv.push(
                Op::Write {
                    fd: self.vol.fd(),
                    buf,
                    buf_offset: boff,
                    len,
                    offset: dev,
                },
                c.tag,
            )?;
            drv.submit()?;
        }
        Ok(())
    }

    fn drain(&mut self, drv: &mut Driver) -> Result<()> {
        let mut first_err = None;
        while !self.writes.is_empty() {
            if let Err(e) = self.reap_one(drv) {
                first_err.get_or_insert(e);
                // Keep draining: no write may still be in flight when extents are released.
                for w in &mut self.writes {
                    w.rest.clear();
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Completes the ingest: writes the last chunk, waits for all writes, trims the reservation,
    /// makes the data durable, journals the asset and publishes it.
    pub fn finish(mut self, drv: &mut Driver) -> Result<Asset> {
        let res = self.finish_inner(drv, None);
        if !matches!(res, Ok(Some(_))) {
            self.release(drv);
        }
        self.closed = true;
        res.and_then(|a| {
            a.ok_or_else(|| EngineError::Inconsistent {
                what: "ingest",
                detail: "unconditional publish declined".into(),
            })
        })
    }

    /// Like [`Ingest::finish`], but publishes only if `cond`, given the asset the catalog holds
    /// under this id right now, says yes. `cond` runs under the volume's write lock, so no other
    /// put or delete of this volume can slip in between the check and the publish. Declined:
    /// `Ok(None)`, and nothing becomes visible. (Used by migrations, so that a copy never
    /// overwrites a newer upload.)
    pub fn finish_if(
        mut self,
        drv: &mut Driver,
        cond: &dyn Fn(Option<&Asset>) -> bool,
    ) -> Result<Option<Asset>> {
        let res = self.finish_inner(drv, Some(cond));
        if !matches!(res, Ok(Some(_))) {
            self.release(drv);
        }
        self.closed = true;
        res
    }

    /// Writes the last chunk, waits for every write, trims the reservation to the data and
    /// returns the record to journal (the data is written but not yet durable).
    fn complete(&mut self, drv: &mut Driver) -> Result<EntryRecord> {
        if let Some(exp) = self.expected_size {
            if self.size != exp {
                return Err(EngineError::SizeMismatch {
                    expected: exp,
                    actual: self.size,
                });
            }
        }
        self.flush_chunk(drv)?;
        self.drain(drv)?;
        if let Some(f) = &self.failed {
            return Err(EngineError::Poisoned { reason: f.clone() });
        }
        // Trim the reservation to the blocks the data occupies.
        let need_blocks = self.size.div_ceil(BLOCK);
        let mut keep = Vec::new();
        let mut tail = Vec::new();
        let mut have = 0u64;
        for e in self.extents.drain(..) {
            if have >= need_blocks {
                tail.push(e);
            } else if have + e.blocks as u64 > need_blocks {
                let k = (need_blocks - have) as u32;
                keep.push(Extent {
                    start: e.start,
                    blocks: k,
                });
                tail.push(Extent {
                    start: e.start + k as u64,
                    blocks: e.blocks - k,
                });
                have = need_blocks;
            } else {
                have += e.blocks as u64;
                keep.push(e);
            }
        }
        self.extents = keep;
        self.reserved_bytes = need_blocks * BLOCK;
        self.vol.lock().unreserve(tail);
        Ok(EntryRecord {
            id: self.id.clone(),
            content_type: self.content_type.clone(),
            size: self.size,
            created_unix_ns: self.created_unix_ns.unwrap_or_else(now_unix_ns),
            extents: self.extents.clone(),
            crcs: std::mem::take(&mut self.crcs),
        })
    }

    fn finish_inner(
        &mut self,
        drv: &mut Driver,
        cond: Option<&PublishCond<'_>>,
    ) -> Result<Option<Asset>> {
        let rec = self.complete(drv)?;
        // Data first, then the record that points at it.
        drv.sync(self.vol.fd())?;
        let mut w = self.vol.lock();
        self.vol.check_writable(&w)?;
        if let Some(cond) = cond {
            if !cond(self.vol.get(&self.id).as_ref()) {
                return Ok(None);
            }
        }
        let asset = self.vol.publish(drv, &mut w, rec)?;
        self.extents.clear();
        self.reserved_bytes = 0;
        Ok(Some(asset))
    }

    /// The first half of [`Ingest::finish`]: the data is written and the reservation trimmed,
    /// but nothing is synced or visible until [`Volume::publish_prepared`]. On error nothing is
    /// held.
    pub fn prepare(mut self, drv: &mut Driver) -> Result<Prepared<'v>> {
        let res = self.complete(drv);
        let out = match res {
            Ok(rec) => {
                // The reservation now belongs to the Prepared.
                self.extents.clear();
                self.reserved_bytes = 0;
                Ok(Prepared {
                    vol: self.vol,
                    rec: Some(rec),
                })
            }
            Err(e) => {
                self.release(drv);
                Err(e)
            }
        };
        self.closed = true;
        out
    }

    /// Abandons the ingest: nothing becomes visible, the reservation is released once no write
    /// into it is in flight.
    pub fn abort(mut self, drv: &mut Driver) {
        self.release(drv);
        self.closed = true;
    }

    /// Moves the ingest to the volume `other`, for an upload that outgrew this one (its
    /// reservation failed with [`EngineError::NoSpace`], the bytes kept; see
    /// [`Ingest::write_tail`]): waits for the writes in flight, starts an ingest of the same id
    /// and options on `other`, copies the chunks written so far (read back from this volume's
    /// extents, each checked against the crc32c recorded when it was written, which the copy
    /// records as is), moves the partly filled chunk over in its buffer, and abandons this
    /// ingest, whose reservation returns. Nothing is visible on either volume until the returned
    /// ingest finishes. Both volumes must have the same chunk size (as copies between them
    /// need). On error nothing of either ingest is left.
    pub fn spill_into<'o>(mut self, drv: &mut Driver, other: &'o Volume) -> Result<Ingest<'o>> {
        let res = self.spill_inner(drv, other);
        self.release(drv);
        self.closed = true;
        res
    }

    fn spill_inner<'o>(&mut self, drv: &mut Driver, other: &'o Volume) -> Result<Ingest<'o>> {
        if other.chunk_size() as usize != self.chunk {
            return Err(EngineError::BadTarget {
                path: other.path().to_path_buf(),
                detail: format!(
                    "cannot take over the upload of {:?} from {}: its chunks are {} bytes, this \
                     volume's {} (moving an upload needs volumes of one chunk size)",
                    self.id,
                    self.vol.path().display(),
                    self.chunk,
                    other.chunk_size()
                ),
            });
        }
        self.drain(drv)?;
        if let Some(f) = &self.failed {
            return Err(EngineError::Poisoned { reason: f.clone() });
        }
        let opts = PutOptions {
            content_type: self.content_type.clone(),
            size: self.expected_size,
            depth: Some(self.depth),
            created_unix_ns: self.created_unix_ns,
            io_max: self.io_max,
        };
        let mut to = other.ingest(drv, &self.id, &opts)?;
        match self.copy_written_into(drv, &mut to) {
            Ok(()) => Ok(to),
            Err(e) => {
                to.abort(drv);
                Err(e)
            }
        }
    }

    /// The spill's copy: every chunk written so far (each read back and checked), then the
    /// current buffer, into `to`.
    fn copy_written_into(&mut self, drv: &mut Driver, to: &mut Ingest<'_>) -> Result<()> {
        let chunk = self.chunk as u64;
        let written = self.size - self.cur.as_ref().map_or(0, |_| self.cur_fill as u64);
        for c in 0..self.crcs.len() {
            let start = c as u64 * chunk;
            let len = chunk.min(written - start) as usize;
            let buf = to.current_buf(drv)?;
            let (res, buf) = self.read_written_into(drv, start, len, buf);
            to.cur = Some(buf);
            let actual = res?;
            let expected = self.crcs[c];
            if actual != expected {
                return Err(EngineError::ChecksumMismatch {
                    id: self.id.clone(),
                    chunk: c as u64,
                    expected,
                    actual,
                });
            }
            to.known_crc = Some(actual);
            to.cur_fill = len;
            to.size += len as u64;
            to.flush_chunk(drv)?;
        }
        if let Some(buf) = self.cur.take() {
            // The partly filled (or full, not yet reserved) chunk moves over as it is.
            to.cur = Some(buf);
            to.cur_fill = self.cur_fill;
            to.known_crc = self.known_crc.take();
            to.size += self.cur_fill as u64;
        }
        Ok(())
    }

    /// Reads this ingest's written bytes `[start, start + len)` (one chunk) back into `buf`
    /// (`READ_FIXED`, in pieces of at most `io_max`) and returns their crc32c. The buffer
    /// always comes back.
    fn read_written_into(
        &self,
        drv: &mut Driver,
        start: u64,
        len: usize,
        buf: Buf,
    ) -> (Result<u32>, Buf) {
        let io_len = (len as u64).div_ceil(BLOCK) * BLOCK;
        let parts: Vec<(u64, usize, usize)> = segments_of(
            self.extents.iter().copied(),
            self.vol.data_offset(),
            start,
            io_len,
        )
        .iter()
        .map(|s| {
            (
                s.dev_offset,
                (s.asset_offset - start) as usize,
                s.len as usize,
            )
        })
        .collect();
        let (res, buf) = self.vol.read_pieces(drv, parts, self.io_max, buf);
        if let Err(e) = res {
            return (Err(e), buf);
        }
        (Ok(crc32c::crc32c(&drv.buf(&buf)[..len])), buf)
    }

    fn release(&mut self, drv: &mut Driver) {
        if let Some(b) = self.cur.take() {
            drv.free_buf(b);
        }
        let _ = self.drain(drv);
        self.vol.lock().unreserve(self.extents.drain(..));
        self.reserved_bytes = 0;
    }
}

impl Drop for Ingest<'_> {
    fn drop(&mut self) {
        if !self.closed && (!self.extents.is_empty() || self.cur.is_some()) {
            // Without the driver we cannot wait for in-flight writes, so the reservation stays
            // out of the allocator until the volume is reopened (where it is free again).
            tracing::error!(id = %self.id, "ingest dropped without finish/abort; its reservation is held until restart");
        }
    }
}

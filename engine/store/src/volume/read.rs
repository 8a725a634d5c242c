//! Reads: byte ranges, chunks verified against their crc32c, and the scrub of all assets.

use crate::catalog::Asset;
use crate::driver::{Buf, Driver, Op};
use crate::error::{EngineError, Result};

use super::Volume;

impl Volume {
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
        let (res, buf) = self.read_pieces(drv, ios, io_max, buf);
        if let Err(e) = res {
            return (Err(e), buf);
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

impl Volume {
    /// Reads `(device offset, buffer offset, len)` pieces into `buf` one after another
    /// (`READ_FIXED`, each cut to at most `io_max`), waiting for each. The buffer always comes
    /// back.
    pub(crate) fn read_pieces(
        &self,
        drv: &mut Driver,
        ios: Vec<(u64, usize, usize)>,
        io_max: Option<usize>,
        buf: Buf,
    ) -> (Result<()>, Buf) {
        let mut buf = buf;
        for (dev, boff, n) in crate::io_split::split_io(ios, io_max) {
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
        (Ok(()), buf)
    }
}

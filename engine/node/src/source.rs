//! Where a stream's asset bytes come from.
//!
//! A shard's response to a GET is a sequence of pieces; the asset pieces are filled by the
//! stream's [`Source`] into the shard's registered buffers and sent out of the same buffers.
//! The shard knows nothing of how a source reads: it asks for the next read of a range, pushes
//! the operation it gets, and hands the completion back to the source, which says whether the
//! buffer now holds payload bytes and where.
//!
//! The contract, for every variant:
//! - [`Source::next_read`] is given the asset range still to send `[start, end)` and a free
//!   registered buffer (of [`Cx::buf_size`] bytes, with its bytes, which a source may fill before
//!   the read). It returns [`Next::Read`]: the operation to push (owning the buffer), the asset
//!   offset the read ends at (the shard continues the range from there) and a [`Pending`] that
//!   the shard keeps with the piece until the completion; or [`Next::Wait`]: the buffer back,
//!   nothing to read yet, and maybe a control operation of the source's own to push (the shard
//!   tags it `K_RELAY` and gives its completion to [`RelaySource::on_ctl`], the one source with
//!   such operations); the shard fills again after the source's next completion. It returns the buffer as `Err` when it cannot read the range
//!   (the stream fails). One read, one operation, one buffer.
//! - The shard tags the operation as a stream read ([`Source::tag_kind`], the same for every
//!   read of a source kind) of that connection and piece, and on its completion calls
//!   [`Source::complete`] with the piece's `Pending`, the completion and the buffer's bytes. `Ok`
//!   says which bytes of the buffer are payload (`buf[skip..skip + len]`); the shard sends
//!   exactly those. `Err` fails the stream; the source has already counted and logged the
//!   failure.
//! - A completion whose stream is gone (killed meanwhile) goes to [`SourceKind::orphaned`], so
//!   a source's in-flight accounting stays balanced without the source.
//! - Reads are issued in range order and may complete in any order; the shard sends pieces in
//!   issue order.
//!
//! The variants: [`DeviceSource`], O_DIRECT `READ_FIXED` of the asset's extents on a volume
//! (never waits); and [`RelaySource`] (`relay`), an asset fetched from the node that holds it
//! over one socket: its reads are exact receives of whole chunks into the buffer, each chunk's
//! crc32c checked in `complete` before any of its bytes go out; it waits while its one socket
//! operation is in flight, and its requests to the holder are control operations.

use std::ops::Range;
use std::os::fd::RawFd;
use std::time::Instant;

use reel_store::catalog::Asset;
use reel_store::driver::{Buf, Completion, Op};

use super::metrics::{ErrorKind, ThreadMetrics};
use super::relay::RelaySource;
use super::Shared;

/// Completion-tag kinds of stream reads start here; one per [`SourceKind`].
pub(crate) const TAG_KIND_BASE: u64 = 0x10;

/// A stream's source of asset bytes.
pub(crate) enum Source {
    Device(DeviceSource),
    Relay(Box<RelaySource>),
}

/// Which variant a [`Source`] is, as carried in a completion tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SourceKind {
    Device = 0,
    Relay = 1,
}

/// What a source's reads are counted against and limited by.
pub(crate) struct Cx<'a> {
    /// The shard's metrics.
    pub m: &'a ThreadMetrics,
    /// The node's shared state (failed relay sources are noted there).
    pub shared: &'a Shared,
    /// The shard's index (for logs).
    pub shard: usize,
    /// Bytes a registered buffer holds: the most one read may fill.
    pub buf_size: u64,
}

/// The next read of a range: the operation to push and what the shard keeps meanwhile.
pub(crate) struct Read {
    pub op: Op,
    /// The asset offset this read ends at (exclusive).
    pub end: u64,
    pub pending: Pending,
}

/// What a source wants done next with a free buffer.
pub(crate) enum Next {
    /// Push this read.
    Read(Read),
    /// Nothing to read yet: the buffer back, and the source's control operation to push, if
    /// any. The shard fills again after the source's next completion.
    Wait { buf: Buf, ctl: Option<Op> },
}

/// What a source needs back with its read's completion.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending {
    /// When the read was submitted.
    submitted: Instant,
    /// Payload bytes start this far into the buffer (an unaligned range start).
    skip: usize,
    /// Payload bytes the read delivers.
    len: usize,
}

impl Pending {
    /// A read submitted now whose payload will be `buf[skip..skip + len]`.
    pub(crate) fn new(skip: usize, len: usize) -> Pending {
        Pending {
            submitted: Instant::now(),
            skip,
            len,
        }
    }

    /// The payload as planned at submission.
    pub(crate) fn filled(&self) -> Filled {
        Filled {
            skip: self.skip,
            len: self.len,
        }
    }
}

/// Payload bytes a completed read left in its buffer: `buf[skip..skip + len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Filled {
    pub skip: usize,
    pub len: usize,
}

impl Source {
    /// The tag kind of this source's reads.
    pub(crate) fn tag_kind(&self) -> u64 {
        self.kind().tag_kind()
    }

    fn kind(&self) -> SourceKind {
        match self {
            Source::Device(_) => SourceKind::Device,
            Source::Relay(_) => SourceKind::Relay,
        }
    }

    /// The read of `range` (or of its first part) into `buf`, whose bytes are `bytes`; `Err`
    /// gives the buffer back when the range cannot be read.
    pub fn next_read(
        &mut self,
        range: Range<u64>,
        buf: Buf,
        bytes: &mut [u8],
        cx: &Cx,
    ) -> Result<Next, Buf> {
        match self {
            Source::Device(d) => d.next_read(range, buf, cx).map(Next::Read),
            Source::Relay(r) => r.next_read(range, buf, bytes, cx),
        }
    }

    /// A read of this source completed (`comp`, and the bytes of its buffer; the shard takes
    /// the buffer afterwards).
    pub fn complete(
        &mut self,
        p: Pending,
        comp: &Completion,
        bytes: Option<&[u8]>,
        cx: &Cx,
    ) -> Result<Filled, ()> {
        match self {
            Source::Device(d) => d.complete(p, comp, cx),
            Source::Relay(r) => r.complete(p, comp, bytes, cx),
        }
    }
}

impl SourceKind {
    /// Every kind, for the tag round trip.
    #[cfg(test)]
    const ALL: [SourceKind; 2] = [SourceKind::Device, SourceKind::Relay];

    /// The completion-tag kind of reads of this kind.
    pub(crate) fn tag_kind(self) -> u64 {
        TAG_KIND_BASE + self as u64
    }

    /// The source kind a completion-tag kind names, if it names a stream read.
    pub(crate) fn from_tag_kind(kind: u64) -> Option<SourceKind> {
        match kind.checked_sub(TAG_KIND_BASE)? {
            0 => Some(SourceKind::Device),
            1 => Some(SourceKind::Relay),
            _ => None,
        }
    }

    /// A read of this kind completed after its stream was gone.
    pub(crate) fn orphaned(self, m: &ThreadMetrics) {
        match self {
            SourceKind::Device => m.device_read_done(),
            // A relay keeps no count of receives in flight; its socket left with its stream.
            SourceKind::Relay => {}
        }
    }
}

/// Asset bytes read from a volume: O_DIRECT `READ_FIXED` of the asset's extents.
pub(crate) struct DeviceSource {
    /// The volume's descriptor and the device offset of its data area.
    fd: RawFd,
    data_offset: u64,
    /// Keeps the asset's extents from being reused while we read them (reclamation waits for
    /// the last handle).
    asset: Asset,
}

impl DeviceSource {
    pub(crate) fn new(fd: RawFd, data_offset: u64, asset: Asset) -> DeviceSource {
        DeviceSource {
            fd,
            data_offset,
            asset,
        }
    }

    fn next_read(&mut self, range: Range<u64>, buf: Buf, cx: &Cx) -> Result<Read, Buf> {
        let Range { start, end } = range;
        // The window [start, end) widened to blocks must fit one buffer, and lies in one
        // extent so that it is one device read (a window that crosses an extent boundary is
        // cut there; the next window starts in the next extent).
        let aligned = start / 4096 * 4096;
        let mut end = end.min(aligned + cx.buf_size);
        let segs = self.asset.segments(self.data_offset, start, end - start);
        let Some(first) = segs.first().copied() else {
            return Err(buf);
        };
        end = end.min(first.asset_offset + first.len);
        let read_len = (end - first.asset_offset).div_ceil(4096) * 4096;
        cx.m.device_read(read_len);
        Ok(Read {
            op: Op::Read {
                fd: self.fd,
                buf,
                buf_offset: 0,
                len: read_len as usize,
                offset: first.dev_offset,
            },
            end,
            pending: Pending {
                submitted: Instant::now(),
                skip: (start - first.asset_offset) as usize,
                len: (end - start) as usize,
            },
        })
    }

    fn complete(&mut self, p: Pending, comp: &Completion, cx: &Cx) -> Result<Filled, ()> {
        cx.m.device_read_done();
        match &comp.result {
            Ok(_) => {
                cx.m.device_read_timed(p.submitted.elapsed().as_nanos() as u64);
                Ok(Filled {
                    skip: p.skip,
                    len: p.len,
                })
            }
            Err(e) => {
                let shard = cx.shard;
                tracing::error!(shard, error = %e, "device read failed; closing the stream");
                cx.m.error(ErrorKind::DeviceError);
                Err(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind's tag names it again, and no tag kind below the base (the shard's own
    /// operations) is taken for a stream read.
    #[test]
    fn tag_kinds_round_trip_and_stay_above_the_shards_own() {
        for k in SourceKind::ALL {
            assert_eq!(SourceKind::from_tag_kind(k.tag_kind()), Some(k));
            assert!(k.tag_kind() < 0x100, "a tag kind is 8 bits");
        }
        for kind in 0..TAG_KIND_BASE {
            assert_eq!(SourceKind::from_tag_kind(kind), None);
        }
        let past = TAG_KIND_BASE + SourceKind::ALL.len() as u64;
        assert_eq!(SourceKind::from_tag_kind(past), None);
    }
}

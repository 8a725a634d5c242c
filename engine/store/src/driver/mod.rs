//! The per-shard io_uring driver. **All `unsafe` code of Reelstore lives in this module.**
//!
//! One [`Driver`] per shard thread: it owns one ring and one pool of page-aligned buffers carved
//! out of a single anonymous mapping that is registered with the ring once. Device operations are
//! O_DIRECT `READ_FIXED` / `WRITE_FIXED` into and out of those buffers, and `FSYNC`; socket
//! operations are `ACCEPT`, `CONNECT`, `RECV` and `SEND` into and out of heap buffers the
//! operation owns, `RECV` into and `SEND`/`SEND_ZC` straight out of a registered buffer, and
//! `POLL_ADD` for wake-ups (`NOP` hands a buffer back in completion order).
//!
//! Invariants this module keeps:
//! - A buffer is a move-only [`Buf`] token. Submitting an operation moves the token into the
//!   driver's in-flight table and the [`Completion`] hands it back, so no safe code can touch a
//!   buffer while the kernel may still read or write it.
//! - Every completion is decided explicitly: short reads and writes are continued from where they
//!   stopped, `EINTR`/`EAGAIN` are resubmitted, a read that hits end of file is
//!   [`DriverError::UnexpectedEof`], everything else is a typed [`DriverError::Io`].
//! - A zero-copy send gives its buffer back only after the kernel's last notification for it:
//!   its data completion comes first (without the buffer, so the next send can go), and a second
//!   completion with [`Completion::notification`] set returns the buffer.
//! - Dropping the driver cancels what can be cancelled (accepts, receives, polls) and waits for
//!   every operation still in the kernel before the ring is closed and the mapping unmapped, so a
//!   dropped caller never leaves the kernel writing into freed memory.
//! - Everything is bounded and allocated at start: ring depth, buffer count, in-flight table.

mod ops;
mod pool;
pub mod sys;

pub use ops::{Buf, Completion, DriverConfig, DriverError, LogEvent, Op, PeerAddr, WriteLog};

use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use memmap2::MmapMut;

struct InFlight {
    tag: u64,
    op: Op,
    /// Bytes already transferred (short reads/writes are continued from here).
    done: usize,
    /// EINTR/EAGAIN resubmissions so far; bounded so a misbehaving device cannot livelock us.
    retries: u32,
    /// Zero-copy notifications the kernel still owes for this operation.
    notifs_pending: u32,
    /// The data completion of a zero-copy send went out; the slot lives on for the notification.
    reported: Option<()>,
}

/// Counters a shard exports as metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct DriverStats {
    pub ops_submitted: u64,
    pub short_transfers_continued: u64,
    pub retries: u64,
    pub errors: u64,
    pub enter_calls: u64,
    /// Zero-copy sends submitted, and those the kernel reported it had to copy after all
    /// (e.g. over loopback).
    pub zc_sends: u64,
    pub zc_copied: u64,
}

const RETRIES_MAX: u32 = 64;

/// The per-shard io_uring driver.
pub struct Driver {
    // Field order matters for drop: the ring (which holds the buffer registration) must be closed
    // before the mapping is unmapped. `Drop` additionally drains in-flight operations first.
    ring: IoUring<squeue::Entry, cqueue::Entry>,
    slots: Vec<Option<InFlight>>,
    slots_free: Vec<u32>,
    completed: VecDeque<Completion>,
    /// Operations whose SQE could not be pushed yet because the submission queue was full.
    backlog: VecDeque<u32>,
    bufs_free: Vec<u16>,
    buf_size: usize,
    buf_count: usize,
    base: *mut u8,
    stats: DriverStats,
    /// Reused by `reap` so reaping allocates nothing.
    cqe_scratch: Vec<(u64, i32, u32)>,
    /// Whether the kernel has `SEND_ZC`; without it zero-copy sends fall back to `SEND`.
    send_zc: bool,
    write_log: Option<WriteLog>,
    /// Dropped by hand in `Drop`, only once the kernel is done with every buffer.
    map: ManuallyDrop<MmapMut>,
}

impl Driver {
    /// Creates the ring (with `SINGLE_ISSUER | DEFER_TASKRUN` where the kernel has them), probes
    /// the opcodes we need, maps and registers the buffer pool. Call it on the thread that will
    /// use the driver: a `DEFER_TASKRUN` ring may only be entered from its creating thread.
    pub fn new(cfg: &DriverConfig) -> Result<Driver, DriverError> {
        if cfg.buf_size == 0
            || !cfg.buf_size.is_multiple_of(4096)
            || cfg.buf_size > u32::MAX as usize
        {
            return Err(DriverError::Config(
                "buf_size must be a non-zero multiple of 4096 below 4 GiB",
            ));
        }
        if cfg.buf_count == 0 || cfg.buf_count > 16384 {
            return Err(DriverError::Config(
                "buf_count must be 1..=16384 (the kernel's limit)",
            ));
        }
        if cfg.ring_entries == 0 || cfg.ring_entries > 32768 {
            return Err(DriverError::Config("ring_entries must be 1..=32768"));
        }
        let ring = build_ring(cfg.ring_entries)?;
        let send_zc = probe(&ring)?;

        let bytes = cfg.buf_size * cfg.buf_count;
        let mut map =
            MmapMut::map_anon(bytes).map_err(|source| DriverError::Map { bytes, source })?;
        let base = map.as_mut_ptr();
        assert_eq!(
            base as usize % 4096,
            0,
            "anonymous mappings are page aligned"
        );
        let iovecs: Vec<libc::iovec> = (0..cfg.buf_count)
            .map(|i| libc::iovec {
                // SAFETY: i * buf_size < bytes, the length of the mapping starting at `base`.
                iov_base: unsafe { base.add(i * cfg.buf_size) }.cast(),
                iov_len: cfg.buf_size,
            })
            .collect();
        // SAFETY: every iovec points into `map`, which lives in `self._map` and is dropped only
        // after the ring (declared first) is closed, which ends the registration.
        unsafe { ring.submitter().register_buffers(&iovecs) }
            .map_err(|source| DriverError::RegisterBuffers { bytes, source })?;

        let slots_max = (cfg.ring_entries as usize * 2).max(cfg.buf_count + 16);
        Ok(Driver {
            ring,
            slots: (0..slots_max).map(|_| None).collect(),
            slots_free: (0..slots_max as u32).rev().collect(),
            completed: VecDeque::with_capacity(slots_max),
            backlog: VecDeque::with_capacity(slots_max),
            bufs_free: (0..cfg.buf_count as u16).rev().collect(),
            buf_size: cfg.buf_size,
            buf_count: cfg.buf_count,
            base,
            stats: DriverStats::default(),
            cqe_scratch: Vec::with_capacity(cfg.ring_entries as usize * 2),
            send_zc,
            write_log: cfg.write_log.clone(),
            map: ManuallyDrop::new(map),
        })
    }

    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.slots_free.len()
    }

    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// Bytes an in-flight operation with `tag` has transferred so far (short transfers that
    /// were continued), or `None` if no such operation is in flight. A linear scan: for rare
    /// checks such as a send timeout, not for every completion.
    pub fn progress(&self, tag: u64) -> Option<usize> {
        self.slots
            .iter()
            .flatten()
            .find(|f| f.tag == tag)
            .map(|f| f.done)
    }

    /// Whether zero-copy sends really are `SEND_ZC` on this kernel.
    pub fn has_send_zc(&self) -> bool {
        self.send_zc
    }

    /// Queues an operation. It is handed to the kernel at the next [`Driver::submit`] or wait.
    /// An operation that cannot be queued (bad buffer range, full in-flight table) fails in its
    /// completion, which gives back what it owned, so the caller never loses a buffer token.
    pub fn push(&mut self, op: Op, tag: u64) -> Result<(), DriverError> {
        if let Op::Read {
            buf_offset, len, ..
        }
        | Op::Write {
            buf_offset, len, ..
        }
        | Op::SendBuf {
            buf_offset, len, ..
        }
        | Op::RecvBuf {
            buf_offset, len, ..
        } = &op
        {
            if buf_offset
                .checked_add(*len)
                .is_none_or(|end| end > self.buf_size)
                || *len > u32::MAX as usize
            {
                let err = DriverError::BufferRange {
                    offset: *buf_offset,
                    len: *len,
                    buf_size: self.buf_size,
                };
                let mut c = Completion::new(tag, Err(err));
                give_back(&mut c, op);
                self.completed.push_back(c);
                return Ok(());
            }
        }
        if let Op::Recv { data, at, .. } | Op::Send { data, at, .. } = &op {
            if *at > data.len() {
                let err = DriverError::BufferRange {
                    offset: *at,
                    len: 0,
                    buf_size: data.len(),
                };
                let mut c = Completion::new(tag, Err(err));
                give_back(&mut c, op);
                self.completed.push_back(c);
                return Ok(());
            }
        }
        let Some(slot) = self.slots_free.pop() else {
            // The table is full: the operation fails like any other, in its completion, so
            // the caller gets its buffer back.
            let mut c = Completion::new(
                tag,
                Err(DriverError::Busy {
                    limit: self.slots.len(),
                }),
            );
            give_back(&mut c, op);
            self.completed.push_back(c);
            return Ok(());
        };
        self.slots[slot as usize] = Some(InFlight {
            tag,
            op,
            done: 0,
            retries: 0,
            notifs_pending: 0,
            reported: None,
        });
        self.stats.ops_submitted += 1;
        if let Some(InFlight {
            op: Op::SendBuf {
                zero_copy: true, ..
            },
            ..
        }) = &self.slots[slot as usize]
        {
            if self.send_zc {
                self.stats.zc_sends += 1;
            }
        }
        self.queue_sqe(slot);
        Ok(())
    }

    /// Hands queued operations to the kernel without waiting.
    pub fn submit(&mut self) -> Result<(), DriverError> {
        self.enter(0)
    }

    /// Pops a finished operation, if any (does not enter the kernel).
    pub fn pop(&mut self) -> Option<Completion> {
        self.completed.pop_front()
    }

    /// Submits queued operations and reaps completions, blocking until at least one finished
    /// operation is ready to [`Driver::pop`] (or nothing is in flight).
    pub fn wait(&mut self) -> Result<(), DriverError> {
        loop {
            self.reap();
            if !self.completed.is_empty() || self.in_flight() == 0 {
                // Whatever was queued (by the caller or by continuations) goes to the kernel
                // now, so the device works while the caller handles these completions.
                if self.sq_pending() {
                    self.enter(0)?;
                }
                return Ok(());
            }
            self.enter(1)?;
        }
    }

    fn sq_pending(&mut self) -> bool {
        !self.ring.submission().is_empty() || !self.backlog.is_empty()
    }

    /// Non-blocking: submits queued operations and reaps whatever completed.
    pub fn poll(&mut self) -> Result<(), DriverError> {
        self.enter(0)?;
        self.reap();
        Ok(())
    }

    /// Pops the oldest finished operation whose tag satisfies `mine` (other completions stay
    /// queued for their owners).
    pub fn pop_where(&mut self, mine: impl Fn(u64) -> bool) -> Option<Completion> {
        let pos = self.completed.iter().position(|c| mine(c.tag))?;
        self.completed.remove(pos)
    }

    /// Blocks until a finished operation whose tag satisfies `mine` is available and returns it.
    /// Returns `None` if no operation at all is in flight and none is queued for `mine`.
    pub fn wait_where(
        &mut self,
        mine: impl Fn(u64) -> bool,
    ) -> Result<Option<Completion>, DriverError> {
        loop {
            if let Some(c) = self.pop_where(&mine) {
                return Ok(Some(c));
            }
            if self.in_flight() == 0 {
                return Ok(None);
            }
            self.enter(1)?;
            self.reap();
        }
    }

    /// Blocks until the operation with `tag` finishes and returns it. Other completions that
    /// arrive meanwhile stay queued, in order, for [`Driver::pop`].
    pub fn wait_tag(&mut self, tag: u64) -> Result<Completion, DriverError> {
        match self.wait_where(|t| t == tag)? {
            Some(c) => Ok(c),
            None => Err(DriverError::Io {
                op: "wait",
                offset: 0,
                source: io::Error::other(format!("no operation with tag {tag} is in flight")),
            }),
        }
    }

    /// Runs one operation to completion (submit and wait). Convenience for metadata I/O.
    pub fn run(&mut self, op: Op) -> (Result<usize, DriverError>, Option<Buf>) {
        const TAG: u64 = u64::MAX;
        if let Err(e) = self.push(op, TAG) {
            return (Err(e), None);
        }
        match self.wait_tag(TAG) {
            Ok(c) => (c.result, c.buf),
            Err(e) => (Err(e), None),
        }
    }

    /// Reads `len` bytes at `offset` of `fd` into a new vector, through the pool (O_DIRECT-safe:
    /// `offset` and `len` must be block aligned). Metadata path only: it copies.
    pub fn read_to_vec(
        &mut self,
        fd: RawFd,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, DriverError> {
        let mut out = Vec::with_capacity(len);
        let buf = self.alloc_buf_blocking()?;
        let mut buf = Some(buf);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(self.buf_size);
            let op = Op::Read {
                fd,
                buf: buf.take().expect("buffer held"),
                buf_offset: 0,
                len: n,
                offset: offset + done as u64,
            };
            let (res, b) = self.run(op);
            buf = b;
            if let Err(e) = res {
                if let Some(b) = buf {
                    self.free_buf(b);
                }
                return Err(e);
            }
            let b = buf.as_ref().expect("read returns its buffer");
            out.extend_from_slice(&self.buf(b)[..n]);
            done += n;
        }
        if let Some(b) = buf {
            self.free_buf(b);
        }
        Ok(out)
    }

    /// Writes `data` at `offset` of `fd` through the pool (`offset` and `data.len()` block
    /// aligned). Metadata path only: it copies. Does not sync.
    pub fn write_from_slice(
        &mut self,
        fd: RawFd,
        offset: u64,
        data: &[u8],
    ) -> Result<(), DriverError> {
        let mut buf = Some(self.alloc_buf_blocking()?);
        let mut done = 0;
        while done < data.len() {
            let n = (data.len() - done).min(self.buf_size);
            let b = buf.take().expect("buffer held");
            self.buf_mut(&b)[..n].copy_from_slice(&data[done..done + n]);
            let (res, b) = self.run(Op::Write {
                fd,
                buf: b,
                buf_offset: 0,
                len: n,
                offset: offset + done as u64,
            });
            buf = b;
            if let Err(e) = res {
                if let Some(b) = buf {
                    self.free_buf(b);
                }
                return Err(e);
            }
            done += n;
        }
        if let Some(b) = buf {
            self.free_buf(b);
        }
        Ok(())
    }

    /// `fdatasync` through the ring.
    pub fn sync(&mut self, fd: RawFd) -> Result<(), DriverError> {
        self.run(Op::Fsync { fd, datasync: true }).0.map(|_| ())
    }

    fn queue_sqe(&mut self, slot: u32) {
        let sqe = self.build_sqe(slot);
        // SAFETY: the SQE refers to a registered buffer (by index and a pointer inside the
        // mapping) whose token is held in `self.slots[slot]` until the completion for `slot` is
        // reaped, and the mapping outlives the ring; heap memory it points to (a `Recv`/`Send`
        // vector, a `Connect` address box) is owned by the same slot. The fd is the caller's
        // and must stay open.
        let pushed = unsafe { self.ring.submission().push(&sqe) };
        if pushed.is_err() {
            // The submission queue is full: flush it and try again; if the kernel still will not
            // take entries, keep the slot in the backlog and retry after the next enter.
            if self.ring.submit().is_ok() {
                // SAFETY: as above.
                if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                    return;
                }
            }
            self.backlog.push_back(slot);
        }
    }

    fn build_sqe(&self, slot: u32) -> squeue::Entry {
        let f = self.slots[slot as usize].as_ref().expect("slot is in use");
        let done = f.done;
        match &f.op {
            Op::Read {
                fd,
                buf,
                buf_offset,
                len,
                offset,
            } => {
                // SAFETY: buf_offset + len <= buf_size was checked in `push`, and done < len.
                let ptr = unsafe {
                    self.base
                        .add(buf.index as usize * self.buf_size + buf_offset + done)
                };
                opcode::ReadFixed::new(types::Fd(*fd), ptr, (len - done) as u32, buf.index)
                    .offset(offset + done as u64)
                    .build()
                    .user_data(slot as u64)
            }
            Op::Write {
                fd,
                buf,
                buf_offset,
                len,
                offset,
            } => {
                // SAFETY: as for reads.
                let ptr = unsafe {
                    self.base
                        .add(buf.index as usize * self.buf_size + buf_offset + done)
                };
                opcode::WriteFixed::new(types::Fd(*fd), ptr, (len - done) as u32, buf.index)
                    .offset(offset + done as u64)
                    .build()
                    .user_data(slot as u64)
            }
            Op::Fsync { fd, datasync } => {
                let flags = if *datasync {
                    types::FsyncFlags::DATASYNC
                } else {
                    types::FsyncFlags::empty()
                };
                opcode::Fsync::new(types::Fd(*fd))
                    .flags(flags)
                    .build()
                    .user_data(slot as u64)
            }
            Op::Accept { fd } => {
                opcode::Accept::new(types::Fd(*fd), std::ptr::null_mut(), std::ptr::null_mut())
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
                    .user_data(slot as u64)
            }
            Op::Recv { fd, data, at } => {
                let room = (data.len() - at).min(u32::MAX as usize);
                // SAFETY: at <= data.len() was checked in `push`; the vector is owned by the
                // in-flight slot, so its heap block stays put until the completion is reaped.
                let ptr = unsafe { data.as_ptr().add(*at) }.cast_mut();
                opcode::Recv::new(types::Fd(*fd), ptr, room as u32)
                    .build()
                    .user_data(slot as u64)
            }
            Op::Send { fd, data, at } => {
                let start = at + done;
                let left = (data.len() - start).min(u32::MAX as usize);
                // SAFETY: at + done <= data.len() (done counts bytes of data[at..] sent); the
                // vector lives in the slot until the completion is reaped.
                let ptr = unsafe { data.as_ptr().add(start) };
                opcode::Send::new(types::Fd(*fd), ptr, left as u32)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(slot as u64)
            }
            Op::SendBuf {
                fd,
                buf,
                buf_offset,
                len,
                zero_copy,
            } => {
                // SAFETY: buf_offset + len <= buf_size was checked in `push`, and done < len.
                let ptr = unsafe {
                    self.base
                        .add(buf.index as usize * self.buf_size + buf_offset + done)
                };
                let left = (len - done) as u32;
                if *zero_copy && self.send_zc {
                    opcode::SendZc::new(types::Fd(*fd), ptr, left)
                        .buf_index(Some(buf.index))
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                        .user_data(slot as u64)
                } else {
                    opcode::Send::new(types::Fd(*fd), ptr, left)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                        .user_data(slot as u64)
                }
            }
            Op::PollIn { fd } => opcode::PollAdd::new(types::Fd(*fd), libc::POLLIN as u32)
                .build()
                .user_data(slot as u64),
            Op::Connect { fd, addr } => {
                // The pointer is into the operation's box, which the in-flight slot owns until
                // the completion is reaped.
                let (ptr, len) = addr.raw();
                opcode::Connect::new(types::Fd(*fd), ptr, len)
                    .build()
                    .user_data(slot as u64)
            }
            Op::RecvBuf {
                fd,
                buf,
                buf_offset,
                len,
            } => {
                // SAFETY: buf_offset + len <= buf_size was checked in `push`, and done < len;
                // the token is in the slot, so nothing else uses the buffer meanwhile.
                let ptr = unsafe {
                    self.base
                        .add(buf.index as usize * self.buf_size + buf_offset + done)
                };
                // MSG_WAITALL: the kernel keeps receiving until the length is there (fewer
                // completions per buffer); a short result is still continued below.
                opcode::Recv::new(types::Fd(*fd), ptr, (len - done) as u32)
                    .flags(libc::MSG_WAITALL)
                    .build()
                    .user_data(slot as u64)
            }
            Op::Nop { .. } => opcode::Nop::new().build().user_data(slot as u64),
        }
    }

    /// Like [`Driver::wait`], but returns after `timeout` even if nothing finished.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<(), DriverError> {
        self.reap();
        if !self.completed.is_empty() {
            if self.sq_pending() {
                self.enter(0)?;
            }
            return Ok(());
        }
        let ts = types::Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&ts);
        self.stats.enter_calls += 1;
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) => {}
            Err(source) => return Err(DriverError::Enter { source }),
        }
        let n = self.backlog.len();
        for _ in 0..n {
            if let Some(slot) = self.backlog.pop_front() {
                self.queue_sqe(slot);
            }
        }
        self.reap();
        Ok(())
    }

    fn enter(&mut self, want: usize) -> Result<(), DriverError> {
        loop {
            self.stats.enter_calls += 1;
            match self.ring.submit_and_wait(want) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // EBUSY/EAGAIN: the completion queue is full or the kernel is short of memory;
                // reaping makes room, and the caller loops.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => {
                    self.reap();
                    break;
                }
                Err(source) => return Err(DriverError::Enter { source }),
            }
        }
        // Retry SQEs that did not fit before.
        let n = self.backlog.len();
        for _ in 0..n {
            if let Some(slot) = self.backlog.pop_front() {
                self.queue_sqe(slot);
            }
        }
        Ok(())
    }

    /// Moves kernel completions into `completed`, continuing short transfers and retrying
    /// EINTR/EAGAIN. Never recurses: resubmissions are only queued.
    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqe_scratch);
        cqes.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
        );
        for &(user_data, res, flags) in &cqes {
            // Cancellation requests (see `Drop`) carry a user_data outside the slot table.
            if user_data < self.slots.len() as u64 {
                self.on_cqe(user_data as u32, res, flags);
            }
        }
        cqes.clear();
        self.cqe_scratch = cqes;
    }

    fn on_cqe(&mut self, slot: u32, res: i32, flags: u32) {
        let f = self.slots[slot as usize]
            .as_mut()
            .expect("completion for an unused slot");
        if cqueue::notif(flags) {
            // A zero-copy notification: the kernel let go of (part of) the buffer. `res` has
            // bit 31 clear when the data really went zero-copy.
            f.notifs_pending = f.notifs_pending.saturating_sub(1);
            if res as u32 & (1 << 31) != 0 {
                // IORING_NOTIF_USAGE_ZC_COPIED: reported only with IORING_SEND_ZC_REPORT_USAGE.
                self.stats.zc_copied += 1;
            }
            if f.notifs_pending == 0 && f.reported.is_some() {
                let f = self.slots[slot as usize].take().expect("slot is in use");
                self.slots_free.push(slot);
                let mut c = Completion::new(f.tag, Ok(0));
                c.notification = true;
                give_back(&mut c, f.op);
                self.completed.push_back(c);
            }
            return;
        }
        if cqueue::more(flags) {
            // A SEND_ZC data completion that will be followed by a notification.
            f.notifs_pending += 1;
        }
        let (name, total, offset) = match &f.op {
            Op::Read { len, offset, .. } => ("read", *len, *offset),
            Op::Write { len, offset, .. } => ("write", *len, *offset),
            Op::Fsync { .. } => ("fsync", 0, 0),
            Op::Accept { .. } => ("accept", 0, 0),
            Op::Recv { .. } => ("recv", 0, 0),
            Op::Send { data, at, .. } => ("send", data.len() - at, 0),
            Op::SendBuf { len, .. } => ("send", *len, 0),
            Op::PollIn { .. } => ("poll", 0, 0),
            Op::Connect { .. } => ("connect", 0, 0),
            Op::RecvBuf { len, .. } => ("recv", *len, 0),
            Op::Nop { .. } => ("nop", 0, 0),
        };
        let outcome: Option<Result<usize, DriverError>> = if res < 0 {
            let errno = -res;
            if (errno == libc::EINTR || errno == libc::EAGAIN) && f.retries < RETRIES_MAX {
                f.retries += 1;
                self.stats.retries += 1;
                None
            } else {
                Some(Err(DriverError::Io {
                    op: name,
                    offset: offset + f.done as u64,
                    source: io::Error::from_raw_os_error(errno),
                }))
            }
        } else {
            match &f.op {
                Op::Fsync { .. } | Op::Connect { .. } | Op::Nop { .. } => Some(Ok(0)),
                // The result is the new descriptor, a mask, or a byte count (0 = peer closed):
                // all final as they are.
                Op::Accept { .. } | Op::PollIn { .. } | Op::Recv { .. } => Some(Ok(res as usize)),
                _ if total == 0 => Some(Ok(0)),
                _ if res == 0 => {
                    // A zero-byte read is end of file; a zero-byte write or send makes no
                    // progress either.
                    Some(Err(DriverError::UnexpectedEof {
                        op: name,
                        offset,
                        done: f.done,
                        len: total,
                    }))
                }
                _ => {
                    f.done += res as usize;
                    if f.done >= total {
                        Some(Ok(total))
                    } else {
                        self.stats.short_transfers_continued += 1;
                        None
                    }
                }
            }
        };
        match outcome {
            None => self.queue_sqe(slot),
            Some(result) => {
                if result.is_err() {
                    self.stats.errors += 1;
                }
                if f.notifs_pending > 0 {
                    // The data is out (or failed), but the buffer is still the kernel's until
                    // the notifications arrive: report the data now, the buffer later.
                    f.reported = Some(());
                    let tag = f.tag;
                    self.completed.push_back(Completion::new(tag, result));
                    return;
                }
                let f = self.slots[slot as usize].take().expect("slot is in use");
                if let (Some(log), Ok(_)) = (&self.write_log, &result) {
                    self.log_completion(log.clone(), &f.op);
                }
                self.slots_free.push(slot);
                let mut c = Completion::new(f.tag, result);
                if let (Op::Accept { .. }, Ok(fd)) = (&f.op, &c.result) {
                    // SAFETY: the kernel just created this descriptor for us (the accept's
                    // result); nothing else knows it, so this is its only owner.
                    c.fd = Some(unsafe { OwnedFd::from_raw_fd(*fd as RawFd) });
                    c.result = Ok(0);
                }
                give_back(&mut c, f.op);
                self.completed.push_back(c);
            }
        }
    }
}

impl Driver {
    fn log_completion(&self, log: WriteLog, op: &Op) {
        let ev = match op {
            Op::Write {
                fd,
                buf,
                buf_offset,
                len,
                offset,
            } => LogEvent::Write {
                fd: *fd,
                offset: *offset,
                data: self.buf(buf)[*buf_offset..buf_offset + len].to_vec(),
            },
            Op::Fsync { fd, .. } => LogEvent::Sync { fd: *fd },
            _ => return,
        };
        log.lock().unwrap_or_else(|p| p.into_inner()).push(ev);
    }
}

/// Moves what an operation owned into its completion.
fn give_back(c: &mut Completion, op: Op) {
    match op {
        Op::Read { buf, .. }
        | Op::Write { buf, .. }
        | Op::SendBuf { buf, .. }
        | Op::RecvBuf { buf, .. }
        | Op::Nop { buf } => c.buf = Some(buf),
        Op::Recv { data, .. } | Op::Send { data, .. } => c.data = Some(data),
        Op::Fsync { .. } | Op::Accept { .. } | Op::PollIn { .. } | Op::Connect { .. } => {}
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Never unmap buffers the kernel may still be using: wait for every in-flight op. Socket
        // operations may wait forever (an idle connection, a listener), so cancel them first;
        // device I/O is not cancellable and simply finishes.
        if self.in_flight() > 0 {
            let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(u64::MAX);
            // SAFETY: a cancellation refers to no memory.
            if unsafe { self.ring.submission().push(&cancel) }.is_err() {
                let _ = self.ring.submit();
                // SAFETY: as above.
                let _ = unsafe { self.ring.submission().push(&cancel) };
            }
        }
        while self.in_flight() > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // The ring is unusable, so we cannot know when the kernel is done: leak the
                // mapping rather than free memory it may still write into.
                Err(_) => return,
            }
            self.reap();
            self.completed.clear();
        }
        let _ = self.ring.submitter().unregister_buffers();
        // SAFETY: nothing is in flight and the buffers are unregistered, so neither the kernel
        // nor any `Buf` slice (all borrow `self`) refers to the mapping; it is dropped once.
        unsafe { ManuallyDrop::drop(&mut self.map) };
    }
}

fn build_ring(entries: u32) -> Result<IoUring, DriverError> {
    let attempts: [fn(&mut io_uring::Builder); 3] = [
        |b| {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_taskrun_flag();
        },
        |b| {
            b.setup_coop_taskrun().setup_taskrun_flag();
        },
        |_| {},
    ];
    let mut last = None;
    for setup in attempts {
        let mut b = IoUring::builder();
        b.setup_cqsize(entries * 2);
        setup(&mut b);
        match b.build(entries) {
            Ok(r) => return Ok(r),
            // EINVAL means an unsupported flag: fall back to fewer flags.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(source) => return Err(DriverError::Unavailable { source }),
        }
    }
    Err(DriverError::Unavailable {
        source: last.unwrap_or_else(|| io::Error::other("no ring")),
    })
}

/// Checks the opcodes we need; returns whether the optional `SEND_ZC` is there.
fn probe(ring: &IoUring) -> Result<bool, DriverError> {
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|source| DriverError::Unavailable { source })?;
    for (code, name) in [
        (opcode::ReadFixed::CODE, "READ_FIXED"),
        (opcode::WriteFixed::CODE, "WRITE_FIXED"),
        (opcode::Fsync::CODE, "FSYNC"),
        (opcode::Accept::CODE, "ACCEPT"),
        (opcode::Recv::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::Connect::CODE, "CONNECT"),
        (opcode::Nop::CODE, "NOP"),
    ] {
        if !p.is_supported(code) {
            return Err(DriverError::MissingOpcode { opcode: name });
        }
    }
    Ok(p.is_supported(opcode::SendZc::CODE))
}

/// Checks that io_uring works here; the error names the fix. Used by the CLI at start.
pub fn probe_kernel() -> Result<(), DriverError> {
    let ring = build_ring(8)?;
    probe(&ring).map(|_| ())
}

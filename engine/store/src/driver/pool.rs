//! The driver's buffer pool: page-aligned buffers carved out of one anonymous mapping that is
//! registered with the ring, handed out as move-only [`Buf`] tokens.

use super::{Buf, Driver, DriverError};

impl Driver {
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    pub fn buf_count(&self) -> usize {
        self.buf_count
    }

    pub fn bufs_free(&self) -> usize {
        self.bufs_free.len()
    }

    /// Takes a free buffer from the pool, or `None` when all are in use.
    pub fn alloc_buf(&mut self) -> Option<Buf> {
        self.bufs_free.pop().map(|index| Buf { index })
    }

    /// Returns a buffer to the pool.
    pub fn free_buf(&mut self, buf: Buf) {
        debug_assert!(!self.bufs_free.contains(&buf.index), "buffer freed twice");
        self.bufs_free.push(buf.index);
    }

    /// The bytes of a buffer the caller owns.
    pub fn buf(&self, buf: &Buf) -> &[u8] {
        assert!((buf.index as usize) < self.buf_count);
        // SAFETY: the index is in range, so the slice lies inside the mapping. The caller holds
        // the only `Buf` token for it, so no operation is in flight on it (submitting moves the
        // token into the driver), and no `&mut` to it can exist while `&self` is borrowed.
        unsafe {
            std::slice::from_raw_parts(
                self.base.add(buf.index as usize * self.buf_size),
                self.buf_size,
            )
        }
    }

    /// The bytes of a buffer the caller owns, writable.
    pub fn buf_mut(&mut self, buf: &Buf) -> &mut [u8] {
        assert!((buf.index as usize) < self.buf_count);
        // SAFETY: as in `buf`; `&mut self` guarantees no other slice of this driver's pool is
        // borrowed, and the token guarantees the kernel is not using this buffer.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.add(buf.index as usize * self.buf_size),
                self.buf_size,
            )
        }
    }

    /// Takes a buffer, waiting for in-flight operations to give one back if the pool is empty.
    /// Buffers handed back by completions are only reusable once their owner frees them, so this
    /// fails (rather than hangs) when every buffer is owned by the caller.
    pub(crate) fn alloc_buf_blocking(&mut self) -> Result<Buf, DriverError> {
        match self.alloc_buf() {
            Some(b) => Ok(b),
            None => Err(DriverError::Busy {
                limit: self.buf_count,
            }),
        }
    }
}

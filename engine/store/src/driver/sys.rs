//! Thin wrappers over the few system calls std does not offer: block device geometry, file
//! preallocation and CPU affinity. Part of the driver because it needs `unsafe`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

// From <linux/fs.h>: _IOR(0x12, 114, size_t) and _IO(0x12, 104).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;

/// Size in bytes of a block device (`BLKGETSIZE64`).
pub fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to a live local.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Logical block size of a block device (`BLKSSZGET`): the O_DIRECT alignment unit.
pub fn block_device_logical_block_size(file: &File) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points to a live local.
    let r = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            BLKSSZGET as _,
            &mut size as *mut libc::c_int,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(size).map_err(|_| io::Error::other("negative logical block size"))
}

/// Allocates the blocks of a regular file so that later O_DIRECT writes need no block
/// allocation. Returns `Ok(false)` when the filesystem does not support it.
pub fn preallocate(file: &File, len: u64) -> io::Result<bool> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::other("file too large"))?;
    // SAFETY: plain syscall on an open fd; no memory is passed.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(true)
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is its empty value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside `set`; cpu is bounds-checked by the macro's implementation.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: passes a pointer to a live cpu_set_t with its exact size.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes in a TCP socket's send queue not yet acknowledged by the peer (`SIOCOUTQ`). A send
/// timeout compares it over time: a client that keeps taking bytes shrinks it, even while one
/// large send stays in flight.
pub fn socket_send_queue_bytes(fd: std::os::fd::RawFd) -> io::Result<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one int through the pointer, which points to a live
    // local; a stale or wrong fd makes the call fail with EBADF/ENOTTY, it touches no memory.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(n).map_err(|_| io::Error::other("negative queue length"))
}

//! The device under a volume: opening a block device or O_DIRECT file exclusively, the volume
//! lock and its wait, and the refusal to format over a known signature.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::driver::sys;
use crate::error::{EngineError, Result};
use crate::format::{Superblock, BLOCK, BLOCK_SIZE, SUPERBLOCK_COPY_OFFSETS};

use super::io_err;

/// An open device or file, holding the volume lock.
///
/// Two locks, for two dangers. `flock` on the fd that carries the I/O keeps a second node off
/// the volume; because io_uring requests hold a reference to that file, a killed node's lock lasts
/// until its ring has finished every in-flight write, so a successor never recovers while late
/// writes can still land. A graceful drop unlocks explicitly, because the caller's ring may keep a
/// reference to the file a little longer (requests finished on io_uring's worker threads are
/// freed only at the ring's next wait). On a block device an `O_EXCL` open on a separate fd, which
/// io_uring never sees, additionally keeps mounts and other exclusive openers away.
pub(super) struct Device {
    pub(super) file: File,
    _exclusive: Option<File>,
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

pub(super) struct Target {
    pub(super) dev: Device,
    pub(super) size: u64,
    pub(super) is_block: bool,
}

pub(super) fn open_target(path: &Path, create_size: Option<u64>) -> Result<Target> {
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
pub(super) fn detect_signature(head: &[u8]) -> Option<String> {
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
pub(super) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

pub(super) const SIGNATURE_SCAN_BYTES: u64 = 17 * BLOCK; // covers btrfs's superblock at 64 KiB

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

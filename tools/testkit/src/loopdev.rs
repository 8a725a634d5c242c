//! A loop device backed by a temporary file, for tests that need a real block device.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{probe, text};

/// A loop device over a sparse temp file; detached on drop.
pub struct LoopDevice {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDevice {
    /// Attaches a loop device (direct I/O on) over a `size`-byte file in a temp dir under
    /// `tmp`, or `None` after saying why `test` skips (not root, no `losetup`, or it failed).
    pub fn attach(test: &str, tmp: &Path, size: u64) -> Option<LoopDevice> {
        if let Some(reason) = probe::loop_device() {
            probe::skip(test, &reason);
            return None;
        }
        let dir = tempfile::tempdir_in(tmp).expect("tmp");
        let backing = dir.path().join("loop-backing.img");
        let f = std::fs::File::create(&backing).expect("backing file");
        f.set_len(size).expect("size backing file");
        drop(f);
        let out = Command::new("losetup")
            .args(["--direct-io=on", "-f", "--show"])
            .arg(&backing)
            .output()
            .expect("losetup runs");
        if !out.status.success() {
            probe::skip(
                test,
                &format!("losetup failed: {}", text(&out.stderr).trim()),
            );
            return None;
        }
        let path = PathBuf::from(text(&out.stdout).trim());
        Some(LoopDevice { path, _dir: dir })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

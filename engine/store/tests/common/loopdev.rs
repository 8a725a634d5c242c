//! A loop device backed by a temporary file, for tests that need a real block device.
//! `attach` returns `None` (and says why, out loud) when not root or `losetup` is missing.

use std::path::PathBuf;
use std::process::Command;

pub struct LoopDevice {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDevice {
    pub fn attach(size: u64) -> Option<LoopDevice> {
        // /proc/self/status carries the effective uid (third field of "Uid:").
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid_is_root = status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
        if !euid_is_root {
            eprintln!("SKIPPED: loop-device test needs root (it attaches a loop device)");
            return None;
        }
        let dir = tempfile::tempdir().expect("tmp");
        let backing = dir.path().join("loop-backing.img");
        let f = std::fs::File::create(&backing).expect("backing file");
        f.set_len(size).expect("size backing file");
        drop(f);
        let out = match Command::new("losetup")
            .args(["--direct-io=on", "-f", "--show"])
            .arg(&backing)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                eprintln!(
                    "SKIPPED: loop-device test: cannot run losetup ({e}); install util-linux"
                );
                return None;
            }
        };
        if !out.status.success() {
            eprintln!(
                "SKIPPED: loop-device test: losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        Some(LoopDevice { path, _dir: dir })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

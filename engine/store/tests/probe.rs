//! When io_uring is disabled, the driver fails with a message that names the fix.
//!
//! The test flips the machine-wide `kernel.io_uring_disabled` sysctl for a moment, so it runs
//! only when asked to (`REEL_TEST_SYSCTL=1`, set by `.ci/run`), as root, alone in its test binary
//! (cargo runs test binaries one after another). It restores the old value even if it fails.

use reel_store::driver::{probe_kernel, Driver, DriverConfig, DriverError};

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        std::fs::write(SYSCTL, &self.0).expect("restore kernel.io_uring_disabled");
    }
}

#[test]
fn disabled_io_uring_is_a_clear_error() {
    if std::env::var("REEL_TEST_SYSCTL").as_deref() != Ok("1") {
        eprintln!("SKIPPED: set REEL_TEST_SYSCTL=1 (as root) to let this test disable io_uring machine-wide for a moment");
        return;
    }
    let Ok(old) = std::fs::read_to_string(SYSCTL) else {
        eprintln!("SKIPPED: {SYSCTL} does not exist on this kernel");
        return;
    };
    probe_kernel().expect("io_uring works before the test");
    if std::fs::write(SYSCTL, "2").is_err() {
        eprintln!("SKIPPED: cannot write {SYSCTL} (not root?)");
        return;
    }
    let restore = Restore(old);
    let err = Driver::new(&DriverConfig::default())
        .err()
        .map(|e| (matches!(e, DriverError::Unavailable { .. }), e.to_string()));
    let probe = probe_kernel().err().map(|e| e.to_string());
    drop(restore);
    let (unavailable, msg) = err.expect("Driver::new must fail while io_uring is disabled");
    assert!(unavailable, "{msg}");
    assert!(
        msg.contains("kernel.io_uring_disabled=0") && msg.contains("seccomp"),
        "the message names the fix: {msg}"
    );
    assert!(probe.is_some_and(|m| m.contains("io_uring_disabled")));
    probe_kernel().expect("io_uring works again after the test");
}

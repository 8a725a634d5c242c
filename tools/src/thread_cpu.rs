//! CPU time and context switches of the calling thread, from `/proc/thread-self`, so a
//! benchmark can report fio's `usr_cpu`/`sys_cpu`/`ctx` and, more usefully, CPU per I/O: on a
//! shared or device-bound machine throughput is noisy, CPU per I/O is not.
//!
//! Times are in USER_HZ ticks (fixed at 100 per second in the Linux ABI), so they resolve 10 ms;
//! over a run of seconds that is good to about a percent.

use std::time::Duration;

/// The unit of /proc's CPU times: ticks per second.
pub const USER_HZ: u64 = 100;

/// The fields of a `/proc/…/stat` file after the command name (which is in parentheses and
/// may contain spaces): field k of the whole line is at index k − 3. `None` if unreadable.
pub fn stat_fields(path: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(path).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// A sample of the calling thread's counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadCpu {
    pub user: Duration,
    pub system: Duration,
    pub ctx_switches: u64,
}

impl ThreadCpu {
    /// Reads the counters; `None` if `/proc` is not mounted or not in the expected format.
    pub fn now() -> Option<ThreadCpu> {
        let fields = stat_fields("/proc/thread-self/stat")?;
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after `comm`.
        let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
        let user = ticks(11)?;
        let system = ticks(12)?;
        let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
        let ctx_switches = status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        let tick = Duration::from_nanos(1_000_000_000 / USER_HZ);
        Some(ThreadCpu {
            user: tick * u32::try_from(user).ok()?,
            system: tick * u32::try_from(system).ok()?,
            ctx_switches,
        })
    }

    /// Counters spent between `earlier` and `self`.
    pub fn since(&self, earlier: &ThreadCpu) -> ThreadCpu {
        ThreadCpu {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            ctx_switches: self.ctx_switches.saturating_sub(earlier.ctx_switches),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_busy_time() {
        let Some(a) = ThreadCpu::now() else {
            eprintln!("skipped: /proc/thread-self is not readable here");
            return;
        };
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let Some(b) = ThreadCpu::now() else {
            panic!("/proc/thread-self became unreadable");
        };
        let d = b.since(&a);
        assert!(
            d.user + d.system > Duration::ZERO,
            "spun 200 ms but no CPU time was counted"
        );
    }
}

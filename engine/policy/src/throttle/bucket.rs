//! The copies' token bucket: bytes may go as fast as the rate that applies now allows, with at
//! most [`BURST`] of it saved up.

use std::time::Duration;

/// At most this much of the rate saves up as burst: a copy that starts after an idle spell must
/// not hit the device at full speed for a second (the migration-impact bench saw that in p99).
pub const BURST: Duration = Duration::from_millis(50);

/// A token bucket over a clock passed in.
#[derive(Clone, Debug, Default)]
pub struct TokenBucket {
    tokens: f64,
}

impl TokenBucket {
    /// After `dt` at `bytes_per_s`: how long to wait before `n` more bytes fit (zero: they are
    /// taken now). A wait takes nothing; ask again after it.
    pub fn take(&mut self, n: u64, bytes_per_s: f64, dt: Duration) -> Duration {
        let cap = bytes_per_s * BURST.as_secs_f64();
        let need = n as f64;
        self.tokens = (self.tokens + dt.as_secs_f64() * bytes_per_s).min(cap.max(need));
        if self.tokens >= need {
            self.tokens -= need;
            return Duration::ZERO;
        }
        Duration::from_secs_f64((need - self.tokens) / bytes_per_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_wait_for_the_rate_and_the_burst_is_bounded() {
        let mut b = TokenBucket::default();
        let ms = Duration::from_millis;
        let rate = 1000.0; // bytes/s
        assert_eq!(b.take(100, rate, ms(0)), ms(100), "empty at first");
        assert_eq!(b.take(100, rate, ms(100)), Duration::ZERO);
        // A long idle spell saves up at most 50 ms of the rate (or one request).
        assert_eq!(b.take(50, rate, Duration::from_secs(10)), Duration::ZERO);
        assert_eq!(b.take(50, rate, ms(0)), ms(50));
        assert_eq!(b.take(500, rate, Duration::from_secs(10)), Duration::ZERO);
        assert_eq!(b.take(1, rate, ms(0)), ms(1));
    }
}

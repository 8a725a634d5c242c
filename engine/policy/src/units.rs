//! The text form of settings, as flags, environment variables and config files give them:
//! byte sizes with binary suffixes (`4G`, `1M`, `4k`, `512`), durations in seconds (`5`, `5s`,
//! `500ms`, `2m`) and shares (`5%`, `0.05`).
//!
//! Suffixes are powers of 1024, as in fio: `k`/`K`/`KiB` = 1024. A parse error says what is
//! accepted, so the command line can show it as the fix.

use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

/// Parses a byte size such as `4G`, `1M`, `4k`, `4KiB` or `4096`. Suffixes are binary
/// (1 K = 1024 bytes); an optional trailing `B` or `iB` is accepted.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let help = || {
        format!(
            "invalid size {s:?}: expected a whole number of bytes with an optional suffix \
             k, M, G or T (powers of 1024), e.g. 4096, 4k, 1M or 4G"
        )
    };
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(help());
    }
    let value: u64 = num.parse().map_err(|_| help())?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(help()),
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} does not fit in 64 bits"))
}

/// Parses a share: a percentage (`5%`, `2.5%`) or a fraction (`0.05`); 0 is allowed, up to
/// 1000%.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let help = || {
        format!(
            "invalid share {s:?}: expected a percentage or a fraction from 0 to 10, \
             e.g. 5% or 0.05 (0 turns it off)"
        )
    };
    let t = s.trim();
    let (num, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), 0.01),
        None => (t, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| help())?;
    let v = v * scale;
    if !v.is_finite() || !(0.0..=10.0).contains(&v) {
        return Err(help());
    }
    Ok(v)
}

/// Parses a duration: plain seconds (`5`, `1.5`) or with a suffix `us`, `ms`, `s` or `m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(s)?;
    if d.is_zero() {
        return Err(format!(
            "invalid duration {s:?}: it must be greater than zero"
        ));
    }
    Ok(d)
}

/// As [`parse_duration`], but zero is allowed.
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    let help = || {
        format!(
            "invalid duration {s:?}: expected seconds, optionally with a suffix us, ms, s or m, \
             e.g. 5, 2.5s, 500ms or 1m"
        )
    };
    let t = s.trim();
    let (num, scale_s) = if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| help())?;
    if !v.is_finite() || v < 0.0 {
        return Err(help());
    }
    Duration::try_from_secs_f64(v * scale_s).map_err(|_| help())
}

/// A setting that 0 turns off in its text form (`None`: off). An alias, so that a command line
/// derived from the setting parses "0" into `None` rather than taking the field as optional.
pub type OrOff<T> = Option<T>;

/// A size that fits in memory (`usize`).
pub fn parse_size_usize(s: &str) -> Result<usize, String> {
    usize::try_from(parse_size(s)?).map_err(|_| format!("size {s:?} is too large for this host"))
}

/// A size where 0 means off.
pub fn parse_size_or_off(s: &str) -> Result<OrOff<NonZeroUsize>, String> {
    parse_size_usize(s).map(NonZeroUsize::new)
}

/// A count where 0 means off.
pub fn parse_count_or_off(s: &str) -> Result<OrOff<NonZeroU64>, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid count {s:?}: expected a whole number, e.g. 0, 1 or 4"))?;
    Ok(NonZeroU64::new(n))
}

/// A share (see [`parse_percent`]) where 0 means off.
pub fn parse_percent_or_off(s: &str) -> Result<OrOff<f64>, String> {
    parse_percent(s).map(|v| (v > 0.0).then_some(v))
}

/// A duration (see [`parse_duration`]) where 0 means off.
pub fn parse_duration_or_off(s: &str) -> Result<OrOff<Duration>, String> {
    parse_duration_or_zero(s).map(|d| (!d.is_zero()).then_some(d))
}

/// A duration (see [`parse_duration`]) as seconds.
pub fn parse_seconds(s: &str) -> Result<f64, String> {
    parse_duration(s).map(|d| d.as_secs_f64())
}

/// A settings struct with every field at its flag's default (no environment, no arguments):
/// the defaults are written once, in the flags' definitions.
pub fn defaults_of<T: clap::Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults"));
    cmd.try_get_matches_from(["defaults"])
        .and_then(|m| T::from_arg_matches(&m))
        .unwrap_or_else(|e| panic!("a flag's default does not parse: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_and_fractions() {
        assert_eq!(parse_percent("5%"), Ok(0.05));
        assert_eq!(parse_percent(" 0.05 "), Ok(0.05));
        assert_eq!(parse_percent("0"), Ok(0.0));
        assert_eq!(parse_percent("0%"), Ok(0.0));
        for bad in ["", "%", "five", "-1%", "2000%", "11", "NaN", "inf"] {
            let e = parse_percent(bad).expect_err(bad);
            assert!(e.contains("e.g. 5%"), "{e}");
        }
    }

    #[test]
    fn sizes() {
        for (s, v) in [
            ("4096", 4096),
            ("4k", 4096),
            ("4K", 4096),
            ("4KiB", 4096),
            ("1M", 1 << 20),
            ("1mb", 1 << 20),
            ("4G", 4 << 30),
            ("2T", 2 << 40),
            ("0", 0),
            ("7B", 7),
        ] {
            assert_eq!(parse_size(s), Ok(v), "{s}");
        }
        for s in ["", "k", "4X", "4.5G", "-1", "4 G G", "99999999999T"] {
            assert!(parse_size(s).is_err(), "{s} should be rejected");
        }
        assert!(parse_size("4X")
            .expect_err("rejected")
            .contains("e.g. 4096, 4k, 1M or 4G"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("200us"), Ok(Duration::from_micros(200)));
        assert_eq!(parse_duration_or_zero("0"), Ok(Duration::ZERO));
        assert!(parse_duration("0")
            .expect_err("zero")
            .contains("greater than zero"));
        for s in ["", "0", "-1", "abc", "5h", "inf", "NaN"] {
            assert!(parse_duration(s).is_err(), "{s} should be rejected");
        }
    }

    #[test]
    fn zero_turns_settings_off() {
        assert_eq!(parse_size_or_off("0"), Ok(None));
        assert_eq!(parse_size_or_off("128K"), Ok(NonZeroUsize::new(128 << 10)));
        assert_eq!(parse_count_or_off("0"), Ok(None));
        assert_eq!(parse_count_or_off("2"), Ok(NonZeroU64::new(2)));
        assert!(parse_count_or_off("two").is_err());
        assert_eq!(parse_percent_or_off("0%"), Ok(None));
        assert_eq!(parse_percent_or_off("5%"), Ok(Some(0.05)));
        assert_eq!(parse_duration_or_off("0"), Ok(None));
        assert_eq!(
            parse_duration_or_off("50ms"),
            Ok(Some(Duration::from_millis(50)))
        );
        assert_eq!(parse_seconds("10m"), Ok(600.0));
        assert!(parse_seconds("0").is_err());
    }

    #[test]
    fn the_policy_flags_defaults_are_its_config_defaults() {
        assert_eq!(
            defaults_of::<crate::PolicyConfig>(),
            crate::PolicyConfig::default()
        );
    }
}

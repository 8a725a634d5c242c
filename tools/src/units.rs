//! Parsing and printing of the units the CLI speaks: byte sizes with binary suffixes (`4G`,
//! `1M`, `4k`, `512`) and durations in seconds (`5`, `5s`, `500ms`, `2m`).
//!
//! Suffixes are powers of 1024, as in fio: `k`/`K`/`KiB` = 1024. A parse error says what is
//! accepted, so clap can show it as the fix.

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

/// Formats a byte count for people: `4.00 GiB`, `512 KiB`, `100 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

/// Formats a size the way fio's `--bs`/`--size` accept it, exactly: `4k`, `1m`, or plain bytes.
pub fn fio_size(bytes: u64) -> String {
    if bytes != 0 && bytes.is_multiple_of(1 << 30) {
        format!("{}g", bytes >> 30)
    } else if bytes != 0 && bytes.is_multiple_of(1 << 20) {
        format!("{}m", bytes >> 20)
    } else if bytes != 0 && bytes.is_multiple_of(1 << 10) {
        format!("{}k", bytes >> 10)
    } else {
        bytes.to_string()
    }
}

/// Formats a rate for people: `1.23M`, `456k`, `789`.
pub fn human_count(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Formats nanoseconds for people: `812 ns`, `35.2 us`, `1.20 ms`.
pub fn human_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} us", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
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
    fn printing() {
        assert_eq!(human_bytes(100), "100 B");
        assert_eq!(human_bytes(4096), "4 KiB");
        assert_eq!(human_bytes(4 << 30), "4 GiB");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(fio_size(4096), "4k");
        assert_eq!(fio_size(1 << 20), "1m");
        assert_eq!(fio_size(4 << 30), "4g");
        assert_eq!(fio_size(4097), "4097");
    }
}

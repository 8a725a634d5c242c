//! Parsing and printing of the units the CLI speaks: byte sizes with binary suffixes (`4G`,
//! `1M`, `4k`, `512`) and durations in seconds (`5`, `5s`, `500ms`, `2m`).
//!
//! Suffixes are powers of 1024, as in fio: `k`/`K`/`KiB` = 1024. A parse error says what is
//! accepted, so clap can show it as the fix.

// The parsers live with the settings that use them (a node's flags and config file).
pub use reel_policy::units::{parse_duration, parse_duration_or_zero, parse_size};

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
    scaled(v, ["M", "k", ""])
}

/// Formats nanoseconds for people: `812 ns`, `35.2 us`, `1.20 ms`.
pub fn human_ns(ns: f64) -> String {
    scaled(ns, [" ms", " us", " ns"])
}

/// `v` in millions with two decimals, thousands with one, or whole, followed by the suffix
/// of its scale (`[millions, thousands, ones]`).
fn scaled(v: f64, [millions, thousands, ones]: [&str; 3]) -> String {
    if v >= 1e6 {
        format!("{:.2}{millions}", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}{thousands}", v / 1e3)
    } else {
        format!("{v:.0}{ones}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

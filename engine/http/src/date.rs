//! HTTP-date (RFC 9110 §5.6.7): IMF-fixdate formatting, and parsing of all three formats a
//! recipient must accept. Times are whole seconds since the Unix epoch (UTC); HTTP dates have
//! one-second granularity, so nothing finer is ever compared.

const DAY_NAMES: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
const DAY_NAMES_LONG: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
];
const MONTH_NAMES: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const IMF_FIXDATE_LEN: usize = 29;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
/// Exact for every year representable here; `month` is 1..=12, `day` 1..=31.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month, day).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends the IMF-fixdate of `unix_s` to `out`. Years past 9999 cannot be written in the
/// four-digit format; they are clamped to the last representable second, which no real clock
/// reaches but keeps the output well-formed for any input.
pub fn write_imf_fixdate(out: &mut Vec<u8>, unix_s: u64) {
    const MAX_UNIX_S: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let t = unix_s.min(MAX_UNIX_S) as i64;
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    out.extend_from_slice(DAY_NAMES[days.rem_euclid(7) as usize]);
    out.extend_from_slice(b", ");
    push_2(out, day as i64);
    out.push(b' ');
    out.extend_from_slice(MONTH_NAMES[(month - 1) as usize]);
    out.push(b' ');
    push_2(out, year / 100);
    push_2(out, year % 100);
    out.push(b' ');
    push_2(out, secs / 3600);
    out.push(b':');
    push_2(out, secs / 60 % 60);
    out.push(b':');
    push_2(out, secs % 60);
    out.extend_from_slice(b" GMT");
}

fn push_2(out: &mut Vec<u8>, v: i64) {
    out.push(b'0' + (v / 10 % 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

/// Parses an HTTP-date in any of the three formats RFC 9110 §5.6.7 requires recipients to
/// accept (IMF-fixdate, obsolete RFC 850, asctime). Returns `None` for anything else, including
/// dates before 1970 (our timestamps are unsigned, and no asset is that old).
pub fn parse_http_date(value: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(value).ok()?.trim_matches([' ', '\t']);
    parse_imf_fixdate(s)
        .or_else(|| parse_rfc850(s))
        .or_else(|| parse_asctime(s))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`
fn parse_imf_fixdate(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != IMF_FIXDATE_LEN || &b[3..5] != b", " || &b[25..] != b" GMT" {
        return None;
    }
    let weekday = DAY_NAMES.iter().position(|d| d[..] == b[0..3])?;
    if b[7] != b' ' || b[11] != b' ' || b[16] != b' ' {
        return None;
    }
    let day = digits(&b[5..7])?;
    let month = month_from(&b[8..11])?;
    let year = digits(&b[12..16])?;
    let t = time_of_day(&b[17..25])?;
    to_unix(year, month, day, t, Some(weekday))
}

/// `Sunday, 06-Nov-94 08:49:37 GMT` — two-digit years are interpreted per RFC 9110 §5.6.7:
/// a year more than 50 years in the future is taken as the past century. Without a clock we
/// use the fixed pivot 70: `70..=99` → 19xx, `00..=69` → 20xx (the usual Unix convention).
fn parse_rfc850(s: &str) -> Option<u64> {
    let (name, rest) = s.split_once(", ")?;
    let weekday = DAY_NAMES_LONG.iter().position(|d| *d == name)?;
    let b = rest.as_bytes();
    if b.len() != 22 || b[2] != b'-' || b[6] != b'-' || b[9] != b' ' || &b[18..] != b" GMT" {
        return None;
    }
    let day = digits(&b[0..2])?;
    let month = month_from(&b[3..6])?;
    let yy = digits(&b[7..9])?;
    let year = if yy >= 70 { 1900 + yy } else { 2000 + yy };
    let t = time_of_day(&b[10..18])?;
    to_unix(year, month, day, t, Some(weekday))
}

/// `Sun Nov  6 08:49:37 1994`
fn parse_asctime(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 24 || b[3] != b' ' || b[7] != b' ' || b[10] != b' ' || b[19] != b' ' {
        return None;
    }
    let weekday = DAY_NAMES.iter().position(|d| d[..] == b[0..3])?;
    let month = month_from(&b[4..7])?;
    let day = match b[8] {
        b' ' => digits(&b[9..10])?,
        _ => digits(&b[8..10])?,
    };
    let t = time_of_day(&b[11..19])?;
    let year = digits(&b[20..24])?;
    to_unix(year, month, day, t, Some(weekday))
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
}

fn month_from(b: &[u8]) -> Option<u32> {
    MONTH_NAMES
        .iter()
        .position(|m| &m[..] == b)
        .map(|i| i as u32 + 1)
}

/// `HH:MM:SS` → seconds into the day. A leap second (`:60`) is accepted and folds into the next
/// second, as the Unix clock does.
fn time_of_day(b: &[u8]) -> Option<u32> {
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, m, s) = (digits(&b[0..2])?, digits(&b[3..5])?, digits(&b[6..8])?);
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(h * 3600 + m * 60 + s)
}

fn to_unix(year: u32, month: u32, day: u32, secs: u32, weekday: Option<usize>) -> Option<u64> {
    if !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    // A date whose weekday disagrees with its calendar day is malformed; accepting it would let
    // two different strings name the same instant for no reason.
    if let Some(w) = weekday {
        if days.rem_euclid(7) as usize != w {
            return None;
        }
    }
    let t = days * 86_400 + i64::from(secs);
    u64::try_from(t).ok()
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(t: u64) -> String {
        let mut v = Vec::new();
        write_imf_fixdate(&mut v, t);
        String::from_utf8(v).expect("ascii")
    }

    #[test]
    fn known_dates_format_and_parse() {
        let table: &[(u64, &str)] = &[
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_234_567_890, "Fri, 13 Feb 2009 23:31:30 GMT"),
            (2_147_483_647, "Tue, 19 Jan 2038 03:14:07 GMT"),
            (4_102_444_800, "Fri, 01 Jan 2100 00:00:00 GMT"),
            (253_402_300_799, "Fri, 31 Dec 9999 23:59:59 GMT"),
        ];
        for &(t, s) in table {
            assert_eq!(fmt(t), s, "format {t}");
            assert_eq!(parse_http_date(s.as_bytes()), Some(t), "parse {s}");
        }
        // Past 9999 clamps instead of producing a five-digit year.
        assert_eq!(fmt(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn obsolete_formats_parse() {
        let table: &[(&str, Option<u64>)] = &[
            ("Sunday, 06-Nov-94 08:49:37 GMT", Some(784_111_777)),
            ("Sun Nov  6 08:49:37 1994", Some(784_111_777)),
            ("Thursday, 01-Jan-70 00:00:00 GMT", Some(0)),
        ];
        for &(s, want) in table {
            assert_eq!(parse_http_date(s.as_bytes()), want, "{s}");
        }
    }

    #[test]
    fn malformed_dates_are_rejected() {
        for s in [
            "",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Mon, 06 Nov 1994 08:49:37 GMT", // wrong weekday
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nox 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Thu, 30 Feb 2023 00:00:00 GMT",
            "Wed, 31 Dec 1969 23:59:59 GMT", // before the epoch
            "Sun, 06 Nov 1994 08:49:37 GMT trailing",
            "Sun, 06 Nov 1994 08:49:3x GMT",
            "Sunday, 06-Nov-94 08:49:37 UTC",
            "Sun Nov 6 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(s.as_bytes()), None, "{s:?}");
        }
    }

    #[test]
    fn civil_round_trips() {
        for days in (-800_000i64..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}

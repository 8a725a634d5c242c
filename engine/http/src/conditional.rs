//! Conditional requests (RFC 9110 §13): entity-tag comparison and the evaluation order of
//! §13.2.2.
//!
//! Decision on `If-Range` with an HTTP-date: our `Last-Modified` has one-second granularity
//! and an asset may be replaced twice within a second, so it is a weak validator, and §13.1.5
//! forbids using a weak validator to honor a range. A date in `If-Range` therefore never
//! matches: the client gets the whole, current representation with 200, which is always safe.

use super::date::parse_http_date;
use super::request::{list_elements, trim_ows, Method};

/// The validators of the current representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validators<'a> {
    /// The strong entity-tag as sent in `ETag`, quotes included: `"abc"`.
    pub etag: &'a str,
    pub last_modified_unix_s: u64,
}

/// The conditional header fields of a request, raw. A field sent several times has its lines
/// joined by the caller ([`Conditions::from_head`] does this) — list fields are comma-joined
/// by definition, and the date fields are singletons (a repeat makes the date invalid).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions<'a> {
    pub if_match: Vec<&'a [u8]>,
    pub if_none_match: Vec<&'a [u8]>,
    pub if_modified_since: Option<&'a [u8]>,
    pub if_unmodified_since: Option<&'a [u8]>,
    pub if_range: Option<&'a [u8]>,
}

impl<'a> Conditions<'a> {
    pub fn from_head(head: &super::RequestHead, buf: &'a [u8]) -> Conditions<'a> {
        Conditions {
            if_match: head.header_values(buf, "if-match").collect(),
            if_none_match: head.header_values(buf, "if-none-match").collect(),
            if_modified_since: head.header_once(buf, "if-modified-since"),
            if_unmodified_since: head.header_once(buf, "if-unmodified-since"),
            if_range: head.header_once(buf, "if-range"),
        }
    }
}

/// The outcome of §13.2.2 steps 1–4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Perform the method (for GET, then look at Range/If-Range: [`if_range_allows`]).
    Proceed,
    /// 304 Not Modified (GET/HEAD only).
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

/// Evaluates the preconditions in the order §13.2.2 prescribes. `current` is `None` when the
/// target has no representation (e.g. a PUT creating a new asset).
pub fn evaluate(
    method: Method,
    cond: &Conditions<'_>,
    current: Option<&Validators<'_>>,
) -> Precondition {
    let safe = matches!(method, Method::Get | Method::Head);
    // Step 1 / 2: If-Match, else If-Unmodified-Since.
    if !cond.if_match.is_empty() {
        if !if_match(&cond.if_match, current) {
            return Precondition::Failed;
        }
    } else if let Some(date) = cond.if_unmodified_since.and_then(parse_http_date) {
        // §13.1.4: evaluated only when the representation has a modification date.
        if let Some(v) = current {
            if v.last_modified_unix_s > date {
                return Precondition::Failed;
            }
        }
    }
    // Step 3 / 4: If-None-Match, else If-Modified-Since (GET/HEAD only).
    if !cond.if_none_match.is_empty() {
        if !if_none_match(&cond.if_none_match, current) {
            return if safe {
                Precondition::NotModified
            } else {
                Precondition::Failed
            };
        }
    } else if safe {
        if let (Some(date), Some(v)) = (cond.if_modified_since.and_then(parse_http_date), current) {
            if v.last_modified_unix_s <= date {
                return Precondition::NotModified;
            }
        }
    }
    Precondition::Proceed
}

/// §13.2.2 step 5: whether a Range header may be honored given `If-Range`.
pub fn if_range_allows(if_range: Option<&[u8]>, current: &Validators<'_>) -> bool {
    let Some(value) = if_range else {
        return true;
    };
    match parse_etag(trim_ows(value)) {
        // Strong comparison: a weak tag on either side never matches.
        Some(tag) => !tag.weak && is_strong(current.etag) && tag.opaque == current.etag.as_bytes(),
        // An HTTP-date (or garbage): never matches, see the module docs.
        None => false,
    }
}

/// `If-Match` (§13.1.1): true if `*` and a representation exists, or any listed tag matches
/// strongly.
fn if_match(values: &[&[u8]], current: Option<&Validators<'_>>) -> bool {
    let Some(v) = current else {
        return false;
    };
    values.iter().flat_map(|v| list_elements(v)).any(|e| {
        e == b"*"
            || parse_etag(e)
                .is_some_and(|t| !t.weak && is_strong(v.etag) && t.opaque == v.etag.as_bytes())
    })
}

/// `If-None-Match` (§13.1.2): false if `*` and a representation exists, or any listed tag
/// matches weakly; true otherwise.
fn if_none_match(values: &[&[u8]], current: Option<&Validators<'_>>) -> bool {
    let Some(v) = current else {
        return true;
    };
    let ours = parse_etag(v.etag.as_bytes()).map(|t| t.opaque);
    let matched = values
        .iter()
        .flat_map(|v| list_elements(v))
        .any(|e| e == b"*" || parse_etag(e).is_some_and(|t| Some(t.opaque) == ours));
    !matched
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntityTag<'a> {
    pub weak: bool,
    /// The opaque tag with its quotes.
    pub opaque: &'a [u8],
}

/// `entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE` (§8.8.3).
pub fn parse_etag(b: &[u8]) -> Option<EntityTag<'_>> {
    let (weak, opaque) = match b {
        [b'W', b'/', rest @ ..] => (true, rest),
        _ => (false, b),
    };
    match opaque {
        [b'"', inner @ .., b'"']
            if inner
                .iter()
                .all(|&c| c == 0x21 || (0x23..=0x7e).contains(&c) || c >= 0x80) =>
        {
            Some(EntityTag { weak, opaque })
        }
        _ => None,
    }
}

fn is_strong(etag: &str) -> bool {
    parse_etag(etag.as_bytes()).is_some_and(|t| !t.weak)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: Validators<'static> = Validators {
        etag: "\"abc\"",
        last_modified_unix_s: 784_111_777, // Sun, 06 Nov 1994 08:49:37 GMT
    };

    struct Case {
        method: Method,
        im: Option<&'static str>,
        inm: Option<&'static str>,
        ims: Option<&'static str>,
        ius: Option<&'static str>,
        exists: bool,
        want: Precondition,
    }

    const NONE: Case = Case {
        method: Method::Get,
        im: None,
        inm: None,
        ims: None,
        ius: None,
        exists: true,
        want: Precondition::Proceed,
    };

    #[test]
    fn precondition_table() {
        use Method::*;
        use Precondition::*;
        let at = "Sun, 06 Nov 1994 08:49:37 GMT";
        let before = "Sun, 06 Nov 1994 08:49:36 GMT";
        let table = [
            NONE,
            Case {
                inm: Some("\"abc\""),
                want: NotModified,
                ..NONE
            },
            Case {
                inm: Some("W/\"abc\""),
                want: NotModified,
                ..NONE
            },
            Case {
                inm: Some("\"x\", \"abc\""),
                want: NotModified,
                ..NONE
            },
            Case {
                inm: Some("*"),
                want: NotModified,
                ..NONE
            },
            Case {
                inm: Some("\"x\""),
                want: Proceed,
                ..NONE
            },
            Case {
                inm: Some("abc"),
                want: Proceed,
                ..NONE
            },
            Case {
                inm: Some("\"abc\""),
                method: Head,
                want: NotModified,
                ..NONE
            },
            Case {
                inm: Some("\"abc\""),
                method: Put,
                want: Failed,
                ..NONE
            },
            Case {
                inm: Some("*"),
                method: Put,
                exists: false,
                want: Proceed,
                ..NONE
            },
            Case {
                inm: Some("*"),
                method: Put,
                want: Failed,
                ..NONE
            },
            // If-Modified-Since.
            Case {
                ims: Some(at),
                want: NotModified,
                ..NONE
            },
            Case {
                ims: Some(before),
                want: Proceed,
                ..NONE
            },
            Case {
                ims: Some("garbage"),
                want: Proceed,
                ..NONE
            },
            Case {
                ims: Some(at),
                method: Delete,
                want: Proceed,
                ..NONE
            },
            // If-None-Match takes precedence over If-Modified-Since.
            Case {
                inm: Some("\"x\""),
                ims: Some(at),
                want: Proceed,
                ..NONE
            },
            // If-Match (strong).
            Case {
                im: Some("\"abc\""),
                method: Put,
                want: Proceed,
                ..NONE
            },
            Case {
                im: Some("W/\"abc\""),
                method: Put,
                want: Failed,
                ..NONE
            },
            Case {
                im: Some("\"x\""),
                method: Delete,
                want: Failed,
                ..NONE
            },
            Case {
                im: Some("*"),
                method: Delete,
                want: Proceed,
                ..NONE
            },
            Case {
                im: Some("*"),
                method: Put,
                exists: false,
                want: Failed,
                ..NONE
            },
            Case {
                im: Some("\"x\""),
                inm: Some("\"abc\""),
                want: Failed,
                ..NONE
            },
            // If-Unmodified-Since, ignored when If-Match is present.
            Case {
                ius: Some(before),
                method: Put,
                want: Failed,
                ..NONE
            },
            Case {
                ius: Some(at),
                method: Put,
                want: Proceed,
                ..NONE
            },
            Case {
                ius: Some(before),
                im: Some("\"abc\""),
                method: Put,
                want: Proceed,
                ..NONE
            },
        ];
        for (i, c) in table.iter().enumerate() {
            let cond = Conditions {
                if_match: c.im.iter().map(|s| s.as_bytes()).collect(),
                if_none_match: c.inm.iter().map(|s| s.as_bytes()).collect(),
                if_modified_since: c.ims.map(str::as_bytes),
                if_unmodified_since: c.ius.map(str::as_bytes),
                if_range: None,
            };
            let current = c.exists.then_some(&V);
            assert_eq!(evaluate(c.method, &cond, current), c.want, "case {i}");
        }
    }

    #[test]
    fn if_range_table() {
        let table: &[(Option<&str>, bool)] = &[
            (None, true),
            (Some("\"abc\""), true),
            (Some(" \"abc\" "), true),
            (Some("W/\"abc\""), false),
            (Some("\"abd\""), false),
            (Some("Sun, 06 Nov 1994 08:49:37 GMT"), false),
            (Some("*"), false),
            (Some(""), false),
        ];
        for &(value, want) in table {
            assert_eq!(
                if_range_allows(value.map(str::as_bytes), &V),
                want,
                "{value:?}"
            );
        }
        let weak = Validators {
            etag: "W/\"abc\"",
            ..V
        };
        assert!(!if_range_allows(Some(b"\"abc\""), &weak));
    }

    #[test]
    fn etag_syntax() {
        assert_eq!(
            parse_etag(b"W/\"a\""),
            Some(EntityTag {
                weak: true,
                opaque: b"\"a\""
            })
        );
        assert_eq!(parse_etag(b"\"\"").map(|t| t.weak), Some(false));
        for bad in [
            &b"a"[..],
            b"\"",
            b"\"a",
            b"w/\"a\"",
            b"\"a\"b\"",
            b"\"a b\"",
        ] {
            assert_eq!(parse_etag(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}

//! GET/HEAD of an asset → what to send: the status, the rendered head, and the byte ranges of
//! the asset (with any multipart framing between them) that the serving loop streams after it.
//!
//! The plan takes a small [`AssetMeta`] rather than the engine's catalog entry, so it stays a
//! pure function of the request bytes, the metadata and the clock reading passed in.
//!
//! Decisions: `Range` is honored for GET only — RFC 9110 §14.2 defines range handling for
//! GET alone, so a HEAD with `Range` gets the 200 head. A `Range` header sent more than once is
//! ignored (it is a singleton field). See [`super::range`] for the multi-range policy and
//! [`super::conditional`] for `If-Range` with a date.

use std::ops::Range;

use super::conditional::{evaluate, if_range_allows, Conditions, Precondition, Validators};
use super::error::{HttpError, Status, ALLOW_ALL};
use super::range::{parse_range, ByteRange, RangeOutcome};
use super::request::{Method, RequestHead};
use super::response::{
    multipart_length, push_multipart_content_type, render_error, render_head, write_closing,
    write_part_head, Boundary, ContentRange, HeadFields,
};

/// What the plan needs to know about the asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssetMeta<'a> {
    pub size: u64,
    /// Strong entity-tag with quotes, e.g. `"9f86d081"` (from the content checksum).
    pub etag: &'a str,
    pub last_modified_unix_s: u64,
    /// As stored at ingest; an unusable value is sent as `application/octet-stream`.
    pub content_type: &'a str,
}

/// One piece of the response body, in sending order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Bytes of [`Plan::literals`] (multipart delimiters and part headers).
    Literal(Range<usize>),
    /// Bytes of the asset, read from the device.
    Asset(ByteRange),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Nothing follows the head (HEAD, 304, errors — whose short text body is inside `head`).
    Empty,
    Ranges(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub status: Status,
    /// The complete response head, ready to send.
    pub head: Vec<u8>,
    pub body: Body,
    /// Backing bytes for [`Segment::Literal`].
    pub literals: Vec<u8>,
    /// Close the connection after sending.
    pub close: bool,
}

impl Plan {
    /// Bytes of body after `head`; equals the `Content-Length` sent (except for HEAD).
    pub fn body_len(&self) -> u64 {
        match &self.body {
            Body::Empty => 0,
            Body::Ranges(segments) => segments.iter().fold(0u64, |total, s| {
                total.saturating_add(match s {
                    Segment::Literal(r) => r.len() as u64,
                    Segment::Asset(r) => r.len(),
                })
            }),
        }
    }
}

/// An error answer as a plan (its one-line body travels inside `head`).
pub fn plan_error(err: &HttpError, now_unix_s: u64, head_only: bool, close: bool) -> Plan {
    let mut head = Vec::new();
    let close = render_error(&mut head, err, now_unix_s, head_only, close);
    Plan {
        status: err.status(),
        head,
        body: Body::Empty,
        literals: Vec::new(),
        close,
    }
}

/// Plans the response to a GET or HEAD of an asset. Other methods get a 405 (they are the
/// ingest path's business, not this function's).
pub fn plan(
    req: &RequestHead,
    buf: &[u8],
    meta: &AssetMeta<'_>,
    now_unix_s: u64,
    boundary: Boundary,
) -> Plan {
    let close = !req.keep_alive;
    let head_only = req.method == Method::Head;
    if !matches!(req.method, Method::Get | Method::Head) {
        let err = HttpError::MethodNotAllowed { allow: ALLOW_ALL };
        return plan_error(&err, now_unix_s, false, close);
    }
    let validators = Validators {
        etag: meta.etag,
        last_modified_unix_s: meta.last_modified_unix_s,
    };
    let cond = Conditions::from_head(req, buf);
    let mut fields = HeadFields::new(Status::OK, now_unix_s);
    fields.etag = Some(meta.etag);
    fields.last_modified_unix_s = Some(meta.last_modified_unix_s);
    fields.close = close;
    match evaluate(req.method, &cond, Some(&validators)) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            // §15.4.5: a 304 carries the validators but no content headers.
            fields.status = Status::NOT_MODIFIED;
            return finish(fields, Body::Empty, Vec::new());
        }
        Precondition::Failed => {
            return plan_error(&HttpError::PreconditionFailed, now_unix_s, head_only, close)
        }
    }
    fields.accept_ranges = true;
    fields.content_type = Some(meta.content_type);

    let outcome = match req.header_once(buf, "range") {
        Some(value) if req.method == Method::Get && if_range_allows(cond.if_range, &validators) => {
            parse_range(value, meta.size)
        }
        _ => RangeOutcome::Full,
    };
    let body_of = |r: ByteRange| {
        if head_only {
            Body::Empty
        } else {
            Body::Ranges(vec![Segment::Asset(r)])
        }
    };
    match outcome {
        RangeOutcome::Full => {
            fields.content_length = Some(meta.size);
            let body = ByteRange::full(meta.size).map_or(Body::Empty, body_of);
            finish(fields, body, Vec::new())
        }
        RangeOutcome::Single(r) => {
            fields.status = Status::PARTIAL_CONTENT;
            fields.content_length = Some(r.len());
            fields.content_range = Some(ContentRange::Bytes {
                range: r,
                size: meta.size,
            });
            finish(fields, body_of(r), Vec::new())
        }
        RangeOutcome::Multi(ranges) => {
            let mut content_type = Vec::with_capacity(64);
            push_multipart_content_type(&mut content_type, &boundary);
            let content_type = std::str::from_utf8(&content_type).unwrap_or("");
            let mut literals = Vec::new();
            let mut segments = Vec::with_capacity(ranges.len() * 2 + 1);
            for &r in &ranges {
                let start = literals.len();
                write_part_head(&mut literals, &boundary, meta.content_type, r, meta.size);
                segments.push(Segment::Literal(start..literals.len()));
                segments.push(Segment::Asset(r));
            }
            let start = literals.len();
            write_closing(&mut literals, &boundary);
            segments.push(Segment::Literal(start..literals.len()));
            fields.status = Status::PARTIAL_CONTENT;
            fields.content_type = Some(content_type);
            fields.content_length = Some(multipart_length(
                &boundary,
                meta.content_type,
                &ranges,
                meta.size,
            ));
            finish(fields, Body::Ranges(segments), literals)
        }
        RangeOutcome::Unsatisfiable => {
            let mut head = Vec::new();
            let body = b"range not satisfiable: see Content-Range for the asset's size\n";
            let mut fields416 = HeadFields::new(Status::RANGE_NOT_SATISFIABLE, now_unix_s);
            fields416.content_type = Some("text/plain; charset=utf-8");
            fields416.content_length = Some(body.len() as u64);
            fields416.content_range = Some(ContentRange::Unsatisfied { size: meta.size });
            fields416.accept_ranges = true;
            fields416.close = close;
            render_head(&mut head, &fields416);
            head.extend_from_slice(body);
            Plan {
                status: Status::RANGE_NOT_SATISFIABLE,
                head,
                body: Body::Empty,
                literals: Vec::new(),
                close,
            }
        }
    }
}

fn finish(fields: HeadFields<'_>, body: Body, literals: Vec<u8>) -> Plan {
    let mut head = Vec::with_capacity(256);
    render_head(&mut head, &fields);
    Plan {
        status: fields.status,
        head,
        body,
        literals,
        close: fields.close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{parse_head, Limits, Parsed};

    const META: AssetMeta<'static> = AssetMeta {
        size: 10_000,
        etag: "\"abc\"",
        last_modified_unix_s: 784_111_777,
        content_type: "video/mp4",
    };
    const NOW: u64 = 784_111_800;

    fn run(method: &str, headers: &str, meta: &AssetMeta<'_>) -> Plan {
        let s = format!("{method} /assets/a HTTP/1.1\r\nHost: h\r\n{headers}\r\n");
        let head = match parse_head(s.as_bytes(), &Limits::default()) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("{other:?}"),
        };
        plan(&head, s.as_bytes(), meta, NOW, Boundary::from_seed(1))
    }

    fn head_text(p: &Plan) -> &str {
        std::str::from_utf8(&p.head).expect("ascii")
    }

    fn a(start: u64, end_inclusive: u64) -> Segment {
        Segment::Asset(ByteRange {
            start,
            end_inclusive,
        })
    }

    #[test]
    fn status_and_body_table() {
        let table: &[(&str, &str, u16, Option<Vec<Segment>>)] = &[
            ("GET", "", 200, Some(vec![a(0, 9999)])),
            ("HEAD", "", 200, None),
            ("GET", "Range: bytes=0-499\r\n", 206, Some(vec![a(0, 499)])),
            (
                "GET",
                "Range: bytes=-500\r\n",
                206,
                Some(vec![a(9500, 9999)]),
            ),
            ("HEAD", "Range: bytes=0-499\r\n", 200, None),
            ("GET", "Range: bytes=10000-\r\n", 416, None),
            ("GET", "Range: bytes=x\r\n", 200, Some(vec![a(0, 9999)])),
            (
                "GET",
                "Range: bytes=0-1\r\nRange: bytes=2-3\r\n",
                200,
                Some(vec![a(0, 9999)]),
            ),
            (
                "GET",
                "Range: bytes=0-1\r\nIf-Range: \"abc\"\r\n",
                206,
                Some(vec![a(0, 1)]),
            ),
            (
                "GET",
                "Range: bytes=0-1\r\nIf-Range: \"old\"\r\n",
                200,
                Some(vec![a(0, 9999)]),
            ),
            (
                "GET",
                "Range: bytes=0-1\r\nIf-Range: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
                200,
                Some(vec![a(0, 9999)]),
            ),
            ("GET", "If-None-Match: \"abc\"\r\n", 304, None),
            ("HEAD", "If-None-Match: W/\"abc\"\r\n", 304, None),
            (
                "GET",
                "If-None-Match: \"abc\"\r\nRange: bytes=0-1\r\n",
                304,
                None,
            ),
            (
                "GET",
                "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
                304,
                None,
            ),
            ("GET", "If-Match: \"nope\"\r\n", 412, None),
            ("PUT", "Content-Length: 0\r\n", 405, None),
        ];
        for (method, headers, status, segments) in table {
            let p = run(method, headers, &META);
            assert_eq!(
                p.status.0,
                *status,
                "{method} {headers:?}\n{}",
                head_text(&p)
            );
            let want_body = segments.clone().map_or(Body::Empty, Body::Ranges);
            assert_eq!(p.body, want_body, "{method} {headers:?}");
            assert!(p.head.ends_with(b"\r\n\r\n") || p.head.ends_with(b"\n"));
        }
    }

    #[test]
    fn heads_carry_the_right_fields() {
        let p = run("GET", "Range: bytes=0-499\r\n", &META);
        assert_eq!(
            head_text(&p),
            "HTTP/1.1 206 Partial Content\r\n\
             Date: Sun, 06 Nov 1994 08:50:00 GMT\r\n\
             Server: reelstore\r\n\
             Content-Type: video/mp4\r\n\
             Content-Length: 500\r\n\
             ETag: \"abc\"\r\n\
             Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Accept-Ranges: bytes\r\n\
             Content-Range: bytes 0-499/10000\r\n\r\n"
        );
        let p = run("HEAD", "Connection: close\r\n", &META);
        assert!(p.close);
        let t = head_text(&p);
        assert!(
            t.contains("Content-Length: 10000\r\n") && t.contains("Connection: close\r\n"),
            "{t}"
        );
        let p = run("GET", "Range: bytes=10000-\r\n", &META);
        let t = head_text(&p);
        assert!(t.contains("Content-Range: bytes */10000\r\n"), "{t}");
        assert!(!p.close);
        let p = run("GET", "If-None-Match: \"abc\"\r\n", &META);
        let t = head_text(&p);
        assert!(
            t.contains("ETag: \"abc\"\r\n") && !t.contains("Content-Length"),
            "{t}"
        );
    }

    #[test]
    fn empty_asset() {
        let meta = AssetMeta { size: 0, ..META };
        let p = run("GET", "", &meta);
        assert_eq!((p.status.0, &p.body), (200, &Body::Empty));
        assert!(head_text(&p).contains("Content-Length: 0\r\n"));
        let p = run("GET", "Range: bytes=0-\r\n", &meta);
        assert_eq!(p.status.0, 416);
        assert!(head_text(&p).contains("Content-Range: bytes */0\r\n"));
    }

    #[test]
    fn multipart_plan_is_consistent() {
        let p = run("GET", "Range: bytes=0-0, 100-199, -10\r\n", &META);
        assert_eq!(p.status.0, 206);
        let t = head_text(&p);
        assert!(
            t.contains("Content-Type: multipart/byteranges; boundary=reel0000000000000001\r\n"),
            "{t}"
        );
        assert!(
            t.contains(&format!("Content-Length: {}\r\n", p.body_len())),
            "{t}"
        );
        let Body::Ranges(segments) = &p.body else {
            panic!("no body")
        };
        let assets: Vec<&Segment> = segments
            .iter()
            .filter(|s| matches!(s, Segment::Asset(_)))
            .collect();
        assert_eq!(assets, [&a(0, 0), &a(100, 199), &a(9990, 9999)]);
        // Literal segments tile the literal buffer in order.
        let mut next = 0;
        for s in segments {
            if let Segment::Literal(r) = s {
                assert_eq!(r.start, next);
                next = r.end;
            }
        }
        assert_eq!(next, p.literals.len());
        assert!(p.literals.ends_with(b"\r\n--reel0000000000000001--\r\n"));
    }
}

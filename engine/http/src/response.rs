//! Response heads rendered into a caller-provided buffer.
//!
//! Everything is appended to a `Vec<u8>` the serving loop reuses across responses, so
//! rendering allocates nothing once that buffer has grown to a head's size: numbers and dates
//! are formatted in place, not through `String`. Values that come from stored data (the
//! content type given at ingest) are checked for CR/LF/control bytes before being written,
//! because writing them raw would let a client inject header lines into other clients'
//! responses.

use super::date::write_imf_fixdate;
use super::error::{HttpError, Status};
use super::range::ByteRange;

/// `Server` header value.
pub const SERVER: &str = "reelstore";
/// Content type used when the stored one is missing or unusable.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Appends the decimal digits of `n`.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Number of decimal digits of `n` (what [`push_u64`] writes).
pub fn decimal_len(n: u64) -> u64 {
    let mut len = 1;
    let mut n = n;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

/// Whether `value` can be sent as a header field value (RFC 9110 §5.5): visible ASCII, space
/// and tab, no leading/trailing whitespace. Stricter than the RFC (no obs-text), which is fine
/// for every value we send.
pub fn is_valid_field_value(value: &[u8]) -> bool {
    !value.is_empty()
        && value
            .iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        && !matches!(value.first(), Some(b' ' | b'\t'))
        && !matches!(value.last(), Some(b' ' | b'\t'))
}

pub fn write_status_line(out: &mut Vec<u8>, status: Status) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status.0));
    out.push(b' ');
    out.extend_from_slice(status.reason_phrase().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `name: value\r\n`. The caller guarantees `value` is a valid field value (see
/// [`is_valid_field_value`]); all values written by this module are constructed or checked.
pub fn write_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub fn write_header_u64(out: &mut Vec<u8>, name: &str, value: u64) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    push_u64(out, value);
    out.extend_from_slice(b"\r\n");
}

pub fn write_header_date(out: &mut Vec<u8>, name: &str, unix_s: u64) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    write_imf_fixdate(out, unix_s);
    out.extend_from_slice(b"\r\n");
}

/// The `100 Continue` interim response sent before reading a body the client holds back.
pub fn write_continue(out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
}

/// `Content-Range` of a response (RFC 9110 §14.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes first-last/size`
    Bytes { range: ByteRange, size: u64 },
    /// `bytes */size`, with a 416.
    Unsatisfied { size: u64 },
}

fn push_content_range(out: &mut Vec<u8>, cr: ContentRange) {
    out.extend_from_slice(b"bytes ");
    match cr {
        ContentRange::Bytes { range, size } => {
            push_u64(out, range.start);
            out.push(b'-');
            push_u64(out, range.end_inclusive);
            out.push(b'/');
            push_u64(out, size);
        }
        ContentRange::Unsatisfied { size } => {
            out.extend_from_slice(b"*/");
            push_u64(out, size);
        }
    }
}

/// The header fields of a response head. `None`/`false` fields are not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadFields<'a> {
    pub status: Status,
    /// The `Date` header (§6.6.1: an origin server with a clock must send it).
    pub now_unix_s: u64,
    pub content_length: Option<u64>,
    /// Sent only if it is a valid field value; otherwise [`DEFAULT_CONTENT_TYPE`] is sent.
    pub content_type: Option<&'a str>,
    pub etag: Option<&'a str>,
    pub last_modified_unix_s: Option<u64>,
    pub accept_ranges: bool,
    pub content_range: Option<ContentRange>,
    pub allow: Option<&'static str>,
    /// The `WWW-Authenticate` challenge of a 401.
    pub authenticate: Option<&'static str>,
    /// Send `Connection: close`: the server closes after this response.
    pub close: bool,
}

impl HeadFields<'_> {
    /// A head with only the status and the always-present fields.
    pub fn new(status: Status, now_unix_s: u64) -> HeadFields<'static> {
        HeadFields {
            status,
            now_unix_s,
            content_length: None,
            content_type: None,
            etag: None,
            last_modified_unix_s: None,
            accept_ranges: false,
            content_range: None,
            allow: None,
            authenticate: None,
            close: false,
        }
    }
}

/// Appends a complete response head, through the blank line.
pub fn render_head(out: &mut Vec<u8>, f: &HeadFields<'_>) {
    write_status_line(out, f.status);
    write_header_date(out, "Date", f.now_unix_s);
    write_header(out, "Server", SERVER.as_bytes());
    if let Some(ct) = f.content_type {
        write_header(out, "Content-Type", sanitized_content_type(ct).as_bytes());
    }
    if let Some(n) = f.content_length {
        write_header_u64(out, "Content-Length", n);
    }
    if let Some(etag) = f.etag.filter(|e| is_valid_field_value(e.as_bytes())) {
        write_header(out, "ETag", etag.as_bytes());
    }
    if let Some(t) = f.last_modified_unix_s {
        write_header_date(out, "Last-Modified", t);
    }
    if f.accept_ranges {
        write_header(out, "Accept-Ranges", b"bytes");
    }
    if let Some(cr) = f.content_range {
        out.extend_from_slice(b"Content-Range: ");
        push_content_range(out, cr);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(allow) = f.allow {
        write_header(out, "Allow", allow.as_bytes());
    }
    if let Some(challenge) = f.authenticate {
        write_header(out, "WWW-Authenticate", challenge.as_bytes());
    }
    if f.close {
        write_header(out, "Connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

fn sanitized_content_type(ct: &str) -> &str {
    if is_valid_field_value(ct.as_bytes()) {
        ct
    } else {
        DEFAULT_CONTENT_TYPE
    }
}

/// Appends a complete error response: head plus a one-line `text/plain` body naming the
/// problem (the body is left out for HEAD, whose response has the same head). Returns whether
/// the connection must close afterwards (the error demands it or the caller asked).
pub fn render_error(
    out: &mut Vec<u8>,
    err: &HttpError,
    now_unix_s: u64,
    head_only: bool,
    close: bool,
) -> bool {
    let close = close || err.must_close();
    let body_start = out.len();
    // Render the body first at the end of `out` to learn its length, then move it behind the
    // head; this avoids a second buffer for the Display output.
    {
        use std::io::Write as _;
        // Writing into a Vec cannot fail; there is no error to handle.
        let _ = writeln!(out, "{err}");
    }
    let body_len = out.len() - body_start;
    let mut fields = HeadFields::new(err.status(), now_unix_s);
    fields.content_type = Some("text/plain; charset=utf-8");
    fields.content_length = Some(body_len as u64);
    fields.allow = err.allow();
    if matches!(err, HttpError::Unauthorized { .. }) {
        fields.authenticate = Some("Bearer realm=\"reel-cluster\"");
    }
    fields.close = close;
    render_head(out, &fields);
    // Move the body behind the head: [body][head] → [head][body].
    out[body_start..].rotate_left(body_len);
    if head_only {
        out.truncate(out.len() - body_len);
    }
    close
}

/// A multipart boundary: `reel` + 16 hex digits. The digits come from the caller (a counter or
/// a random number), so rendering stays deterministic and free of a random-number dependency.
/// A boundary that happens to occur inside the payload confuses naive clients only; parts are
/// delimited by lengths in `Content-Range` for careful ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boundary([u8; 20]);

impl Boundary {
    pub fn from_seed(seed: u64) -> Boundary {
        let mut b = *b"reel0000000000000000";
        for (i, slot) in b[4..].iter_mut().enumerate() {
            let nibble = (seed >> (60 - 4 * i)) & 0xf;
            *slot = b"0123456789abcdef"[nibble as usize];
        }
        Boundary(b)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Built from ASCII above; the fallback is unreachable but keeps this panic-free.
        std::str::from_utf8(&self.0).unwrap_or("reel")
    }
}

/// Appends the `Content-Type` value of a multipart/byteranges response.
pub fn push_multipart_content_type(out: &mut Vec<u8>, boundary: &Boundary) {
    out.extend_from_slice(b"multipart/byteranges; boundary=");
    out.extend_from_slice(boundary.as_bytes());
}

/// Appends the delimiter and headers that precede one part's bytes:
/// `\r\n--B\r\nContent-Type: T\r\nContent-Range: bytes a-b/N\r\n\r\n`. The leading CRLF is
/// part of the delimiter (RFC 2046 §5.1.1); before the first part it is harmless preamble.
pub fn write_part_head(
    out: &mut Vec<u8>,
    boundary: &Boundary,
    content_type: &str,
    range: ByteRange,
    size: u64,
) {
    out.extend_from_slice(b"\r\n--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(sanitized_content_type(content_type).as_bytes());
    out.extend_from_slice(b"\r\nContent-Range: ");
    push_content_range(out, ContentRange::Bytes { range, size });
    out.extend_from_slice(b"\r\n\r\n");
}

/// Appends the closing delimiter `\r\n--B--\r\n`.
pub fn write_closing(out: &mut Vec<u8>, boundary: &Boundary) {
    out.extend_from_slice(b"\r\n--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\r\n");
}

/// The exact byte length of the multipart body [`write_part_head`] and [`write_closing`]
/// produce around `ranges`, computed without rendering, so the response can carry a
/// `Content-Length` and avoid chunked encoding.
pub fn multipart_length(
    boundary: &Boundary,
    content_type: &str,
    ranges: &[ByteRange],
    size: u64,
) -> u64 {
    let b = boundary.as_bytes().len() as u64;
    let ct = sanitized_content_type(content_type).len() as u64;
    let fixed_per_part = "\r\n--".len() as u64
        + b
        + "\r\nContent-Type: ".len() as u64
        + ct
        + "\r\nContent-Range: bytes ".len() as u64
        + "-/".len() as u64
        + decimal_len(size)
        + "\r\n\r\n".len() as u64;
    // Saturating: only a representation within a few KiB of u64::MAX bytes could overflow,
    // and then a too-large length is still better than a panic.
    let closing = "\r\n--".len() as u64 + b + "--\r\n".len() as u64;
    ranges.iter().fold(closing, |total, r| {
        total
            .saturating_add(fixed_per_part + decimal_len(r.start) + decimal_len(r.end_inclusive))
            .saturating_add(r.len())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: &[u8]) -> &str {
        std::str::from_utf8(v).expect("ascii")
    }

    #[test]
    fn numbers() {
        for n in [0u64, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut v = Vec::new();
            push_u64(&mut v, n);
            assert_eq!(text(&v), n.to_string());
            assert_eq!(decimal_len(n), n.to_string().len() as u64);
        }
    }

    #[test]
    fn a_401_carries_its_challenge() {
        let mut out = Vec::new();
        let e = HttpError::Unauthorized {
            reason: "uploads need the cluster token".into(),
        };
        let close = render_error(&mut out, &e, 0, false, false);
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
        assert!(
            text.contains("WWW-Authenticate: Bearer realm=\"reel-cluster\"\r\n"),
            "{text}"
        );
        assert!(text.ends_with("uploads need the cluster token\n"), "{text}");
        assert!(!close, "framing is intact: the connection may stay");
    }

    #[test]
    fn full_head() {
        let mut out = b"garbage-kept".to_vec();
        let fields = HeadFields {
            status: Status::PARTIAL_CONTENT,
            now_unix_s: 784_111_777,
            content_length: Some(10),
            content_type: Some("video/mp4"),
            etag: Some("\"abc\""),
            last_modified_unix_s: Some(0),
            accept_ranges: true,
            content_range: Some(ContentRange::Bytes {
                range: ByteRange {
                    start: 0,
                    end_inclusive: 9,
                },
                size: 100,
            }),
            allow: None,
            authenticate: None,
            close: true,
        };
        render_head(&mut out, &fields);
        assert_eq!(
            text(&out),
            "garbage-keptHTTP/1.1 206 Partial Content\r\n\
             Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Server: reelstore\r\n\
             Content-Type: video/mp4\r\n\
             Content-Length: 10\r\n\
             ETag: \"abc\"\r\n\
             Last-Modified: Thu, 01 Jan 1970 00:00:00 GMT\r\n\
             Accept-Ranges: bytes\r\n\
             Content-Range: bytes 0-9/100\r\n\
             Connection: close\r\n\r\n"
        );
    }

    #[test]
    fn injected_content_type_is_replaced() {
        let mut out = Vec::new();
        let mut f = HeadFields::new(Status::OK, 0);
        f.content_type = Some("text/html\r\nSet-Cookie: x=1");
        render_head(&mut out, &f);
        let s = text(&out);
        assert!(
            s.contains("Content-Type: application/octet-stream\r\n"),
            "{s}"
        );
        assert!(!s.contains("Set-Cookie"), "{s}");
    }

    #[test]
    fn error_responses() {
        let mut out = Vec::new();
        let close = render_error(&mut out, &HttpError::UnknownMethod, 0, false, false);
        assert!(close);
        let body = "method not implemented by this server; allowed: GET, HEAD, PUT, DELETE\n";
        assert_eq!(
            text(&out),
            format!(
                "HTTP/1.1 405 Method Not Allowed\r\n\
                 Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n\
                 Server: reelstore\r\n\
                 Content-Type: text/plain; charset=utf-8\r\n\
                 Content-Length: {}\r\n\
                 Allow: GET, HEAD, PUT, DELETE\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            )
        );
        // A routing error keeps the connection; HEAD gets no body but the same length.
        let mut out = b"prefix".to_vec();
        let close = render_error(&mut out, &HttpError::NotFound, 0, true, false);
        assert!(!close);
        let s = text(&out);
        assert!(s.starts_with("prefixHTTP/1.1 404 Not Found\r\n"), "{s}");
        let body_len = "not found: no endpoint at this path\n".len();
        assert!(
            s.ends_with(&format!("Content-Length: {body_len}\r\n\r\n")),
            "{s}"
        );
    }

    #[test]
    fn multipart_length_matches_rendering() {
        let boundary = Boundary::from_seed(0x0123_4567_89ab_cdef);
        assert_eq!(boundary.as_str(), "reel0123456789abcdef");
        let size = 123_456_789u64;
        let ranges = [
            ByteRange {
                start: 0,
                end_inclusive: 0,
            },
            ByteRange {
                start: 500,
                end_inclusive: 99_999,
            },
            ByteRange {
                start: 123_456_700,
                end_inclusive: 123_456_788,
            },
        ];
        for ct in ["video/mp4", "bad\nvalue"] {
            let mut rendered = 0u64;
            let mut out = Vec::new();
            for r in ranges {
                out.clear();
                write_part_head(&mut out, &boundary, ct, r, size);
                rendered += out.len() as u64 + r.len();
            }
            out.clear();
            write_closing(&mut out, &boundary);
            rendered += out.len() as u64;
            assert_eq!(
                multipart_length(&boundary, ct, &ranges, size),
                rendered,
                "{ct:?}"
            );
        }
        let mut out = Vec::new();
        write_part_head(&mut out, &boundary, "video/mp4", ranges[1], size);
        assert_eq!(
            text(&out),
            "\r\n--reel0123456789abcdef\r\nContent-Type: video/mp4\r\n\
             Content-Range: bytes 500-99999/123456789\r\n\r\n"
        );
    }
}

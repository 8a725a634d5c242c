//! Incremental decoder for `Transfer-Encoding: chunked` request bodies (RFC 9112 §7.1).
//!
//! The decoder never copies payload: [`ChunkedDecoder::decode`] returns the range of the input
//! slice that holds chunk data, and keeps only a few integers of state between calls, so the
//! serving loop can hand any received slice in without retaining earlier bytes. Framing bytes
//! (size lines, extensions, CRLFs, trailers) are consumed and dropped.
//!
//! Strictness, because lenient chunk parsing is a known request-smuggling vector: lines must end
//! in CRLF (a bare LF is rejected), sizes are hex without sign or whitespace before the digits,
//! a size that overflows u64 is rejected, and size lines and the trailer section are bounded.

use std::ops::Range;

use super::error::HttpError;

/// Longest chunk-size line accepted (size, extensions, CRLF). Extensions are ignored, so this
/// only bounds the bytes we skip on a client's say-so.
pub const SIZE_LINE_BYTES_MAX: usize = 4096;
/// Longest trailer section accepted; trailers are skipped, never interpreted.
pub const TRAILER_BYTES_MAX: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size { size: u64, digits: u32 },
    /// After the digits and whitespace: only more whitespace, `;` or CR may follow.
    SizeBws { size: u64 },
    /// After `;`: extensions until CR.
    Ext { size: u64 },
    /// Expecting the LF of the size line.
    SizeLf { size: u64 },
    /// Inside chunk data with this many bytes left.
    Data { remaining: u64 },
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field line, skipping until CR.
    TrailerLine,
    /// Expecting the LF ending a trailer field line.
    TrailerLineLf,
    /// Expecting the LF of the final empty line.
    EndLf,
    /// The body is complete; later bytes belong to the next request.
    Done,
}

/// What one call to [`ChunkedDecoder::decode`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input consumed (data and framing). The caller advances by this much.
    pub consumed: usize,
    /// Payload bytes found, as a range of the input slice (never empty when `Some`).
    pub data: Option<Range<usize>>,
    /// The final chunk and trailer section have been consumed.
    pub done: bool,
}

/// The decoder state. Start one per chunked body with [`ChunkedDecoder::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: State,
    /// Bytes of the current size line or of the trailer section so far (for the bounds).
    line_bytes: usize,
    /// Payload bytes decoded so far, for the caller's body-size limit and metrics.
    pub body_bytes: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

fn bad(reason: &'static str) -> HttpError {
    HttpError::BadRequest { reason }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size { size: 0, digits: 0 },
            line_bytes: 0,
            body_bytes: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from the start of `input`. Stops after the first run of payload bytes (returned
    /// as `data`), at the end of the body (`done`, with `consumed` pointing just past it), or
    /// when `input` is exhausted. A call on non-empty input before the end always consumes at
    /// least one byte, so a loop `while pos < len` makes progress.
    pub fn decode(&mut self, input: &[u8]) -> Result<Step, HttpError> {
        let mut pos = 0usize;
        while pos < input.len() {
            let b = input[pos];
            match self.state {
                State::Done => break,
                State::Data { remaining } => {
                    let avail = (input.len() - pos) as u64;
                    let take = remaining.min(avail) as usize;
                    let data = pos..pos + take;
                    self.body_bytes = self.body_bytes.saturating_add(take as u64);
                    self.state = if remaining == take as u64 {
                        State::DataCr
                    } else {
                        State::Data {
                            remaining: remaining - take as u64,
                        }
                    };
                    return Ok(Step {
                        consumed: data.end,
                        data: Some(data),
                        done: false,
                    });
                }
                State::Size { size, digits } => {
                    self.count_line_byte()?;
                    if let Some(d) = hex_value(b) {
                        let size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(d)))
                            .ok_or(bad("chunk size overflows"))?;
                        self.state = State::Size {
                            size,
                            digits: digits + 1,
                        };
                    } else if digits == 0 {
                        return Err(bad("chunk size is not hexadecimal"));
                    } else {
                        match b {
                            b';' => self.state = State::Ext { size },
                            b' ' | b'\t' => self.state = State::SizeBws { size },
                            b'\r' => self.state = State::SizeLf { size },
                            _ => return Err(bad("invalid character in chunk size line")),
                        }
                    }
                }
                State::SizeBws { size } => {
                    // RFC 9112 §7.1.1: `chunk-size [ chunk-ext ] CRLF`, and a chunk-ext starts
                    // with BWS ";". Anything else after the size ("5 6") is where lenient
                    // parsers disagree about the size.
                    self.count_line_byte()?;
                    match b {
                        b' ' | b'\t' => {}
                        b';' => self.state = State::Ext { size },
                        b'\r' => self.state = State::SizeLf { size },
                        _ => return Err(bad("invalid character after chunk size")),
                    }
                }
                State::Ext { size } => {
                    self.count_line_byte()?;
                    match b {
                        b'\r' => self.state = State::SizeLf { size },
                        // A bare LF or other control byte inside an extension is where
                        // parsers disagree; refuse it.
                        b'\n' | 0..=8 | 10..=31 | 127 => {
                            return Err(bad("invalid character in chunk extension"))
                        }
                        _ => {}
                    }
                }
                State::SizeLf { size } => {
                    if b != b'\n' {
                        return Err(bad("chunk size line must end in CRLF"));
                    }
                    self.line_bytes = 0;
                    self.state = if size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data { remaining: size }
                    };
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(bad("chunk data longer than its size"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(bad("chunk data must end in CRLF"));
                    }
                    self.state = State::Size { size: 0, digits: 0 };
                }
                State::TrailerStart => {
                    self.count_trailer_byte()?;
                    self.state = match b {
                        b'\r' => State::EndLf,
                        b'\n' => return Err(bad("trailer section must end in CRLF")),
                        _ => State::TrailerLine,
                    };
                }
                State::TrailerLine => {
                    self.count_trailer_byte()?;
                    match b {
                        b'\r' => self.state = State::TrailerLineLf,
                        b'\n' => return Err(bad("trailer field must end in CRLF")),
                        _ => {}
                    }
                }
                State::TrailerLineLf => {
                    self.count_trailer_byte()?;
                    if b != b'\n' {
                        return Err(bad("trailer field must end in CRLF"));
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(bad("chunked body must end in CRLF"));
                    }
                    self.state = State::Done;
                    return Ok(Step {
                        consumed: pos + 1,
                        data: None,
                        done: true,
                    });
                }
            }
            pos += 1;
        }
        Ok(Step {
            consumed: pos,
            data: None,
            done: self.state == State::Done,
        })
    }

    fn count_line_byte(&mut self) -> Result<(), HttpError> {
        self.line_bytes += 1;
        if self.line_bytes > SIZE_LINE_BYTES_MAX {
            return Err(bad("chunk size line too long"));
        }
        Ok(())
    }

    fn count_trailer_byte(&mut self) -> Result<(), HttpError> {
        self.line_bytes += 1;
        if self.line_bytes > TRAILER_BYTES_MAX {
            return Err(bad("chunked trailer section too long"));
        }
        Ok(())
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Test helper and reference for the serving loop: decodes `pieces` fed one after another,
/// returning the payload and the bytes left over after the body.
#[cfg(test)]
pub(crate) fn decode_pieces(pieces: &[&[u8]]) -> Result<(Vec<u8>, Vec<u8>, bool), HttpError> {
    let mut dec = ChunkedDecoder::new();
    let mut payload = Vec::new();
    let mut rest = Vec::new();
    for piece in pieces {
        let mut pos = 0;
        while pos < piece.len() {
            if dec.is_done() {
                rest.extend_from_slice(&piece[pos..]);
                break;
            }
            let step = dec.decode(&piece[pos..])?;
            if let Some(r) = step.data {
                assert!(!r.is_empty(), "empty data range");
                payload.extend_from_slice(&piece[pos + r.start..pos + r.end]);
            }
            assert!(step.consumed > 0, "no progress");
            pos += step.consumed;
        }
    }
    Ok((payload, rest, dec.is_done()))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Case = (&'static str, Result<(&'static str, &'static str), ()>);

    /// input → (payload, bytes after the body) or error.
    const CASES: &[Case] = &[
        ("0\r\n\r\n", Ok(("", ""))),
        ("5\r\nhello\r\n0\r\n\r\n", Ok(("hello", ""))),
        (
            "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET",
            Ok(("hello world", "GET")),
        ),
        ("A\r\n0123456789\r\n0\r\n\r\n", Ok(("0123456789", ""))),
        ("a\r\n0123456789\r\n000\r\n\r\n", Ok(("0123456789", ""))),
        ("3;name=value;x\r\nabc\r\n0\r\n\r\n", Ok(("abc", ""))),
        ("3 ; name=\"q;s\"\r\nabc\r\n0;last\r\n\r\n", Ok(("abc", ""))),
        (
            "3\r\nabc\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\nrest",
            Ok(("abc", "rest")),
        ),
        (
            "00000000000000010\r\n0123456789abcdef\r\n0\r\n\r\n",
            Ok(("0123456789abcdef", "")),
        ),
        ("\r\n", Err(())),
        ("x\r\n", Err(())),
        ("-1\r\n", Err(())),
        ("+1\r\n", Err(())),
        (" 1\r\n", Err(())),
        ("0x5\r\n", Err(())),
        ("1\nab", Err(())),
        ("1\r\nab\r\n", Err(())),
        ("1\r\na\n0\r\n\r\n", Err(())),
        ("1;ext\n", Err(())),
        ("5 6\r\nhello\r\n0\r\n\r\n", Err(())),
        ("1 x;y\r\na\r\n0\r\n\r\n", Err(())),
        ("1 \t;e\r\na\r\n0 \r\n\r\n", Ok(("a", ""))),
        ("10000000000000000\r\n", Err(())),
        ("0\r\n\n", Err(())),
        ("0\r\nX: 1\n\r\n", Err(())),
    ];

    fn check(case: &Case, got: Result<(Vec<u8>, Vec<u8>, bool), HttpError>, how: &str) {
        let (input, want) = case;
        match (want, got) {
            (Ok((payload, rest)), Ok((p, r, done))) => {
                assert_eq!(p, payload.as_bytes(), "{input:?} {how}");
                assert_eq!(r, rest.as_bytes(), "{input:?} {how}");
                assert!(done, "{input:?} {how}: not done");
            }
            (Err(()), Err(e)) => assert_eq!(e.status().0, 400, "{input:?}"),
            (want, got) => panic!("{input:?} {how}: want {want:?}, got {got:?}"),
        }
    }

    #[test]
    fn table_whole_and_split_at_every_boundary() {
        for case in CASES {
            let input = case.0.as_bytes();
            check(case, decode_pieces(&[input]), "whole");
            for cut in 0..=input.len() {
                let got = decode_pieces(&[&input[..cut], &input[cut..]]);
                check(case, got, &format!("cut at {cut}"));
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            check(case, decode_pieces(&bytes), "byte by byte");
        }
    }

    #[test]
    fn incomplete_body_is_not_done() {
        for input in [
            "",
            "5",
            "5\r\nhel",
            "5\r\nhello\r\n",
            "0\r\n",
            "0\r\nX: 1\r\n",
        ] {
            let got = decode_pieces(&[input.as_bytes()]).map(|r| r.2);
            assert_eq!(got, Ok(false), "{input:?}");
        }
    }

    #[test]
    fn data_ranges_point_into_the_input() {
        let input = b"3\r\nabc\r\n0\r\n\r\n";
        let mut dec = ChunkedDecoder::new();
        let step = dec.decode(input).expect("valid");
        assert_eq!(
            step,
            Step {
                consumed: 6,
                data: Some(3..6),
                done: false
            }
        );
        let step = dec.decode(&input[6..]).expect("valid");
        assert_eq!(
            step,
            Step {
                consumed: 7,
                data: None,
                done: true
            }
        );
        assert_eq!(dec.body_bytes, 3);
        // After the end, nothing more is consumed.
        assert_eq!(dec.decode(b"GET").map(|s| s.consumed), Ok(0));
    }

    #[test]
    fn long_size_line_and_trailer_are_bounded() {
        let ext = format!("1;{}\r\n", "e".repeat(SIZE_LINE_BYTES_MAX));
        assert!(decode_pieces(&[ext.as_bytes()]).is_err());
        let trailer = format!("0\r\nX: {}\r\n\r\n", "t".repeat(TRAILER_BYTES_MAX));
        assert!(decode_pieces(&[trailer.as_bytes()]).is_err());
    }
}

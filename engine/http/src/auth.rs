//! The cluster token: the shared secret a clustered node asks of writes and admin requests on
//! its access listener (and, with the manager, of everything on the inter-server network).
//!
//! A request presents it as `Authorization: Bearer <token>`. It is compared in constant time
//! (`subtle`), so the answer's timing says nothing about how much of a guess was right, and it
//! never appears in a `Debug` or `Display` output, so it cannot reach a log by accident.

use std::fmt;
use std::path::Path;

use subtle::ConstantTimeEq;

use crate::{HttpError, RequestHead};

/// Shortest token accepted: 16 bytes (128 bits when random).
pub const TOKEN_LEN_MIN: usize = 16;
/// Longest token accepted (it travels in a header).
pub const TOKEN_LEN_MAX: usize = 1024;

/// The cluster token. `Debug` and `Display` print `ClusterToken(redacted)`.
#[derive(Clone)]
pub struct ClusterToken(Vec<u8>);

impl fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterToken(redacted)")
    }
}

impl fmt::Display for ClusterToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterToken(redacted)")
    }
}

/// A token file that cannot be used. The message names the file and the fix, never the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("cannot read the cluster token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the cluster token in {path} is {len} bytes; it needs {TOKEN_LEN_MIN} to {TOKEN_LEN_MAX} \
         visible ASCII characters on one line (e.g. `head -c 32 /dev/urandom | base64 > {path}`)"
    )]
    Length { path: String, len: usize },
    #[error(
        "the cluster token in {path} holds a character that is not visible ASCII (a space, a \
         control character or non-ASCII); write it on one line, e.g. with base64"
    )]
    Charset { path: String },
}

impl ClusterToken {
    /// Reads the token from `path`: one line of visible ASCII (a trailing newline and
    /// surrounding whitespace are ignored).
    pub fn from_file(path: &Path) -> Result<ClusterToken, TokenError> {
        let shown = path.display().to_string();
        let raw = std::fs::read(path).map_err(|source| TokenError::Read {
            path: shown.clone(),
            source,
        })?;
        ClusterToken::from_bytes(raw.trim_ascii(), &shown)
    }

    /// A token from its bytes; `origin` names where they came from in errors.
    pub fn from_bytes(token: &[u8], origin: &str) -> Result<ClusterToken, TokenError> {
        if !(TOKEN_LEN_MIN..=TOKEN_LEN_MAX).contains(&token.len()) {
            return Err(TokenError::Length {
                path: origin.to_string(),
                len: token.len(),
            });
        }
        if !token.iter().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Charset {
                path: origin.to_string(),
            });
        }
        Ok(ClusterToken(token.to_vec()))
    }

    /// Whether `presented` is the token, compared in constant time (for a given length).
    pub fn matches(&self, presented: &[u8]) -> bool {
        // `ct_eq` of slices of different lengths is false without looking at the bytes; the
        // length of the real token is not a secret worth hiding (it is in every request).
        bool::from(self.0.as_slice().ct_eq(presented))
    }

    /// The secret, for keying the tickets' HMAC (`crate::cluster`); never to be printed.
    pub(crate) fn secret(&self) -> &[u8] {
        &self.0
    }

    /// The `Authorization` header value that presents this token (for clients).
    pub fn bearer_header(&self) -> Vec<u8> {
        let mut v = b"Bearer ".to_vec();
        v.extend_from_slice(&self.0);
        v
    }

    /// Checks the request's `Authorization: Bearer` header against this token: `Ok` if it
    /// matches; a 401 if the request presents none (or another scheme), a 403 if it presents
    /// a wrong one. `what` names what needs it, for the reason.
    pub fn check(&self, head: &RequestHead, buf: &[u8], what: &str) -> Result<(), HttpError> {
        match bearer(head, buf) {
            None => Err(HttpError::Unauthorized {
                reason: format!(
                    "{what} on a clustered node need the cluster token: send \
                     `Authorization: Bearer <token>`"
                ),
            }),
            Some(t) if self.matches(t) => Ok(()),
            Some(_) => Err(HttpError::Forbidden {
                reason: "the cluster token presented does not match this cluster's".into(),
            }),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive, RFC 9110
/// §11.1), if the request carries exactly one such header.
pub fn bearer<'b>(head: &RequestHead, buf: &'b [u8]) -> Option<&'b [u8]> {
    let v = head.header_once(buf, "authorization")?.trim_ascii();
    let (scheme, rest) = v.split_at(v.iter().position(|&b| b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_head, Limits, Parsed};

    fn head(raw: &[u8]) -> RequestHead {
        match parse_head(raw, &Limits::default()) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("not a complete head: {other:?}"),
        }
    }

    const TOKEN: &[u8] = b"s3cr3t-t0ken-0123456789";

    #[test]
    fn a_request_without_the_token_is_401_a_wrong_one_403_the_right_one_passes() {
        let t = ClusterToken::from_bytes(TOKEN, "test").expect("valid");
        let none = b"PUT /assets/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
        let e = t.check(&head(none), none, "uploads").expect_err("no token");
        assert_eq!(e.status().0, 401);
        assert!(e.to_string().contains("Authorization: Bearer"), "{e}");
        let basic = b"PUT /assets/a HTTP/1.1\r\nHost: x\r\nAuthorization: Basic abc\r\n\r\n";
        assert_eq!(
            t.check(&head(basic), basic, "x").map_err(|e| e.status().0),
            Err(401)
        );
        let wrong =
            b"PUT /assets/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cr3t-t0ken-0123456788\r\n\r\n";
        let e = t.check(&head(wrong), wrong, "x").expect_err("wrong token");
        assert_eq!(e.status().0, 403);
        assert!(
            !e.to_string().contains("s3cr3t"),
            "the reason never echoes a token"
        );
        let short = b"PUT /assets/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cr3t\r\n\r\n";
        assert_eq!(
            t.check(&head(short), short, "x").map_err(|e| e.status().0),
            Err(403)
        );
        let right =
            b"PUT /assets/a HTTP/1.1\r\nHost: x\r\nauthorization:   bearer  s3cr3t-t0ken-0123456789 \r\n\r\n";
        assert!(t.check(&head(right), right, "x").is_ok());
        // Two Authorization headers: ambiguous, treated as none.
        let two = b"PUT /a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cr3t-t0ken-0123456789\r\nAuthorization: Bearer s3cr3t-t0ken-0123456789\r\n\r\n";
        assert_eq!(
            t.check(&head(two), two, "x").map_err(|e| e.status().0),
            Err(401)
        );
    }

    #[test]
    fn the_token_never_prints_and_bad_files_name_the_fix() {
        let t = ClusterToken::from_bytes(TOKEN, "test").expect("valid");
        assert_eq!(
            format!("{t:?} {t}"),
            "ClusterToken(redacted) ClusterToken(redacted)"
        );
        let e = ClusterToken::from_bytes(b"short", "/etc/reel/token").expect_err("short");
        assert!(e.to_string().contains("/etc/reel/token") && e.to_string().contains("base64"));
        assert!(!e.to_string().contains("short\""));
        let e =
            ClusterToken::from_bytes(b"has a space in it, long enough", "f").expect_err("space");
        assert!(matches!(e, TokenError::Charset { .. }));
        let dir = std::env::temp_dir().join(format!("reel-token-{}", std::process::id()));
        std::fs::write(&dir, b"  s3cr3t-t0ken-0123456789\n").expect("write");
        let t = ClusterToken::from_file(&dir).expect("trimmed");
        assert!(t.matches(TOKEN));
        assert_eq!(t.bearer_header(), b"Bearer s3cr3t-t0ken-0123456789");
        std::fs::remove_file(&dir).expect("remove");
        let e = ClusterToken::from_file(Path::new("/nonexistent/token")).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/token"), "{e}");
    }
}

//! Asset ids: the one rule every layer shares.
//!
//! An asset id is 1–255 bytes of `[A-Za-z0-9._/-]` with no empty, `.` or `..` segment. The
//! volume format stores ids under this rule (and refuses a decoded id that breaks it), the HTTP
//! API routes by it and the manager will key its inventory by it. It is a crate of its own so
//! that the format (`reel-store`) and the protocol (`reel-http`) share one definition without
//! either depending on the other.
//!
//! Reserved last segments (`info`, `policy`, `locations`) are an HTTP concern, checked there.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

/// The longest id, in bytes (the format stores its length in one byte).
pub const ID_LEN_MAX: usize = 255;

/// Checks an asset id against the rule: 1–255 bytes of `[A-Za-z0-9._/-]`, no empty, `.` or `..`
/// segment.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > ID_LEN_MAX {
        return Err(format!(
            "asset id must be 1-{ID_LEN_MAX} bytes, got {}",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')))
    {
        return Err(format!(
            "asset id may only contain [A-Za-z0-9._/-], found {c:?}"
        ));
    }
    if id
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err("asset id may not have an empty, '.' or '..' segment".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "movies/2024/x.mp4", "A-b_c.d", &"x".repeat(255)] {
            assert_eq!(validate_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "../a",
            "a/./b",
            "a b",
            "a%2f",
            "é",
            &"x".repeat(256),
        ] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}

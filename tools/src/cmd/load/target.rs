//! The node to load and the assets to request: `--target` as an address, asset ids checked,
//! sizes asked with `HEAD` or listed with `GET /assets`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use reel_http::client::{encode_request, Conn, ResponseHead};
use serde::Deserialize;

use super::worker::{
    exchange_body, framed_length, open_for_setup, parse_location, ErrorKind, Failure, REDIRECTS_MAX,
};

/// Page size asked of `GET /assets` (the node's maximum is 10 000).
const LIST_PAGE: u32 = 1000;
/// Largest `GET /assets` page body accepted.
const LIST_BODY_MAX: u64 = 64 << 20;

/// Where the node listens, as given (for messages and the Host header) and resolved.
#[derive(Clone, Debug)]
pub(super) struct Target {
    pub(super) authority: String,
    pub(super) addr: SocketAddr,
}

/// `HOST:PORT` or `http://HOST:PORT[/]` → the authority `HOST:PORT`.
fn parse_authority(s: &str) -> Result<String> {
    let help = "expected HOST:PORT or http://HOST:PORT, e.g. --target 127.0.0.1:8080";
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &t["http://".len()..]
    } else if lower.starts_with("https://") {
        bail!(
            "invalid --target {s:?}: https is not supported, reel node speaks plain HTTP; {help}"
        );
    } else if lower.contains("://") {
        bail!("invalid --target {s:?}: unknown scheme; {help}");
    } else {
        t
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) || rest.contains(char::is_whitespace) {
        bail!("invalid --target {s:?}: only a host and a port, no path; {help}");
    }
    let Some((host, port)) = rest.rsplit_once(':') else {
        bail!("invalid --target {s:?}: no port; {help}");
    };
    let host_ok = !host.is_empty() && (!host.contains(':') || host.starts_with('['));
    if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
        bail!("invalid --target {s:?}: {help}");
    }
    Ok(rest.to_string())
}

pub(super) fn resolve_target(s: &str) -> Result<Target> {
    let authority = parse_authority(s)?;
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the host of --target {authority}"))?
        .next()
        .ok_or_else(|| anyhow!("the host of --target {authority} has no address"))?;
    Ok(Target { authority, addr })
}

/// Asset ids as the node accepts them: 1–255 bytes of `[A-Za-z0-9._/-]`, no empty or `..`
/// segment. Checked here so that a typo is named before a request line is built from it.
pub(super) fn check_id(id: &str) -> Result<()> {
    let chars_ok = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b));
    let segments_ok = id.split('/').all(|seg| !seg.is_empty() && seg != "..");
    if id.is_empty() || id.len() > 255 || !chars_ok || !segments_ok {
        bail!(
            "invalid asset id {id:?}: ids are 1-255 bytes of [A-Za-z0-9._/-] with no empty or \
             '..' segment"
        );
    }
    Ok(())
}

/// An asset to request, with the start of its GET request prebuilt.
pub(super) struct Asset {
    pub(super) id: String,
    /// 0: not asked (`--no-follow`).
    pub(super) size: u64,
    /// `GET /assets/{id} HTTP/1.1\r\nHost: …\r\n`; the range header and the blank line follow.
    pub(super) get_prefix: Vec<u8>,
}

impl Asset {
    pub(super) fn new(id: String, size: u64, authority: &str) -> Asset {
        let get_prefix = format!("GET /assets/{id} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
        Asset {
            id,
            size,
            get_prefix,
        }
    }
}

/// Sizes of the assets named by `--assets`, one HEAD each.
pub(super) fn head_assets(
    target: &Target,
    ids: &[String],
    timeout: Duration,
) -> Result<Vec<Asset>> {
    let mut conn = open_for_setup(target, timeout)?;
    let mut assets = Vec::with_capacity(ids.len());
    for id in ids {
        let req = encode_request(
            "HEAD",
            &target.authority,
            &format!("/assets/{id}"),
            &[],
            None,
        );
        let failed =
            |f: Failure| anyhow!("HEAD /assets/{id} on {}: {}", target.authority, f.detail);
        let first = conn.send(&req).map_err(|e| failed(e.into()))?;
        let close = first.close;
        let head = follow_head(first, target, timeout).map_err(failed)?;
        let len = framed_length(&head).map_err(failed)?;
        match head.status {
            200 => {}
            404 => bail!(
                "asset {id:?} not found on {} (HEAD /assets/{id} answered 404); list the \
                 node's assets with `curl http://{}/assets` or use --all-assets",
                target.authority,
                target.authority
            ),
            s => bail!(
                "HEAD /assets/{id} on {} answered {s}, not 200",
                target.authority
            ),
        }
        let size = len.ok_or_else(|| {
            anyhow!("HEAD /assets/{id} answered without a Content-Length; is this a reel node?")
        })?;
        if size == 0 {
            bail!("asset {id:?} is empty (0 bytes): there is nothing to request; drop it from --assets");
        }
        if close {
            conn = open_for_setup(target, timeout)?;
        }
        assets.push(Asset::new(id.clone(), size, &target.authority));
    }
    Ok(assets)
}

/// Follows the redirects of a HEAD answered `head` (a fresh connection per hop, at most
/// [`REDIRECTS_MAX`]); the final head.
fn follow_head(
    mut head: ResponseHead,
    target: &Target,
    timeout: Duration,
) -> Result<ResponseHead, Failure> {
    let mut from = target.authority.clone();
    for _ in 0..REDIRECTS_MAX {
        let location = match head.status {
            301 | 302 | 303 | 307 | 308 => match head.header("location") {
                Some(l) => l.to_string(),
                None => return Ok(head),
            },
            _ => return Ok(head),
        };
        let (authority, path) = parse_location(&location, &from)?;
        let to = resolve_target(&authority)
            .map_err(|e| Failure::new(ErrorKind::Redirect, format!("{e:#}")))?;
        let mut c: Conn = open_for_setup(&to, timeout)
            .map_err(|e| Failure::new(ErrorKind::Connect, format!("{e:#}")))?;
        let req = encode_request("HEAD", &authority, &path, &[], None);
        head = c.send(&req)?;
        from = authority;
    }
    Err(Failure::new(
        ErrorKind::Redirect,
        format!("more than {REDIRECTS_MAX} redirects"),
    ))
}

#[derive(Deserialize)]
struct ListPage {
    assets: Vec<ListEntry>,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
struct ListEntry {
    id: String,
    size: u64,
}

/// Every asset the node lists, following the `next` cursor of `GET /assets` to the last page.
/// Empty assets are skipped (there is no byte to ask for).
pub(super) fn list_assets(target: &Target, timeout: Duration) -> Result<Vec<Asset>> {
    let mut conn = open_for_setup(target, timeout)?;
    let mut assets = Vec::new();
    let mut after: Option<String> = None;
    let mut empty = 0u64;
    loop {
        let path = match &after {
            Some(a) => format!("/assets?limit={LIST_PAGE}&after={a}"),
            None => format!("/assets?limit={LIST_PAGE}"),
        };
        let req = encode_request("GET", &target.authority, &path, &[], None);
        let (head, body) = exchange_body(&mut conn, &req, LIST_BODY_MAX)
            .map_err(|f| anyhow!("GET {path} on {}: {}", target.authority, f.detail))?;
        if head.status != 200 {
            bail!(
                "GET {path} on {} answered {}: {}",
                target.authority,
                head.status,
                String::from_utf8_lossy(&body).trim()
            );
        }
        let page: ListPage = serde_json::from_slice(&body).with_context(|| {
            format!(
                "GET {path} on {} did not answer the JSON page of a reel node",
                target.authority
            )
        })?;
        for e in page.assets {
            if e.size == 0 {
                empty += 1;
                continue;
            }
            check_id(&e.id).context("the node listed an asset id it should not have")?;
            assets.push(Asset::new(e.id, e.size, &target.authority));
        }
        match page.next {
            // A cursor must move forward, or a misbehaving server would keep us here forever.
            Some(next) if after.as_ref().is_none_or(|a| next > *a) => after = Some(next),
            Some(next) => bail!(
                "GET {path} on {}: the cursor did not advance (next = {next:?})",
                target.authority
            ),
            None => break,
        }
        if head.close {
            conn = open_for_setup(target, timeout)?;
        }
    }
    if empty > 0 {
        eprintln!("reel load: skipping {empty} empty assets (0 bytes)");
    }
    Ok(assets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        for (s, want) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("HTTP://localhost:80/", "localhost:80"),
            ("[::1]:8080", "[::1]:8080"),
        ] {
            assert_eq!(parse_authority(s).expect(s), want);
        }
        for s in [
            "127.0.0.1",
            "https://127.0.0.1:8080",
            "ftp://h:1",
            "http://h:1/assets",
            ":8080",
            "h:0",
            "h:99999",
            "::1:8080",
            "",
        ] {
            let e = parse_authority(s).expect_err(s).to_string();
            assert!(e.contains("HOST:PORT"), "{s}: {e}");
        }
    }

    #[test]
    fn asset_ids() {
        assert!(check_id("movies/a-1.mp4").is_ok());
        for id in ["", "a b", "a//b", "../x", "a/..", "/a", "%41"] {
            assert!(check_id(id).is_err(), "{id:?}");
        }
    }
}

//! HTTP helpers over the one client, [`reel_http::client::Conn`]: one request per fresh
//! connection, and `/assets/{id}/info` as JSON.

use std::net::SocketAddr;
use std::time::Duration;

use reel_http::client::{encode_request, ClientError, Conn, Response};

/// Connect, read and write timeout of the helpers' connections: a node that takes longer hangs.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A fresh connection to `addr`.
pub fn connect(addr: SocketAddr) -> Conn {
    Conn::connect(addr, TIMEOUT).unwrap_or_else(|e| panic!("connect to the node at {addr}: {e}"))
}

/// One request on a fresh connection; the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response, ClientError> {
    Conn::connect(addr, TIMEOUT)?.request(method, target, headers, body)
}

/// A PUT of `body` to `target` on a fresh connection that sends `Expect: 100-continue` and the
/// body only after the interim response, so a refusal (507) is read cleanly instead of racing
/// a reset.
pub fn put_expecting_continue(
    addr: SocketAddr,
    target: &str,
    body: &[u8],
) -> Result<Response, ClientError> {
    let mut c = Conn::connect(addr, TIMEOUT)?;
    let len = body.len().to_string();
    let head = encode_request(
        "PUT",
        &addr.to_string(),
        target,
        &[("Content-Length", &len), ("Expect", "100-continue")],
        Some(&[]),
    );
    c.write_all(&head)?;
    let mut head = c.read_head_or_interim()?;
    if head.status == 100 {
        if let Err(e) = c.write_all(body) {
            // A node that refuses the upload part-way (e.g. 507 when a copy took the space
            // between its check and the reservation) answers and closes while the body is
            // still being sent; its answer is already here, so read it, as curl does.
            return match c.read_head() {
                Ok(head) => {
                    let body = c.read_body(&head, 1 << 30)?;
                    Ok(Response { head, body })
                }
                Err(_) => Err(e),
            };
        }
        head = c.read_head()?;
    }
    let body = c.read_body(&head, 1 << 30)?;
    Ok(Response { head, body })
}

/// The bytes of `body` in the chunked transfer coding: chunks of `piece` bytes (at least one),
/// then the last chunk. Send it after a head with `Transfer-Encoding: chunked`.
pub fn chunked(body: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / piece.max(1) * 12 + 16);
    for p in body.chunks(piece.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A PUT of `body` to `target` on a fresh connection with `Transfer-Encoding: chunked` (no
/// length up front), in chunks of `piece` bytes. A node that refuses part-way (507) answers
/// and closes while the body is still being sent: its answer is read, as curl does.
pub fn put_chunked(
    addr: SocketAddr,
    target: &str,
    body: &[u8],
    piece: usize,
) -> Result<Response, ClientError> {
    let mut c = Conn::connect(addr, TIMEOUT)?;
    let head = encode_request(
        "PUT",
        &addr.to_string(),
        target,
        &[("Transfer-Encoding", "chunked")],
        None,
    );
    c.write_all(&head)?;
    if let Err(e) = c.write_all(&chunked(body, piece)) {
        return match c.read_head() {
            Ok(head) => {
                let body = c.read_body(&head, 1 << 30)?;
                Ok(Response { head, body })
            }
            Err(_) => Err(e),
        };
    }
    let head = c.read_head()?;
    let body = c.read_body(&head, 1 << 30)?;
    Ok(Response { head, body })
}

/// `/assets/{id}/info` parsed, or `None` on 404.
pub fn info(addr: SocketAddr, id: &str) -> Option<serde_json::Value> {
    let target = format!("/assets/{id}/info");
    let r =
        request(addr, "GET", &target, &[], None).unwrap_or_else(|e| panic!("GET {target}: {e}"));
    if r.status() == 404 {
        return None;
    }
    assert_eq!(r.status(), 200, "GET {target}: {}", r.text());
    Some(serde_json::from_slice(&r.body).expect("info is JSON"))
}

/// The strings of the array `key` of an info document (e.g. `tiers`).
pub fn names(info: &serde_json::Value, key: &str) -> Vec<String> {
    info[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} array in {info}"))
        .iter()
        .map(|t| t.as_str().unwrap_or_default().to_string())
        .collect()
}

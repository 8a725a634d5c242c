//! The content session manager: carries out what the manager decides on nodes' copies. Today
//! that is the removal of copies (a delete through the manager); placing copies on more nodes
//! (hot assets) is the next step of the cluster.
//!
//! Calls go to each node's inter-server listener with the cluster token, with short timeouts;
//! a copy that cannot be removed now is removed when its node next reports or registers (the
//! tombstone reaches it), so a failure here delays the reclaiming of space, never correctness.

use std::net::SocketAddr;
use std::time::Duration;

use reel_http::auth::ClusterToken;
use reel_http::client::Conn;
use reel_http::cluster::PullOrder;

/// How long one node gets to remove a copy.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// DELETEs `id` on each `(name, peer address)`, in parallel; the names that failed.
pub fn delete_copies(
    token: &ClusterToken,
    id: &str,
    nodes: &[(String, SocketAddr)],
) -> Vec<String> {
    let auth = String::from_utf8_lossy(&token.bearer_header()).to_string();
    std::thread::scope(|s| {
        let calls: Vec<_> = nodes
            .iter()
            .map(|(name, addr)| {
                let auth = auth.as_str();
                s.spawn(move || {
                    let ok = Conn::connect(*addr, CALL_TIMEOUT)
                        .and_then(|mut c| {
                            c.request(
                                "DELETE",
                                &format!("/assets/{id}"),
                                &[("Authorization", auth)],
                                None,
                            )
                        })
                        .is_ok_and(|r| matches!(r.status(), 204 | 404));
                    if !ok {
                        tracing::warn!(node = %name, id, "could not remove a copy now; its node removes it when it reports");
                    }
                    (name.clone(), ok)
                })
            })
            .collect();
        calls
            .into_iter()
            .filter_map(|h| h.join().ok())
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| n)
            .collect()
    })
}

/// Orders `node` (its inter-server address) to pull `order`: whether the node took it (`202`,
/// or `409` when it already holds that version).
pub fn order_pull(token: &ClusterToken, node: SocketAddr, order: &PullOrder) -> Result<(), String> {
    let auth = String::from_utf8_lossy(&token.bearer_header()).to_string();
    let body = serde_json::to_vec(order).map_err(|e| e.to_string())?;
    let r = Conn::connect(node, CALL_TIMEOUT)
        .and_then(|mut c| {
            c.request(
                "PUT",
                "/v1/pull",
                &[
                    ("Authorization", auth.as_str()),
                    ("Content-Type", "application/json"),
                ],
                Some(&body),
            )
        })
        .map_err(|e| e.to_string())?;
    match r.status() {
        200..=299 | 409 => Ok(()),
        s => Err(format!("{s} {}", r.text().trim())),
    }
}

/// Removes the primary copy of `id` on `node` (`DELETE …?tier=primary`).
pub fn drop_primary(token: &ClusterToken, node: SocketAddr, id: &str) -> Result<(), String> {
    let auth = String::from_utf8_lossy(&token.bearer_header()).to_string();
    let r = Conn::connect(node, CALL_TIMEOUT)
        .and_then(|mut c| {
            c.request(
                "DELETE",
                &format!("/assets/{id}?tier=primary"),
                &[("Authorization", auth.as_str())],
                None,
            )
        })
        .map_err(|e| e.to_string())?;
    match r.status() {
        204 => Ok(()),
        s => Err(format!("{s} {}", r.text().trim())),
    }
}

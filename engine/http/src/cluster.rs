//! The cluster protocol: what nodes and the manager say to each other on the inter-server
//! network, and the signed tickets the manager hands clients.
//!
//! ## Node → manager (the manager's `--peer-listen`, `Authorization: Bearer <cluster token>`)
//!
//! Each is a `PUT` (the codec's methods are GET, HEAD, PUT and DELETE; a report replaces the
//! node's last one) with a JSON body and a `Content-Length`.
//!
//! - `PUT /v1/register` [`Register`] → [`Registered`]: a node (re)joins. The answer carries a
//!   session number, the report period and every tombstone, which the node applies (deleting the
//!   dead copies) before its first report, so a node that was away never brings back a deleted or
//!   overwritten version.
//! - `PUT /v1/report` [`Report`] → [`ReportAck`]: about every [`Registered::report_ms`]: the
//!   node's load, the request rates of assets that saw requests, and its holdings: all of them
//!   once per session (`full`), then what changed. A `409` means the manager does not know the
//!   session (it restarted, or a standby took over): register again, with a full snapshot.
//! - `PUT /v1/published` [`Published`] → [`PublishedAck`]: before a clustered node answers a
//!   PUT's `201`, so that once an overwrite is acknowledged the manager never routes to an older
//!   copy. The answer's revision orders the upload after every tombstone of the id the node may
//!   still receive: a tombstone of a lower or equal revision never deletes the version confirmed.
//!
//! A manager that is not the leader answers these with `503` and, when it knows the leader, a
//! `Reel-Leader: http://ADDR` header naming the leader's peer listener; a node given several
//! `--manager` URLs moves to the one named (or tries the next).
//!
//! ## Manager and peers → node (the node's `--peer-listen`, same token)
//!
//! - `GET`/`HEAD /assets/{id}`: the asset, as on the access listener (relay fetches).
//! - `GET /chunks/{id}?from=F&count=N`: [`ChunkList`], the per-chunk crc32c a relay checks every
//!   chunk against before its bytes go out (a path of its own, so no asset id's last segment is
//!   reserved); the crcs of chunks `F..F+N` only (`count=0`: the metadata alone), so a relay
//!   asks for the chunks of the span it fetches. Served to token holders on the access listener
//!   too, and never without the token.
//! - `DELETE /assets/{id}`: the manager's delete of a copy.
//! - `PUT /v1/pull` [`PullOrder`] → `202` [`PullStatus`]: copy a version from a holder (the
//!   node pulls it from `source`'s inter-server listener, every chunk's crc32c checked against
//!   the holder's [`ChunkList`], under its copy throttle, and publishes it on its primary only
//!   once whole and durable). Idempotent: the same `id` and `etag` queued or running answers
//!   `202` with that pull's status; an order for another etag of an id being pulled cancels the
//!   older pull. `409` (a [`PullStatus`] in state `held`) when the node already holds that
//!   version; `507` when its primary cannot take `size` bytes (after dropping clean, cold copies
//!   as for an upload, on a node with a secondary); `400` for a bad body. Only on the
//!   inter-server listener (`403` on the access one).
//! - `GET /v1/pulls` → `[`[`PullStatus`]`]`: the pulls queued, running and recently finished,
//!   oldest first.
//! - `DELETE /v1/pull/{id}` → [`PullStatus`]: cancels the pull of `id` (queued or running;
//!   `404` if none): nothing of it becomes visible.
//!
//! A node reports the pulls that finished (done, failed or cancelled) since its last report in
//! [`Report::pulls`]; a published copy also shows as a [`Holding`] as any other change does.
//!
//! ## Tickets
//!
//! The manager redirects clients to nodes with a [`Ticket`] in the query (`?ticket=…`): a relay
//! ticket makes the client's local node fetch an asset from a named holder; a put ticket lets one
//! PUT through without the client sending the token to the node (as `curl -L -T` drops
//! `Authorization` on a redirect to another host). A ticket is signed with HMAC-SHA256 keyed by
//! the cluster token and bound to the asset id, the node it is for and an expiry, so a client
//! can neither forge one nor reuse one for another asset or node.

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::auth::ClusterToken;

/// The longest node name: `[A-Za-z0-9_-]{1,64}`.
pub const NODE_NAME_MAX: usize = 64;

/// Whether `name` is a valid node name (`[A-Za-z0-9_-]{1,64}`).
pub fn valid_node_name(name: &str) -> bool {
    (1..=NODE_NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A tier's size and fill.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TierFill {
    /// `primary` or `secondary`.
    pub tier: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
}

/// `PUT /v1/register`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Register {
    /// The node's name (`--node-name`), unique in the cluster.
    pub node: String,
    /// Random per process start: the manager tells a restart from a lost report.
    pub boot: u64,
    /// Where clients reach the node.
    pub access: SocketAddr,
    /// Where peers and the manager reach the node (the inter-server network).
    pub peer: SocketAddr,
    pub tiers: Vec<TierFill>,
}

/// A deleted or overwritten asset: every copy of `id` whose etag is not `keep` is dead.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    pub id: String,
    /// The etag of the current version; `None` once the asset is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<String>,
    /// The coordination store's revision of the tombstone (orders tombstones of one id).
    pub rev: i64,
}

/// The answer to [`Register`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    /// Quote it in every report of this registration.
    pub session: u64,
    /// How often to report, in milliseconds.
    pub report_ms: u64,
    pub tombstones: Vec<Tombstone>,
}

/// One asset a node holds (its current version).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    pub id: String,
    pub etag: String,
    pub size: u64,
    /// The tiers holding it: `primary`, `secondary` or both.
    pub tiers: Vec<String>,
}

/// A node's load.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Load {
    /// Streams being served (GETs with bytes still to send).
    pub streams: u64,
    /// Bytes sent per second over the last report period.
    pub tx_bytes_per_s: f64,
    /// Device reads in flight (all tiers).
    pub device_queue: u64,
}

/// An asset's request rate as the node measures it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AssetRate {
    pub id: String,
    pub views_per_h: f64,
}

/// Requests from a node's clients for an asset it does not hold (relayed), since the last
/// report: the demand that tells the manager where a copy would serve.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AssetDemand {
    pub id: String,
    /// Views asked for (bytes asked ÷ size, as rates count them).
    pub views: f64,
}

/// `PUT /v1/report`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Report {
    pub node: String,
    pub session: u64,
    /// Counts the reports of this session from 1; a gap makes the manager ask for a full one.
    pub seq: u64,
    /// `upsert` is every holding (the manager forgets what it had of this node).
    pub full: bool,
    /// A full snapshot continues in the next reports (sent at once, `full: false`), until one
    /// with `more: false`: a node with many holdings sends them in pages, so neither side
    /// holds them all in one body. The node's holdings are known once the last page arrived.
    #[serde(default)]
    pub more: bool,
    /// Holdings that are new or changed (etag or tiers).
    pub upsert: Vec<Holding>,
    /// Ids the node no longer holds.
    pub remove: Vec<String>,
    /// Assets that saw requests since the last report.
    pub rates: Vec<AssetRate>,
    pub load: Load,
    pub tiers: Vec<TierFill>,
    /// Peers (node names) a relay fetch from failed since the last report: the manager marks
    /// them down at once, with a hold-down before it trusts them again.
    #[serde(default)]
    pub failed_sources: Vec<String>,
    /// Pulls ([`PullOrder`]s) that finished since the last report: done, failed or cancelled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pulls: Vec<PullStatus>,
    /// Relayed requests since the last report, by asset.
    #[serde(default)]
    pub demand: Vec<AssetDemand>,
}

/// The answer to [`Report`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportAck {
    /// Send a full report next (a gap in `seq`).
    pub resync: bool,
    /// Tombstones written since the last report: delete the copies they kill.
    pub tombstones: Vec<Tombstone>,
}

/// `PUT /v1/published`: a node published a version and is about to acknowledge it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub node: String,
    pub id: String,
    pub etag: String,
    pub size: u64,
    pub tier: String,
}

/// The answer to [`Published`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishedAck {
    /// The revision of the id's tombstone after this version was recorded (0: none). Older
    /// tombstones of the id, still on their way to the node, must not delete this version.
    pub rev: i64,
}

/// The body of a node's `GET /chunks/{id}?from=F&count=N` (cluster token required; see
/// [`crate::route::Route::Chunks`] for the window).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChunkList {
    pub etag: String,
    pub size: u64,
    pub content_type: String,
    pub chunk_bytes: u32,
    /// crc32c of each chunk of the window asked for, in order (chunk `from` first).
    pub crcs: Vec<u32>,
    /// When the version was stored (the `Last-Modified` a relay sends, as the holder would).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified_unix_s: Option<u64>,
}

/// `PUT /v1/pull` on a node's inter-server listener: copy version `etag` of asset `id` from
/// the node `source_node`, reached at `source` (its inter-server listener), to `tier`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PullOrder {
    pub id: String,
    pub etag: String,
    pub size: u64,
    /// The holder's inter-server address.
    pub source: SocketAddr,
    /// The holder's node name (reported as a failed source when the pull from it fails).
    pub source_node: String,
    /// Where the copy lands: `primary` (the only tier a pull goes to).
    pub tier: String,
}

/// Where a pull is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PullState {
    /// Waiting for the pulls ordered before it.
    Queued,
    /// Copying.
    Running,
    /// Published: the node holds the version.
    Done,
    /// Aborted on an error (nothing of it is visible); `error` says why.
    Failed,
    /// Cancelled (`DELETE /v1/pull/{id}`, a newer order, or the node stopping).
    Cancelled,
    /// The answer to an order of a version the node already holds (`409`).
    Held,
}

impl PullState {
    /// Done, failed or cancelled: nothing more happens to it.
    pub fn finished(self) -> bool {
        matches!(
            self,
            PullState::Done | PullState::Failed | PullState::Cancelled
        )
    }
}

/// A pull as `GET /v1/pulls`, the order's answer and [`Report::pulls`] show it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PullStatus {
    pub id: String,
    pub etag: String,
    pub size: u64,
    pub source_node: String,
    pub state: PullState,
    /// Bytes copied, checked and written so far.
    pub bytes_done: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a ticket lets its bearer do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TicketKind {
    /// Fetch the asset from [`Ticket::source`] and stream it on.
    Relay,
    /// Store the asset with one PUT.
    Put,
}

/// A signed permission for one asset on one node until an expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub kind: TicketKind,
    /// The node that honours it.
    pub node: String,
    /// Unix seconds after which it is refused.
    pub expires_unix_s: u64,
    /// Relay: the holder's peer address.
    pub source: Option<SocketAddr>,
    /// Relay: the holder's node name (marked down on a failed fetch).
    pub source_node: Option<String>,
    /// Relay: the etag of the version to fetch.
    pub etag: Option<String>,
}

/// Why a ticket is refused (each a 403's reason).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("the ticket is malformed")]
    Malformed,
    #[error("the ticket's signature does not match (forged, or for another asset or cluster)")]
    BadSignature,
    #[error("the ticket is for node {0}, not this one")]
    OtherNode(String),
    #[error("the ticket expired")]
    Expired,
}

type HmacSha256 = Hmac<Sha256>;

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

fn mac(token: &ClusterToken, payload: &[u8], id: &str) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(token.secret()).expect("HMAC takes a key of any length");
    m.update(payload);
    m.update(b"\n");
    m.update(id.as_bytes());
    m
}

impl Ticket {
    /// The payload signed: `kind|expiry|node|source|source_node|etag`.
    fn payload(&self) -> String {
        let kind = match self.kind {
            TicketKind::Relay => "r",
            TicketKind::Put => "p",
        };
        format!(
            "{kind}|{}|{}|{}|{}|{}",
            self.expires_unix_s,
            self.node,
            self.source.map(|a| a.to_string()).unwrap_or_default(),
            self.source_node.as_deref().unwrap_or_default(),
            self.etag.as_deref().unwrap_or_default()
        )
    }

    /// The ticket for asset `id` as a query value (`[0-9a-f.]`, URL-safe as is).
    pub fn encode(&self, token: &ClusterToken, id: &str) -> String {
        let payload = self.payload();
        let sig = mac(token, payload.as_bytes(), id).finalize().into_bytes();
        format!("{}.{}", hex(payload.as_bytes()), hex(&sig))
    }

    /// Checks `encoded` for asset `id` on node `node` at `now_unix_s`: the signature first (in
    /// constant time), then the node and the expiry.
    pub fn verify(
        encoded: &str,
        token: &ClusterToken,
        id: &str,
        node: &str,
        now_unix_s: u64,
    ) -> Result<Ticket, TicketError> {
        let (p, s) = encoded.split_once('.').ok_or(TicketError::Malformed)?;
        let payload = unhex(p).ok_or(TicketError::Malformed)?;
        let sig = unhex(s).ok_or(TicketError::Malformed)?;
        mac(token, &payload, id)
            .verify_slice(&sig)
            .map_err(|_| TicketError::BadSignature)?;
        let text = std::str::from_utf8(&payload).map_err(|_| TicketError::Malformed)?;
        let f: Vec<&str> = text.split('|').collect();
        let [kind, exp, tnode, source, source_node, etag] = f[..] else {
            return Err(TicketError::Malformed);
        };
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let t = Ticket {
            kind: match kind {
                "r" => TicketKind::Relay,
                "p" => TicketKind::Put,
                _ => return Err(TicketError::Malformed),
            },
            expires_unix_s: exp.parse().map_err(|_| TicketError::Malformed)?,
            node: tnode.to_string(),
            source: match source {
                "" => None,
                a => Some(a.parse().map_err(|_| TicketError::Malformed)?),
            },
            source_node: opt(source_node),
            etag: opt(etag),
        };
        if t.node != node {
            return Err(TicketError::OtherNode(t.node));
        }
        if now_unix_s > t.expires_unix_s {
            return Err(TicketError::Expired);
        }
        Ok(t)
    }
}

/// The value of the `ticket` query parameter of a request target, if any.
pub fn ticket_param(target: &str) -> Option<&str> {
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("ticket="))
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &str) -> ClusterToken {
        ClusterToken::from_bytes(s.as_bytes(), "test").expect("token")
    }

    fn relay() -> Ticket {
        Ticket {
            kind: TicketKind::Relay,
            node: "n2".into(),
            expires_unix_s: 1000,
            source: Some("10.0.0.1:7001".parse().expect("addr")),
            source_node: Some("n1".into()),
            etag: Some("\"0badcafe-10\"".into()),
        }
    }

    #[test]
    fn a_ticket_round_trips_for_its_asset_and_node() {
        let t = token("0123456789abcdef-cluster");
        let enc = relay().encode(&t, "movies/a.mp4");
        assert!(enc.bytes().all(|b| b.is_ascii_hexdigit() || b == b'.'));
        let target = format!("/assets/movies/a.mp4?x=1&ticket={enc}");
        let got = ticket_param(&target).expect("param");
        assert_eq!(
            Ticket::verify(got, &t, "movies/a.mp4", "n2", 999),
            Ok(relay())
        );
        assert_eq!(
            Ticket::verify(got, &t, "movies/a.mp4", "n2", 1000),
            Ok(relay())
        );
    }

    #[test]
    fn a_ticket_is_refused_elsewhere_later_or_altered() {
        let t = token("0123456789abcdef-cluster");
        let enc = relay().encode(&t, "a");
        let err =
            |e: &str, id, node, now| Ticket::verify(e, &t, id, node, now).expect_err("refused");
        assert_eq!(err(&enc, "b", "n2", 0), TicketError::BadSignature);
        assert_eq!(err(&enc, "a", "n3", 0), TicketError::OtherNode("n2".into()));
        assert_eq!(err(&enc, "a", "n2", 1001), TicketError::Expired);
        let other = relay().encode(&token("another-cluster-token"), "a");
        assert_eq!(err(&other, "a", "n2", 0), TicketError::BadSignature);
        // A payload changed to point elsewhere keeps the old signature: refused.
        let (_, sig) = enc.split_once('.').expect("dot");
        let mut forged = relay();
        forged.source = Some("192.0.2.1:80".parse().expect("addr"));
        let fake = format!("{}.{sig}", hex(forged.payload().as_bytes()));
        assert_eq!(err(&fake, "a", "n2", 0), TicketError::BadSignature);
        for bad in ["", ".", "zz.zz", "abc", "00.00", &enc[..enc.len() - 1]] {
            assert!(Ticket::verify(bad, &t, "a", "n2", 0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_names() {
        assert!(valid_node_name("n1"));
        assert!(valid_node_name("edge_eu-west-1"));
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(!valid_node_name(bad), "{bad:?}");
        }
    }
}

//! The JSON bodies of the node's metadata endpoints, as serde types: `GET /assets` (a page of the
//! list), `GET /assets/{id}/info` and `GET /migration` (also the answer to a `PUT`).
//!
//! The node renders these and a client (the cluster manager, tests) parses them, so both sides
//! share one definition without the client linking the node. The field order is the rendered
//! order; the node writes the list page, the migration state and the policy compact and the info
//! body pretty-printed, each followed by one newline ([`to_body`], [`to_body_pretty`]).
//!
//! Listing is paginated by cursor: `?after=ID&limit=N` returns up to N assets whose ids sort
//! strictly after ID, plus `next` (the cursor for the following page, absent on the last page).
//! A cursor survives inserts and deletes between pages, unlike an offset.
//!
//! The per-asset policy body (`GET /assets/{id}/policy`) is `reel_policy::AssetPolicy`, already a
//! serde type; this crate does not depend on the policy crate, so it has no copy here.

use serde::{Deserialize, Serialize};

/// One asset of a [`ListPage`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    pub id: String,
    pub size: u64,
    pub etag: String,
    pub content_type: String,
}

/// The body of `GET /assets`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    pub assets: Vec<ListEntry>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Assets on the node in all (both tiers, each id once).
    pub total: usize,
}

/// What the rate counters know about an asset.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct RateInfo {
    /// Requests counted since the node started (all shards).
    pub requests: u64,
    /// Bytes those requests asked for.
    pub bytes_requested: u64,
    /// Decaying rate in views per hour (bytes asked ÷ size), folded once a second.
    pub views_per_h: f64,
}

/// The body of `GET /assets/{id}/info`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AssetInfo {
    pub id: String,
    pub size: u64,
    pub content_type: String,
    pub etag: String,
    /// CRC32C of the asset's bytes, 8 lowercase hex digits.
    pub checksum: String,
    pub chunk_bytes: u32,
    pub chunks: u64,
    pub created_unix_ns: u64,
    /// The tiers holding the current version (`primary`, `secondary`).
    pub tiers: Vec<String>,
    /// Tiers whose copy serves but is not yet durable: a migration copy waiting for its
    /// commit (`--migration-commit-interval`); a crash would forget it (never the asset).
    pub uncommitted: Vec<String>,
    pub extents: u64,
    pub rate: RateInfo,
    /// The tiering policy's view of the asset (`reel_policy::Residence` in snake case, e.g.
    /// `clean`, `dirty`, `promoting`); absent without a secondary. A string rather than a copy
    /// of the policy's enum: this crate does not depend on the policy crate, and a reader of
    /// an older or newer node still parses a state it does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residence: Option<String>,
    /// Where the current version's upload landed and why. Kept in memory by the node that
    /// took the upload: absent after a restart (and for a version a migration copy put there
    /// only). Where the asset is now is `tiers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadInfo>,
}

/// Where an upload landed (`AssetInfo::upload`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct UploadInfo {
    /// `primary` or `secondary`.
    pub tier: String,
    /// Why, in words: `the primary had room`, `room made by dropping 3 clean copies (24 MiB)`,
    /// `the primary is full of dirty or hot copies`, or `spilled to the secondary at N bytes:
    /// the primary filled up mid-upload`.
    pub reason: String,
}

/// The body of `GET /migration` (and of a `PUT`'s answer).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct MigrationState {
    /// Whether the node has a secondary tier (without one nothing migrates).
    pub tiered: bool,
    /// Whether an operator paused migration (`PUT /migration?paused=true`).
    pub paused: bool,
    /// The copies' shared budget, bytes/s (0: unlimited).
    pub copy_budget_bytes_per_s: u64,
    /// The tiering policy's thresholds as they apply now (absent without a secondary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyNow>,
}

/// What the tiering policy reads now: configured values, or what it derived from the traffic.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct PolicyNow {
    /// The half-life of the request rates, seconds.
    pub half_life_s: f64,
    /// Whether the policy chooses the half-life itself (`--rate-half-life` unset).
    pub half_life_tuned: bool,
    /// Promote threshold and demote threshold of an asset without its own policy, views/h.
    pub promote_per_h: f64,
    pub demote_per_h: f64,
}

/// `v` as a compact JSON body with a trailing newline (empty if it cannot be serialized, which
/// these types cannot fail).
pub fn to_body<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// `v` as a pretty-printed JSON body with a trailing newline.
pub fn to_body_pretty<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T>(v: &T, body: &[u8])
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let back: T = serde_json::from_slice(body).expect("parses");
        assert_eq!(&back, v);
    }

    fn page(next: Option<&str>) -> ListPage {
        ListPage {
            assets: vec![
                ListEntry {
                    id: "a/one".into(),
                    size: 10,
                    etag: "\"e1\"".into(),
                    content_type: "video/mp4".into(),
                },
                ListEntry {
                    id: "b".into(),
                    size: 0,
                    etag: "\"e2\"".into(),
                    content_type: "application/octet-stream".into(),
                },
            ],
            next: next.map(str::to_string),
            total: 7,
        }
    }

    #[test]
    fn list_page_renders_compact_and_round_trips() {
        let p = page(Some("b"));
        let body = to_body(&p);
        assert_eq!(
            std::str::from_utf8(&body).expect("utf-8"),
            "{\"assets\":[{\"id\":\"a/one\",\"size\":10,\"etag\":\"\\\"e1\\\"\",\"content_type\":\"video/mp4\"},\
             {\"id\":\"b\",\"size\":0,\"etag\":\"\\\"e2\\\"\",\"content_type\":\"application/octet-stream\"}],\
             \"next\":\"b\",\"total\":7}\n"
        );
        round_trip(&p, &body);
        // The last page has no `next` at all (not null).
        let last = page(None);
        let body = to_body(&last);
        assert!(!String::from_utf8_lossy(&body).contains("next"));
        round_trip(&last, &body);
    }

    fn info(residence: Option<&str>) -> AssetInfo {
        AssetInfo {
            id: "m/x".into(),
            size: 2000,
            content_type: "video/mp4".into(),
            etag: "\"abc\"".into(),
            checksum: "0000beef".into(),
            chunk_bytes: 1 << 20,
            chunks: 1,
            created_unix_ns: 1_700_000_000_123_456_789,
            tiers: vec!["primary".into(), "secondary".into()],
            uncommitted: vec![],
            extents: 1,
            rate: RateInfo {
                requests: 3,
                bytes_requested: 6000,
                views_per_h: 0.5,
            },
            residence: residence.map(str::to_string),
            upload: residence.map(|_| UploadInfo {
                tier: "secondary".into(),
                reason: "the primary is full of dirty or hot copies".into(),
            }),
        }
    }

    #[test]
    fn info_renders_pretty_and_round_trips() {
        let i = info(Some("clean"));
        let body = to_body_pretty(&i);
        let want = r#"{
  "id": "m/x",
  "size": 2000,
  "content_type": "video/mp4",
  "etag": "\"abc\"",
  "checksum": "0000beef",
  "chunk_bytes": 1048576,
  "chunks": 1,
  "created_unix_ns": 1700000000123456789,
  "tiers": [
    "primary",
    "secondary"
  ],
  "uncommitted": [],
  "extents": 1,
  "rate": {
    "requests": 3,
    "bytes_requested": 6000,
    "views_per_h": 0.5
  },
  "residence": "clean",
  "upload": {
    "tier": "secondary",
    "reason": "the primary is full of dirty or hot copies"
  }
}
"#;
        assert_eq!(std::str::from_utf8(&body).expect("utf-8"), want);
        round_trip(&i, &body);
        let untiered = info(None);
        let body = to_body_pretty(&untiered);
        assert!(!String::from_utf8_lossy(&body).contains("residence"));
        assert!(
            !String::from_utf8_lossy(&body).contains("upload"),
            "absent, not null, when not known (after a restart)"
        );
        round_trip(&untiered, &body);
    }

    #[test]
    fn migration_state_renders_compact_and_round_trips() {
        let mut m = MigrationState {
            tiered: true,
            paused: false,
            copy_budget_bytes_per_s: 64 << 20,
            policy: None,
        };
        let body = to_body(&m);
        assert_eq!(
            body,
            b"{\"tiered\":true,\"paused\":false,\"copy_budget_bytes_per_s\":67108864}\n"
        );
        round_trip(&m, &body);
        m.policy = Some(PolicyNow {
            half_life_s: 7200.0,
            half_life_tuned: true,
            promote_per_h: 0.5,
            demote_per_h: 0.125,
        });
        let body = to_body(&m);
        assert!(
            body.ends_with(b"\"policy\":{\"half_life_s\":7200.0,\"half_life_tuned\":true,\"promote_per_h\":0.5,\"demote_per_h\":0.125}}\n"),
            "{}",
            String::from_utf8_lossy(&body)
        );
        round_trip(&m, &body);
    }
}

//! JSON bodies of the metadata endpoints: `GET /assets` (a page of the list),
//! `GET /assets/{id}/info` and `GET /migration`.
//!
//! Listing is paginated by cursor: `?after=ID&limit=N` returns up to N assets whose ids sort
//! strictly after ID, plus `next` (the cursor for the following page, absent on the last page).
//! A cursor survives inserts and deletes between pages, unlike an offset.

use serde::Serialize;

use reel_http::response::DEFAULT_CONTENT_TYPE;
use reel_store::catalog::Asset;
use reel_store::volume::Volume;

/// The body of `GET /migration` (and of a `PUT`'s answer).
#[derive(Serialize, Clone, Copy, Debug)]
pub struct MigrationState {
    /// Whether the node has a secondary tier (without one nothing migrates).
    pub tiered: bool,
    /// Whether an operator paused migration (`PUT /migration?paused=true`).
    pub paused: bool,
    /// The copies' shared budget, bytes/s (0: unlimited).
    pub copy_budget_bytes_per_s: u64,
}

/// What the rate counters know about an asset.
#[derive(Serialize, Clone, Copy, Debug, Default)]
pub struct RateInfo {
    /// Requests counted since the node started (all shards).
    pub requests: u64,
    /// Bytes those requests asked for.
    pub bytes_requested: u64,
    /// Decaying rate in views per hour (bytes asked ÷ size), folded once a second.
    pub views_per_h: f64,
}

/// The info body of one asset.
pub fn info_json(
    vol: &Volume,
    a: &Asset,
    tiers: Vec<&'static str>,
    uncommitted: Vec<&'static str>,
    rate: Option<RateInfo>,
    residence: Option<reel_policy::Residence>,
) -> Vec<u8> {
    let mut body = InfoOwned::new(vol, a, tiers);
    body.uncommitted = uncommitted;
    body.rate = rate.unwrap_or_default();
    body.residence = residence;
    let mut out = serde_json::to_vec_pretty(&body).unwrap_or_default();
    out.push(b'\n');
    out
}

#[derive(Serialize)]
struct InfoOwned {
    id: String,
    size: u64,
    content_type: String,
    etag: String,
    checksum: String,
    chunk_bytes: u32,
    chunks: u64,
    created_unix_ns: u64,
    tiers: Vec<&'static str>,
    /// Tiers whose copy serves but is not yet durable: a migration copy waiting for its
    /// commit (`--migration-commit-interval`); a crash would forget it (never the asset).
    uncommitted: Vec<&'static str>,
    extents: usize,
    rate: RateInfo,
    /// The tiering policy's view (e.g. `clean`, `dirty`, `promoting`); absent without a
    /// secondary.
    #[serde(skip_serializing_if = "Option::is_none")]
    residence: Option<reel_policy::Residence>,
}

impl InfoOwned {
    fn new(vol: &Volume, a: &Asset, tiers: Vec<&'static str>) -> InfoOwned {
        InfoOwned {
            id: a.id().to_string(),
            size: a.size(),
            content_type: a.content_type().unwrap_or(DEFAULT_CONTENT_TYPE).to_string(),
            etag: a.etag(),
            checksum: format!("{:08x}", a.checksum()),
            chunk_bytes: vol.chunk_size(),
            chunks: a.chunk_count() as u64,
            created_unix_ns: a.created_unix_ns(),
            tiers,
            uncommitted: Vec::new(),
            extents: a.extents().count(),
            rate: RateInfo::default(),
            residence: None,
        }
    }
}

#[derive(Serialize)]
struct ListEntry {
    id: String,
    size: u64,
    etag: String,
    content_type: String,
}

#[derive(Serialize)]
struct ListPage {
    assets: Vec<ListEntry>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    /// Assets on the volume in all.
    total: usize,
}

/// A page of the list (both tiers): ids sorted bytewise, strictly after `after`, at most `limit`.
pub fn list_json(tiers: &super::Tiers, after: Option<&str>, limit: u32) -> Vec<u8> {
    // The union of both tiers, each id once (the primary's version where both hold one).
    let mut all = tiers.primary.list();
    all.retain(|a| !super::is_policy_asset(a.id()));
    if let Some(s) = &tiers.secondary {
        all.extend(
            s.list()
                .into_iter()
                .filter(|a| !super::is_policy_asset(a.id()))
                .filter(|a| tiers.primary.get(a.id()).is_none()),
        );
    }
    let total = all.len();
    all.retain(|a| after.is_none_or(|after| a.id() > after));
    all.sort_unstable_by(|a, b| a.id().cmp(b.id()));
    let limit = limit.max(1) as usize;
    let more = all.len() > limit;
    all.truncate(limit);
    let next = if more {
        all.last().map(|a| a.id().to_string())
    } else {
        None
    };
    let page = ListPage {
        assets: all
            .iter()
            .map(|a| ListEntry {
                id: a.id().to_string(),
                size: a.size(),
                etag: a.etag(),
                content_type: a.content_type().unwrap_or(DEFAULT_CONTENT_TYPE).to_string(),
            })
            .collect(),
        next,
        total,
    };
    let mut out = serde_json::to_vec(&page).unwrap_or_default();
    out.push(b'\n');
    out
}

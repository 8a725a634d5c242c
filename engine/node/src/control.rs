//! The control endpoints, off the serving path: `GET /assets` (a page of the list),
//! `GET /assets/{id}/info`, `GET /assets/{id}/policy`, `GET`/`PUT /migration`, `/metrics`,
//! `/healthz` and, for cluster peers, `GET /chunks/{id}` (the shard checks the cluster token
//! before it calls here).
//!
//! A shard parses and routes a request, then calls `answer` with the route and gets the
//! rendered body (or the error to send) back; it never looks inside. The JSON bodies are the
//! serde types of [`reel_http::api`], shared with clients of the API. `PUT /assets/{id}/policy`
//! is an upload of the internal policy asset and goes to an ingest worker, not here.

use reel_http::api::{self, AssetInfo, ListEntry, ListPage, MigrationState, RateInfo};
use reel_http::cluster::ChunkList;
use reel_http::response::DEFAULT_CONTENT_TYPE;
use reel_http::{HttpError, Method, MigrationChange, Route, Status};
use reel_store::catalog::Asset;
use reel_store::volume::Volume;

use super::{is_policy_asset, no_such_asset, Shared, Tiers};

const JSON: &str = "application/json";

/// What a control endpoint answers.
pub(crate) enum Reply {
    /// 200 with this body.
    Ok {
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// This error; `bad_target` counts it as a bad request target in the metrics.
    Err { err: HttpError, bad_target: bool },
}

impl Reply {
    fn json(body: Vec<u8>) -> Reply {
        Reply::Ok {
            content_type: JSON,
            body,
        }
    }

    fn not_found() -> Reply {
        Reply::Err {
            err: no_such_asset(),
            bad_target: false,
        }
    }
}

/// Answers a control route. `None` for the routes the shard serves itself: an asset's bytes
/// and `PUT /assets/{id}/policy` (both go through the serving loop or an ingest worker).
/// `has_body`: the request carries a body (the endpoints here take none).
pub(crate) fn answer(
    shared: &Shared,
    route: &Route<'_>,
    method: Method,
    has_body: bool,
) -> Option<Reply> {
    Some(match *route {
        Route::Asset(_) => return None,
        Route::AssetPolicy(_) if method == Method::Put => return None,
        Route::AssetPolicy(id) => match policy(shared, id) {
            Some(b) => Reply::json(b),
            None => Reply::not_found(),
        },
        Route::AssetInfo(id) => match info(shared, id) {
            Some(b) => Reply::json(b),
            None => Reply::not_found(),
        },
        Route::AssetList { limit, after } => {
            let limit = limit.unwrap_or(shared.cfg.list_limit_default);
            Reply::json(list(&shared.tiers, after, limit))
        }
        Route::Migration(change) => match migration(shared, method, change, has_body) {
            Ok(b) => Reply::json(b),
            Err(err) => Reply::Err {
                err,
                bad_target: true,
            },
        },
        Route::Chunks { id, from, count } => match chunk_list(shared, id, from, count) {
            Some(b) => Reply::json(b),
            None => Reply::not_found(),
        },
        // Pull orders come from the manager over the inter-server listener of a node with a
        // cluster token; anywhere else there is no such endpoint.
        Route::Pull => Reply::not_found(),
        Route::Healthz => Reply::Ok {
            content_type: "text/plain; charset=utf-8",
            body: b"ok\n".to_vec(),
        },
        Route::Metrics => Reply::Ok {
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: shared.render_metrics().into_bytes(),
        },
    })
}

/// `GET /assets/{id}/policy`: the asset's overrides, if the node has a policy and the asset.
fn policy(shared: &Shared, id: &str) -> Option<Vec<u8>> {
    let p = shared.policy.as_ref()?;
    let slot = shared.index.slot(id)?;
    let p = p.lock().ok()?.asset_policy(slot);
    let mut v = serde_json::to_vec(&p).ok()?;
    v.push(b'\n');
    Some(v)
}

/// `GET /assets/{id}/info`.
fn info(shared: &Shared, id: &str) -> Option<Vec<u8>> {
    let tiers = &shared.tiers;
    // With a secondary the policy folds the rates (and knows the residence); without one the
    // rate thread does.
    let slot = shared.index.slot(id);
    let (rate, residence) = match slot {
        None => (None, None),
        Some(slot) => {
            let (requests, bytes_requested) = shared.rates.totals(slot);
            let (views_per_h, residence) = match &shared.policy {
                Some(p) => p.lock().map_or((0.0, None), |p| {
                    (p.rate_per_h(slot), Some(p.residence(slot)))
                }),
                None => (
                    shared.rate_view.lock().map_or(0.0, |r| r.rate_per_h(slot)),
                    None,
                ),
            };
            let rate = RateInfo {
                requests,
                bytes_requested,
                views_per_h,
            };
            (Some(rate), residence)
        }
    };
    let (a, vol) = tiers.lookup(id)?;
    let body = AssetInfo {
        residence: residence.and_then(residence_name),
        rate: rate.unwrap_or_default(),
        tiers: names(tiers.locations(id)),
        uncommitted: names(tiers.uncommitted(id)),
        upload: slot.and_then(|s| shared.index.upload(s)),
        ..info_of(vol, &a)
    };
    Some(api::to_body_pretty(&body))
}

/// `GET /chunks/{id}?from=F&count=N`: the current version's chunk list, crcs of the window
/// `from..from + count` (clipped to the asset and to [`reel_http::route::CHUNK_WINDOW_MAX`]).
fn chunk_list(shared: &Shared, id: &str, from: u64, count: Option<u64>) -> Option<Vec<u8>> {
    if is_policy_asset(id) {
        return None;
    }
    let (a, vol) = shared.tiers.lookup(id)?;
    let n = a.chunk_count() as u64;
    let from = from.min(n);
    let count = count
        .unwrap_or(n - from)
        .min(n - from)
        .min(reel_http::route::CHUNK_WINDOW_MAX);
    let body = ChunkList {
        etag: a.etag(),
        size: a.size(),
        content_type: a.content_type().unwrap_or(DEFAULT_CONTENT_TYPE).to_string(),
        chunk_bytes: vol.chunk_size(),
        crcs: a.crcs().skip(from as usize).take(count as usize).collect(),
        last_modified_unix_s: Some(a.created_unix_ns() / 1_000_000_000),
    };
    Some(api::to_body(&body))
}

/// The info fields an asset and its volume give (no tiers, rates or residence).
fn info_of(vol: &Volume, a: &Asset) -> AssetInfo {
    AssetInfo {
        id: a.id().to_string(),
        size: a.size(),
        content_type: a.content_type().unwrap_or(DEFAULT_CONTENT_TYPE).to_string(),
        etag: a.etag(),
        checksum: format!("{:08x}", a.checksum()),
        chunk_bytes: vol.chunk_size(),
        chunks: a.chunk_count() as u64,
        created_unix_ns: a.created_unix_ns(),
        tiers: Vec::new(),
        uncommitted: Vec::new(),
        extents: a.extents().count() as u64,
        rate: RateInfo::default(),
        residence: None,
        upload: None,
    }
}

fn names(tiers: Vec<&'static str>) -> Vec<String> {
    tiers.into_iter().map(str::to_string).collect()
}

/// The residence as the policy's serde names it (snake case).
fn residence_name(r: reel_policy::Residence) -> Option<String> {
    match serde_json::to_value(r) {
        Ok(serde_json::Value::String(s)) => Some(s),
        _ => None,
    }
}

/// A page of the list (both tiers): ids sorted bytewise, strictly after `after`, at most `limit`.
fn list(tiers: &Tiers, after: Option<&str>, limit: u32) -> Vec<u8> {
    // The union of both tiers, each id once (the primary's version where both hold one).
    let mut all = tiers.primary.list();
    all.retain(|a| !is_policy_asset(a.id()));
    if let Some(s) = &tiers.secondary {
        all.extend(
            s.list()
                .into_iter()
                .filter(|a| !is_policy_asset(a.id()))
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
    api::to_body(&page)
}

/// `GET /migration` (the controls as JSON) and `PUT /migration?paused=..&copy_budget=..`
/// (changes them, answers the new state).
fn migration(
    shared: &Shared,
    method: Method,
    change: MigrationChange,
    has_body: bool,
) -> Result<Vec<u8>, HttpError> {
    let c = &shared.migration_control;
    let tiered = shared.tiers.secondary.is_some();
    if method == Method::Put {
        let refuse = |status: u16, reason: &str| HttpError::Node {
            status: Status(status),
            reason: reason.into(),
        };
        if has_body {
            return Err(refuse(400, "PUT /migration takes its changes in the query (?paused=true&copy_budget=64M), not in a body"));
        }
        if change.is_empty() {
            return Err(refuse(400, "PUT /migration changes nothing; give paused=true|false and/or copy_budget=BYTES_PER_S"));
        }
        if !tiered {
            return Err(refuse(
                409,
                "this node has no secondary device, so there is no migration to control",
            ));
        }
        if let Some(b) = change.copy_budget {
            c.set_copy_budget(b);
        }
        if let Some(p) = change.paused {
            c.set_paused(p);
        }
        tracing::info!(
            paused = c.paused(),
            copy_budget = c.copy_budget(),
            "migration controls changed"
        );
    } else if !change.is_empty() {
        return Err(HttpError::Node {
            status: Status(400),
            reason: "GET /migration takes no query; PUT changes the controls".into(),
        });
    }
    let policy = shared.policy.as_ref().map(|p| {
        let p = super::scheduler::lock(p);
        api::PolicyNow {
            half_life_s: p.half_life_s(),
            half_life_tuned: p.tuning().is_some(),
            promote_per_h: p.promote_floor_per_h(),
            demote_per_h: p.demote_floor_per_h(),
        }
    });
    Ok(api::to_body(&MigrationState {
        tiered,
        paused: c.paused(),
        copy_budget_bytes_per_s: c.copy_budget(),
        policy,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The residence names are the policy's serde names, as the info body always had them.
    #[test]
    fn residence_names_are_snake_case() {
        use reel_policy::Residence;
        for (r, want) in [
            (Residence::Unknown, "unknown"),
            (Residence::Secondary, "secondary"),
            (Residence::Promoting, "promoting"),
            (Residence::Dirty, "dirty"),
            (Residence::WritingBack, "writing_back"),
            (Residence::Clean, "clean"),
            (Residence::Dropping, "dropping"),
        ] {
            assert_eq!(residence_name(r).as_deref(), Some(want));
        }
    }
}

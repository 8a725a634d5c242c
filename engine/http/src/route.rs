//! Request target → endpoint of the node API.
//!
//! Asset ids travel in the path verbatim: percent-encoding is refused rather than decoded,
//! because ids are restricted to `[A-Za-z0-9._/-]` and a decoder would only add a second
//! spelling for the same id (and a path-traversal surface). Since ids may contain `/`, a last
//! segment of `info`, `policy` or `locations` names a metadata endpoint and can never end an id.

use super::error::{HttpError, ALLOW_ALL};
use super::request::{parse_decimal, Method};
use reel_id::validate_id;

/// Largest page a client may ask of `GET /assets`.
pub const LIST_LIMIT_MAX: u32 = 10_000;

/// Most crcs one `/chunks/{id}` answer carries (64 GiB of 1 MiB chunks; about 720 KB of JSON):
/// a larger asset's list is asked for in windows.
pub const CHUNK_WINDOW_MAX: u64 = 65_536;

/// Last path segments that name metadata endpoints and therefore cannot end an asset id.
pub const RESERVED_LAST_SEGMENTS: [&str; 3] = ["info", "policy", "locations"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/assets/{id}`: the asset's bytes (GET, HEAD, PUT, DELETE).
    Asset(&'a str),
    /// `/assets/{id}/info`: JSON metadata.
    AssetInfo(&'a str),
    /// `/assets/{id}/policy`: per-asset tiering policy.
    AssetPolicy(&'a str),
    /// `/assets?limit=N&after=ID`: a page of the asset list, ids strictly after `after`.
    AssetList {
        limit: Option<u32>,
        after: Option<&'a str>,
    },
    /// `/migration`: the node's migration controls (GET); `PUT /migration?paused=..&copy_budget=..`
    /// changes them at run time (not persisted: a restart takes the configured values again).
    Migration(MigrationChange),
    /// `/chunks/{id}?from=F&count=N`: the per-chunk crc32c of the asset's current version
    /// ([`crate::cluster::ChunkList`]), for cluster peers only (the cluster token). `crcs` holds
    /// the chunks `from..from + count` (defaults: 0 and every chunk after `from`; fewer where
    /// the asset ends or past [`CHUNK_WINDOW_MAX`]); `count=0` asks for the metadata alone.
    Chunks {
        id: &'a str,
        from: u64,
        count: Option<u64>,
    },
    /// `/v1/pull`: the manager's order to pull a copy (`PUT`, a [`crate::cluster::PullOrder`];
    /// the node's inter-server listener only).
    Pull,
    Healthz,
    Metrics,
}

/// What a `PUT /migration` query asks to change (each field optional, at least one given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MigrationChange {
    /// Stop (true) or resume (false) background copies and due commits.
    pub paused: Option<bool>,
    /// The copies' shared bandwidth budget in bytes/s (`K`/`M`/`G` suffixes, powers of 1024).
    pub copy_budget: Option<u64>,
}

impl MigrationChange {
    pub fn is_empty(&self) -> bool {
        self.paused.is_none() && self.copy_budget.is_none()
    }
}

impl Route<'_> {
    /// The `Allow` header value for this endpoint.
    pub fn allow(&self) -> &'static str {
        match self {
            Route::Asset(_) => ALLOW_ALL,
            Route::AssetPolicy(_) | Route::Migration(_) => "GET, HEAD, PUT",
            Route::Pull => "PUT",
            Route::AssetInfo(_)
            | Route::AssetList { .. }
            | Route::Chunks { .. }
            | Route::Healthz
            | Route::Metrics => "GET, HEAD",
        }
    }

    /// Checks `method` against this endpoint: a 405 naming the allowed methods otherwise.
    pub fn check_method(&self, method: Method) -> Result<(), HttpError> {
        let allowed = match self {
            Route::Asset(_) => true,
            Route::AssetPolicy(_) | Route::Migration(_) => method != Method::Delete,
            Route::Pull => method == Method::Put,
            _ => matches!(method, Method::Get | Method::Head),
        };
        if allowed {
            Ok(())
        } else {
            Err(HttpError::MethodNotAllowed {
                allow: self.allow(),
            })
        }
    }
}

fn bad(reason: impl Into<String>) -> HttpError {
    HttpError::BadTarget {
        reason: reason.into(),
    }
}

/// Resolves a request target (origin-form, or absolute-form as RFC 9112 §3.2.2 requires
/// servers to accept).
pub fn route(target: &str) -> Result<Route<'_>, HttpError> {
    let path_and_query = strip_absolute_form(target)?;
    if path_and_query.contains('#') {
        return Err(bad("a request target may not contain a fragment ('#')"));
    }
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    if !path.starts_with('/') {
        return Err(bad("request target must start with '/'"));
    }
    match path {
        "/healthz" => return Ok(Route::Healthz),
        "/v1/pull" => return Ok(Route::Pull),
        "/metrics" => return Ok(Route::Metrics),
        "/assets" | "/assets/" => return list_route(query.unwrap_or("")),
        "/migration" => return migration_route(query.unwrap_or("")),
        _ => {}
    }
    if let Some(id) = path.strip_prefix("/chunks/") {
        return chunks_route(id, query.unwrap_or(""));
    }
    let Some(rest) = path.strip_prefix("/assets/") else {
        return Err(HttpError::NotFound);
    };
    if rest.contains('%') {
        return Err(bad(
            "percent-encoding is not allowed in asset ids; ids are [A-Za-z0-9._/-]",
        ));
    }
    // Query parameters on asset endpoints carry no meaning for us; they are ignored so that
    // cache-busting clients (`?t=123`) still work.
    let (id, last) = match rest.rsplit_once('/') {
        Some((id, last)) => (id, last),
        None => ("", rest),
    };
    if RESERVED_LAST_SEGMENTS.contains(&last) {
        if id.is_empty() {
            return Err(bad(format!(
                "asset id may not end in the reserved segment '{last}'"
            )));
        }
        validate_id(id).map_err(bad)?;
        return match last {
            "info" => Ok(Route::AssetInfo(id)),
            "policy" => Ok(Route::AssetPolicy(id)),
            // `locations` is a manager endpoint; the node has no such thing.
            _ => Err(HttpError::NotFound),
        };
    }
    validate_id(rest).map_err(bad)?;
    Ok(Route::Asset(rest))
}

/// `http://host:port/path?q` → `/path?q`. The authority is not checked: the node answers for
/// whatever name a client used to reach it.
fn strip_absolute_form(target: &str) -> Result<&str, HttpError> {
    let lower_starts = |p: &str| {
        target
            .get(..p.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(p))
    };
    for scheme in ["http://", "https://"] {
        if lower_starts(scheme) {
            let after = &target[scheme.len()..];
            return Ok(match after.find(['/', '?']) {
                Some(i) if after.as_bytes()[i] == b'/' => &after[i..],
                Some(_) | None => return Err(bad("absolute-form target has no path")),
            });
        }
    }
    Ok(target)
}

fn list_route(query: &str) -> Result<Route<'_>, HttpError> {
    let mut limit = None;
    let mut after = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "limit" => {
                if limit.is_some() {
                    return Err(bad("'limit' given twice"));
                }
                let n = parse_decimal(value.as_bytes())
                    .filter(|n| (1..=u64::from(LIST_LIMIT_MAX)).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "'limit' must be an integer in 1..={LIST_LIMIT_MAX}"
                        ))
                    })?;
                limit = Some(n as u32);
            }
            "after" => {
                if after.is_some() {
                    return Err(bad("'after' given twice"));
                }
                if value.contains('%') {
                    return Err(bad("percent-encoding is not allowed in asset ids"));
                }
                validate_id(value).map_err(|e| bad(format!("'after': {e}")))?;
                after = Some(value);
            }
            _ => return Err(bad("unknown query parameter; use limit and after")),
        }
    }
    Ok(Route::AssetList { limit, after })
}

fn chunks_route<'a>(id: &'a str, query: &str) -> Result<Route<'a>, HttpError> {
    if id.contains('%') {
        return Err(bad(
            "percent-encoding is not allowed in asset ids; ids are [A-Za-z0-9._/-]",
        ));
    }
    validate_id(id).map_err(bad)?;
    let (mut from, mut count) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "from" => &mut from,
            "count" => &mut count,
            _ => return Err(bad("unknown query parameter; use from and count")),
        };
        if slot.is_some() {
            return Err(bad(format!("'{key}' given twice")));
        }
        *slot = Some(
            parse_decimal(value.as_bytes())
                .ok_or_else(|| bad(format!("'{key}' must be a decimal integer")))?,
        );
    }
    Ok(Route::Chunks {
        id,
        from: from.unwrap_or(0),
        count,
    })
}

/// Budgets above this (1 TiB/s) are surely a typo.
const COPY_BUDGET_MAX: u64 = 1 << 40;

fn migration_route(query: &str) -> Result<Route<'_>, HttpError> {
    let mut change = MigrationChange::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "paused" => {
                if change.paused.is_some() {
                    return Err(bad("'paused' given twice"));
                }
                change.paused = Some(match value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad("'paused' must be true or false")),
                });
            }
            "copy_budget" => {
                if change.copy_budget.is_some() {
                    return Err(bad("'copy_budget' given twice"));
                }
                change.copy_budget = Some(parse_budget(value).ok_or_else(|| {
                    bad(format!(
                        "'copy_budget' must be bytes/s up to 1T, e.g. 134217728 or 128M \
                         (K/M/G/T = powers of 1024; 0 = unlimited); got '{value}'"
                    ))
                })?);
            }
            _ => return Err(bad("unknown query parameter; use paused and copy_budget")),
        }
    }
    Ok(Route::Migration(change))
}

/// `N` or `N` followed by one of `KMGT` (either case, powers of 1024), at most
/// [`COPY_BUDGET_MAX`] (0: unlimited, as `--copy-budget 0`).
fn parse_budget(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()?.to_ascii_uppercase() {
        b'K' => (&s[..s.len() - 1], 10),
        b'M' => (&s[..s.len() - 1], 20),
        b'G' => (&s[..s.len() - 1], 30),
        b'T' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n = parse_decimal(digits.as_bytes())?;
    n.checked_mul(1 << shift).filter(|&b| b <= COPY_BUDGET_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_table() {
        let table: &[(&str, Route)] = &[
            ("/healthz", Route::Healthz),
            ("/healthz?x=1", Route::Healthz),
            ("/metrics", Route::Metrics),
            ("/assets/a", Route::Asset("a")),
            (
                "/assets/movies/2024/a.mp4",
                Route::Asset("movies/2024/a.mp4"),
            ),
            ("/assets/a.mp4?t=5", Route::Asset("a.mp4")),
            ("/assets/a/info", Route::AssetInfo("a")),
            ("/assets/x/y/info", Route::AssetInfo("x/y")),
            ("/assets/a/policy", Route::AssetPolicy("a")),
            ("/assets/information", Route::Asset("information")),
            ("/assets/info.d/x", Route::Asset("info.d/x")),
            ("/assets/..a", Route::Asset("..a")),
            ("/migration", Route::Migration(MigrationChange::default())),
            (
                "/migration?paused=true&copy_budget=64M",
                Route::Migration(MigrationChange {
                    paused: Some(true),
                    copy_budget: Some(64 << 20),
                }),
            ),
            (
                "/migration?copy_budget=1000",
                Route::Migration(MigrationChange {
                    paused: None,
                    copy_budget: Some(1000),
                }),
            ),
            (
                "/migration?copy_budget=0",
                Route::Migration(MigrationChange {
                    paused: None,
                    copy_budget: Some(0),
                }),
            ),
            (
                "/migration?paused=0",
                Route::Migration(MigrationChange {
                    paused: Some(false),
                    copy_budget: None,
                }),
            ),
            ("http://node:8080/assets/a", Route::Asset("a")),
            ("HTTP://node/healthz", Route::Healthz),
            (
                "/assets",
                Route::AssetList {
                    limit: None,
                    after: None,
                },
            ),
            (
                "/assets?limit=10&after=a/b",
                Route::AssetList {
                    limit: Some(10),
                    after: Some("a/b"),
                },
            ),
            (
                "/assets/?after=z&",
                Route::AssetList {
                    limit: None,
                    after: Some("z"),
                },
            ),
            (
                "/chunks/a/b.mp4",
                Route::Chunks {
                    id: "a/b.mp4",
                    from: 0,
                    count: None,
                },
            ),
            (
                "/chunks/a/info?from=3&count=0",
                Route::Chunks {
                    id: "a/info",
                    from: 3,
                    count: Some(0),
                },
            ),
        ];
        for (target, want) in table {
            assert_eq!(route(target).as_ref(), Ok(want), "{target}");
        }
    }

    #[test]
    fn rejections_table() {
        let long = format!("/assets/{}", "a".repeat(256));
        let table: &[(&str, u16)] = &[
            ("/", 404),
            ("/asset/a", 404),
            ("/assetsx", 404),
            ("/assets/a/locations", 404),
            ("/assets/info", 400),
            ("/assets/policy", 400),
            ("/assets/a//b", 400),
            ("/assets/a/", 400),
            ("/assets/../etc/passwd", 400),
            ("/assets/a/./b", 400),
            ("/assets/a%2Fb", 400),
            ("/assets/a b", 400),
            ("/assets/a:b", 400),
            ("/assets/a#frag", 400),
            ("/assets//info", 400),
            ("/assets/../info", 400),
            (&long, 400),
            ("*", 400),
            ("assets/a", 400),
            ("http://host", 400),
            ("/assets?limit=0", 400),
            ("/assets?limit=abc", 400),
            ("/assets?limit=10001", 400),
            ("/assets?limit=1&limit=2", 400),
            ("/assets?after=", 400),
            ("/assets?after=a%20b", 400),
            ("/assets?after=..", 400),
            ("/assets?sort=name", 400),
            ("/migration?paused=yes", 400),
            ("/migration?paused", 400),
            ("/migration?paused=true&paused=false", 400),
            ("/migration?copy_budget=", 400),
            ("/migration?copy_budget=2T", 400),
            ("/migration?copy_budget=99999999999999999999", 400),
            ("/migration?copy_budget=M", 400),
            ("/migration?copy_budget=-1", 400),
            ("/migration?budget=1M", 400),
            ("/migration/x", 404),
            ("/chunks", 404),
            ("/chunks/", 400),
            ("/chunks/a/../b", 400),
            ("/chunks/a%2Fb", 400),
            ("/chunks/a?from=x", 400),
            ("/chunks/a?count=-1", 400),
            ("/chunks/a?from=1&from=2", 400),
            ("/chunks/a?ticket=abc", 400),
        ];
        for &(target, want) in table {
            match route(target) {
                Err(e) => assert_eq!(e.status().0, want, "{target}: {e}"),
                Ok(r) => panic!("{target} → {r:?}"),
            }
        }
        // The id at the length limit is accepted.
        let max = format!("/assets/{}", "a".repeat(255));
        assert!(route(&max).is_ok());
    }

    #[test]
    fn methods_per_route() {
        use Method::*;
        let table: &[(&str, Method, Result<(), &str>)] = &[
            ("/assets/a", Delete, Ok(())),
            ("/assets/a", Put, Ok(())),
            ("/assets/a/policy", Put, Ok(())),
            ("/assets/a/policy", Delete, Err("GET, HEAD, PUT")),
            ("/assets/a/info", Put, Err("GET, HEAD")),
            ("/healthz", Delete, Err("GET, HEAD")),
            ("/metrics", Head, Ok(())),
            ("/assets", Put, Err("GET, HEAD")),
            ("/migration", Put, Ok(())),
            ("/migration", Delete, Err("GET, HEAD, PUT")),
            ("/chunks/a", Put, Err("GET, HEAD")),
            ("/chunks/a", Head, Ok(())),
        ];
        for &(target, method, want) in table {
            let r = route(target).expect("valid route");
            let got = r.check_method(method).map_err(|e| e.allow().unwrap_or(""));
            assert_eq!(got, want, "{method:?} {target}");
        }
    }
}

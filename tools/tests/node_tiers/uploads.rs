//! Where uploads land on a node with two tiers: on the primary while it has room or room can be
//! made by dropping clean, cold copies; else on the secondary (from the start, or moved there
//! part-way for a chunked upload); `507` only when no tier can hold them. Bodies go through the
//! one client ([`reel_testkit::http`]): with `Content-Length` (and `Expect: 100-continue`, so a
//! refusal reads cleanly) or chunked.

use super::*;

use reel_http::client::Response;
use reel_testkit::content::matches;
use reel_testkit::metrics::Metrics;

const MIB: usize = 1 << 20;

/// A two-tier node on a `primary` and a `secondary` of the sizes given (`256M`, `2G`), with
/// `extra` flags; `None` (having said why) without the prerequisites.
fn start_sized(test: &str, primary: &str, secondary: &str, extra: &[&str]) -> Option<NodeProc> {
    if !curl::runnable(&REEL, test) {
        return None;
    }
    let dir = REEL.tempdir("reel-node-uploads-");
    let (p, s) = (dir.path().join("primary"), dir.path().join("secondary"));
    REEL.format(&p, primary);
    REEL.format(&s, secondary);
    let args = NodeArgs::new(&p).secondary(&s).shards(2).flags(extra);
    Some(NodeProc::spawn_in(&REEL, dir, args))
}

/// What a test uploaded: id → (content seed, length), the acknowledged versions.
type Uploaded = std::collections::BTreeMap<String, (u64, usize)>;

/// PUTs the content `(seed, len)` as `id` with a Content-Length, or chunked in 64 KiB chunks.
fn put(node: &NodeProc, id: &str, seed: u64, len: usize, chunked: bool) -> Response {
    let body = content(seed, len);
    let target = format!("/assets/{id}");
    let r = if chunked {
        http::put_chunked(node.addr(), &target, &body, 64 << 10)
    } else {
        http::put_expecting_continue(node.addr(), &target, &body)
    };
    r.unwrap_or_else(|e| panic!("PUT {id}: {e}; node stderr:\n{}", node.stderr()))
}

/// [`put`], which must answer 201; recorded in `done`.
fn put_ok(node: &NodeProc, done: &mut Uploaded, id: &str, seed: u64, len: usize, chunked: bool) {
    let r = put(node, id, seed, len, chunked);
    assert_eq!(
        r.status(),
        201,
        "PUT {id} ({len} B, chunked: {chunked}): {}",
        r.text()
    );
    done.insert(id.to_string(), (seed, len));
}

/// `id`'s `upload` field of `/info`: (tier, reason).
fn landed(node: &NodeProc, id: &str) -> (String, String) {
    let info = node
        .info(id)
        .unwrap_or_else(|| panic!("/info of {id}: 404"));
    let u = &info["upload"];
    match (u["tier"].as_str(), u["reason"].as_str()) {
        (Some(t), Some(r)) => (t.to_string(), r.to_string()),
        _ => panic!("{id}: no upload field in {info}"),
    }
}

/// Every acknowledged upload reads back byte-exact.
fn assert_all_read_back(node: &NodeProc, done: &Uploaded) {
    for (id, &(seed, len)) in done {
        let r = node.get(&format!("/assets/{id}"));
        assert!(
            r.status() == 200 && matches(seed, len, &r.body),
            "{id}: GET {} with {} bytes, want the {len} uploaded",
            r.status(),
            r.body.len()
        );
    }
}

/// A tier's free bytes per `/metrics` (capacity − used).
fn free_on(m: &Metrics, tier: &str) -> u64 {
    let label = format!("tier=\"{tier}\"");
    m.sum_where("reel_device_capacity_bytes", &label)
        - m.sum_where("reel_device_used_bytes", &label)
}

#[test]
fn a_library_many_times_the_primary_lands_whole_with_or_without_a_length() {
    // Issue 16: a 256 MiB primary, a 2 GiB secondary, 40 uploads of 8 MiB. 30 fit; from the
    // 31st on every PUT was refused (507) although the first ones were long written back.
    let test = "a_library_many_times_the_primary_lands_whole_with_or_without_a_length";
    let extra = [
        "--migration-commit-interval",
        "200ms",
        "--migration-commit-settle",
        "1ms",
    ];
    let Some(node) = start_sized(test, "256M", "2G", &extra) else {
        return;
    };
    let size = 8 * MIB;
    let mut done = Uploaded::new();
    for i in 0..30 {
        put_ok(
            &node,
            &mut done,
            &format!("len/{i:02}"),
            1000 + i,
            size,
            false,
        );
    }
    // As in the issue: the first 30 are clean (written back) before the others come.
    for i in 0..30 {
        wait_for_tiers_as(
            &node,
            &format!("len/{i:02}"),
            &["primary", "secondary"],
            false,
        );
    }
    for i in 30..40 {
        put_ok(
            &node,
            &mut done,
            &format!("len/{i:02}"),
            1000 + i,
            size,
            false,
        );
    }
    // The primary held 30; the others made room by dropping clean copies (cold: never read).
    let (tier, reason) = landed(&node, "len/39");
    assert_eq!(tier, "primary", "{reason}");
    assert!(reason.starts_with("room made by dropping"), "{reason}");
    let m = node.metrics();
    let drops = m.sum("reel_upload_room_drops_total");
    assert!(drops >= 10, "{}", m.lines_of(&["reel_upload"]));
    assert_eq!(
        m.sum("reel_upload_room_dropped_bytes_total"),
        drops * size as u64,
        "{}",
        m.lines_of(&["reel_upload"])
    );
    assert_eq!(m.sum("reel_uploads_to_secondary_total"), 0);

    // The same without a length, one after another with no pause: each makes room on the
    // primary as it fills, or moves to the secondary part-way when the copies there are dirty.
    for i in 0..40 {
        put_ok(
            &node,
            &mut done,
            &format!("chunked/{i:02}"),
            2000 + i,
            size,
            true,
        );
    }
    for i in 0..40 {
        let (tier, reason) = landed(&node, &format!("chunked/{i:02}"));
        let known = [
            "the primary had room",
            "room made by dropping",
            "spilled to the secondary at",
        ];
        assert!(
            known.iter().any(|k| reason.starts_with(k)),
            "chunked/{i:02} on the {tier}: {reason}"
        );
    }
    assert_all_read_back(&node, &done);
    let m = node.metrics();
    assert_eq!(m.sum_where("reel_errors_total", "kind=\"no_space\""), 0);
    node.assert_no_panic("after 80 uploads");
}

#[test]
fn uploads_go_to_the_secondary_when_the_primary_is_dirty_and_507_only_when_no_tier_can_hold_them() {
    let test = "uploads_go_to_the_secondary_when_the_primary_is_dirty_and_507_only_when_no_tier_can_hold_them";
    let Some(node) = start_sized(test, "64M", "160M", &[]) else {
        return;
    };
    // No write-back: every primary copy stays dirty (its only copy), so none can make way.
    let r = node.curl(&["-X", "PUT"], "/migration?paused=true");
    assert_eq!(r.status, 200, "{}", text(&r.body));
    let mut done = Uploaded::new();
    let mut on_primary = 0;
    for i in 0.. {
        let id = format!("dirty/{i:02}");
        put_ok(&node, &mut done, &id, 3000 + i, 4 * MIB, false);
        let (tier, reason) = landed(&node, &id);
        if tier == "primary" {
            assert_eq!(reason, "the primary had room");
            on_primary += 1;
            continue;
        }
        assert_eq!(
            (tier.as_str(), reason.as_str()),
            ("secondary", "the primary is full of dirty or hot copies")
        );
        assert_eq!(tiers_of(&node, &id).expect("info").0, ["secondary"]);
        break;
    }
    assert!(
        on_primary >= 12,
        "only {on_primary} of 4 MiB on a 64 MiB primary"
    );
    assert_metrics(
        &node,
        &[
            ("reel_uploads_to_secondary_total", 1),
            ("reel_upload_room_drops_total", 0),
        ],
    );

    // A new version of an id on the primary lands on the secondary: it is what is served
    // from the 201 on, and the primary's old copy is gone.
    put_ok(&node, &mut done, "dirty/00", 3999, 4 * MIB + 5, false);
    let r = node.get("/assets/dirty/00");
    assert!(r.status() == 200 && matches(3999, 4 * MIB + 5, &r.body));
    assert_eq!(tiers_of(&node, "dirty/00").expect("info").0, ["secondary"]);
    assert_eq!(landed(&node, "dirty/00").0, "secondary");

    // A chunked upload larger than the primary's free space (under 8 MiB with what the old
    // version left):
    // begun on the primary, moved to the secondary part-way, whole.
    let big = 20 * MIB + 123;
    put_ok(&node, &mut done, "spill/big", 4000, big, true);
    let (tier, reason) = landed(&node, "spill/big");
    let at: u64 = reason
        .strip_prefix("spilled to the secondary at ")
        .and_then(|r| r.strip_suffix(" bytes: the primary filled up mid-upload"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("spill/big on the {tier}: {reason}"));
    assert!(
        tier == "secondary" && at >= MIB as u64 && at < big as u64,
        "{tier}: {reason}"
    );
    assert_metrics(
        &node,
        &[
            ("reel_uploads_to_secondary_total", 3),
            ("reel_uploads_spilled_total", 1),
        ],
    );

    // Fill the secondary: every upload lands while it has room; 507 only once neither tier can
    // hold one, and it names both.
    let size = 16 * MIB;
    let refusal = loop {
        let free_s = free_on(&node.metrics(), "secondary");
        let seed = 5000 + done.len() as u64;
        let id = format!("fill/{seed}");
        let r = put(&node, &id, seed, size, false);
        if r.status() == 201 {
            done.insert(id.clone(), (seed, size));
            assert_eq!(landed(&node, &id).0, "secondary");
            continue;
        }
        assert_eq!(r.status(), 507, "{id}: {}", r.text());
        assert!(
            free_s < size as u64,
            "507 with {free_s} bytes free on the secondary: {}",
            r.text()
        );
        break r.text();
    };
    assert!(
        refusal.starts_with(&format!("no tier can hold {size} bytes: the primary has"))
            && refusal.contains("the secondary has"),
        "{refusal}"
    );
    // Without a length, refused once it outgrows both, and nothing of it is left.
    let used_s = node
        .metrics()
        .sum_where("reel_device_used_bytes", "tier=\"secondary\"");
    let r = put(&node, "too/big", 6000, 40 * MIB, true);
    assert_eq!(r.status(), 507, "{}", r.text());
    assert!(
        r.text().starts_with("no tier can hold this upload") && r.text().contains("secondary"),
        "{}",
        r.text()
    );
    assert_eq!(node.get("/assets/too/big").status(), 404);
    let m = node.metrics();
    assert_eq!(
        m.sum_where("reel_device_used_bytes", "tier=\"secondary\""),
        used_s
    );
    assert_eq!(m.sum_where("reel_errors_total", "kind=\"no_space\""), 2);
    assert_all_read_back(&node, &done);
    node.assert_no_panic("after the refusals");
}

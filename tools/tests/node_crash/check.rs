//! Checks after a restart (the request in flight at the kill, every asset served as the model
//! says) and of a stopped node's volumes (`reel inspect --json`).

use super::*;

/// Whether a `/info` placement is consistent: its tiers name a real placement and the policy's
/// residence agrees (allowing a decision that just published and is not reported finished).
pub(crate) fn placement_ok(tiers: &[String], residence: &str) -> bool {
    let t: Vec<&str> = tiers.iter().map(String::as_str).collect();
    match t.as_slice() {
        ["primary"] => matches!(residence, "dirty" | "writing_back"),
        ["primary", "secondary"] => {
            matches!(
                residence,
                "clean" | "dropping" | "writing_back" | "promoting"
            )
        }
        ["secondary"] => matches!(residence, "secondary" | "promoting" | "dropping"),
        _ => false,
    }
}

/// After a restart: settles the request that was in flight at the kill by looking at what the
/// node serves (either outcome is allowed). Returns what happened, for the log.
pub(crate) fn resolve_pending(node: &NodeProc, model: &mut Model) -> String {
    let Some(op) = model.pending.take() else {
        return "none".into();
    };
    match op {
        Op::Put { id, ver } => {
            let r = req(node, "GET", &format!("/assets/{id}"));
            let e = model
                .entries
                .get_mut(&id)
                .expect("entry of the pending PUT");
            let v = e.versions[ver].clone();
            if r.status() == 200 && matches(v.seed, v.size, &r.body) {
                e.versions[ver].state = VState::Acked;
                e.versions[ver].etag = r.header("etag").map(str::to_string);
                e.current = Some(ver);
                format!("PUT {id} ({} B) landed", v.size)
            } else {
                e.versions[ver].state = VState::Failed;
                match e.current.and_then(|c| e.versions.get(c)) {
                    Some(cur) => assert!(
                        r.status() == 200 && matches(cur.seed, cur.size, &r.body),
                        "{id}: after a kill during its overwrite, GET is {} with {} bytes: \
                         neither the acknowledged version nor the new one",
                        r.status(),
                        r.body.len()
                    ),
                    None => assert_eq!(
                        r.status(),
                        404,
                        "{id}: a PUT killed before its 201 left {} bytes that are not its body",
                        r.body.len()
                    ),
                }
                format!("PUT {id} ({} B) did not land", v.size)
            }
        }
        Op::Delete { id } => {
            let r = req(node, "GET", &format!("/assets/{id}"));
            let e = model
                .entries
                .get_mut(&id)
                .expect("entry of the pending DELETE");
            if r.status() == 404 {
                e.current = None;
                e.deleted = true;
                format!("DELETE {id} landed")
            } else {
                let cur = e
                    .current
                    .and_then(|c| e.versions.get(c))
                    .expect("a DELETE is sent for a live id");
                assert!(
                    r.status() == 200 && matches(cur.seed, cur.size, &r.body),
                    "{id}: after a kill during its DELETE, GET is {} with {} bytes, not the \
                     acknowledged version",
                    r.status(),
                    r.body.len()
                );
                format!("DELETE {id} did not land")
            }
        }
    }
}

/// Every acknowledged asset GETs byte-exact with its ETag; every other id ever used 404s; the
/// list is exactly the model; `/info` names a consistent placement. Returns the number of live
/// assets on the secondary only.
pub(crate) fn verify_node(node: &NodeProc, model: &Model, when: &str) -> usize {
    for (id, e) in &model.entries {
        let r = req(node, "GET", &format!("/assets/{id}"));
        match e.current.and_then(|c| e.versions.get(c)) {
            Some(v) => {
                assert_eq!(
                    r.status(),
                    200,
                    "{when}: acknowledged asset {id} ({} B) is gone: {}; node stderr:\n{}",
                    v.size,
                    text(&r.body),
                    node.stderr()
                );
                if !matches(v.seed, v.size, &r.body) {
                    let which = e
                        .versions
                        .iter()
                        .position(|o| matches(o.seed, o.size, &r.body));
                    panic!(
                        "{when}: {id} serves {} bytes that are not its acknowledged version \
                         {:?} of {} ({} B); they match version {which:?} (states {:?})",
                        r.body.len(),
                        e.current,
                        e.versions.len(),
                        v.size,
                        e.versions.iter().map(|v| v.state).collect::<Vec<_>>()
                    );
                }
                assert_eq!(
                    r.header("etag"),
                    v.etag.as_deref(),
                    "{when}: {id}: ETag changed"
                );
            }
            None => assert_eq!(
                r.status(),
                404,
                "{when}: {id} (deleted: {}, versions {:?}) should not exist but GETs {} with {} \
                 bytes",
                e.deleted,
                e.versions.iter().map(|v| v.state).collect::<Vec<_>>(),
                r.status(),
                r.body.len()
            ),
        }
    }
    // The list: exactly the acknowledged assets.
    let mut listed = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/assets?limit=1000&after={a}"),
            None => "/assets?limit=1000".to_string(),
        };
        let r = req(node, "GET", &path);
        assert_eq!(r.status(), 200, "{when}: GET {path}");
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("list JSON");
        for a in v["assets"].as_array().expect("assets array") {
            let id = a["id"].as_str().expect("listed id").to_string();
            let want = model.current(&id).and_then(|v| v.etag.clone());
            assert_eq!(
                a["etag"].as_str().map(str::to_string),
                want,
                "{when}: listed {id} with an ETag that is not its acknowledged version's"
            );
            listed.insert(id);
        }
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    let live: BTreeSet<String> = model.live().into_iter().collect();
    assert_eq!(
        listed,
        live,
        "{when}: /assets lists {:?} beyond the model and misses {:?}",
        listed.difference(&live).collect::<Vec<_>>(),
        live.difference(&listed).collect::<Vec<_>>()
    );
    // Placement.
    let mut secondary_only = 0;
    for id in &live {
        let v = model.current(id).expect("live");
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let (tiers, residence, info) =
                info(node, id).unwrap_or_else(|| panic!("{when}: /info of live {id} is 404"));
            assert_eq!(
                info["checksum"].as_str(),
                v.checksum(),
                "{when}: {id}: /info checksum is not the acknowledged version's: {info}"
            );
            assert_eq!(info["size"].as_u64(), Some(v.size as u64), "{when}: {info}");
            if placement_ok(&tiers, &residence) {
                if tiers == ["secondary"] {
                    secondary_only += 1;
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{when}: {id}: inconsistent placement: tiers {tiers:?}, residence {residence}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    secondary_only
}

// ---------------------------------------------------------------------------------------------
// Checks of a stopped node's volumes (`reel inspect --json`)

/// An asset as `inspect` lists it: (size, checksum).
type Listed = BTreeMap<String, (u64, String)>;

/// Runs `reel inspect --json` and checks the space accounting and extents: returns the assets.
pub(crate) fn inspect_volume(vol: &Path, when: &str) -> Listed {
    let out = output_ok(
        Command::new(REEL.bin).args(["inspect", path_str(vol), "--json"]),
        &format!("{when}: reel inspect {}", vol.display()),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    let name = format!("{when}, {}", vol.display());
    let num = |p: &serde_json::Value, k: &str| {
        p[k].as_u64()
            .unwrap_or_else(|| panic!("{name}: inspect has no number {k}: {v}"))
    };
    let sb = &v["superblock"];
    let st = &v["stats"];
    let (block, data_blocks) = (num(sb, "block_size"), num(sb, "data_blocks"));
    let (cap, used, free, reserved, pending) = (
        num(st, "capacity_bytes"),
        num(st, "used_bytes"),
        num(st, "free_bytes"),
        num(st, "reserved_bytes"),
        num(st, "reclaim_pending_bytes"),
    );
    assert_eq!(cap, block * data_blocks, "{name}: capacity vs data region");
    assert_eq!(
        used + free + reserved + pending,
        cap,
        "{name}: used {used} + free {free} + reserved {reserved} + reclaim pending {pending} \
         != capacity {cap}"
    );
    assert_eq!(
        (reserved, pending),
        (0, 0),
        "{name}: right after open nothing is reserved or pending reclaim"
    );
    let assets = v["assets"].as_array().expect("assets array");
    assert_eq!(
        num(st, "assets"),
        assets.len() as u64,
        "{name}: stats.assets vs list"
    );
    let mut listed = Listed::new();
    let mut spans = Vec::new();
    let mut blocks_total = 0;
    for a in assets {
        let id = a["id"].as_str().expect("asset id").to_string();
        let size = num(a, "size");
        let crc = a["checksum"].as_str().expect("checksum").to_string();
        let mut blocks = 0;
        for e in a["extents"].as_array().expect("extents") {
            let (start, len) = (
                e[0].as_u64().expect("extent start"),
                e[1].as_u64().expect("extent length"),
            );
            assert!(
                len > 0 && start + len <= data_blocks,
                "{name}: {id}: extent {start}+{len} outside the {data_blocks}-block data region"
            );
            spans.push((start, len, id.clone()));
            blocks += len;
        }
        assert_eq!(
            blocks,
            size.div_ceil(block),
            "{name}: {id} ({size} B) holds {blocks} blocks, not the {} it needs",
            size.div_ceil(block)
        );
        blocks_total += blocks;
        assert!(
            listed.insert(id.clone(), (size, crc)).is_none(),
            "{name}: {id} listed twice"
        );
    }
    spans.sort();
    for w in spans.windows(2) {
        let ((s0, l0, a0), (s1, _, a1)) = (&w[0], &w[1]);
        assert!(
            s0 + l0 <= *s1,
            "{name}: extents of {a0} ({s0}+{l0}) and {a1} (at {s1}) overlap"
        );
    }
    assert_eq!(
        blocks_total * block,
        used,
        "{name}: used bytes are not the sum of the assets' extents: a leaked or lost extent"
    );
    listed
}

/// Both volumes of a stopped node against the model. `pending`: the request in flight at a kill
/// (either outcome allowed).
pub(crate) fn check_volumes(primary: &Path, secondary: &Path, model: &Model, when: &str) {
    let p = inspect_volume(primary, &format!("{when}, primary"));
    let s = inspect_volume(secondary, &format!("{when}, secondary"));
    let (pend_id, pend_ver) = match &model.pending {
        Some(Op::Put { id, ver }) => (Some(id.as_str()), Some(*ver)),
        Some(Op::Delete { id }) => (Some(id.as_str()), None),
        None => (None, None),
    };
    let is = |v: &Version, got: &(u64, String)| {
        v.size as u64 == got.0 && v.checksum() == Some(got.1.as_str())
    };
    for (tier, listed) in [("primary", &p), ("secondary", &s)] {
        for (id, got) in listed {
            let e = model.entries.get(id).unwrap_or_else(|| {
                panic!("{when}: the {tier} holds {id}, which was never uploaded")
            });
            // Any version acknowledged at some time (a stale secondary copy under a newer dirty
            // primary one), or the one in flight at the kill.
            let known = e.versions.iter().enumerate().any(|(i, v)| {
                (v.state == VState::Acked && is(v, got))
                    || (Some(id.as_str()) == pend_id
                        && Some(i) == pend_ver
                        && v.size as u64 == got.0)
            });
            assert!(
                known,
                "{when}: the {tier} holds {id} ({} B, crc {}) which is no acknowledged version \
                 (versions {:?})",
                got.0, got.1, e.versions
            );
            assert!(
                e.current.is_some() || Some(id.as_str()) == pend_id,
                "{when}: the {tier} still holds {id}, whose DELETE was acknowledged (deleted: \
                 {}), or which was never acknowledged",
                e.deleted
            );
        }
    }
    for id in model.live() {
        let v = model.current(&id).expect("live");
        let uncertain = Some(id.as_str()) == pend_id;
        match (p.get(&id), s.get(&id)) {
            (Some(got), _) => assert!(
                is(v, got) || (uncertain && pend_ver.is_some()),
                "{when}: the primary holds {id} as {got:?}, not its acknowledged version \
                 ({} B, crc {:?})",
                v.size,
                v.checksum()
            ),
            (None, Some(got)) => assert!(
                is(v, got),
                "{when}: {id} is on the secondary only, as {got:?}, not its acknowledged \
                 version ({} B, crc {:?})",
                v.size,
                v.checksum()
            ),
            (None, None) => assert!(
                uncertain && pend_ver.is_none(),
                "{when}: acknowledged asset {id} ({} B) is on neither tier",
                v.size
            ),
        }
    }
}

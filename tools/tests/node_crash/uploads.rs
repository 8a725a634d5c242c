//! Crash safety of upload placement: `kill -9` of a two-tier node during an upload that has to
//! make room on the primary (by dropping clean copies) and during one that moves to the
//! secondary part-way (a chunked upload that outgrows the primary, some of them new versions of
//! assets on the primary).
//!
//! Each test runs a few rounds (`REEL_UPLOAD_CRASH_ROUNDS`, default 3; seed from
//! `REEL_UPLOAD_CRASH_SEED`, else the clock, printed) on a 64 MiB primary and a 256 MiB
//! secondary: fill the primary, delete an asset, start the upload (its body paced, so the kill
//! can land inside it), kill the node at a moment aimed at the drops, the move or the publish,
//! then check both volumes of the stopped node (`reel inspect`: space adds up, no leaked
//! extent, nothing never acknowledged), restart, settle the interrupted upload (absent, or
//! whole; an overwrite shows the old version or the new one, never a mix) and check that every
//! acknowledged asset reads back byte-exact and no deleted one came back. A last upload without
//! a kill shows the rounds set up what they aim at (room made; a move part-way).

use super::*;

use std::sync::atomic::AtomicUsize;

use reel_http::client::{encode_request, Conn};

/// Node flags for the make-room test: a copy read now and then (the checks GET every asset) is
/// still colder than a newcomer (1000 views/h with the default 30 min half-life), and nothing
/// is demoted, so the primary stays full of clean copies for uploads to drop.
const ROOM_FLAGS: &[&str] = &["--promote-per-h", "1000", "--demote-per-h", "0"];

/// Node flags for the spill test: a newcomer is valued at 0 views/h, so no copy is ever colder
/// and none makes way: an upload that outgrows the primary moves to the secondary.
const SPILL_FLAGS: &[&str] = &["--promote-per-h", "0", "--demote-per-h", "0"];

/// The primary's room per `/metrics` (capacity − used; nothing is reserved between uploads).
fn primary_room(node: &NodeProc) -> usize {
    let m = node.metrics();
    let label = "tier=\"primary\"";
    (m.sum_where("reel_device_capacity_bytes", label)
        - m.sum_where("reel_device_used_bytes", label)) as usize
}

/// Sends a PUT of `body` on a fresh connection, chunked or with a Content-Length, in pieces of
/// 256 KiB with `pace` between them, holding for `hold.1` once `hold.0` bytes are sent;
/// `progress` counts the body bytes sent. Returns the answer, or the error once the node is
/// gone.
fn send_paced(
    addr: SocketAddr,
    id: &str,
    body: &[u8],
    chunked: bool,
    pace: Duration,
    hold: Option<(usize, Duration)>,
    progress: &AtomicUsize,
) -> Result<Response, ClientError> {
    let mut c = Conn::connect(addr, http::TIMEOUT)?;
    let len = body.len().to_string();
    let framing = if chunked {
        ("Transfer-Encoding", "chunked")
    } else {
        ("Content-Length", len.as_str())
    };
    let head = encode_request(
        "PUT",
        &addr.to_string(),
        &format!("/assets/{id}"),
        &[framing],
        None,
    );
    c.write_all(&head)?;
    let mut held = false;
    for piece in body.chunks(256 << 10) {
        if chunked {
            c.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
            c.write_all(piece)?;
            c.write_all(b"\r\n")?;
        } else {
            c.write_all(piece)?;
        }
        let sent = progress.fetch_add(piece.len(), SeqCst) + piece.len();
        match hold {
            Some((at, wait)) if sent >= at && !held => {
                held = true;
                std::thread::sleep(wait);
            }
            _ => std::thread::sleep(pace),
        }
    }
    if chunked {
        c.write_all(b"0\r\n\r\n")?;
    }
    let head = c.read_head()?;
    let body = c.read_body(&head, 1 << 30)?;
    Ok(Response { head, body })
}

/// Waits until `progress` reaches `at` (or 10 s pass).
fn wait_sent(progress: &AtomicUsize, at: usize) {
    let t0 = Instant::now();
    while progress.load(SeqCst) < at && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Starts a node on the two volumes with [`NODE_FLAGS`] and `policy` flags.
fn start_with(dir: &Path, primary: &Path, secondary: &Path, policy: &[&str]) -> NodeProc {
    let args = NodeArgs::new(primary)
        .secondary(secondary)
        .flags(NODE_FLAGS)
        .flags(policy);
    NodeProc::spawn(&REEL, dir, args)
}

/// DELETEs a live asset and records it (acknowledged: it must never come back).
fn delete_one(node: &NodeProc, model: &mut Model, rng: &mut Rng) {
    let Some(id) = rng.pick(&model.live()).cloned() else {
        return;
    };
    let r = req(node, "DELETE", &format!("/assets/{id}"));
    assert_eq!(r.status(), 204, "DELETE {id}: {}", r.text());
    let e = model.entries.get_mut(&id).expect("live entry");
    e.delete_issued = true;
    e.deleted = true;
    e.current = None;
    model.deletes_acked += 1;
}

/// Records a PUT about to be sent as the request in flight; its (seed, size).
fn begin_put(model: &mut Model, rng: &mut Rng, id: &str, size: usize) -> (u64, usize) {
    let seed = rng.next();
    let e = model.entries.entry(id.to_string()).or_default();
    e.versions.push(Version {
        seed,
        size,
        etag: None,
        state: VState::Pending,
    });
    model.pending = Some(Op::Put {
        id: id.to_string(),
        ver: e.versions.len() - 1,
    });
    (seed, size)
}

/// The answer to the PUT in flight, if one came before the kill: a 201 is acknowledged; any
/// other answer fails the test (some tier had room for it).
fn settle_answer(model: &mut Model, res: Result<Response, ClientError>, stderr: &str) {
    let Ok(r) = res else { return };
    let Some(Op::Put { id, ver }) = model.pending.take() else {
        panic!("no PUT in flight")
    };
    assert_eq!(
        r.status(),
        201,
        "PUT {id}: {} (a tier had room); node stderr:\n{stderr}",
        r.text()
    );
    let e = model.entries.get_mut(&id).expect("entry of the PUT");
    e.versions[ver].state = VState::Acked;
    e.versions[ver].etag = r.header("etag").map(str::to_string);
    e.current = Some(ver);
    model.puts_acked += 1;
}

/// After the kill: the volumes as the killed node left them, then a new node that must serve
/// exactly the model.
fn check_after_kill(
    node: &mut NodeProc,
    life: &mut usize,
    model: &mut Model,
    volumes: (&Path, &Path),
    when: &str,
) -> String {
    node.assert_no_panic(&format!("{when}, before the kill"));
    check_volumes(
        volumes.0,
        volumes.1,
        model,
        &format!("{when}, after the kill"),
    );
    respawn_counted(node, life);
    let resolved = resolve_pending(node, model);
    verify_node(node, model, &format!("{when}, after the restart"));
    resolved
}

fn seed_and_rounds(test: &str) -> (u64, usize) {
    let rounds = env_u64("REEL_UPLOAD_CRASH_ROUNDS").unwrap_or(3) as usize;
    let seed = env_u64("REEL_UPLOAD_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!("{test}: {rounds} rounds, REEL_UPLOAD_CRASH_SEED={seed}");
    (seed, rounds)
}

/// Waits until no live asset is on the primary alone (every one written back: clean).
fn wait_all_clean(node: &NodeProc, model: &Model) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut waiting = model.live();
    while !waiting.is_empty() {
        waiting.retain(|id| info(node, id).is_some_and(|(tiers, _, _)| tiers == ["primary"]));
        assert!(
            Instant::now() < deadline,
            "{waiting:?} never written back; node stderr:\n{}",
            node.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn uploads_that_make_room_survive_kill_9() {
    let test = "uploads_that_make_room_survive_kill_9";
    if !probe::runnable(test, &[&probe::kill, &|| REEL.io_uring()]) {
        return;
    }
    let (seed, rounds) = seed_and_rounds(test);
    let mut rng = Rng::new(seed);
    let dir = REEL.tempdir("reel-upload-room-crash-");
    let (primary, secondary) = (dir.path().join("primary"), dir.path().join("secondary"));
    REEL.format(&primary, "64M");
    REEL.format(&secondary, "256M");
    let mut node = start_with(dir.path(), &primary, &secondary, ROOM_FLAGS);
    let mut model = Model::default();
    let mut life = 0;
    let mut after_drops = 0;
    for round in 0..=rounds {
        // An acknowledged delete first (it must never come back), then the primary nearly full
        // of clean copies: a 16 MiB upload must make room. In this order, since the deleted
        // asset may be one of the 16 MiB uploads, whose blocks alone would hold the next one.
        delete_one(&node, &mut model, &mut rng);
        while primary_room(&node) >= 12 * MIB {
            let id = format!("f/{:04}", model.next_id);
            model.next_id += 1;
            put_retrying(&node, &mut model, &id, rng.next(), 4 * MIB);
        }
        wait_all_clean(&node, &model);
        let id = match rng.pick(&model.live()) {
            Some(live) if round % 2 == 1 => live.clone(),
            _ => {
                model.next_id += 1;
                format!("u/{:04}", model.next_id)
            }
        };
        let (vseed, size) = begin_put(&mut model, &mut rng, &id, 16 * MIB);
        let drops_before = node.metrics().sum("reel_upload_room_drops_total");
        if round == rounds {
            // The last upload is not killed: it shows the rounds' setup makes room.
            let body = content(vseed, size);
            let r = request(node.addr(), "PUT", &format!("/assets/{id}"), Some(&body));
            settle_answer(&mut model, r, &node.stderr());
            let m = node.metrics();
            assert!(
                m.sum("reel_upload_room_drops_total") > drops_before,
                "the last upload made no room: {}",
                m.lines_of(&["reel_upload"])
            );
            break;
        }
        let body = content(vseed, size);
        let addr = node.addr();
        let progress = AtomicUsize::new(0);
        let (res, aim) = std::thread::scope(|s| {
            let sender = s.spawn(|| {
                send_paced(
                    addr,
                    &id,
                    &body,
                    false,
                    Duration::from_millis(2),
                    None,
                    &progress,
                )
            });
            // Half of the rounds wait until the upload has dropped a copy, then kill within
            // 100 ms (its body arriving, its reservation, its publish); the others at random.
            let aim = if round % 2 == 0 {
                let t0 = Instant::now();
                while node.metrics().sum("reel_upload_room_drops_total") == drops_before
                    && t0.elapsed() < Duration::from_secs(5)
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let seen = node.metrics().sum("reel_upload_room_drops_total") > drops_before;
                std::thread::sleep(rng.ms(0, 100));
                if seen {
                    "after its drops"
                } else {
                    "(no drop seen)"
                }
            } else {
                std::thread::sleep(rng.ms(0, 300));
                "at random"
            };
            node.kill9();
            (sender.join().expect("sender thread"), aim)
        });
        after_drops += usize::from(aim == "after its drops");
        let stderr = node.stderr();
        settle_answer(&mut model, res, &stderr);
        let when = format!("round {round} (PUT {id}, killed {aim})");
        let resolved = check_after_kill(
            &mut node,
            &mut life,
            &mut model,
            (&primary, &secondary),
            &when,
        );
        eprintln!("{when}: {resolved}; {} live assets", model.live().len());
    }
    assert!(
        rounds == 0 || after_drops > 0,
        "no round killed the node after an upload's drops"
    );
    node.stop();
    node.assert_no_panic("clean stop");
    check_volumes(&primary, &secondary, &model, "after a clean stop");
}

#[test]
fn uploads_that_spill_to_the_secondary_survive_kill_9() {
    let test = "uploads_that_spill_to_the_secondary_survive_kill_9";
    if !probe::runnable(test, &[&probe::kill, &|| REEL.io_uring()]) {
        return;
    }
    let (seed, rounds) = seed_and_rounds(test);
    let mut rng = Rng::new(seed);
    let dir = REEL.tempdir("reel-upload-spill-crash-");
    let (primary, secondary) = (dir.path().join("primary"), dir.path().join("secondary"));
    REEL.format(&primary, "64M");
    REEL.format(&secondary, "256M");
    let mut node = start_with(dir.path(), &primary, &secondary, SPILL_FLAGS);
    let mut model = Model::default();
    let mut life = 0;
    for round in 0..=rounds {
        while primary_room(&node) >= 8 * MIB {
            let id = format!("f/{:04}", model.next_id);
            model.next_id += 1;
            put_retrying(&node, &mut model, &id, rng.next(), 4 * MIB);
        }
        delete_one(&node, &mut model, &mut rng);
        let room = primary_room(&node);
        // Odd rounds: a new version of an asset on the primary (published on the secondary,
        // then the old copy deleted, before the 201).
        let on_primary: Vec<String> = model
            .live()
            .into_iter()
            .filter(|id| info(&node, id).is_some_and(|(t, _, _)| t.iter().any(|t| t == "primary")))
            .collect();
        let id = match rng.pick(&on_primary) {
            Some(p) if round % 2 == 1 => p.clone(),
            _ => {
                model.next_id += 1;
                format!("s/{:04}", model.next_id)
            }
        };
        let (vseed, size) = begin_put(&mut model, &mut rng, &id, room + 12 * MIB);
        let body = content(vseed, size);
        if round == rounds {
            let r = http::put_chunked(node.addr(), &format!("/assets/{id}"), &body, 64 << 10);
            settle_answer(&mut model, r, &node.stderr());
            let (_, _, v) = info(&node, &id).expect("info of the last upload");
            let reason = v["upload"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                reason.starts_with("spilled to the secondary at"),
                "the last upload did not move part-way: {v}"
            );
            break;
        }
        let addr = node.addr();
        let progress = AtomicUsize::new(0);
        // Aims: after the body passed the primary's room by 6 MiB, in a pause of the sender (the
        // move is done, the rest goes to the secondary); after the whole body (the publish on
        // the secondary and the old copy's delete); at random.
        let kind = round % 3;
        let moved_at = room + 6 * MIB;
        let hold = (kind == 0).then_some((moved_at, Duration::from_millis(400)));
        let (res, aim) = std::thread::scope(|s| {
            let sender = s.spawn(|| {
                send_paced(
                    addr,
                    &id,
                    &body,
                    true,
                    Duration::from_millis(3),
                    hold,
                    &progress,
                )
            });
            let aim = match kind {
                0 => {
                    wait_sent(&progress, moved_at);
                    std::thread::sleep(Duration::from_millis(250) + rng.ms(0, 100));
                    "after the move"
                }
                1 => {
                    wait_sent(&progress, size);
                    std::thread::sleep(rng.ms(0, 60));
                    "around the publish"
                }
                _ => {
                    std::thread::sleep(rng.ms(0, 500));
                    "at random"
                }
            };
            node.kill9();
            (sender.join().expect("sender thread"), aim)
        });
        let stderr = node.stderr();
        settle_answer(&mut model, res, &stderr);
        let when = format!("round {round} (chunked PUT {id} of {size} B, killed {aim})");
        let resolved = check_after_kill(
            &mut node,
            &mut life,
            &mut model,
            (&primary, &secondary),
            &when,
        );
        eprintln!("{when}: {resolved}; {} live assets", model.live().len());
    }
    node.stop();
    node.assert_no_panic("clean stop");
    check_volumes(&primary, &secondary, &model, "after a clean stop");
}

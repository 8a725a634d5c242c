//! The load of a round: a writer thread (PUTs and DELETEs, recorded in the model) and a
//! loader thread (GETs of a rotating hot set, each checked against the model).

use super::*;

/// How the writer ends on an answer to `method id` it does not expect: `Ok` when there was no
/// answer because the node was killed, else `Err` naming the request (`what` for an answer).
fn unexpected(
    res: Result<Response, ClientError>,
    killed: &AtomicBool,
    what: &str,
    method: &str,
    id: &str,
) -> Result<(), String> {
    match res {
        Ok(r) => Err(format!("{what}: {} {}", r.status(), text(&r.body))),
        Err(_) if killed.load(SeqCst) => Ok(()),
        Err(e) => Err(format!("{method} {id} failed while the node was up: {e}")),
    }
}

/// PUTs and DELETEs, one at a time, until `stop` or the kill. `Err` on anything a live node must
/// not do.
pub(crate) fn writer(
    addr: SocketAddr,
    model: &Mutex<Model>,
    hot: &Mutex<Vec<String>>,
    seed: u64,
    killed: &AtomicBool,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    while !stop.load(SeqCst) && !killed.load(SeqCst) {
        let op = {
            let mut m = lock(model);
            let live = m.live();
            let roll = rng.below(100);
            let op = if live.len() < 20 || (live.len() <= 32 && roll < 45) {
                let id = format!("m/{:05}", m.next_id);
                m.next_id += 1;
                Op::Put { id, ver: 0 }
            } else if live.len() <= 32 && roll < 65 {
                // An overwrite, half of the time of a hot asset (racing its promotion).
                let hot_now = lock(hot).clone();
                let id = if rng.below(2) == 0 && !hot_now.is_empty() {
                    rng.pick(&hot_now).cloned()
                } else {
                    None
                }
                .filter(|id| m.current(id).is_some())
                .or_else(|| rng.pick(&live).cloned())
                .expect("a live id");
                Op::Put { id, ver: 0 }
            } else {
                Op::Delete {
                    id: rng.pick(&live).cloned().expect("a live id"),
                }
            };
            let op = match op {
                Op::Put { id, .. } => {
                    let size = MIB + rng.below(5 * MIB as u64 + 1) as usize;
                    let e = m.entries.entry(id.clone()).or_default();
                    e.versions.push(Version {
                        seed: rng.next(),
                        size,
                        etag: None,
                        state: VState::Pending,
                    });
                    Op::Put {
                        id,
                        ver: e.versions.len() - 1,
                    }
                }
                Op::Delete { id } => {
                    if let Some(e) = m.entries.get_mut(&id) {
                        e.delete_issued = true;
                    }
                    Op::Delete { id }
                }
            };
            m.pending = Some(op.clone());
            op
        };
        match &op {
            Op::Put { id, ver } => {
                let (seed, size) = {
                    let m = lock(model);
                    let v = &m.entries[id].versions[*ver];
                    (v.seed, v.size)
                };
                let body = content(seed, size);
                let res = request(addr, "PUT", &format!("/assets/{id}"), Some(&body));
                let mut m = lock(model);
                match res {
                    Ok(r) if r.status() == 201 => {
                        let etag = r
                            .header("etag")
                            .ok_or_else(|| format!("PUT {id}: 201 without an ETag"))?
                            .to_string();
                        let e = m.entries.get_mut(id).expect("entry of a sent PUT");
                        e.versions[*ver].state = VState::Acked;
                        e.versions[*ver].etag = Some(etag);
                        e.current = Some(*ver);
                        m.puts_acked += 1;
                        m.pending = None;
                    }
                    Ok(r) if r.status() == 507 || r.status() == 503 => {
                        let e = m.entries.get_mut(id).expect("entry of a sent PUT");
                        e.versions[*ver].state = VState::Failed;
                        m.puts_refused += 1;
                        m.pending = None;
                    }
                    other => {
                        let what = format!("PUT {id} ({size} B)");
                        return unexpected(other, killed, &what, "PUT", id);
                    }
                }
            }
            Op::Delete { id } => {
                let res = request(addr, "DELETE", &format!("/assets/{id}"), None);
                let mut m = lock(model);
                match res {
                    Ok(r) if r.status() == 204 => {
                        let e = m.entries.get_mut(id).expect("entry of a sent DELETE");
                        e.current = None;
                        e.deleted = true;
                        m.deletes_acked += 1;
                        m.pending = None;
                    }
                    other => {
                        let what = format!("DELETE {id} of an acknowledged asset");
                        return unexpected(other, killed, &what, "DELETE", id);
                    }
                }
            }
        }
        // Paced below the copy budget, so write-backs keep up and the primary rarely fills
        // with dirty copies only.
        let pause = Instant::now() + rng.ms(150, 400);
        while Instant::now() < pause && !stop.load(SeqCst) && !killed.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// GETs the hot set round-robin until `stop` or the kill; each 200 must be a version that was
/// current (or newer) when the GET started, each 404 an id a DELETE was sent for. Returns the
/// number of GETs.
pub(crate) fn loader(
    addr: SocketAddr,
    model: &Mutex<Model>,
    hot: &Mutex<Vec<String>>,
    killed: &AtomicBool,
    stop: &AtomicBool,
) -> Result<u64, String> {
    let mut n = 0u64;
    while !stop.load(SeqCst) && !killed.load(SeqCst) {
        let id = {
            let h = lock(hot);
            h.get(n as usize % h.len().max(1)).cloned()
        };
        let Some(id) = id else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        n += 1;
        let (floor, gone_at_start) = {
            let m = lock(model);
            let e = m.entries.get(&id);
            (
                e.and_then(|e| e.current).unwrap_or(0),
                e.is_some_and(|e| e.deleted),
            )
        };
        let r = match request(addr, "GET", &format!("/assets/{id}"), None) {
            Ok(r) => r,
            Err(_) if killed.load(SeqCst) => break,
            Err(e) => return Err(format!("GET {id} failed while the node was up: {e}")),
        };
        let m = lock(model);
        let Some(e) = m.entries.get(&id) else {
            return Err(format!("GET {id}: not in the model"));
        };
        match r.status() {
            200 => {
                if gone_at_start {
                    return Err(format!(
                        "GET {id}: 200 after its DELETE was acknowledged (resurrected)"
                    ));
                }
                let ok = e.versions.iter().enumerate().any(|(i, v)| {
                    i >= floor && v.state != VState::Failed && matches(v.seed, v.size, &r.body)
                });
                if !ok {
                    let old = e
                        .versions
                        .iter()
                        .position(|v| matches(v.seed, v.size, &r.body));
                    let etags: Vec<_> = e.versions.iter().map(|v| v.etag.clone()).collect();
                    let states: Vec<_> = e.versions.iter().map(|v| v.state).collect();
                    drop(m);
                    // Where the node has it now, and what it has been doing.
                    let info = request(addr, "GET", &format!("/assets/{id}/info"), None)
                        .map(|r| text(&r.body))
                        .unwrap_or_else(|e| e.to_string());
                    let metrics = request(addr, "GET", "/metrics", None)
                        .map(|r| Counters::of(&text(&r.body)))
                        .unwrap_or_default();
                    return Err(format!(
                        "GET {id} under load: {} bytes that are no version current or newer \
                         when the GET started: an acknowledged overwrite was lost or is not \
                         served (current was version {floor} of {}; the body is version \
                         {old:?}; states {states:?}; ETags {etags:?}); now /info: {info}; \
                         counters {metrics:?}",
                        r.body.len(),
                        etags.len(),
                    ));
                }
            }
            404 if e.delete_issued => {}
            s => return Err(format!("GET {id} under load: {s} {}", text(&r.body))),
        }
    }
    Ok(n)
}

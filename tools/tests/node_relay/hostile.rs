//! A hostile holder: a stub that answers the relay's requests wrongly in one way per case.
//! The relaying node must answer 502 with a reason (a failure before the response head) or cut
//! the stream (after it), count the failure, never send a byte of a chunk it has not verified,
//! never hang past its send timeout, never panic, and keep serving.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;

/// A client read that waits this long for the relay is a hang (its send timeout is 1 s).
const HANG: Duration = Duration::from_secs(10);
const SIZE: usize = 3 * MIB + 500;

/// How the stub holder misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bad {
    /// Answers well (the control case).
    None,
    // To the metadata request (`/chunks/{id}?count=0`), before the client's head:
    MetaGarbageStatus,
    MetaHugeHead,
    MetaClosedMidHead,
    MetaMalformedJson,
    MetaShortLength,
    MetaOtherEtag,
    MetaChunkBytesZero,
    MetaChunkBytesHuge,
    Meta404,
    // To a cover's requests, after the client's head:
    CoverFewerCrcs,
    CoverMoreCrcs,
    CoverOtherEtag,
    CoverMalformedJson,
    CoverGarbageStatus,
    CoverHugeHead,
    CoverClosedMidHead,
    Cover200ForRange,
    CoverLengthDisagrees,
    CoverWrongContentRange,
    CoverEndsEarly,
    CoverCorruptChunk,
    CoverStalls,
}

/// What the client must see.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// The whole asset (or range), byte-exact.
    Served,
    /// A 502 whose one-line reason contains this.
    BadGateway(&'static str),
    /// The promised head, then at most this many bytes (a true prefix), then the close.
    Cut(usize),
}

/// Which relay counter must move by one (the client send timeout never does: a stalled
/// holder is the holder's failure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Counter {
    None,
    Fetch,
    Crc,
}

fn etag_of(len: usize) -> String {
    format!("\"stub-{len}\"")
}

/// A stub holder misbehaving as `bad` for `data`; its threads end once `stop` is set.
fn hostile_holder(bad: Bad, data: Arc<Vec<u8>>, stop: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    l.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, _)) => {
                    let (data, stop) = (data.clone(), stop.clone());
                    std::thread::spawn(move || serve_hostile(s, bad, &data, &stop));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    addr
}

fn list_json(etag: &str, size: usize, chunk_bytes: u32, crcs: Vec<u32>) -> Vec<u8> {
    serde_json::to_vec(&ChunkList {
        etag: etag.into(),
        size: size as u64,
        content_type: "video/mp4".into(),
        chunk_bytes,
        crcs,
        last_modified_unix_s: Some(1_700_000_000),
    })
    .expect("json")
}

fn ok_json(body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn huge_head() -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nX-Pad: {}\r\nContent-Length: 0\r\n\r\n",
        "a".repeat(40 << 10)
    )
    .into_bytes()
}

/// What the stub does after writing an answer.
enum Then {
    Go,
    Close,
    /// Holds the connection without a byte more (until the node cuts it, or 8 s).
    Stall,
}

fn serve_hostile(s: TcpStream, bad: Bad, data: &[u8], stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(8)));
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let crcs: Vec<u32> = data.chunks(MIB).map(crc32c::crc32c).collect();
    let etag = etag_of(data.len());
    while !stop.load(Ordering::Relaxed) {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split(' ').nth(1).unwrap_or("").to_string();
        let mut range = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.strip_prefix("Range: bytes=") {
                let (a, b) = v.trim().split_once('-').expect("a-b");
                range = Some((
                    a.parse::<usize>().expect("a"),
                    b.parse::<usize>().expect("b"),
                ));
            }
        }
        let (out, then) = if target.starts_with("/chunks/") {
            let q = target.split_once('?').map_or("", |(_, q)| q);
            let arg = |k: &str| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix(k))
                    .and_then(|v| v.parse::<usize>().ok())
            };
            let from = arg("from=").unwrap_or(0).min(crcs.len());
            let count = arg("count=").unwrap_or(crcs.len()).min(crcs.len() - from);
            let window = crcs[from..from + count].to_vec();
            let good = list_json(&etag, data.len(), MIB as u32, window.clone());
            if count == 0 {
                match bad {
                    Bad::MetaGarbageStatus => (
                        b"HTTP/1.1 2OO banana\r\nContent-Length: 0\r\n\r\n".to_vec(),
                        Then::Close,
                    ),
                    Bad::MetaHugeHead => (huge_head(), Then::Close),
                    Bad::MetaClosedMidHead => {
                        (b"HTTP/1.1 200 OK\r\nContent-Le".to_vec(), Then::Close)
                    }
                    Bad::MetaMalformedJson => (ok_json(b"{\"etag\": not json}"), Then::Go),
                    Bad::MetaShortLength => {
                        let mut out = ok_json(&good);
                        let cl = format!("Content-Length: {}", good.len());
                        let short = format!("Content-Length: {}", good.len() - 10);
                        let s = String::from_utf8(out.clone()).expect("utf-8");
                        out = s.replacen(&cl, &short, 1).into_bytes();
                        (out, Then::Go)
                    }
                    Bad::MetaOtherEtag => (
                        ok_json(&list_json("\"other-1\"", data.len(), MIB as u32, window)),
                        Then::Go,
                    ),
                    Bad::MetaChunkBytesZero => {
                        (ok_json(&list_json(&etag, data.len(), 0, window)), Then::Go)
                    }
                    Bad::MetaChunkBytesHuge => (
                        ok_json(&list_json(&etag, data.len(), 64 << 20, window)),
                        Then::Go,
                    ),
                    Bad::Meta404 => (
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno\n".to_vec(),
                        Then::Go,
                    ),
                    _ => (ok_json(&good), Then::Go),
                }
            } else {
                match bad {
                    Bad::CoverFewerCrcs => (
                        ok_json(&list_json(
                            &etag,
                            data.len(),
                            MIB as u32,
                            window[..count - 1].to_vec(),
                        )),
                        Then::Go,
                    ),
                    Bad::CoverMoreCrcs => {
                        let mut more = window.clone();
                        more.push(0xdead_beef);
                        (
                            ok_json(&list_json(&etag, data.len(), MIB as u32, more)),
                            Then::Go,
                        )
                    }
                    Bad::CoverOtherEtag => (
                        ok_json(&list_json("\"other-1\"", data.len(), MIB as u32, window)),
                        Then::Go,
                    ),
                    Bad::CoverMalformedJson => (ok_json(b"[1, 2"), Then::Go),
                    _ => (ok_json(&good), Then::Go),
                }
            }
        } else {
            let (a, b) = range.expect("a range request");
            let body = &data[a..=b];
            let head = |status: &str, cl: usize, cr: (usize, usize)| {
                format!(
                    "HTTP/1.1 {status}\r\nContent-Range: bytes {}-{}/{}\r\nContent-Length: {cl}\r\n\r\n",
                    cr.0,
                    cr.1,
                    data.len()
                )
                .into_bytes()
            };
            let with = |mut h: Vec<u8>, body: &[u8]| {
                h.extend_from_slice(body);
                h
            };
            match bad {
                Bad::CoverGarbageStatus => (b"HTTP/9.9 206\r\n\r\n".to_vec(), Then::Close),
                Bad::CoverHugeHead => (huge_head(), Then::Close),
                Bad::CoverClosedMidHead => (b"HTTP/1.1 206 Partial Con".to_vec(), Then::Close),
                Bad::Cover200ForRange => (
                    with(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                            .into_bytes(),
                        body,
                    ),
                    Then::Go,
                ),
                Bad::CoverLengthDisagrees => (
                    with(
                        head("206 Partial Content", body.len() - 1, (a, b)),
                        &body[1..],
                    ),
                    Then::Go,
                ),
                Bad::CoverWrongContentRange => (
                    with(
                        head("206 Partial Content", body.len(), (a + 1, b + 1)),
                        body,
                    ),
                    Then::Go,
                ),
                Bad::CoverEndsEarly => (
                    with(
                        head("206 Partial Content", body.len(), (a, b)),
                        &body[..MIB + MIB / 2],
                    ),
                    Then::Close,
                ),
                Bad::CoverCorruptChunk => {
                    let mut bent = body.to_vec();
                    bent[MIB + 77] ^= 0x08;
                    (
                        with(head("206 Partial Content", body.len(), (a, b)), &bent),
                        Then::Go,
                    )
                }
                Bad::CoverStalls => (
                    with(
                        head("206 Partial Content", body.len(), (a, b)),
                        &body[..MIB + 10],
                    ),
                    Then::Stall,
                ),
                _ => (
                    with(head("206 Partial Content", body.len(), (a, b)), body),
                    Then::Go,
                ),
            }
        };
        if w.write_all(&out).is_err() {
            return;
        }
        match then {
            Then::Go => {}
            Then::Close => return,
            Then::Stall => {
                // Until the node cuts the connection (a read of 0 or an error), at most 8 s.
                let mut sink = [0u8; 4096];
                let _ = r.get_mut().read(&mut sink);
                return;
            }
        }
    }
}

/// GETs `target` from `addr` with `range`: the status, the Content-Length, and the body bytes
/// that came before the node closed the connection; a read that waits [`HANG`] fails.
fn fetch(addr: SocketAddr, target: &str, range: Option<&str>) -> (u16, Option<u64>, Vec<u8>) {
    let mut c = Conn::connect(addr, HANG).expect("connect to the relay");
    let mut headers = vec![("Connection", "close")];
    if let Some(r) = range {
        headers.push(("Range", r));
    }
    let req = encode_request("GET", &addr.to_string(), target, &headers, None);
    c.write_all(&req).expect("send");
    let head = c.read_head().expect("a head");
    let body = c
        .read_to_close(64 * MIB)
        .unwrap_or_else(|e| panic!("the body until the close: {e}"));
    (head.status, head.content_length(), body)
}

#[test]
fn a_hostile_holder_is_a_502_or_a_cut_stream_never_an_unverified_byte() {
    let test = "a_hostile_holder_is_a_502_or_a_cut_stream_never_an_unverified_byte";
    if !REEL.io_uring_or_skip(test) {
        return;
    }
    let dir = REEL.tempdir("reel-relay-hostile-");
    std::fs::write(dir.path().join("token"), TOKEN).expect("token file");
    let b = node(dir.path(), "nb", &["--send-timeout", "1s"]);
    let token = ClusterToken::from_bytes(TOKEN.as_bytes(), "test").expect("token");
    let data = Arc::new(content(12, SIZE));
    let etag = etag_of(SIZE);
    let stop = Arc::new(AtomicBool::new(false));
    let second = Some("bytes=1048576-2097151");
    use {Bad::*, Counter as C, Expect as E};
    #[rustfmt::skip]
    let cases: [(Bad, Option<&str>, Expect, Counter); 23] = [
        (None, Option::None, E::Served, C::None),
        (MetaGarbageStatus, Option::None, E::BadGateway("a bad answer to the chunk list"), C::Fetch),
        (MetaHugeHead, Option::None, E::BadGateway("exceed"), C::Fetch),
        (MetaClosedMidHead, Option::None, E::BadGateway("closed the connection"), C::Fetch),
        (MetaMalformedJson, Option::None, E::BadGateway("chunk list is not valid"), C::Fetch),
        (MetaShortLength, Option::None, E::BadGateway("failed"), C::Fetch),
        (MetaOtherEtag, Option::None, E::BadGateway("not the ticket's"), C::Fetch),
        (MetaChunkBytesZero, Option::None, E::BadGateway("chunk size 0"), C::Fetch),
        (MetaChunkBytesHuge, Option::None, E::BadGateway("chunk size 67108864"), C::Fetch),
        (Meta404, Option::None, E::BadGateway("no such asset"), C::Fetch),
        (CoverFewerCrcs, Option::None, E::Cut(0), C::Fetch),
        (CoverMoreCrcs, Option::None, E::Cut(0), C::Fetch),
        (CoverOtherEtag, Option::None, E::Cut(0), C::Fetch),
        (CoverMalformedJson, Option::None, E::Cut(0), C::Fetch),
        (CoverGarbageStatus, Option::None, E::Cut(0), C::Fetch),
        (CoverHugeHead, Option::None, E::Cut(0), C::Fetch),
        (CoverClosedMidHead, Option::None, E::Cut(0), C::Fetch),
        (Cover200ForRange, second, E::Cut(0), C::Fetch),
        (CoverLengthDisagrees, Option::None, E::Cut(0), C::Fetch),
        (CoverWrongContentRange, second, E::Cut(0), C::Fetch),
        (CoverEndsEarly, Option::None, E::Cut(MIB), C::Fetch),
        (CoverCorruptChunk, Option::None, E::Cut(MIB), C::Crc),
        (CoverStalls, Option::None, E::Cut(MIB), C::Fetch),
    ];
    let mut failures = Vec::new();
    for (bad, range, expect, counter) in cases {
        let holder = hostile_holder(bad, data.clone(), stop.clone());
        let t = ticket(&token, "h.bin", "nb", holder, &etag);
        let target = format!("/assets/h.bin?ticket={t}");
        let m0 = b.metrics();
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let (status, len, got) = fetch(b.addr(), &target, range);
            let (want_status, offset, whole) = match range {
                Some(_) => (206, MIB, MIB),
                Option::None => (200, 0, SIZE),
            };
            let truth = &data[offset..offset + whole];
            match expect {
                E::Served => {
                    assert_eq!(status, want_status);
                    assert!(got == truth, "not byte-exact ({} bytes)", got.len());
                }
                E::BadGateway(why) => {
                    let body = String::from_utf8_lossy(&got);
                    assert_eq!(status, 502, "{body}");
                    assert!(body.contains(why), "the reason lacks {why:?}: {body}");
                    assert!(
                        body.ends_with('\n') && body.lines().count() == 1,
                        "{body:?}"
                    );
                }
                E::Cut(most) => {
                    assert_eq!((status, len), (want_status, Some(whole as u64)));
                    assert!(
                        got.len() <= most,
                        "{} bytes arrived, at most {most} were verified",
                        got.len()
                    );
                    assert!(
                        got == truth[..got.len()],
                        "what went out is not a true prefix"
                    );
                }
            }
        }));
        let took = started.elapsed();
        let m1 = b.metrics();
        let moved = |name: &str| m1.sum(name) - m0.sum(name);
        let timeouts = |m: &reel_testkit::metrics::Metrics| {
            m.sum_where("reel_errors_total", "kind=\"timeout_send\"")
        };
        let (fetch_n, crc_n, send_n) = (
            moved("reel_relay_fetch_failures_total"),
            moved("reel_relay_crc_failures_total"),
            timeouts(&m1) - timeouts(&m0),
        );
        let want = match counter {
            C::None => (0, 0, 0),
            C::Fetch => (1, 0, 0),
            C::Crc => (0, 1, 0),
        };
        let mut problems = Vec::new();
        if let Err(p) = outcome {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "panic".into());
            problems.push(msg);
        }
        if (fetch_n, crc_n, send_n) != want {
            problems.push(format!(
                "fetch/crc/send-timeout counters moved by {:?}, want {want:?}",
                (fetch_n, crc_n, send_n)
            ));
        }
        if took > Duration::from_secs(5) {
            problems.push(format!("took {took:?}"));
        }
        if b.get("/healthz").status() != 200 {
            problems.push("the node stopped answering".into());
        }
        if problems.is_empty() {
            eprintln!("case {bad:?}: ok ({took:.2?})");
        } else {
            eprintln!("case {bad:?}: FAILED ({took:.2?}): {}", problems.join("; "));
            failures.push(format!("{bad:?}: {}", problems.join("; ")));
        }
    }
    stop.store(true, Ordering::Relaxed);
    // After all of it: a good holder relays byte-exact; no connection is left open but the
    // scrape's own.
    let holder = hostile_holder(Bad::None, data.clone(), Arc::new(AtomicBool::new(false)));
    let t = ticket(&token, "h.bin", "nb", holder, &etag);
    let r = b.get(&format!("/assets/h.bin?ticket={t}"));
    assert!(
        r.status() == 200 && r.body == *data,
        "a good relay after the battery"
    );
    poll(Duration::from_secs(5), Duration::from_millis(50), || {
        let open = b.metrics().sum_where("reel_connections_open", "thread=");
        if open <= 1 {
            Ok(())
        } else {
            Err(format!("{open} connections stay open after the battery"))
        }
    });
    b.assert_no_panic("hostile holders");
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n  {}\nnode stderr:\n{}",
        failures.len(),
        failures.join("\n  "),
        b.stderr()
    );
}

/// Relay tickets a confused manager could mint: the relaying node itself as the holder (on
/// either listener; its requests carry no ticket, so this was never a loop, but one fetch from
/// itself bound to fail), a holder at the unspecified address (which connects to this host) or
/// at port 0, each for a GET and a HEAD: refused before any connection, a 502 naming why, and
/// the node keeps serving.
#[test]
fn relay_tickets_naming_the_node_itself_or_no_holder_are_502s_without_a_hang() {
    let Some((p, _dir)) =
        pair("relay_tickets_naming_the_node_itself_or_no_holder_are_502s_without_a_hang")
    else {
        return;
    };
    let auth = bearer();
    let own = content(13, 2 * MIB + 3);
    let r = p.b.request(
        "PUT",
        "/assets/own.bin",
        &[("Authorization", &auth)],
        Some(&own),
    );
    assert_eq!(r.status(), 201, "PUT own.bin on B: {}", r.text());
    let (b_access, b_peer) = (p.b.addr(), p.b.peer_addr());
    let unspecified = |port: u16| SocketAddr::from(([0, 0, 0, 0], port));
    let (me, none) = ("is this node", "names no holder");
    #[rustfmt::skip]
    let cases: [(&str, &str, SocketAddr, &str, &str); 8] = [
        ("own.bin", "\"0ther-1\"", b_access, "itself, another version", me),
        ("own.bin", "\"0ther-1\"", b_peer, "its peer listener, another version", me),
        ("missing.bin", "\"x-1\"", b_access, "itself, an asset it lacks", me),
        ("missing.bin", "\"x-1\"", b_peer, "its peer listener, an asset it lacks", me),
        ("missing.bin", "\"x-1\"", unspecified(b_access.port()), "0.0.0.0 and its port", none),
        ("missing.bin", "\"x-1\"", unspecified(0), "0.0.0.0:0", none),
        ("missing.bin", "\"x-1\"", SocketAddr::from(([127, 0, 0, 1], 0)), "port 0", none),
        ("missing.bin", "\"x-1\"", SocketAddr::from(([0u16; 8], 7000)), "[::]:7000", none),
    ];
    let before = p.b.metrics().sum("reel_relay_fetch_failures_total");
    for (id, etag, source, what, why) in cases {
        let t = ticket(&p.token, id, "nb", source, etag);
        let target = format!("/assets/{id}?ticket={t}");
        for method in ["GET", "HEAD"] {
            let started = Instant::now();
            let r = p.b.request(method, &target, &[], None);
            let took = started.elapsed();
            eprintln!(
                "{what} ({source}), {method}: {} {:?}",
                r.status(),
                r.text().trim_end()
            );
            assert_eq!(r.status(), 502, "{what}, {method}: {}", r.text());
            if method == "HEAD" {
                assert!(r.body.is_empty(), "{what}: a HEAD's 502 has no body");
            } else {
                assert_eq!(r.text().lines().count(), 1, "{what}: {:?}", r.text());
                assert!(r.text().contains(why), "{what}: the reason lacks {why:?}");
            }
            assert!(
                took < Duration::from_secs(5),
                "{what}, {method}: took {took:?}"
            );
        }
    }
    let after = p.b.metrics().sum("reel_relay_fetch_failures_total");
    assert_eq!(
        after - before,
        2 * cases.len() as u64,
        "every refusal counted"
    );
    // B still serves its own asset (and through a ticket for its own version, from itself).
    assert!(p.b.get("/assets/own.bin").body == own);
    let etag = p.b.request("HEAD", "/assets/own.bin", &[], None);
    let etag = etag.header("etag").expect("etag").to_string();
    let t = ticket(&p.token, "own.bin", "nb", b_access, &etag);
    let r = p.b.get(&format!("/assets/own.bin?ticket={t}"));
    assert!(r.status() == 200 && r.body == own, "served from B itself");
    p.b.assert_no_panic("self and unspecified holders");
}

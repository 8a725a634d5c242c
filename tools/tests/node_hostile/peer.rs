//! The inter-server listener's battery: the node battery's malformed and protocol cases sent to
//! `--peer-listen`, each without the cluster token (refused: 4xx for a head that does not parse,
//! else 401; never served) and with it where the request is otherwise bad (the access
//! listener's 4xx with a one-line reason); chunk-list windows and ids a careless peer could
//! send; writes with the token as on the access listener. Afterwards the node serves byte-exact
//! on both listeners, has leaked no descriptor, and its log holds no token.

use super::*;

const TOKEN: &str = "peer-T0ken-for-the-hostile-battery-0123";

/// `raw` with `Authorization: Bearer <token>` after its first line (as is, if it has none).
fn authed(raw: &[u8]) -> Vec<u8> {
    let Some(at) = find(raw, b"\r\n") else {
        return raw.to_vec();
    };
    let mut out = raw[..at + 2].to_vec();
    out.extend_from_slice(format!("Authorization: Bearer {TOKEN}\r\n").as_bytes());
    out.extend_from_slice(&raw[at + 2..]);
    out
}

/// The two ways every case is sent: without the token, and with it.
const WAYS: [(bool, &str); 2] = [(false, "without the token"), (true, "with the token")];

fn way(with: bool, raw: &[u8]) -> Vec<u8> {
    if with {
        authed(raw)
    } else {
        raw.to_vec()
    }
}

/// `GET target` on the inter-server listener with the token.
fn peer_get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Resp {
    let auth = format!("Bearer {TOKEN}");
    let mut all = vec![("Authorization", auth.as_str())];
    all.extend_from_slice(headers);
    get(addr, target, &all)
}

#[test]
fn hostile_requests_on_the_inter_server_listener_are_refused_and_the_node_survives() {
    let test = "hostile_requests_on_the_inter_server_listener_are_refused_and_the_node_survives";
    let started = Instant::now();
    let tokdir = REEL.tempdir("reel-peer-token-");
    let file = tokdir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).expect("write the token file");
    let secs = |d: Duration| format!("{}ms", d.as_millis());
    let Some(mut node) = Node::start(
        test,
        &[
            "--shards",
            "2",
            "--cluster-token-file",
            file.to_str().expect("utf-8 path"),
            "--peer-listen",
            "127.0.0.1:0",
            "--head-timeout",
            &secs(HEAD_TIMEOUT),
            "--idle-timeout",
            &secs(IDLE_TIMEOUT),
            "--send-timeout",
            &secs(SEND_TIMEOUT),
            "--body-timeout",
            &secs(BODY_TIMEOUT),
            "--head-bytes-max",
            "16K",
        ],
    ) else {
        return;
    };
    let (addr, peer) = (node.addr, node.peer());
    let auth = format!("Bearer {TOKEN}");
    let known = content(7, KNOWN_SIZE);
    let req = request(
        "PUT",
        &format!("/assets/{KNOWN_ID}"),
        &[("Authorization", &auth)],
        &known,
    );
    match exchange(addr, &req, "PUT the known asset").1 {
        Answer::Resp(r) => assert_eq!(r.status, 201, "{}", excerpt(&r.body)),
        Answer::Closed(how) => panic!("PUT the known asset: closed ({how})"),
    }
    let base = node.metrics();
    let used_base = base.used_bytes();
    let fds_before = node.quiet_fds();
    let absent = |id: &str, what: &str| {
        let r = peer_get(peer, &format!("/assets/{id}"), &[]);
        assert_eq!(
            r.status, 404,
            "{what}: {id} is visible after a refused request"
        );
    };
    let mut b = Battery::default();

    // --- Heads that do not parse: the same refusal with or without the token -----------------
    b.case(
        "garbage, noise, CRLF flood, no version, HTTP/2 and 3",
        || {
            for (with, how) in WAYS {
                let w = |raw: &[u8]| way(with, raw);
                rejects(
                    peer,
                    &format!("garbage {how}"),
                    &w(b"\x00\x01\x02garbage\xff\xfe\r\n\r\n"),
                    &[400],
                );
                let mut noise = w(b"GET /healthz HTTP/1.1\r\n");
                noise.extend_from_slice(&content(3, 4096));
                rejects_or_closes(peer, &format!("noise {how}"), &noise, &[400, 431]);
                rejects_or_closes(
                    peer,
                    &format!("CRLF flood {how}"),
                    &b"\r\n".repeat(20_000),
                    &[400, 431],
                );
                rejects(
                    peer,
                    &format!("no version {how}"),
                    &w(b"GET /healthz\r\n\r\n"),
                    &[400],
                );
                rejects(
                    peer,
                    &format!("PRI preface {how}"),
                    &w(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00"),
                    &[400, 505],
                );
                rejects(
                    peer,
                    &format!("HTTP/3.0 {how}"),
                    &w(b"GET /healthz HTTP/3.0\r\nHost: node\r\n\r\n"),
                    &[505],
                );
                rejects(
                    peer,
                    &format!("BREW {how}"),
                    &w(b"BREW /assets/x HTTP/1.1\r\nHost: node\r\n\r\n"),
                    &[405, 501],
                );
            }
        },
    );
    b.case("pipelined garbage after a valid request", || {
        for (with, how) in WAYS {
            let mut req = way(with, b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n");
            req.extend_from_slice(b"\x16\x03\x01\x02\x00junk\r\n\r\n");
            let mut s = connect(peer);
            send(&mut s, &req);
            let first = if with { 200 } else { 401 };
            match read_next(&mut s, false, "pipelined") {
                Answer::Resp(r) => assert_eq!(r.status, first, "{how}: {}", excerpt(&r.body)),
                Answer::Closed(c) => panic!("{how}: the valid request closed ({c})"),
            }
            match read_next(&mut s, false, "pipelined junk") {
                Answer::Resp(r) => {
                    assert_eq!(r.status, 400, "{how}: {}", excerpt(&r.body));
                    assert_one_line(&r, "pipelined junk");
                    assert_closes(&mut s, "pipelined junk");
                }
                Answer::Closed(_) => {}
            }
        }
    });
    b.case("huge heads and too many fields (431)", || {
        let before = node.metrics().error("head_too_large");
        for (with, how) in WAYS {
            let big = "a".repeat(20 << 10);
            let req = request("GET", "/healthz", &[("X-Big", &big)], b"");
            rejects(
                peer,
                &format!("20 KiB header {how}"),
                &way(with, &req),
                &[431],
            );
            let mut endless = way(with, b"GET /healthz HTTP/1.1\r\nHost: node\r\n");
            endless.extend(std::iter::repeat_n(b'x', 40 << 10));
            rejects(peer, &format!("endless head {how}"), &endless, &[431]);
            let fields: Vec<(String, String)> =
                (0..100).map(|i| (format!("X-F{i}"), "v".into())).collect();
            let refs: Vec<(&str, &str)> = fields
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let req = request("GET", "/healthz", &refs, b"");
            rejects(peer, &format!("100 fields {how}"), &way(with, &req), &[431]);
        }
        let after = node.metrics().error("head_too_large");
        assert!(after >= before + 6, "head_too_large {before} -> {after}");
    });
    b.case("smuggling: both lengths, two lengths, other codings", || {
        let cases: [(&str, &[u8], u16); 5] = [
            (
                "CL+TE",
                b"PUT /assets/smuggle/a HTTP/1.1\r\nHost: node\r\nContent-Length: 5\r\n\
                  Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
                400,
            ),
            (
                "TE+CL",
                b"PUT /assets/smuggle/a HTTP/1.1\r\nHost: node\r\nTransfer-Encoding: chunked\r\n\
                  Content-Length: 0\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                400,
            ),
            (
                "CL 3 and 4",
                b"PUT /assets/smuggle/a HTTP/1.1\r\nHost: node\r\nContent-Length: 3\r\n\
                  Content-Length: 4\r\n\r\nabcd",
                400,
            ),
            (
                "TE gzip",
                b"PUT /assets/smuggle/a HTTP/1.1\r\nHost: node\r\nTransfer-Encoding: gzip\r\n\r\nxxxx",
                400,
            ),
            (
                "TE gzip, chunked",
                b"PUT /assets/smuggle/a HTTP/1.1\r\nHost: node\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                501,
            ),
        ];
        for (with, how) in WAYS {
            for (what, raw, want) in cases {
                rejects(peer, &format!("{what} {how}"), &way(with, raw), &[want]);
            }
        }
        absent("smuggle/a", "smuggling");
    });

    // --- Heads that parse: 401 without the token, the access listener's answer with it -------
    b.case("malformed chunked bodies", || {
        let bodies = [
            "zz\r\nabc\r\n0\r\n\r\n".to_string(),
            "3\nabc\r\n0\r\n\r\n".into(),
            format!("3;{}\r\nabc\r\n0\r\n\r\n", "e".repeat(8 << 10)),
            "1ffffffffffffffffff\r\nabc\r\n0\r\n\r\n".into(),
            "3\r\nabcdef\r\n0\r\n\r\n".into(),
        ];
        for (with, how) in WAYS {
            for (i, body) in bodies.iter().enumerate() {
                let mut req = way(
                    with,
                    format!(
                        "PUT /assets/chunk/{i} HTTP/1.1\r\nHost: node\r\nTransfer-Encoding: chunked\r\n\r\n"
                    )
                    .as_bytes(),
                );
                req.extend_from_slice(body.as_bytes());
                let want = if with { 400 } else { 401 };
                rejects(peer, &format!("chunked body {i} {how}"), &req, &[want]);
            }
        }
        for i in 0..bodies.len() {
            absent(&format!("chunk/{i}"), "malformed chunked body");
        }
    });
    b.case("bad targets and methods: 401 before any routing", || {
        let long = format!("/assets/{}", "a".repeat(300));
        let cases: [(&str, &str, u16); 9] = [
            ("PUT", "/assets/a/../b", 400),
            ("PUT", "/assets/a//b", 400),
            ("PUT", &long, 400),
            ("PUT", "/assets/a%2Fb", 400),
            ("GET", "/assets/../../etc/passwd", 400),
            ("GET", "/nowhere", 404),
            ("DELETE", "/healthz", 405),
            ("PUT", "/chunks/x", 405),
            ("DELETE", "/chunks/x", 405),
        ];
        for (with, how) in WAYS {
            for (method, target, want) in cases {
                let what = format!("{method} {target} {how}");
                let body: &[u8] = if method == "PUT" { b"abc" } else { b"" };
                let req = way(with, &request(method, target, &[], body));
                rejects(peer, &what, &req, &[if with { want } else { 401 }]);
            }
        }
        assert_eq!(node.metrics().assets(), 1, "an invalid id was stored");
    });
    b.case("absurd ranges", || {
        let target = format!("/assets/{KNOWN_ID}");
        for range in [
            "bytes=99999999999-",
            "bytes=99999999999999999999999-",
            "bytes=-0",
        ] {
            let r = get(peer, &target, &[("Range", range)]);
            assert_refusal(
                &r,
                &format!("Range {range} without the token"),
                &[401],
                "401",
            );
            let r = peer_get(peer, &target, &[("Range", range)]);
            assert_refusal(&r, &format!("Range {range} with the token"), &[416], "416");
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes */{KNOWN_SIZE}").as_str())
            );
        }
        for range in ["bytes=9-1", "bytes=abc", "lines=0-9"] {
            let r = peer_get(peer, &target, &[("Range", range)]);
            assert_eq!(r.status, 200, "Range: {range}");
            assert!(r.body == known, "Range: {range}: not the asset");
        }
        let many: Vec<String> = (0..200).map(|i| format!("{i}-{}", i + 10)).collect();
        let r = peer_get(
            peer,
            &target,
            &[("Range", &format!("bytes={}", many.join(",")))],
        );
        assert_eq!(r.status, 200, "{:?}", r.head);
        assert!(r.body == known);
    });
    b.case("slowloris heads time out", || {
        for (with, how) in WAYS {
            let before = node.metrics().error("timeout_head");
            let mut s = connect(peer);
            let t = Instant::now();
            send(
                &mut s,
                &way(with, b"GET /healthz HTTP/1.1\r\nHost: node\r\nX-Slow: "),
            );
            let a = read_response(&mut s, false, "slowloris");
            let waited = t.elapsed();
            if let Answer::Resp(r) = &a {
                assert_eq!(r.status, 408, "{how}: {}", excerpt(&r.body));
                assert_one_line(r, "slowloris");
                assert_closes(&mut s, "slowloris");
            }
            assert!(
                waited < HEAD_TIMEOUT * 3,
                "{how}: answered after {waited:?} (head timeout {HEAD_TIMEOUT:?})"
            );
            let after = node.metrics().error("timeout_head");
            assert!(after > before, "{how}: timeout_head {before} -> {after}");
        }
    });

    // --- Chunk lists ------------------------------------------------------------------------
    b.case("chunk lists: hostile windows and ids", || {
        let chunks = KNOWN_SIZE.div_ceil(1 << 20);
        let want: Vec<u32> = known.chunks(1 << 20).map(crc32c::crc32c).collect();
        let windows: [(&str, usize, usize); 7] = [
            ("", 0, chunks),
            ("?from=99", 0, 0),
            ("?from=18446744073709551615", 0, 0),
            ("?count=18446744073709551615", 0, chunks),
            ("?from=2&count=99999999", 2, chunks - 2),
            ("?from=1&count=0", 1, 0),
            ("?count=1&from=3", 3, 1),
        ];
        for (q, from, n) in windows {
            let target = format!("/chunks/{KNOWN_ID}{q}");
            let r = get(peer, &target, &[]);
            assert_refusal(&r, &format!("{target} without the token"), &[401], "401");
            let r = peer_get(peer, &target, &[]);
            assert_eq!(r.status, 200, "{target}: {}", excerpt(&r.body));
            let list: reel_http::cluster::ChunkList =
                serde_json::from_slice(&r.body).expect("a chunk list");
            assert_eq!(list.size, KNOWN_SIZE as u64, "{target}");
            assert_eq!(list.crcs, want[from..from + n], "{target}");
        }
        let long = "a".repeat(300);
        let bad: [(String, u16); 14] = [
            (format!("/chunks/{KNOWN_ID}?from=-1"), 400),
            (format!("/chunks/{KNOWN_ID}?count=-5"), 400),
            (format!("/chunks/{KNOWN_ID}?from=abc"), 400),
            (format!("/chunks/{KNOWN_ID}?count=1e3"), 400),
            (format!("/chunks/{KNOWN_ID}?from=0x10"), 400),
            (format!("/chunks/{KNOWN_ID}?from="), 400),
            (format!("/chunks/{KNOWN_ID}?from=18446744073709551616"), 400),
            (format!("/chunks/{KNOWN_ID}?from=1&from=2"), 400),
            (format!("/chunks/{KNOWN_ID}?bogus=1"), 400),
            ("/chunks/../etc/passwd".into(), 400),
            ("/chunks/a%2Fb".into(), 400),
            (format!("/chunks/{long}"), 400),
            ("/chunks/no/such.bin".into(), 404),
            (format!("/chunks/{KNOWN_ID}/policy"), 404),
        ];
        for (target, want) in &bad {
            let r = get(peer, target, &[]);
            assert_refusal(&r, &format!("{target} without the token"), &[401], "401");
            let r = peer_get(peer, target, &[]);
            assert_refusal(&r, &format!("{target} with the token"), &[*want], "refused");
        }
    });

    // --- Writes -------------------------------------------------------------------------------
    b.case(
        "PUT and DELETE with the token behave as on the access listener",
        || {
            let body = content(21, 200_000);
            let target = "/assets/peer/written.bin";
            let req = request("PUT", target, &[], &body);
            rejects(peer, "PUT without the token", &req, &[401]);
            let wrong = format!("Bearer {TOKEN}x");
            let req = request("PUT", target, &[("Authorization", &wrong)], &body);
            let r = rejects(peer, "PUT with a wrong token", &req, &[403]);
            assert!(!text(&r.body).contains(TOKEN), "the reason echoes no token");
            absent("peer/written.bin", "refused PUTs");
            let req = request("PUT", target, &[("Authorization", &auth)], &body);
            match exchange(peer, &req, "PUT with the token").1 {
                Answer::Resp(r) => assert_eq!(r.status, 201, "{}", excerpt(&r.body)),
                Answer::Closed(how) => panic!("PUT with the token: closed ({how})"),
            }
            let r = get(addr, target, &[]);
            assert!(
                r.status == 200 && r.body == body,
                "the access listener's copy"
            );
            let r = peer_get(peer, target, &[("Range", "bytes=100-199")]);
            assert!(
                r.status == 206 && r.body == body[100..200],
                "a range on the peer"
            );
            let req = request("DELETE", target, &[], b"");
            rejects(peer, "DELETE without the token", &req, &[401]);
            assert_eq!(get(addr, target, &[]).status, 200, "still there");
            let req = request("DELETE", target, &[("Authorization", &auth)], b"");
            match exchange(peer, &req, "DELETE with the token").1 {
                Answer::Resp(r) => assert_eq!(r.status, 204, "{}", excerpt(&r.body)),
                Answer::Closed(how) => panic!("DELETE with the token: closed ({how})"),
            }
            assert_absent(addr, "peer/written.bin", "DELETE with the token");
            let req = request("DELETE", target, &[("Authorization", &auth)], b"");
            rejects_or_closes(peer, "DELETE again", &req, &[404]);
        },
    );

    // --- The node after all of it ---------------------------------------------------------------
    b.case(
        "the node still serves on both listeners and has leaked nothing",
        || {
            assert!(node.alive(), "the node process died");
            let target = format!("/assets/{KNOWN_ID}");
            let r = get(addr, &target, &[]);
            assert!(r.status == 200 && r.body == known, "the access listener");
            let r = peer_get(peer, &target, &[]);
            assert!(
                r.status == 200 && r.body == known,
                "the inter-server listener"
            );
            let r = peer_get(peer, &target, &[("Range", "bytes=1000-1999")]);
            assert!(r.status == 206 && r.body == known[1000..2000]);
            let m = node.wait_metrics("connections drain", HANG, |m| m.connections_open() <= 1);
            assert_eq!(m.assets(), 1, "{}", m.summary());
            assert_eq!(m.used_bytes(), used_base, "space leaked:\n{}", m.summary());
            for kind in ["device_error", "accept_failed", "overloaded"] {
                assert_eq!(m.error(kind), base.error(kind), "{kind}:\n{}", m.summary());
            }
            let fds_after = node.quiet_fds();
            assert!(
                fds_after <= fds_before + 4,
                "descriptors leaked: {fds_before} before the battery, {fds_after} after"
            );
            let stderr = node.stderr();
            assert!(!stderr.contains("panicked"), "the node panicked:\n{stderr}");
            assert!(!stderr.contains(TOKEN), "the token reached the log");
        },
    );
    eprintln!("peer battery done in {:.2?}", started.elapsed());
    b.finish(&mut node);
}

//! The battery: one node, every hostile or malformed request a careless or malicious client
//! could send, one case after another, then the node must still serve and have leaked nothing.

use super::*;

#[test]
fn hostile_requests_are_refused_and_the_node_survives() {
    let started = Instant::now();
    let secs = |d: Duration| format!("{}ms", d.as_millis());
    let Some(mut node) = Node::start(
        "hostile_requests_are_refused_and_the_node_survives",
        &[
            "--shards",
            "2",
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
    let addr = node.addr;
    let known = content(7, KNOWN_SIZE);
    let big = content(11, BIG_SIZE);
    put(addr, KNOWN_ID, &known);
    put(addr, BIG_ID, &big);
    let r = get(addr, &format!("/assets/{KNOWN_ID}"), &[]);
    assert_eq!(r.status, 200);
    assert!(r.body == known, "the known asset does not read back");
    let base = node.metrics();
    let used_base = base.used_bytes();
    assert_eq!(base.assets(), 2, "{}", base.summary());
    let fds_before = node.quiet_fds();
    eprintln!(
        "setup done in {:.2?}: {used_base} bytes used, {fds_before} fds",
        started.elapsed()
    );

    let mut b = Battery::default();

    // --- Garbage and protocol confusion --------------------------------------------------
    b.case("garbage bytes", || {
        rejects(
            addr,
            "garbage",
            b"\x00\x01\x02garbage\xff\xfe\r\n\r\n",
            &[400],
        );
    });
    b.case("binary noise", || {
        rejects_or_closes(addr, "noise", &content(3, 4096), &[400, 431]);
    });
    b.case("empty-line flood", || {
        rejects_or_closes(addr, "CRLF flood", &b"\r\n".repeat(20_000), &[400, 431]);
    });
    b.case("pipelined garbage after a valid request", || {
        let mut req = request("GET", "/healthz", &[], b"");
        // A keep-alive request, then junk on the same connection.
        req = text(&req).replace("Connection: close\r\n", "").into_bytes();
        req.extend_from_slice(b"\x16\x03\x01\x02\x00junk\r\n\r\n");
        let mut s = connect(addr);
        send(&mut s, &req);
        match read_next(&mut s, false, "pipelined") {
            Answer::Resp(r) => assert_eq!(r.status, 200, "the valid request first"),
            Answer::Closed(how) => panic!("valid request closed ({how})"),
        }
        match read_next(&mut s, false, "pipelined junk") {
            Answer::Resp(r) => {
                assert_eq!(r.status, 400, "{}", excerpt(&r.body));
                assert_one_line(&r, "pipelined junk");
                assert!(
                    s.buffered().is_empty(),
                    "bytes after the 400: {:?}",
                    excerpt(s.buffered())
                );
                assert_closes(&mut s, "pipelined junk");
            }
            Answer::Closed(_) => {}
        }
    });
    b.case("request line without version", || {
        rejects(addr, "no version", b"GET /healthz\r\n\r\n", &[400]);
        rejects(addr, "HTTP/0.9 style", b"GET /healthz\r\n", &[400]);
    });
    b.case("HTTP/2 preface", || {
        rejects(
            addr,
            "PRI preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00",
            &[400, 505],
        );
    });
    b.case("HTTP/3.0 version", || {
        rejects(
            addr,
            "HTTP/3.0",
            b"GET /healthz HTTP/3.0\r\nHost: node\r\n\r\n",
            &[505],
        );
    });
    b.case("unknown method", || {
        let r = rejects(
            addr,
            "BREW",
            b"BREW /assets/x HTTP/1.1\r\nHost: node\r\n\r\n",
            &[405, 501],
        );
        if r.status == 405 {
            assert_eq!(
                r.header("allow"),
                Some("GET, HEAD, PUT, DELETE"),
                "{:?}",
                r.head
            );
        }
        rejects(
            addr,
            "POST with a body",
            &request("POST", "/assets/x", &[], b"hello"),
            &[405, 501],
        );
    });

    // --- Head limits -------------------------------------------------------------------
    b.case("header section over the limit (431)", || {
        let before = node.metrics().error("head_too_large");
        let big_field = "a".repeat(20 << 10);
        rejects(
            addr,
            "20 KiB header",
            &request("GET", "/healthz", &[("X-Big", &big_field)], b""),
            &[431],
        );
        // A head that never ends, sent in one go.
        let mut endless = b"GET /healthz HTTP/1.1\r\nHost: node\r\n".to_vec();
        endless.extend(std::iter::repeat_n(b'x', 40 << 10));
        rejects(addr, "endless head", &endless, &[431]);
        let after = node.metrics().error("head_too_large");
        assert!(after >= before + 2, "head_too_large {before} -> {after}");
    });
    b.case("too many header fields (431)", || {
        let fields: Vec<(String, String)> =
            (0..100).map(|i| (format!("X-F{i}"), "v".into())).collect();
        let refs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        rejects(
            addr,
            "100 fields",
            &request("GET", "/healthz", &refs, b""),
            &[431],
        );
    });

    // --- Framing and smuggling ------------------------------------------------------------
    b.case("CL + TE together (smuggling)", || {
        let before = node.metrics().error("bad_request");
        rejects(
            addr,
            "CL+TE",
            b"PUT /assets/smuggle/cl-te HTTP/1.1\r\nHost: node\r\nContent-Length: 5\r\n\
              Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: node\r\n\r\n",
            &[400],
        );
        rejects(
            addr,
            "TE+CL",
            b"PUT /assets/smuggle/te-cl HTTP/1.1\r\nHost: node\r\nTransfer-Encoding: chunked\r\n\
              Content-Length: 0\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            &[400],
        );
        assert_absent(addr, "smuggle/cl-te", "CL+TE");
        assert_absent(addr, "smuggle/te-cl", "TE+CL");
        let after = node.metrics().error("bad_request");
        assert!(after >= before + 2, "bad_request {before} -> {after}");
    });
    b.case("two different Content-Lengths", || {
        rejects(
            addr,
            "CL 3 and 4",
            b"PUT /assets/smuggle/two-cl HTTP/1.1\r\nHost: node\r\nContent-Length: 3\r\n\
              Content-Length: 4\r\n\r\nabcd",
            &[400],
        );
        rejects(
            addr,
            "CL 3, 4",
            b"PUT /assets/smuggle/two-cl HTTP/1.1\r\nHost: node\r\nContent-Length: 3, 4\r\n\r\nabcd",
            &[400],
        );
        assert_absent(addr, "smuggle/two-cl", "two CL");
    });
    b.case("Transfer-Encoding other than chunked", || {
        // RFC 9112 §6.3: a final coding other than chunked leaves the length unknowable: 400.
        rejects(
            addr,
            "TE gzip",
            b"PUT /assets/te/gzip HTTP/1.1\r\nHost: node\r\nTransfer-Encoding: gzip\r\n\r\nxxxx",
            &[400],
        );
        // A coding we do not implement before chunked: 501.
        rejects(
            addr,
            "TE gzip, chunked",
            b"PUT /assets/te/gzip HTTP/1.1\r\nHost: node\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            &[501],
        );
        assert_absent(addr, "te/gzip", "TE gzip");
    });
    b.case("malformed chunked bodies", || {
        let head = |id: &str| {
            format!("PUT /assets/{id} HTTP/1.1\r\nHost: node\r\nTransfer-Encoding: chunked\r\n\r\n")
        };
        let long_ext = format!("3;{}\r\nabc\r\n0\r\n\r\n", "e".repeat(8 << 10));
        let cases: [(&str, String); 5] = [
            ("chunk/bad-hex", "zz\r\nabc\r\n0\r\n\r\n".into()),
            ("chunk/bare-lf", "3\nabc\r\n0\r\n\r\n".into()),
            ("chunk/long-line", long_ext),
            (
                "chunk/overflow",
                "1ffffffffffffffffff\r\nabc\r\n0\r\n\r\n".into(),
            ),
            ("chunk/data-overrun", "3\r\nabcdef\r\n0\r\n\r\n".into()),
        ];
        let before = node.metrics().error("bad_request");
        for (id, body) in &cases {
            let mut req = head(id).into_bytes();
            req.extend_from_slice(body.as_bytes());
            rejects(addr, id, &req, &[400]);
        }
        for (id, _) in &cases {
            assert_absent(addr, id, id);
        }
        let after = node.metrics().error("bad_request");
        assert!(after >= before + 5, "bad_request {before} -> {after}");
    });

    // --- Invalid asset ids ------------------------------------------------------------------
    b.case("invalid ids on PUT", || {
        let long = format!("/assets/{}", "a".repeat(300));
        let targets: [(&str, &[u16]); 10] = [
            ("/assets/a/../b", &[400]),
            ("/assets/../etc/passwd", &[400]),
            ("/assets/a//b", &[400]),
            ("/assets/a/", &[400]),
            (&long, &[400]),
            ("/assets/a%2Fb", &[400]),
            ("/assets/a:b", &[400]),
            ("/assets/a*b", &[400]),
            ("/assets/info", &[400]),
            ("/assets/x/info", &[400, 405]),
        ];
        for (t, want) in targets {
            rejects(
                addr,
                &format!("PUT {t}"),
                &request("PUT", t, &[], b"abc"),
                want,
            );
        }
        rejects(
            addr,
            "PUT with DEL byte",
            b"PUT /assets/a\x7fb HTTP/1.1\r\nHost: node\r\nContent-Length: 3\r\n\r\nabc",
            &[400],
        );
        assert_absent(addr, "x", "PUT /assets/x/info");
        assert_absent(addr, "a/b", "PUT /assets/a//b");
        let m = node.metrics();
        assert_eq!(m.assets(), 2, "an invalid id was stored:\n{}", m.summary());
        // GETs of invalid ids answer 400 and keep the connection (no body to skip).
        for t in ["/assets/../../etc/passwd", "/assets/%2e%2e/x", "/assets//"] {
            let r = get(addr, t, &[]);
            assert_eq!(r.status, 400, "GET {t}: {}", excerpt(&r.body));
            assert_one_line(&r, t);
        }
    });

    // --- Ranges -----------------------------------------------------------------------------
    b.case("invalid and unsatisfiable ranges", || {
        let target = format!("/assets/{KNOWN_ID}");
        // RFC 9110 §14.2: a Range that does not parse is ignored: the whole asset, 200.
        for range in ["bytes=9-1", "bytes=abc", "bytes=", "lines=0-9", "bytes=--5"] {
            let r = get(addr, &target, &[("Range", range)]);
            assert_eq!(r.status, 200, "Range: {range}: {}", excerpt(&r.body));
            assert!(r.body == known, "Range: {range}: the body is not the asset");
        }
        let before = node.metrics().error("range_not_satisfiable");
        for range in [
            "bytes=99999999999-",
            "bytes=99999999999999999999999-",
            "bytes=-0",
        ] {
            let r = get(addr, &target, &[("Range", range)]);
            assert_eq!(r.status, 416, "Range: {range}: {}", excerpt(&r.body));
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes */{KNOWN_SIZE}").as_str()),
                "Range: {range}: {:?}",
                r.head
            );
            assert_one_line(&r, range);
        }
        let after = node.metrics().error("range_not_satisfiable");
        assert!(
            after >= before + 3,
            "range_not_satisfiable {before} -> {after}"
        );
        // Many overlapping ranges: served whole, not as hundreds of parts.
        let many: Vec<String> = (0..200).map(|i| format!("{i}-{}", i + 10)).collect();
        let r = get(
            addr,
            &target,
            &[("Range", &format!("bytes={}", many.join(",")))],
        );
        assert_eq!(r.status, 200, "{:?}", r.head);
        assert!(r.body == known);
    });

    // --- Huge declared upload -----------------------------------------------------------------
    b.case("Content-Length larger than the volume", || {
        // An upload that declares 2 TiB on a 1 GiB volume can never succeed. It must be refused
        // (507/413) without taking the volume's free space from other uploads meanwhile.
        let m = node.metrics();
        let (used_before, no_space_before) = (m.used_bytes(), m.error("no_space"));
        let mut huge = connect(addr);
        send(
            &mut huge,
            b"PUT /assets/huge HTTP/1.1\r\nHost: node\r\nContent-Length: 2199023255552\r\n\r\n",
        );
        let t = Instant::now();
        send(&mut huge, &content(9, (1 << 20) + 4096));
        std::thread::sleep(Duration::from_millis(200));
        // Another client's small upload while the huge one is open.
        let victim = content(10, 4096);
        let req = request("PUT", "/assets/victim", &[], &victim);
        let victim_status = match exchange(addr, &req, "PUT victim during a huge upload").1 {
            Answer::Resp(r) => (r.status, text(&r.body)),
            Answer::Closed(how) => (0, format!("closed ({how})")),
        };
        let huge_answer = read_response(&mut huge, false, "2 TiB upload");
        let waited = t.elapsed();
        drop(huge);
        if victim_status.0 == 201 {
            let (_, a) = exchange(
                addr,
                &request("DELETE", "/assets/victim", &[], b""),
                "DELETE victim",
            );
            assert!(matches!(a, Answer::Resp(ref r) if r.status == 204), "{a:?}");
        }
        assert_absent(addr, "huge", "2 TiB upload");
        node.wait_metrics("space of the huge upload returns", HANG, |m| {
            m.used_bytes() == used_before
        });
        let huge_status = match &huge_answer {
            Answer::Resp(r) => format!(
                "{} after {waited:.2?}: {}",
                r.status,
                text(&r.body).trim_end()
            ),
            Answer::Closed(how) => format!("closed ({how}) after {waited:.2?}"),
        };
        let refused = matches!(&huge_answer, Answer::Resp(r) if [413, 507].contains(&r.status));
        assert!(
            refused && victim_status.0 == 201,
            "the 2 TiB upload got {huge_status} (want 413/507); a 4 KiB PUT of another asset \
             meanwhile got {} {} (want 201)",
            victim_status.0,
            victim_status.1.trim_end()
        );
        if let Answer::Resp(r) = &huge_answer {
            assert_one_line(r, "2 TiB upload");
        }
        let after = node.metrics().error("no_space");
        assert!(
            after > no_space_before,
            "no_space {no_space_before} -> {after}"
        );
    });

    // --- Slow and stalled clients ------------------------------------------------------------
    b.case("slowloris: half a head, then nothing", || {
        let before = node.metrics().error("timeout_head");
        let mut s = connect(addr);
        let t = Instant::now();
        send(&mut s, b"GET /healthz HTTP/1.1\r\nHost: node\r\nX-Slow: ");
        let a = read_response(&mut s, false, "slowloris");
        let waited = t.elapsed();
        if let Answer::Resp(r) = &a {
            assert_eq!(r.status, 408, "{}", excerpt(&r.body));
            assert_one_line(r, "slowloris");
            assert_closes(&mut s, "slowloris");
        }
        assert!(
            waited >= HEAD_TIMEOUT - Duration::from_millis(100) && waited < HEAD_TIMEOUT * 3,
            "answered after {waited:?} (head timeout {HEAD_TIMEOUT:?}): {a:?}"
        );
        let after = node.metrics().error("timeout_head");
        assert!(after > before, "timeout_head {before} -> {after}");
    });
    b.case("slowloris: a head trickled byte by byte", || {
        let before = node.metrics().error("timeout_head");
        let mut s = connect(addr);
        let mut w = s.stream().try_clone().expect("clone socket");
        let t = Instant::now();
        let writer = std::thread::spawn(move || {
            let head =
                b"GET /healthz HTTP/1.1\r\nHost: node\r\nX-Trickle: aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            for &byte in head.iter() {
                if w.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let a = read_response(&mut s, false, "trickle");
        let waited = t.elapsed();
        if let Answer::Resp(r) = &a {
            assert_eq!(r.status, 408, "{}", excerpt(&r.body));
        }
        assert!(
            waited < HEAD_TIMEOUT * 3,
            "a trickled head was tolerated for {waited:?} (head timeout {HEAD_TIMEOUT:?})"
        );
        drop(s);
        let _ = writer.join();
        let after = node.metrics().error("timeout_head");
        assert!(after > before, "timeout_head {before} -> {after}");
    });
    b.case("idle keep-alive connection is closed", || {
        let before = node.metrics().error("timeout_idle");
        let mut used = connect(addr);
        send(&mut used, b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n");
        match read_response(&mut used, false, "keep-alive") {
            Answer::Resp(r) => assert_eq!(r.status, 200),
            Answer::Closed(how) => panic!("keep-alive request closed ({how})"),
        }
        let t = Instant::now();
        let mut silent = connect(addr);
        assert_closes(&mut used, "idle after a request");
        assert_closes(&mut silent, "idle from the start");
        let waited = t.elapsed();
        assert!(
            waited >= IDLE_TIMEOUT - Duration::from_millis(200) && waited < IDLE_TIMEOUT * 3,
            "idle connections closed after {waited:?} (idle timeout {IDLE_TIMEOUT:?})"
        );
        let after = node.metrics().error("timeout_idle");
        assert!(after >= before + 2, "timeout_idle {before} -> {after}");
    });
    b.case("upload abandoned midway leaves nothing", || {
        let m = node.metrics();
        let (gone_before, used_before) = (m.error("client_gone_put"), m.used_bytes());
        let mut s = connect(addr);
        send(
            &mut s,
            b"PUT /assets/abandoned HTTP/1.1\r\nHost: node\r\nContent-Length: 10485760\r\n\r\n",
        );
        send(&mut s, &content(5, 1 << 20));
        drop(s);
        node.wait_metrics("client_gone_put increments", HANG, |m| {
            m.error("client_gone_put") > gone_before
        });
        assert_absent(addr, "abandoned", "abandoned upload");
        let m = node.wait_metrics("space of the abandoned upload returns", HANG, |m| {
            m.used_bytes() == used_before
        });
        assert_eq!(m.assets(), 2);
    });
    b.case(
        "upload that stalls is aborted after the body timeout",
        || {
            let m = node.metrics();
            let (before, used_before) = (m.error("timeout_body"), m.used_bytes());
            let mut s = connect(addr);
            send(
                &mut s,
                b"PUT /assets/stalled HTTP/1.1\r\nHost: node\r\nContent-Length: 10485760\r\n\r\n",
            );
            send(&mut s, &content(6, 1 << 20));
            let t = Instant::now();
            let a = read_response(&mut s, false, "stalled upload");
            let waited = t.elapsed();
            if let Answer::Resp(r) = &a {
                assert_eq!(r.status, 408, "{}", excerpt(&r.body));
                assert_one_line(r, "stalled upload");
                assert_closes(&mut s, "stalled upload");
            }
            assert!(
                waited < BODY_TIMEOUT * 3,
                "answered after {waited:?} (body timeout {BODY_TIMEOUT:?})"
            );
            drop(s);
            let after = node.metrics().error("timeout_body");
            assert!(after > before, "timeout_body {before} -> {after}");
            assert_absent(addr, "stalled", "stalled upload");
            node.wait_metrics("space of the stalled upload returns", HANG, |m| {
                m.used_bytes() == used_before
            });
        },
    );
    b.case("GET abandoned after 1 MiB", || {
        let before = node.metrics().error("client_gone_get");
        let mut s = connect(addr);
        send(
            &mut s,
            format!("GET /assets/{BIG_ID} HTTP/1.1\r\nHost: node\r\n\r\n").as_bytes(),
        );
        let mut got = 0usize;
        let mut chunk = vec![0u8; 64 << 10];
        while got < 1 << 20 {
            match read_raw(&s, &mut chunk) {
                Ok(0) => panic!("closed after {got} bytes"),
                Ok(n) => got += n,
                Err(e) => panic!("after {got} bytes: {e}"),
            }
        }
        drop(s); // unread data: the kernel answers with RST
        node.wait_metrics("client_gone_get increments", HANG, |m| {
            m.error("client_gone_get") > before
        });
    });
    b.case(
        "client that never reads is dropped after the send timeout",
        || {
            let before = node.metrics().error("timeout_send");
            let mut s = connect(addr);
            send(
                &mut s,
                format!("GET /assets/{BIG_ID} HTTP/1.1\r\nHost: node\r\n\r\n").as_bytes(),
            );
            let t = Instant::now();
            node.wait_metrics("timeout_send increments", SEND_TIMEOUT + HANG, |m| {
                m.error("timeout_send") > before
            });
            let waited = t.elapsed();
            assert!(waited >= SEND_TIMEOUT, "dropped after only {waited:?}");
            // What was queued can still be read, then the connection ends short of the asset.
            let mut got = 0usize;
            let mut chunk = vec![0u8; 256 << 10];
            loop {
                match read_raw(&s, &mut chunk) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if is_reset(&e) => break,
                    Err(e) if is_timeout(&e) => {
                        panic!("HANG: the dropped connection stays open after {got} bytes")
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(
                got < BIG_SIZE,
                "the whole asset arrived ({got} bytes) though the client was dropped"
            );
        },
    );
    b.case("slow reader that keeps taking bytes is not dropped", || {
        // The send timeout is about a client that takes *no* bytes; one that reads 32 KiB every
        // 100 ms (≈320 KB/s) takes bytes ten times per send timeout and must be served.
        let before = node.metrics().error("timeout_send");
        let mut s = connect(addr);
        send(
            &mut s,
            format!("GET /assets/{BIG_ID} HTTP/1.1\r\nHost: node\r\n\r\n").as_bytes(),
        );
        let mut data = Vec::with_capacity(BIG_SIZE + 4096);
        let mut chunk = vec![0u8; 32 << 10];
        let t = Instant::now();
        while t.elapsed() < SEND_TIMEOUT * 5 {
            match read_raw(&s, &mut chunk) {
                Ok(0) => panic!(
                    "closed after {} bytes, {:.2?} into a slow read",
                    data.len(),
                    t.elapsed()
                ),
                Ok(n) => data.extend_from_slice(&chunk[..n]),
                Err(e) => panic!(
                    "after {} bytes, {:.2?} into a slow read: {e}",
                    data.len(),
                    t.elapsed()
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let slow_bytes = data.len();
        let mut fast = vec![0u8; 1 << 20];
        loop {
            match read_raw(&s, &mut fast) {
                Ok(0) => break,
                Ok(n) => {
                    data.extend_from_slice(&fast[..n]);
                    if let Some(h) = find(&data, b"\r\n\r\n") {
                        if data.len() >= h + 4 + BIG_SIZE {
                            break;
                        }
                    }
                }
                Err(e) => panic!("after {} bytes: {e}", data.len()),
            }
        }
        let h = find(&data, b"\r\n\r\n").expect("a response head") + 4;
        let after = node.metrics().error("timeout_send");
        assert!(
            data.len() == h + BIG_SIZE,
            "the slow reader got {} of {BIG_SIZE} body bytes ({slow_bytes} bytes taken during \
             the slow phase); timeout_send {before} -> {after}",
            data.len() - h
        );
        assert!(
            data[h..] == big[..],
            "the slow reader's body is not the asset"
        );
        assert_eq!(
            after, before,
            "timeout_send counted a client that kept reading"
        );
    });

    // --- The node after all of it -----------------------------------------------------------------
    b.case("the node still serves and has leaked nothing", || {
        assert!(node.alive(), "the node process died");
        let r = get(addr, "/healthz", &[]);
        assert_eq!(r.status, 200);
        let r = get(addr, &format!("/assets/{KNOWN_ID}"), &[]);
        assert_eq!(r.status, 200);
        assert!(r.body == known, "the known asset changed");
        let r = get(
            addr,
            &format!("/assets/{KNOWN_ID}"),
            &[("Range", "bytes=1000-1999")],
        );
        assert_eq!(r.status, 206);
        assert!(r.body == known[1000..2000]);
        let m = node.wait_metrics("connections drain", HANG, |m| m.connections_open() <= 1);
        assert_eq!(m.assets(), 2, "{}", m.summary());
        assert_eq!(m.used_bytes(), used_base, "space leaked:\n{}", m.summary());
        for kind in ["device_error", "accept_failed", "overloaded"] {
            assert_eq!(
                m.error(kind),
                base.error(kind),
                "{kind} counted:\n{}",
                m.summary()
            );
        }
        let fds_after = node.quiet_fds();
        assert!(
            fds_after <= fds_before + 4,
            "descriptors leaked: {fds_before} before the battery, {fds_after} after"
        );
        eprintln!("fds {fds_before} -> {fds_after}\n{}", m.summary());
        let stderr = node.stderr();
        assert!(!stderr.contains("panicked"), "the node panicked:\n{stderr}");
    });
    b.case("SIGTERM stops the node cleanly after the battery", || {
        if let Some(reason) = probe::kill() {
            probe::skip("the SIGTERM step", &reason);
            return;
        }
        node.proc.stop_within(Duration::from_secs(10));
    });
    eprintln!("battery done in {:.2?}", started.elapsed());
    b.finish(&mut node);
}

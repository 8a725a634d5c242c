//! `reel node` as a client sees it: a real node process on loopback, driven by the real `curl`
//! binary (and, for pipelining and HEAD framing, the one HTTP client on a raw connection).
//! Bytes are compared with `sha256sum` (whole assets) or byte-exactly in Rust (ranges).
//!
//! Every test formats its own 1 GiB volume under Cargo's target tmp dir (not /tmp, which may be
//! tmpfs without O_DIRECT) and starts its own node with two shards; the node is killed when the
//! test ends. A test skips, saying why, when `curl` is not installed or io_uring is unavailable.
//! The tiers' tests (a secondary, migration) are in `node_tiers.rs`.

use std::path::Path;
use std::time::Duration;

use reel_testkit::content::content;
use reel_testkit::curl::{sha256, CurlResp, ZERO_COPY_FLAGS};
use reel_testkit::metrics::metric_sum;
use reel_testkit::node::{NodeArgs, NodeProc};
use reel_testkit::{curl, path_str, poll, text, Reel};

const REEL: Reel = reel_testkit::reel!();

/// The chunk size of a fresh volume: ranges crossing this boundary take two device reads.
const CHUNK: usize = 1 << 20;

/// Formats a 1 GiB volume and starts a node with two shards on it, or `None` (having said why)
/// when the prerequisites are missing.
fn start(test: &str) -> Option<NodeProc> {
    if !curl::runnable(&REEL, test) {
        return None;
    }
    let dir = REEL.tempdir("reel-node-curl-");
    let vol = dir.path().join("vol");
    REEL.format(&vol, "1G");
    let args = NodeArgs::new(&vol).shards(2).flags(ZERO_COPY_FLAGS);
    Some(NodeProc::spawn_in(&REEL, dir, args))
}

/// The body curl saved for `r` is the bytes of `src`, `len` of them; `what` names the
/// transfer in the message when it is not.
fn assert_body_is_file(r: &CurlResp, src: &Path, len: usize, what: &str) {
    assert_eq!(
        sha256(&r.body_path),
        sha256(src),
        "{what} ({} of {len} bytes)",
        r.body.len()
    );
}

#[test]
fn put_with_content_length_then_get_is_identical() {
    let Some(node) = start("put_with_content_length_then_get_is_identical") else {
        return;
    };
    let data = content(1, 5 << 20);
    let src = node.file_of(&data);
    let put = node.curl(
        &["-T", path_str(&src), "-H", "Content-Type: video/mp4"],
        "/assets/movies/one.mp4",
    );
    assert_eq!(
        put.status,
        201,
        "{}: expected 201 Created, body {:?}",
        put.described,
        text(&put.body)
    );
    let etag = put
        .header("etag")
        .unwrap_or_else(|| panic!("the 201 carries no ETag: {:?}", put.headers))
        .to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "a strong, quoted ETag: {etag}"
    );

    let get = node.curl(&[], "/assets/movies/one.mp4");
    assert_eq!(get.status, 200, "{}", get.described);
    assert_body_is_file(
        &get,
        &src,
        data.len(),
        "GET returned different bytes than were PUT",
    );
    assert_eq!(
        get.header("content-type"),
        Some("video/mp4"),
        "{:?}",
        get.headers
    );
    assert_eq!(
        get.header("accept-ranges"),
        Some("bytes"),
        "{:?}",
        get.headers
    );
    assert_eq!(
        get.header("content-length"),
        Some(data.len().to_string().as_str()),
        "{:?}",
        get.headers
    );
    let lm = get
        .header("last-modified")
        .unwrap_or_else(|| panic!("no Last-Modified: {:?}", get.headers));
    assert!(
        lm.ends_with(" GMT"),
        "Last-Modified is an IMF-fixdate: {lm}"
    );
    assert_eq!(
        get.header("etag"),
        Some(etag.as_str()),
        "the GET's ETag differs from the PUT's"
    );
}

#[test]
fn chunked_put_of_an_odd_size_reads_back_identical() {
    let Some(node) = start("chunked_put_of_an_odd_size_reads_back_identical") else {
        return;
    };
    let data = content(2, (3 << 20) + 12345);
    let src = node.file_of(&data);

    // `curl -T -` streams stdin with Transfer-Encoding: chunked.
    let put = node.curl_stdin(&["-v", "-T", "-"], "/assets/chunked/stdin", Some(&src));
    assert_eq!(
        put.status,
        201,
        "{}: chunked PUT from stdin, body {:?}",
        put.described,
        text(&put.body)
    );
    assert!(
        put.curl_stderr
            .to_ascii_lowercase()
            .contains("> transfer-encoding: chunked"),
        "curl did not send the body chunked:\n{}",
        put.curl_stderr
    );
    let get = node.curl(&[], "/assets/chunked/stdin");
    assert_eq!(get.status, 200, "{}", get.described);
    assert_body_is_file(
        &get,
        &src,
        data.len(),
        "chunked PUT (stdin) read back different bytes",
    );
    assert_eq!(
        put.header("etag"),
        get.header("etag"),
        "PUT and GET ETags differ"
    );

    // The same body with an explicit chunked header and --data-binary.
    let put = node.curl(
        &[
            "-X",
            "PUT",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &format!("@{}", path_str(&src)),
        ],
        "/assets/chunked/data-binary",
    );
    assert_eq!(put.status, 201, "{}: {}", put.described, text(&put.body));
    let get = node.curl(&[], "/assets/chunked/data-binary");
    assert_eq!(get.status, 200, "{}", get.described);
    assert_body_is_file(
        &get,
        &src,
        data.len(),
        "chunked PUT (--data-binary) read back different bytes",
    );
}

#[test]
fn single_and_multi_ranges_are_byte_exact() {
    let Some(node) = start("single_and_multi_ranges_are_byte_exact") else {
        return;
    };
    let size = (2 << 20) + 777;
    let data = content(3, size);
    node.curl_put("r/asset", &data);

    // (curl -r argument, first byte, last byte inclusive)
    let cases: [(&str, usize, usize); 5] = [
        ("0-0", 0, 0),
        ("100-199", 100, 199),
        ("1048570-1048580", CHUNK - 6, CHUNK + 4),
        ("-500", size - 500, size - 1),
        ("4096-", 4096, size - 1),
    ];
    for (spec, first, last) in cases {
        let r = node.curl(&["-r", spec], "/assets/r/asset");
        assert_eq!(r.status, 206, "Range: bytes={spec}: expected 206");
        let want_cr = format!("bytes {first}-{last}/{size}");
        assert_eq!(
            r.header("content-range"),
            Some(want_cr.as_str()),
            "Range: bytes={spec}: wrong Content-Range"
        );
        assert_eq!(
            r.header("content-length"),
            Some((last - first + 1).to_string().as_str()),
            "Range: bytes={spec}: wrong Content-Length"
        );
        assert_eq!(
            r.body.len(),
            last - first + 1,
            "Range: bytes={spec}: body length"
        );
        assert!(
            r.body == data[first..=last],
            "Range: bytes={spec}: the body differs from bytes {first}..={last} of the source"
        );
    }

    let r = node.curl(&["-r", "0-9,100-109"], "/assets/r/asset");
    assert_eq!(r.status, 206, "multi-range: expected 206");
    let ct = r.header("content-type").unwrap_or_default().to_string();
    assert!(
        ct.starts_with("multipart/byteranges"),
        "multi-range Content-Type: {ct}"
    );
    let boundary = ct
        .split("boundary=")
        .nth(1)
        .unwrap_or_else(|| panic!("no boundary in {ct}"))
        .trim_matches('"')
        .to_string();
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str()),
        "multi-range Content-Length must equal the body length"
    );
    let body = &r.body;
    let find = |needle: &[u8]| body.windows(needle.len()).position(|w| w == needle);
    let p1 = find(&data[0..10]).unwrap_or_else(|| panic!("bytes 0-9 missing from multipart body"));
    let p2 = find(&data[100..110])
        .unwrap_or_else(|| panic!("bytes 100-109 missing from multipart body"));
    assert!(p1 < p2, "parts out of order");
    let body_text = text(body);
    assert!(
        body_text.contains(&format!("Content-Range: bytes 0-9/{size}")),
        "{body_text:?}"
    );
    assert!(
        body_text.contains(&format!("Content-Range: bytes 100-109/{size}")),
        "{body_text:?}"
    );
    assert!(
        body_text.contains(&format!("--{boundary}--")),
        "no closing delimiter: {body_text:?}"
    );
    let part_head = format!("--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-9/{size}\r\n\r\n");
    assert!(
        body.windows(part_head.len() + 10)
            .any(|w| w[..part_head.len()] == *part_head.as_bytes()
                && w[part_head.len()..] == data[0..10]),
        "the first part is not framed as delimiter, headers, blank line, bytes: {body_text:?}"
    );
}

#[test]
fn unsatisfiable_range_is_416_with_the_size() {
    let Some(node) = start("unsatisfiable_range_is_416_with_the_size") else {
        return;
    };
    let data = content(4, 100_000);
    node.curl_put("r416", &data);
    let r = node.curl(&["-r", "99999999999-"], "/assets/r416");
    assert_eq!(r.status, 416, "{}: {}", r.described, text(&r.body));
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{}", data.len()).as_str()),
        "416 must name the size"
    );
    assert!(
        r.body.len() < 200,
        "a 416 carries no asset bytes: {} bytes",
        r.body.len()
    );
}

#[test]
fn conditional_requests() {
    let Some(node) = start("conditional_requests") else {
        return;
    };
    let data = content(5, 300_000);
    let etag = node.curl_put("cond", &data);
    let src = node.file_of(&data);

    let r = node.curl(&["-H", &format!("If-None-Match: {etag}")], "/assets/cond");
    assert_eq!(r.status, 304, "If-None-Match with the current ETag");
    assert!(
        r.body.is_empty(),
        "a 304 has no body: {} bytes",
        r.body.len()
    );
    assert_eq!(
        r.header("etag"),
        Some(etag.as_str()),
        "a 304 carries the ETag"
    );

    let r = node.curl(&["-H", "If-None-Match: \"other\""], "/assets/cond");
    assert_eq!(r.status, 200, "If-None-Match with another tag");
    assert_eq!(
        sha256(&r.body_path),
        sha256(&src),
        "200 after If-None-Match"
    );

    let r = node.curl(
        &["-r", "10-19", "-H", &format!("If-Range: {etag}")],
        "/assets/cond",
    );
    assert_eq!(r.status, 206, "If-Range with the current ETag + Range");
    assert_eq!(r.body, data[10..20], "If-Range 206 body");
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 10-19/{}", data.len()).as_str())
    );

    let r = node.curl(
        &["-r", "10-19", "-H", "If-Range: \"stale\""],
        "/assets/cond",
    );
    assert_eq!(
        r.status, 200,
        "If-Range with a wrong ETag must send the whole asset"
    );
    assert_eq!(
        sha256(&r.body_path),
        sha256(&src),
        "If-Range mismatch: full body expected ({} bytes got)",
        r.body.len()
    );
    assert_eq!(
        r.header("content-range"),
        None,
        "a 200 has no Content-Range"
    );
}

#[test]
fn head_has_the_length_and_no_body() {
    let Some(node) = start("head_has_the_length_and_no_body") else {
        return;
    };
    let data = content(6, 1_500_000);
    let etag = node.curl_put("h", &data);
    let r = node.curl(&["-I"], "/assets/h");
    assert_eq!(r.status, 200, "HEAD");
    assert_eq!(
        r.header("content-length"),
        Some(data.len().to_string().as_str()),
        "HEAD Content-Length is the asset size"
    );
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    // With -I curl writes the head itself to -o; nothing may follow its blank line.
    let out = text(&r.body);
    assert!(
        out.starts_with("HTTP/1.1 200")
            && out.ends_with("\r\n\r\n")
            && out.matches("\r\n\r\n").count() == 1,
        "curl -I output is the head alone: {out:?}"
    );

    // On the wire: a HEAD followed by a GET on one connection. If the HEAD response carried
    // any body bytes, the second response would not start with its status line.
    let mut c = node.conn();
    c.write_all(
        b"HEAD /assets/h HTTP/1.1\r\nHost: t\r\n\r\nGET /assets/h HTTP/1.1\r\nHost: t\r\nRange: bytes=0-4\r\nConnection: close\r\n\r\n",
    )
    .expect("send HEAD + GET");
    let head = c.read_head().expect("HEAD on a raw connection");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(data.len().to_string().as_str())
    );
    let get = c.read_head().expect("GET after HEAD on one connection");
    assert_eq!(get.status, 206, "the GET after a HEAD");
    let body = c.read_body(&get, 1 << 20).expect("GET after HEAD body");
    assert_eq!(body, data[0..5], "GET after HEAD body");
    let rest = c.read_to_close(1 << 20).expect("the close");
    assert!(
        rest.is_empty(),
        "bytes after the last response: {:?}",
        text(&rest)
    );
}

#[test]
fn delete_then_404() {
    let Some(node) = start("delete_then_404") else {
        return;
    };
    node.curl_put("gone/soon", &content(7, 10_000));
    let r = node.curl(&["-X", "DELETE"], "/assets/gone/soon");
    assert_eq!(r.status, 204, "first DELETE: {}", text(&r.body));
    assert!(r.body.is_empty(), "a 204 has no body");
    let r = node.curl(&[], "/assets/gone/soon");
    assert_eq!(r.status, 404, "GET after DELETE");
    let r = node.curl(&["-I"], "/assets/gone/soon");
    assert_eq!(r.status, 404, "HEAD after DELETE");
    let r = node.curl(&["-X", "DELETE"], "/assets/gone/soon");
    assert_eq!(r.status, 404, "second DELETE");
    let r = node.curl(&[], "/assets/gone/soon/info");
    assert_eq!(r.status, 404, "info after DELETE");
}

#[test]
fn list_info_health_and_metrics() {
    let Some(node) = start("list_info_health_and_metrics") else {
        return;
    };
    let sizes = [("list/a", 1000usize), ("list/b", 2000), ("list/c", 3000)];
    let mut etags = Vec::new();
    for (i, (id, size)) in sizes.iter().enumerate() {
        etags.push(node.curl_put(id, &content(10 + i as u64, *size)));
    }

    let json = |path: &str| -> serde_json::Value {
        let r = node.curl(&[], path);
        assert_eq!(r.status, 200, "GET {path}: {}", text(&r.body));
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "GET {path} Content-Type: {:?}",
            r.header("content-type")
        );
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {}", text(&r.body)))
    };

    let all = json("/assets");
    let listed: Vec<(String, u64)> = all["assets"]
        .as_array()
        .unwrap_or_else(|| panic!("no assets array: {all}"))
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap_or_default().to_string(),
                a["size"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = sizes
        .iter()
        .map(|(id, s)| (id.to_string(), *s as u64))
        .collect();
    assert_eq!(
        listed, want,
        "GET /assets lists the uploads with sizes: {all}"
    );
    assert_eq!(all["total"], 3, "{all}");
    assert!(
        all.get("next").is_none(),
        "a single page has no next: {all}"
    );

    let p1 = json("/assets?limit=1");
    assert_eq!(p1["assets"][0]["id"], "list/a", "{p1}");
    assert_eq!(p1["assets"].as_array().map(Vec::len), Some(1), "{p1}");
    let next = p1["next"]
        .as_str()
        .unwrap_or_else(|| panic!("?limit=1 of 3 has a next cursor: {p1}"))
        .to_string();
    let p2 = json(&format!("/assets?limit=1&after={next}"));
    assert_eq!(p2["assets"][0]["id"], "list/b", "second page: {p2}");
    assert_eq!(p2["assets"].as_array().map(Vec::len), Some(1), "{p2}");
    let next = p2["next"]
        .as_str()
        .unwrap_or_else(|| panic!("page 2 of 3 has a next cursor: {p2}"))
        .to_string();
    let p3 = json(&format!("/assets?after={next}&limit=1"));
    assert_eq!(p3["assets"][0]["id"], "list/c", "third page: {p3}");
    assert!(p3.get("next").is_none(), "the last page has no next: {p3}");

    let info = json("/assets/list/b/info");
    assert_eq!(info["id"], "list/b", "{info}");
    assert_eq!(info["size"], 2000, "{info}");
    assert_eq!(
        info["etag"],
        etags[1].as_str(),
        "info etag = PUT ETag: {info}"
    );

    let h = node.curl(&[], "/healthz");
    assert_eq!(h.status, 200, "healthz");
    assert_eq!(text(&h.body).trim(), "ok", "healthz body");

    let scrape = || {
        let r = node.curl(&[], "/metrics");
        assert_eq!(r.status, 200, "/metrics");
        text(&r.body)
    };
    let before = scrape();
    for family in ["reel_requests_total", "reel_response_bytes_total"] {
        assert!(
            before.lines().any(|l| l.starts_with(family)),
            "/metrics lacks {family}:\n{before}"
        );
    }
    let req0 = metric_sum(&before, "reel_requests_total");
    let bytes0 = metric_sum(&before, "reel_response_bytes_total");
    // 3 PUTs, 4 list pages, info, healthz.
    assert!(req0 >= 9, "requests so far are counted: {req0}");

    let g = node.curl(&[], "/assets/list/c");
    assert_eq!(g.status, 200);
    let _ = node.curl(&[], "/healthz");
    // Counters are written by the serving thread after the last byte is handed to the
    // kernel, so a scrape on another shard may briefly lag: poll.
    poll(Duration::from_secs(5), Duration::from_millis(50), || {
        let after = scrape();
        let req1 = metric_sum(&after, "reel_requests_total");
        let bytes1 = metric_sum(&after, "reel_response_bytes_total");
        // The first scrape, the GET and the healthz at least.
        if req1 >= req0 + 3 && bytes1 >= bytes0 + 3000 {
            return Ok(());
        }
        Err(format!(
            "metrics did not grow: requests {req0} -> {req1}, response bytes {bytes0} -> {bytes1}"
        ))
    });
}

#[test]
fn pipelined_gets_on_one_connection_answer_in_order() {
    let Some(node) = start("pipelined_gets_on_one_connection_answer_in_order") else {
        return;
    };
    let size = (1 << 20) + 4096;
    let data = content(20, size);
    node.curl_put("pipe", &data);
    let ranges = [
        (0usize, 99usize),
        (CHUNK - 10, CHUNK + 9),
        (size - 50, size - 1),
    ];
    let mut req = Vec::new();
    for (a, b) in ranges {
        req.extend_from_slice(
            format!("GET /assets/pipe HTTP/1.1\r\nHost: t\r\nRange: bytes={a}-{b}\r\n\r\n")
                .as_bytes(),
        );
    }
    let mut c = node.conn();
    c.write_all(&req).expect("send three pipelined requests");
    for (i, (a, b)) in ranges.into_iter().enumerate() {
        let what = format!("pipelined response {} (bytes={a}-{b})", i + 1);
        let head = c.read_head().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(head.status, 206, "{what}");
        assert_eq!(
            head.header("content-range"),
            Some(format!("bytes {a}-{b}/{size}").as_str()),
            "{what}: out of order or wrong range"
        );
        let body = c
            .read_body(&head, 1 << 20)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(body == data[a..=b], "{what}: wrong bytes");
    }
    // The connection is still alive for a fourth request.
    let resp = c
        .exchange(
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            false,
            1 << 20,
        )
        .expect("request after the pipelined three");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().trim(), "ok");
}

#[test]
fn invalid_ids_are_400_and_put_without_length_is_411() {
    let Some(node) = start("invalid_ids_are_400_and_put_without_length_is_411") else {
        return;
    };
    for (args, path) in [
        (vec!["--path-as-is"], "/assets/a/../b"),
        (vec![], "/assets/bad%00id"),
        (vec![], "/assets/a:b"),
        (vec!["-X", "PUT", "--data-binary", "x"], "/assets/a//b"),
    ] {
        let r = node.curl(&args, path);
        assert_eq!(r.status, 400, "{}: {}", r.described, text(&r.body));
        let body = text(&r.body);
        assert!(
            body.ends_with('\n') && body.matches('\n').count() == 1 && body.trim().len() > 10,
            "{}: the body must be a one-line reason, got {body:?}",
            r.described
        );
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("text/plain")),
            "{}: {:?}",
            r.described,
            r.headers
        );
    }
    let r = node.curl(&["-X", "PUT"], "/assets/nolen");
    assert_eq!(r.status, 411, "PUT with neither Content-Length nor chunked");
    let body = text(&r.body);
    assert!(
        body.ends_with('\n') && body.matches('\n').count() == 1,
        "411 reason: {body:?}"
    );
    let r = node.curl(&[], "/assets/nolen");
    assert_eq!(r.status, 404, "a refused PUT stores nothing");
}

#[test]
fn assets_survive_kill_9_and_restart() {
    let Some(mut node) = start("assets_survive_kill_9_and_restart") else {
        return;
    };
    let data = content(30, (2 << 20) + 333);
    let src = node.file_of(&data);
    let etag = node.curl_put("durable/a", &data);
    node.curl_put("durable/deleted", &content(31, 70_000));
    let r = node.curl(&["-X", "DELETE"], "/assets/durable/deleted");
    assert_eq!(r.status, 204, "DELETE before the kill");

    node.restart();

    let r = node.curl(&[], "/assets/durable/a");
    assert_eq!(
        r.status,
        200,
        "GET after kill -9 and restart: {}",
        text(&r.body)
    );
    assert_body_is_file(
        &r,
        &src,
        data.len(),
        "an acknowledged PUT changed across kill -9",
    );
    assert_eq!(r.header("etag"), Some(etag.as_str()), "ETag after restart");
    let r = node.curl(&[], "/assets/durable/deleted");
    assert_eq!(
        r.status, 404,
        "an acknowledged DELETE came back after kill -9"
    );
    let r = node.curl(&[], "/assets");
    assert_eq!(r.status, 200);
    let list: serde_json::Value = serde_json::from_slice(&r.body).expect("list JSON");
    assert_eq!(list["total"], 1, "assets after restart: {list}");

    // The restarted node takes new uploads.
    let more = content(32, 123_457);
    let more_src = node.file_of(&more);
    node.curl_put("durable/b", &more);
    let r = node.curl(&[], "/assets/durable/b");
    assert_eq!(r.status, 200, "GET of a PUT after restart");
    assert_eq!(sha256(&r.body_path), sha256(&more_src), "PUT after restart");
}

#[test]
fn info_counts_requests_and_weights_ranges_by_bytes() {
    let Some(node) = start("info_counts_requests_and_weights_ranges_by_bytes") else {
        return;
    };
    let size = 4 * CHUNK;
    let data = content(77, size);
    node.curl_put("rated/a", &data);
    // Two whole views, then one view fetched as four quarter ranges.
    for _ in 0..2 {
        assert_eq!(node.curl(&[], "/assets/rated/a").status, 200);
    }
    for q in 0..4 {
        let r = format!("{}-{}", q * CHUNK, (q + 1) * CHUNK - 1);
        assert_eq!(node.curl(&["-r", &r], "/assets/rated/a").status, 206);
    }
    // HEAD and 304 ask for no bytes and do not count.
    let _ = node.curl(&["-I"], "/assets/rated/a");
    poll(Duration::from_secs(10), Duration::from_millis(200), || {
        let r = node.curl(&[], "/assets/rated/a/info");
        assert_eq!(r.status, 200);
        let info: serde_json::Value = serde_json::from_slice(&r.body).expect("info JSON");
        let rate = &info["rate"];
        let requests = rate["requests"].as_u64().expect("requests");
        let bytes = rate["bytes_requested"].as_u64().expect("bytes_requested");
        let per_h = rate["views_per_h"].as_f64().expect("views_per_h");
        assert_eq!(requests, 6, "2 GETs + 4 ranges counted, HEAD not: {info}");
        assert_eq!(
            bytes,
            3 * size as u64,
            "three views' worth of bytes: {info}"
        );
        if per_h > 0.0 {
            return Ok(());
        }
        Err(format!("the folded rate never became positive: {info}"))
    });
}

#[test]
fn migration_controls_need_a_secondary() {
    let Some(node) = start("migration_controls_need_a_secondary") else {
        return;
    };
    let r = node.curl(&["-X", "PUT"], "/migration?paused=true");
    assert_eq!(r.status, 409, "{}: {}", r.described, text(&r.body));
    assert!(text(&r.body).contains("no secondary"), "{}", text(&r.body));
    let r = node.curl(&[], "/migration");
    assert_eq!(r.status, 200);
    let s: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(
        (&s["tiered"], &s["paused"]),
        (&serde_json::json!(false), &serde_json::json!(false))
    );
}

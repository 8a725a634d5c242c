//! The manager under hostile input, on both listeners: every refusal is a 4xx with a one-line
//! reason, the token never reaches its log, and it keeps serving.

use super::*;

/// One case: the request bytes, the listener, the statuses accepted.
struct Case {
    what: &'static str,
    peer: bool,
    bytes: Vec<u8>,
    want: &'static [u16],
}

/// A request that asks the server to close after answering (so the case ends at once).
fn req(method: &str, target: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Vec<u8> {
    let mut h = headers.to_vec();
    h.push(("Connection", "close"));
    reel_http::client::encode_request(method, "m", target, &h, body)
}

#[test]
fn hostile_requests_to_the_manager_are_refused_and_it_survives() {
    let (_dir, m, token) = manager("manager-hostile", &["--head-timeout", "300ms"]);
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];
    let wrong = [("Authorization", "Bearer not-the-cluster-token-at-all")];
    let register = |name: &str| {
        format!(
            "{{\"node\":\"{name}\",\"boot\":1,\"access\":\"127.0.0.1:1\",\"peer\":\"127.0.0.1:2\",\"tiers\":[]}}"
        )
    };
    let cases = vec![
        Case { what: "garbage", peer: false, bytes: b"\x00\x01garbage\xff\r\n\r\n".to_vec(), want: &[400] },
        Case { what: "garbage on the peer listener", peer: true, bytes: b"\x16\x03\x01 tls?\r\n\r\n".to_vec(), want: &[400] },
        Case { what: "unknown method", peer: false, bytes: b"BREW /assets/a HTTP/1.1\r\nHost: m\r\n\r\n".to_vec(), want: &[405] },
        Case { what: "HTTP/2 preface", peer: false, bytes: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), want: &[400, 405, 505] },
        Case { what: "huge head", peer: false, bytes: req("GET", "/assets/a", &[("X-Pad", &"a".repeat(20_000))], None), want: &[431] },
        Case { what: "smuggling: both lengths", peer: true, bytes: b"PUT /v1/report HTTP/1.1\r\nHost: m\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), want: &[400] },
        Case { what: "bad asset id", peer: false, bytes: req("GET", "/assets/a/../b", &[], None), want: &[400] },
        Case { what: "empty asset id", peer: false, bytes: req("GET", "/assets/", &[], None), want: &[400] },
        Case { what: "unknown near", peer: false, bytes: req("GET", "/assets/a?near=nobody", &[], None), want: &[400] },
        Case { what: "unknown path", peer: false, bytes: req("GET", "/nothing", &[], None), want: &[404] },
        Case { what: "PUT /cluster", peer: false, bytes: req("PUT", "/cluster", &[], Some(b"x")), want: &[405] },
        Case { what: "upload without token", peer: false, bytes: req("PUT", "/assets/a", &[], Some(b"body")), want: &[401] },
        Case { what: "upload with a wrong token", peer: false, bytes: req("PUT", "/assets/a", &wrong, Some(b"body")), want: &[403] },
        Case { what: "delete without token", peer: false, bytes: req("DELETE", "/assets/a", &[], None), want: &[401] },
        Case { what: "delete with a wrong token", peer: false, bytes: req("DELETE", "/assets/a", &wrong, None), want: &[403] },
        Case { what: "policy without token", peer: false, bytes: req("PUT", "/assets/a/policy", &[], Some(b"{}")), want: &[401] },
        Case { what: "policy that is not JSON", peer: false, bytes: req("PUT", "/assets/a/policy", &auth, Some(b"{min")), want: &[400] },
        Case { what: "policy with an unknown field", peer: false, bytes: req("PUT", "/assets/a/policy", &auth, Some(b"{\"copies\":3}")), want: &[400] },
        Case { what: "policy too large", peer: false, bytes: req("PUT", "/assets/a/policy", &auth, Some(&[b' '; 5000])), want: &[413] },
        Case { what: "report without token", peer: true, bytes: req("PUT", "/v1/report", &[], Some(b"{}")), want: &[401] },
        Case { what: "register with a wrong token", peer: true, bytes: req("PUT", "/v1/register", &wrong, Some(register("n1").as_bytes())), want: &[403] },
        Case { what: "GET on the peer listener without token", peer: true, bytes: req("GET", "/v1/report", &[], None), want: &[401] },
        Case { what: "GET /v1/report", peer: true, bytes: req("GET", "/v1/report", &auth, None), want: &[405] },
        Case { what: "unknown peer path", peer: true, bytes: req("PUT", "/v1/nothing", &auth, Some(b"{}")), want: &[404] },
        Case { what: "report that is not JSON", peer: true, bytes: req("PUT", "/v1/report", &auth, Some(b"{not json")), want: &[400] },
        Case { what: "report of an unknown node", peer: true, bytes: req("PUT", "/v1/report", &auth, Some(b"{\"node\":\"zz\",\"session\":1,\"seq\":1,\"full\":true,\"upsert\":[],\"remove\":[],\"rates\":[],\"load\":{\"streams\":0,\"tx_bytes_per_s\":0,\"device_queue\":0},\"tiers\":[]}")), want: &[409] },
        Case { what: "register with a bad name", peer: true, bytes: req("PUT", "/v1/register", &auth, Some(register("a/b").as_bytes())), want: &[400] },
        Case { what: "published with a bad etag", peer: true, bytes: req("PUT", "/v1/published", &auth, Some(b"{\"node\":\"n1\",\"id\":\"a\",\"etag\":\"xyz\",\"size\":1,\"tier\":\"primary\"}")), want: &[400] },
        Case { what: "chunked report", peer: true, bytes: req("PUT", "/v1/report", &[("Authorization", bearer.as_str()), ("Transfer-Encoding", "chunked")], Some(b"2\r\n{}\r\n0\r\n\r\n")), want: &[411] },
        Case { what: "oversized report", peer: true, bytes: format!("PUT /v1/report HTTP/1.1\r\nHost: m\r\nAuthorization: {bearer}\r\nContent-Length: 999999999999\r\n\r\n").into_bytes(), want: &[413] },
        Case { what: "slow head", peer: false, bytes: b"GET /assets/a HTTP/1.1\r\nHost: m\r\n".to_vec(), want: &[408] },
        Case { what: "body shorter than its length", peer: true, bytes: format!("PUT /v1/report HTTP/1.1\r\nHost: m\r\nAuthorization: {bearer}\r\nContent-Length: 100\r\n\r\n{{").into_bytes(), want: &[0] },
    ];
    let mut failures = Vec::new();
    for c in &cases {
        let addr = if c.peer { m.peer_addr() } else { m.addr() };
        let (status, text) = raw(addr, &c.bytes, Duration::from_secs(2));
        if !c.want.contains(&status) {
            failures.push(format!(
                "{}: got {status}, want {:?}:\n{text}",
                c.what, c.want
            ));
            continue;
        }
        if status >= 400 {
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
            if body.trim().is_empty() || body.trim_end().lines().count() != 1 {
                failures.push(format!("{}: the reason is not one line: {body:?}", c.what));
            }
        }
        if status == 401 && !text.contains("WWW-Authenticate: Bearer") {
            failures.push(format!("{}: a 401 without WWW-Authenticate", c.what));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Still serving, nothing panicked, the token never logged.
    let r = m.get("/healthz");
    assert_eq!(r.status(), 200);
    let metrics = m.metrics();
    assert!(
        metrics.sum("reel_manager_unauthorized_total") >= 7,
        "{}",
        metrics.0
    );
    m.assert_no_panic("after the battery");
    assert!(
        !m.stderr().contains(&token),
        "the token reached the manager's log"
    );
}

#[test]
fn a_bad_token_file_or_store_is_refused_at_start_with_the_fix() {
    let dir = REEL.tempdir("reel-manager-start-");
    let short = dir.path().join("short");
    std::fs::write(&short, "abc\n").expect("write");
    let err = REEL.fails(&[
        "manager",
        "--listen",
        "127.0.0.1:0",
        "--peer-listen",
        "127.0.0.1:0",
        "--cluster-token-file",
        short.to_str().expect("utf-8"),
    ]);
    assert!(err.contains("16 to 1024"), "{err}");
    let tok = token_file(dir.path());
    let err = REEL.fails(&[
        "manager",
        "--listen",
        "127.0.0.1:0",
        "--peer-listen",
        "127.0.0.1:0",
        "--cluster-token-file",
        tok.to_str().expect("utf-8"),
        "--store",
        "zookeeper://x",
    ]);
    assert!(err.contains("etcd://HOST:PORT"), "{err}");
}

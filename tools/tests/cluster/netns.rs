//! The cluster on several hosts: each node and the manager in a network namespace of its own,
//! with an address on an access network and one on a separate inter-server network; the test
//! process is a client on the access network only, in the coverage zone of n3.

use reel_testkit::content::content;
use reel_testkit::netns::{self, Net};
use reel_testkit::node::NodeProc;
use reel_testkit::probe;

use super::e2e::{sha, split_location};
use super::*;

/// Runs python3 on `host` to GET `url` with `auth` (if any): the status, or why not.
fn python_get(host: &netns::Host, url: &str, auth: Option<&str>) -> String {
    let header = auth.map_or(String::new(), |a| {
        format!("req.add_header('Authorization', '{a}')")
    });
    let script = format!(
        "import urllib.request, urllib.error\n\
         req = urllib.request.Request('{url}')\n\
         {header}\n\
         try:\n    print(urllib.request.urlopen(req, timeout=3).status)\n\
         except urllib.error.HTTPError as e:\n    print(e.code)\n\
         except Exception as e:\n    print('error', e)\n"
    );
    let mut cmd: Vec<String> = host.wrap();
    cmd.extend(["python3".into(), "-c".into(), script]);
    let out = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("run python3 in the namespace");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn hosts_in_namespaces_route_relay_and_keep_the_inter_server_network_apart() {
    let test = "hosts_in_namespaces_route_relay_and_keep_the_inter_server_network_apart";
    if !probe::runnable(
        test,
        &[&|| REEL.io_uring(), &netns::probe, &|| {
            probe::command("python3", &["--version"], "python3")
        }],
    ) {
        return;
    }
    let dir = REEL.tempdir("reel-cluster-netns-");
    let tok = token_file(dir.path());
    let token = read_token(&tok);
    let mut net = Net::new();
    let mh = net.host("m", 1, true);
    // A host on the access network only, as clients are.
    let client_host = net.host("c", 200, false);
    let hosts: Vec<(String, netns::Host)> = (1..=3)
        .map(|i| {
            (
                format!("n{i}"),
                net.host(&format!("n{i}"), 10 + i as u8, true),
            )
        })
        .collect();
    // The test process (the client) is in n3's coverage zone.
    let zones = dir.path().join("zones.toml");
    std::fs::write(
        &zones,
        format!(
            "[[zone]]\nnode = \"n3\"\nclients = [\"{}/32\"]\n",
            net.client
        ),
    )
    .expect("zones");
    let inter = |h: &netns::Host| h.inter.expect("an inter-server address");
    let manager = ManagerProc::spawn(
        &REEL,
        dir.path(),
        ManagerArgs::new(dir.path(), &tok)
            .listen(
                &format!("{}:7000", mh.access),
                &format!("{}:7100", inter(&mh)),
            )
            .wrap(mh.wrap())
            .flags(&["--config", zones.to_str().expect("utf-8")]),
    );
    let mut nodes = Vec::new();
    for (name, h) in &hosts {
        let (d, args) = node_args(
            dir.path(),
            name,
            &format!("http://{}:7100", inter(&mh)),
            &tok,
            &format!("{}:8100", inter(h)),
            None,
        );
        let args = args.listen(&format!("{}:8080", h.access)).wrap(h.wrap());
        nodes.push(NodeProc::spawn(&REEL, &d, args));
    }
    manager.wait_routable(&["n1", "n2", "n3"], Duration::from_secs(10));
    let bearer = format!("Bearer {token}");

    // An asset on n1 only (uploaded there with the token), one ingested through the manager.
    let far = content(21, (5 << 20) + 12345);
    let r = nodes[0].request(
        "PUT",
        "/assets/far.mp4",
        &[("Authorization", bearer.as_str())],
        Some(&far),
    );
    assert_eq!(r.status(), 201, "{}", r.text());
    let via = content(22, 1 << 20);
    let r = manager.request(
        "PUT",
        "/assets/via.mp4",
        &[("Authorization", bearer.as_str())],
        Some(&via),
    );
    assert_eq!(r.status(), 307, "{}", r.text());
    let (addr, target) = split_location(r.header("location").expect("Location"));
    assert!(target.contains("ticket="), "{target}");
    let up = http::request(addr, "PUT", &target, &[], Some(&via)).expect("PUT at the node");
    assert_eq!(up.status(), 201, "{}", up.text());

    // The client's own node lacks far.mp4: relayed through n3 from n1, whole and in ranges.
    let r = manager.get("/assets/far.mp4");
    assert_eq!(r.status(), 307, "{}", r.text());
    let route = r.header("reel-route").unwrap_or_default().to_string();
    assert!(
        route.starts_with("relay-") && route.contains("node=n3") && route.contains("source=n1"),
        "{route}"
    );
    let (addr, target) = split_location(r.header("location").expect("Location"));
    assert_eq!(
        addr.ip().to_string(),
        hosts[2].1.access.to_string(),
        "sent to n3's access address"
    );
    let whole = http::request(addr, "GET", &target, &[], None).expect("relayed GET");
    assert_eq!(whole.status(), 200, "{}", whole.text());
    assert_eq!(sha(&whole.body), sha(&far), "the relayed bytes differ");
    let n = far.len() as u64;
    for (a, b) in [
        (0, 99),
        (1 << 20, (3 << 20) + 17),
        (n - 1000, n - 1),
        (12_345, 12_345),
    ] {
        let range = format!("bytes={a}-{b}");
        let g = http::request(addr, "GET", &target, &[("Range", range.as_str())], None)
            .expect("ranged relay");
        assert_eq!(g.status(), 206, "{range}: {}", g.text());
        assert_eq!(sha(&g.body), sha(&far[a as usize..=b as usize]), "{range}");
    }
    // n3's clients asked for an asset n3 lacks: the manager learns that demand from n3's
    // next report (where a copy would serve, for placement).
    reel_testkit::poll(Duration::from_secs(3), Duration::from_millis(100), || {
        let l = manager.locations("far.mp4");
        let on_n3 = l["demand"].as_array().is_some_and(|d| {
            d.iter()
                .any(|x| x["node"] == "n3" && x["views_per_h"].as_f64() > Some(0.0))
        });
        if on_n3 {
            Ok(())
        } else {
            Err(format!("no demand of n3 in {l}"))
        }
    });
    // Where the client is n1's: straight there.
    let r = manager.get("/assets/far.mp4?near=n1");
    assert!(
        r.header("reel-route")
            .unwrap_or_default()
            .starts_with("local-"),
        "{:?}",
        r.header("reel-route")
    );

    // The inter-server network is not reachable from a host on the access network only; its
    // listener asks the token of peers that are on it. (Checked from a namespace: this
    // process's own namespace may reach anything through the machine's default route.)
    for (name, h) in &hosts {
        let on_inter = format!("http://{}:8100/healthz", inter(h));
        let got = python_get(&client_host, &on_inter, Some(&bearer));
        assert!(
            got.starts_with("error"),
            "{name}'s inter-server listener answered the access network: {got}"
        );
        let on_access = format!("http://{}:8100/healthz", h.access);
        let got = python_get(&client_host, &on_access, Some(&bearer));
        assert!(
            got.starts_with("error"),
            "{name} listens for peers on its access address: {got}"
        );
        let access = format!("http://{}:8080/healthz", h.access);
        assert_eq!(
            python_get(&client_host, &access, None),
            "200",
            "{name}'s access listener from the access network"
        );
    }
    let n2 = &hosts[1].1;
    let url = format!("http://{}:8100/assets/far.mp4", inter(&hosts[0].1));
    assert_eq!(python_get(n2, &url, None), "401");
    assert_eq!(
        python_get(n2, &url, Some("Bearer wrong-token-wrong-token")),
        "403"
    );
    assert_eq!(python_get(n2, &url, Some(&bearer)), "200");
    manager.assert_no_panic("end");
    for n in &nodes {
        n.assert_no_panic("end");
    }
    drop(nodes);
    drop(manager);
    drop(net);
}

//! Several hosts on one machine: a network namespace per host, each with an address on an
//! access network and (optionally) one on a separate inter-server network. The two networks
//! are bridges in a switch namespace of their own, joined to the hosts by veth pairs; the test
//! process reaches the access network through one more veth pair (an address of its own on it)
//! and has no way onto the inter-server network, as a client would not.
//!
//! Everything is made by the test under names unique to its process and removed on drop
//! (deleting a namespace deletes its veth ends). Needs root and iproute2 (`ip netns`).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A probe for [`crate::probe::runnable`]: `ip netns` works here.
pub fn probe() -> Option<String> {
    if let Some(why) = crate::probe::root() {
        return Some(why);
    }
    let name = format!("rlprobe{}", std::process::id());
    let ok = ip(&["netns", "add", &name]).is_ok();
    let _ = ip(&["netns", "del", &name]);
    (!ok).then(|| {
        "network namespaces are unavailable (`ip netns add` failed; needs root and iproute2)"
            .to_string()
    })
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

/// One host: its namespace and addresses.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub access: Ipv4Addr,
    pub inter: Option<Ipv4Addr>,
}

impl Host {
    /// `ip netns exec NS` — the prefix of a command run on this host.
    pub fn wrap(&self) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns.clone()]
    }
}

/// The networks and hosts of one test; removed on drop.
pub struct Net {
    tag: String,
    switch: String,
    hosts: Vec<Host>,
    /// The test process's own address on the access network.
    pub client: Ipv4Addr,
    root_veth: String,
    /// `10.N.1.0/24` (access) and `10.N.2.0/24` (inter-server).
    pub octet: u8,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Net {
    /// Makes the switch (two bridges) and the test process's access address. The second octet
    /// of the subnets comes from the process id, so concurrent tests do not collide.
    pub fn new() -> Net {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:x}{k}", pid % 0xfffff);
        let octet = (100 + (pid as u64 * 7 + u64::from(k) * 13) % 150) as u8;
        let switch = format!("rls{tag}");
        must(&["netns", "add", &switch]);
        let mut net = Net {
            tag: tag.clone(),
            switch: switch.clone(),
            hosts: Vec::new(),
            client: Ipv4Addr::new(10, octet, 1, 254),
            root_veth: format!("rlc{tag}"),
            octet,
        };
        for br in ["bra", "bri"] {
            must(&["-n", &switch, "link", "add", br, "type", "bridge"]);
            must(&["-n", &switch, "link", "set", br, "up"]);
        }
        // The test process's leg on the access network.
        let peer = format!("rlC{tag}");
        must(&[
            "link",
            "add",
            &net.root_veth,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &switch,
        ]);
        must(&["-n", &switch, "link", "set", &peer, "master", "bra"]);
        must(&["-n", &switch, "link", "set", &peer, "up"]);
        must(&[
            "addr",
            "add",
            &format!("{}/24", net.client),
            "dev",
            &net.root_veth,
        ]);
        must(&["link", "set", &net.root_veth, "up"]);
        net.hosts.clear();
        net
    }

    /// Adds host number `i` (1–200): `10.N.1.i` on the access network and, if `inter`,
    /// `10.N.2.i` on the inter-server network.
    pub fn host(&mut self, name: &str, i: u8, inter: bool) -> Host {
        let ns = format!("rlh{}{name}", self.tag);
        must(&["netns", "add", &ns]);
        must(&["-n", &ns, "link", "set", "lo", "up"]);
        let access = Ipv4Addr::new(10, self.octet, 1, i);
        self.leg(&ns, "a", "bra", access);
        let inter = inter.then(|| {
            let a = Ipv4Addr::new(10, self.octet, 2, i);
            self.leg(&ns, "i", "bri", a);
            a
        });
        let h = Host { ns, access, inter };
        self.hosts.push(h.clone());
        h
    }

    fn leg(&self, ns: &str, kind: &str, bridge: &str, addr: Ipv4Addr) {
        let n = self.hosts.len();
        let inside = format!("eth{kind}");
        let outside = format!("rl{kind}{}{n}", self.tag);
        must(&[
            "link",
            "add",
            &inside,
            "netns",
            ns,
            "type",
            "veth",
            "peer",
            "name",
            &outside,
            "netns",
            &self.switch,
        ]);
        must(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &outside,
            "master",
            bridge,
        ]);
        must(&["-n", &self.switch, "link", "set", &outside, "up"]);
        must(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &inside,
        ]);
        must(&["-n", ns, "link", "set", &inside, "up"]);
    }
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["link", "del", &self.root_veth]);
        let _ = ip(&["netns", "del", &self.switch]);
    }
}

//! The `reel` binary as a user runs it: `format`, `inspect` and `bench device` on file-backed
//! targets, checking outputs, exit codes and that every error names its fix.
//!
//! Temp files live under Cargo's target tmp dir (not /tmp, which may be tmpfs without O_DIRECT).
//! Every test needs io_uring; where the kernel or sandbox disables it, the test says so and
//! skips. The fio comparison runs only where fio is installed, and says so when it is not.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use reel_testkit::loopdev::LoopDevice;
use reel_testkit::node::{NodeArgs, NodeProc};
use reel_testkit::{content, path_str, probe, text, Reel};

const REEL: Reel = reel_testkit::reel!();

/// A file of `bytes` bytes of generated content, written for real.
fn filled_file(dir: &Path, name: &str, bytes: usize) -> PathBuf {
    let p = dir.join(name);
    content::write_file(&p, 0x9E37_79B9_7F4A_7C15, bytes);
    p
}

/// A temp dir for `test`, or `None` (having said why the test skips) without io_uring.
fn io_dir(test: &str) -> Option<tempfile::TempDir> {
    REEL.io_uring_or_skip(test)
        .then(|| REEL.tempdir("reel-cli-"))
}

/// For `test` (`None` without io_uring, having said so): a temp dir (keep it alive), the
/// 64 MiB file volume `reel format` made in it, and what `reel format` printed.
fn fresh_volume(test: &str) -> Option<(tempfile::TempDir, PathBuf, String)> {
    let dir = io_dir(test)?;
    let vol = dir.path().join("vol");
    let stdout = REEL.ok(&["format", path_str(&vol), "--size", "64M"]);
    Some((dir, vol, stdout))
}

/// `reel ARGS` that must fail (`why` says what went wrong if it succeeds): its stderr.
fn refused(args: &[&str], why: &str) -> String {
    let out = REEL.run(args);
    assert!(!out.status.success(), "{why}");
    text(&out.stderr)
}

fn uuid_of(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("uuid"))
        .map(|s| s.trim().to_string())
        .expect("format prints the uuid")
}

#[test]
fn format_creates_a_file_volume_and_inspect_reads_it() {
    let Some((_dir, vol, stdout)) =
        fresh_volume("format_creates_a_file_volume_and_inspect_reads_it")
    else {
        return;
    };
    assert_eq!(uuid_of(&stdout).len(), 36, "{stdout}");
    assert!(stdout.contains("journal"), "{stdout}");
    assert!(stdout.contains("checkpoints"), "{stdout}");
    assert_eq!(std::fs::metadata(&vol).expect("stat").len(), 64 << 20);

    let json = REEL.ok(&["inspect", "--json", path_str(&vol)]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("inspect --json");
    assert_eq!(v["superblock"]["volume_bytes"], 64u64 << 20);
    assert_eq!(v["superblock"]["uuid"], uuid_of(&stdout));
    assert_eq!(v["stats"]["assets"], 0);
    assert_eq!(v["assets"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        v["stats"]["free_bytes"], v["stats"]["capacity_bytes"],
        "a fresh volume is all free"
    );

    assert!(REEL.ok(&["inspect", path_str(&vol)]).contains("assets (0)"));
}

#[test]
fn reformat_needs_force() {
    let Some((_dir, vol, first)) = fresh_volume("reformat_needs_force") else {
        return;
    };

    let err = refused(
        &["format", path_str(&vol), "--size", "64M"],
        "re-format without --force succeeded",
    );
    assert!(
        err.contains("--force"),
        "the message must name --force: {err}"
    );
    assert!(err.contains("Reelstore volume"), "{err}");

    let forced = REEL.ok(&["format", path_str(&vol), "--force"]);
    assert_ne!(
        uuid_of(&first),
        uuid_of(&forced),
        "--force writes a new volume"
    );
}

#[test]
fn filesystem_signature_is_refused_without_force() {
    let Some(dir) = io_dir("filesystem_signature_is_refused_without_force") else {
        return;
    };
    let img = dir.path().join("ext4.img");
    let mut bytes = vec![0u8; 16 << 20];
    bytes[1080] = 0x53;
    bytes[1081] = 0xEF;
    std::fs::write(&img, &bytes).expect("write image");

    let err = refused(
        &["format", path_str(&img)],
        "formatted over an ext4 signature",
    );
    assert!(
        err.contains("ext2/3/4"),
        "the message must name what is there: {err}"
    );
    assert!(
        err.contains("--force"),
        "the message must name --force: {err}"
    );
    let after = std::fs::read(&img).expect("read image");
    assert_eq!(
        after[1080..1082],
        [0x53, 0xEF],
        "a refused format wrote anyway"
    );

    let out = REEL.run(&["format", path_str(&img), "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn bad_arguments_are_clear_errors() {
    let dir = REEL.tempdir("reel-cli-");
    let vol = dir.path().join("vol");

    let out = REEL.run(&["format", path_str(&vol), "--size", "4X"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("invalid size \"4X\""), "{err}");
    assert!(
        err.contains("4G"),
        "the message must show an example: {err}"
    );
    assert!(!vol.exists(), "a rejected command created the file");

    if !REEL.io_uring_or_skip("bad_arguments_are_clear_errors (I/O part)") {
        return;
    }
    let err = REEL.fails(&["format", path_str(&vol)]);
    assert!(err.contains("--size"), "{err}");

    let out = REEL.run(&["inspect", path_str(&vol)]);
    assert!(!out.status.success());
    assert!(!text(&out.stderr).is_empty());

    let junk = filled_file(dir.path(), "junk", 1 << 20);
    let out = REEL.run(&["inspect", path_str(&junk)]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("reel format"), "{err}");

    let missing = dir.path().join("missing");
    // (target, flags, what the error says)
    for (target, args, expected) in [
        (&junk, &["--bs", "1000"][..], "multiple of 512"),
        (&junk, &["--size", "2M"], "smaller --size"),
        (&missing, &[], "does not exist"),
        (&junk, &["--runtime", "0"], "greater than zero"),
    ] {
        let out = bench_device(target, args);
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(expected));
    }
}

/// `reel bench device TARGET ARGS`, its output.
fn bench_device(target: &Path, args: &[&str]) -> Output {
    REEL.run(&[&["bench", "device", path_str(target)], args].concat())
}

fn check_report(stdout: &[u8], rw: &str, bs: u64) {
    let v: serde_json::Value = serde_json::from_slice(stdout).expect("bench --json is JSON");
    let job = &v["jobs"][0];
    assert_eq!(job["jobname"], "reel");
    assert_eq!(job["job options"]["rw"], rw);
    let read = &job["read"];
    let iops = read["iops"].as_f64().expect("iops");
    assert!(iops > 0.0, "iops {iops}");
    let ios = read["total_ios"].as_u64().expect("total_ios");
    assert!(ios > 0);
    assert_eq!(read["io_bytes"].as_u64(), Some(ios * bs));
    assert!(read["bw_bytes"].as_u64().expect("bw_bytes") > 0);
    assert!(read["runtime"].as_u64().expect("runtime") >= 400);
    let clat = &read["clat_ns"];
    assert_eq!(clat["N"].as_u64(), Some(ios));
    let p50 = clat["percentile"]["50.000000"].as_u64().expect("p50");
    let p99 = clat["percentile"]["99.000000"].as_u64().expect("p99");
    let min = clat["min"].as_u64().expect("min");
    let max = clat["max"].as_u64().expect("max");
    assert!(0 < p50 && p50 <= p99, "p50 {p50} p99 {p99}");
    assert!(min <= p50 && p99 <= max + max / 500 + 1, "{clat}");
}

#[test]
fn bench_device_prints_fio_shaped_json() {
    let Some(dir) = io_dir("bench_device_prints_fio_shaped_json") else {
        return;
    };
    let data = filled_file(dir.path(), "data", 16 << 20);
    let out = bench_device(
        &data,
        &[
            "--rw",
            "randread",
            "--bs",
            "4k",
            "--iodepth",
            "8",
            "--runtime",
            "1",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    check_report(&out.stdout, "randread", 4096);

    let out = bench_device(
        &data,
        &[
            "--rw",
            "read",
            "--bs",
            "64k",
            "--runtime",
            "500ms",
            "--iodepth-batch-submit",
            "0",
            "--idle-poll",
            "50us",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    check_report(&out.stdout, "read", 64 << 10);

    let out = bench_device(&data, &["--runtime", "500ms"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("IOPS="), "{stdout}");
    assert!(stdout.contains("clat percentiles"), "{stdout}");
}

#[test]
fn bench_device_compare_fio() {
    if !REEL.io_uring_or_skip("bench_device_compare_fio") {
        return;
    }
    if !probe::runnable("bench_device_compare_fio", &[&probe::fio]) {
        return;
    }
    let dir = REEL.tempdir("reel-cli-");
    let data = filled_file(dir.path(), "data", 16 << 20);
    let out = bench_device(
        &data,
        &[
            "--rw",
            "randread",
            "--iodepth",
            "8",
            "--runtime",
            "500ms",
            "--runs",
            "1",
            "--compare-fio",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["runs"]["reel"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["runs"]["fio"].as_array().map(Vec::len), Some(1));
    assert!(v["median"]["fio"]["iops"].as_f64().expect("fio iops") > 0.0);
    assert!(v["ratio"]["iops"].as_f64().expect("ratio") > 0.0);
    let fio_command = v["fio_command"].as_array().expect("fio command");
    for arg in [
        "--fixedbufs=1",
        "--iodepth_batch_submit=1",
        "--iodepth=8",
        "--norandommap",
    ] {
        assert!(fio_command.iter().any(|a| a == arg), "{arg} missing");
    }
}

#[test]
fn compare_fio_without_fio_names_the_install() {
    let Some(dir) = io_dir("compare_fio_without_fio_names_the_install") else {
        return;
    };
    let data = filled_file(dir.path(), "data", 1 << 20);
    let out = bench_device(&data, &["--compare-fio", "--fio-bin", "/nonexistent/fio"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("apt-get install fio"), "{err}");
}

/// `reel demo --single`, shortened: two file-backed tiers, a node, ingest over HTTP and straight
/// into the secondary, a paced skewed load with a live line per second, a summary
/// in which every response was verified, promotions (or at least write-backs) counted, and the
/// temporary directory removed.
#[test]
fn demo_runs_end_to_end_and_cleans_up() {
    let Some(parent) = io_dir("demo_runs_end_to_end_and_cleans_up") else {
        return;
    };
    let out = REEL.run(&[
        "demo",
        "--single",
        "--dir",
        path_str(parent.path()),
        "--duration",
        "10",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{}",
        stdout,
        text(&out.stderr)
    );
    for step in [
        "back catalogue: ",
        "new releases: ",
        "the hot set shifts",
        "reel demo: summary",
        "primary byte-hit ratio",
        ": 0 wrong bytes",
        "errors       0",
        "scrubbed",
        "reel demo: done",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    // One live line per second: "   7s    640     98 ...".
    let live = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| {
            w.strip_suffix('s')
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .count();
    assert!(live >= 8, "{live} live lines in:\n{stdout}");
    // "  migrations   10 promotions, 4 demotions, 4 evictions, 7 write-backs, 0 failures; ..."
    let summary_line = |key: &str| {
        stdout
            .lines()
            .skip_while(|l| !l.starts_with("reel demo: summary"))
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("no {key:?} line in:\n{stdout}"))
            .to_string()
    };
    let migrations = summary_line("migrations");
    let count = |what: &str| -> u64 {
        migrations
            .split([',', ';'])
            .filter_map(|part| {
                part.trim()
                    .trim_start_matches("migrations")
                    .trim()
                    .split_once(' ')
            })
            .find(|(_, name)| *name == what)
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or_else(|| panic!("no count of {what} in {migrations:?}"))
    };
    let (promotions, write_backs) = (count("promotions"), count("write-backs"));
    // The demo waits for the new releases' write-backs before the load starts.
    assert!(write_backs >= 1, "{migrations}");
    // Promotions need the offered load to arrive: on a machine too slow (or too busy) for it,
    // the hot titles may not reach the promote threshold within 10 s.
    let load = summary_line("load");
    let achieved: f64 = load
        .split(", ")
        .find_map(|p| p.strip_suffix(" offered"))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no rate in {load:?}"));
    // Bytes copied beyond the new releases' write-backs: a promotion under way. On a busy
    // disk (CI's parallel tests) copy I/Os slower than --copy-slow-io pace the copies down to
    // 1/64 of the budget, so a promotion the policy decided may not finish within 10 s.
    // The size (e.g. "61.59 MiB") just before `marker` in `line`, in MiB.
    let mib_before = |line: &str, marker: &str| -> f64 {
        let (head, _) = line
            .split_once(marker)
            .unwrap_or_else(|| panic!("no {marker:?} in {line:?}"));
        let mut words = head.split_whitespace().rev();
        let unit = match words.next() {
            Some("B") => 1.0 / 1048576.0,
            Some("KiB") => 1.0 / 1024.0,
            Some("MiB") => 1.0,
            Some("GiB") => 1024.0,
            other => panic!("unknown unit {other:?} before {marker:?} in {line:?}"),
        };
        let v: f64 = words
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number before {marker:?} in {line:?}"));
        v * unit
    };
    let copied = mib_before(&migrations, " copied between the tiers");
    let released = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("new releases: "))
        .map(|l| mib_before(l, " uploaded with HTTP PUT"))
        .unwrap_or_else(|| panic!("no new releases line in:\n{stdout}"));
    let promoting = copied > released + 1.0;
    if achieved >= 50.0 {
        assert!(
            promotions >= 1 || promoting,
            "no promotion started at {achieved} req/s:\n{stdout}"
        );
    } else {
        eprintln!("NOTE: only {achieved} req/s reached; {promotions} promotions, {write_backs} write-backs");
    }
    // The temporary directory it printed is gone, and nothing else was left behind.
    let made = stdout
        .lines()
        .find_map(|l| l.strip_prefix("reel demo: a node with two file-backed tiers in "))
        .and_then(|l| l.split(" (").next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no directory in:\n{stdout}"));
    assert!(made.starts_with(parent.path()), "{}", made.display());
    assert!(!made.exists(), "{} is left behind", made.display());
    let left: Vec<_> = std::fs::read_dir(parent.path())
        .expect("read dir")
        .collect();
    assert!(left.is_empty(), "the demo leaves nothing behind: {left:?}");
}

/// The address in `line` after `marker` (`http://ADDR…`).
fn addr_after(line: &str, marker: &str) -> Option<std::net::SocketAddr> {
    line.split(marker)
        .nth(1)?
        .split_whitespace()
        .next()?
        .trim_start_matches("http://")
        .parse()
        .ok()
}

/// Whether something accepts connections at `addr`.
fn listening(addr: std::net::SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500)).is_ok()
}

/// `reel demo` as the README runs it, shortened: a manager, a library node and two edges as
/// child processes, titles ingested through the manager, each edge's clients relayed through
/// it, a live block per second, a summary with every response verified and nothing failed, the
/// children stopped and the directory removed.
#[test]
fn cluster_demo_runs_end_to_end_and_cleans_up() {
    let Some(parent) = io_dir("cluster_demo_runs_end_to_end_and_cleans_up") else {
        return;
    };
    let out = REEL.run(&[
        "demo",
        "--dir",
        path_str(parent.path()),
        "--duration",
        "5",
        "--assets",
        "12",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{}",
        stdout,
        text(&out.stderr)
    );
    for step in [
        "ingest: 12 titles",
        "12 on lib",
        "reel demo: summary",
        ": 0 wrong bytes",
        "errors       0 ",
        "reel demo: done",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    // A block per second: "     3s  manager  12 assets; routes/s: relay-primary 40".
    let blocks = stdout.lines().filter(|l| l.contains("s  manager ")).count();
    assert!(blocks >= 4, "{blocks} live blocks in:\n{stdout}");
    // "  relayed      240 requests (100%), …; 0 served by the client's own edge from its copy"
    let relayed = stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("relayed"))
        .unwrap_or_else(|| panic!("no relayed line in:\n{stdout}"));
    let count = |s: &str| -> u64 {
        s.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let local = relayed
        .split("; ")
        .nth(1)
        .map(count)
        .unwrap_or_else(|| panic!("no local count in {relayed:?}"));
    assert!(
        count(relayed) + local > 0,
        "no request went through an edge:\n{stdout}"
    );
    // The children are gone: nothing listens where the manager and the nodes did.
    let manager = stdout
        .lines()
        .find_map(|l| addr_after(l, "  manager http://"))
        .unwrap_or_else(|| panic!("no manager address in:\n{stdout}"));
    assert!(!listening(manager), "the manager still runs at {manager}");
    for node in ["lib", "edge1", "edge2"] {
        let addr = stdout
            .lines()
            .find_map(|l| addr_after(l, &format!("  {node:<6} http://")))
            .unwrap_or_else(|| panic!("no address of {node} in:\n{stdout}"));
        assert!(!listening(addr), "{node} still runs at {addr}");
    }
    let left: Vec<_> = std::fs::read_dir(parent.path())
        .expect("read dir")
        .collect();
    assert!(left.is_empty(), "the demo leaves nothing behind: {left:?}");
}

/// `reel demo --keep` leaves the cluster up after the summary, printing URLs that work; SIGTERM
/// then stops every child and keeps the directory.
#[test]
fn cluster_demo_keep_serves_until_stopped() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let Some(parent) = io_dir("cluster_demo_keep_serves_until_stopped") else {
        return;
    };
    let mut child = Command::new(REEL.bin)
        .args([
            "demo",
            "--keep",
            "--duration",
            "2",
            "--assets",
            "6",
            "--dir",
        ])
        .arg(parent.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn reel demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut manager = None;
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            continue;
        };
        if let Some(a) = addr_after(&line, "  manager   http://") {
            manager = Some(a);
        }
        let done = line.contains("Ctrl-C: stops");
        seen.push(line);
        if done {
            break;
        }
    }
    let Some(manager) = manager.filter(|_| seen.iter().any(|l| l.contains("Ctrl-C: stops"))) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no --keep instructions:\n{}", seen.join("\n"));
    };
    // The printed curl works: the manager redirects, the edge serves.
    let r = reel_testkit::http::request(manager, "GET", "/assets/demo/title-00.mp4", &[], None)
        .expect("GET at the manager");
    assert_eq!(r.status(), 307, "{}", r.text());
    let pid = child.id().to_string();
    let st = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("reel demo --keep did not stop within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        seen.push(line);
    }
    let all = seen.join("\n");
    assert!(status.success(), "exit {status}:\n{all}");
    assert!(!listening(manager), "the manager still runs:\n{all}");
    assert!(all.contains("kept "), "{all}");
    assert!(all.contains("reel demo: done"), "{all}");
}

/// A real filesystem made by mkfs.ext4 (not hand-planted bytes) is recognised and refused.
#[test]
fn a_real_ext4_filesystem_is_refused() {
    let Some(dir) = io_dir("a_real_ext4_filesystem_is_refused") else {
        return;
    };
    let img = dir.path().join("real-ext4.img");
    std::fs::write(&img, vec![0u8; 32 << 20]).expect("write image");
    match Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&img)
        .status()
    {
        Ok(s) if s.success() => {}
        other => {
            probe::skip(
                "a_real_ext4_filesystem_is_refused",
                &format!("mkfs.ext4 unavailable ({other:?}); install e2fsprogs"),
            );
            return;
        }
    }
    let err = refused(
        &["format", path_str(&img)],
        "formatted over a real ext4 filesystem",
    );
    assert!(err.contains("ext2/3/4"), "{err}");
}

/// `reel format` on a block device: size from BLKGETSIZE64, logical block size from the device,
/// refusal without --force, inspect after. Needs root for losetup; says so when skipping.
#[test]
fn format_and_inspect_a_loop_device() {
    let Some(dir) = io_dir("format_and_inspect_a_loop_device") else {
        return;
    };
    let Some(loopdev) =
        LoopDevice::attach("format_and_inspect_a_loop_device", dir.path(), 64 << 20)
    else {
        return;
    };
    let dev = path_str(&loopdev.path).to_string();

    REEL.ok(&["format", &dev]);
    let json = REEL.ok(&["inspect", &dev, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("inspect JSON");
    let volume_bytes = v["superblock"]["volume_bytes"]
        .as_u64()
        .expect("volume_bytes");
    assert_eq!(
        volume_bytes,
        64 << 20,
        "the size comes from the device: {v}"
    );
    let err = refused(
        &["format", &dev],
        "re-formatted a device holding a volume without --force",
    );
    assert!(err.contains("--force"), "{err}");
    // A --size larger than the device is a clear error.
    let err = REEL.fails(&["format", &dev, "--size", "1G", "--force"]);
    assert!(err.contains("larger than the device"), "{err}");
}

#[test]
fn node_refuses_an_unformatted_device_and_a_device_in_use() {
    let Some(dir) = io_dir("node_refuses_an_unformatted_device_and_a_device_in_use") else {
        return;
    };
    // A file that holds no volume: the error names `reel format`.
    let raw = filled_file(dir.path(), "raw.img", 8 << 20);
    let err = refused(
        &[
            "node",
            "--primary",
            path_str(&raw),
            "--listen",
            "127.0.0.1:0",
        ],
        "an unformatted device must not be served",
    );
    assert!(
        err.contains("reel format"),
        "the error names the fix: {err}"
    );

    // No --primary at all.
    let err = REEL.fails(&["node", "--listen", "127.0.0.1:0"]);
    assert!(err.contains("--primary"), "{err}");

    // A volume another node holds: the second node fails with "in use", the first keeps going.
    let vol = dir.path().join("vol.img");
    REEL.format(&vol, "256M");
    let mut first = NodeProc::spawn(&REEL, dir.path(), NodeArgs::new(&vol).shards(1));
    let out = REEL.run(&[
        "node",
        "--primary",
        path_str(&vol),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(
        first.alive(),
        "the first node keeps going: {}",
        first.stderr()
    );
    first.kill9();
    assert!(
        !out.status.success(),
        "a volume in use must not be opened twice"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("in use"),
        "the error says the device is in use: {err}"
    );

    // A bad config file names the key.
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, "primary = \"x\"\nstream_depth = \"deep\"\n").expect("write config");
    let err = REEL.fails(&["node", "--config", path_str(&cfg)]);
    assert!(err.contains("stream_depth"), "{err}");
}

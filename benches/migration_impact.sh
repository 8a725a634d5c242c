#!/usr/bin/env bash
# Measures what background migration costs the foreground: one `reel node` with a primary and a
# secondary volume (files) serves a steady load of short range requests over a "hot" set on the
# primary, with the scheduler idle and while it promotes a "cold" set from the secondary at its
# full copy budget; it reports p50/p99 latency and throughput of each and the ratios
# (with migration) / (without).
#
# Two designs (REEL_MIG_DESIGN):
#   interleaved (default with the open loop)  one long `reel load` run at a fixed rate; every
#       REEL_MIG_SECONDS the script pauses or resumes migration (PUT /migration?paused=..), the
#       first window paused, for REEL_MIG_REPEATS migrating windows. `reel load --latency-log`
#       records each request's intended start and latency; a request counts as "migrating"
#       from a resume until REEL_MIG_GUARD s after the next pause (what the copies leave behind,
#       the device writing their data back, is charged to migration), as "idle" in the rest of
#       each paused window. Both conditions thus share the same minutes of a noisy host, which
#       alternating whole runs did not: there, two identical runs differed by up to 25% in p99.
#       The report (benches/interleaved_report.py) gives pooled percentiles per condition, the
#       p99 ratio's 90% interval from resampling whole cycles, the per-cycle ratios, and an A/A
#       line (idle windows of even against odd cycles: the noise floor). Commits fall where
#       they fall (REEL_MIG_NODE_ARGS="--migration-commit-interval 120s" puts one in about
#       every other migrating window, 5x denser than the default).
#   alternating (the closed loop's only one)  separate runs per condition, described below.
#
# Setup: primary and secondary volumes sized for all assets; the node runs with
#   reel node --primary P --secondary S --listen 127.0.0.1:PORT --shards N --copy-budget B
# The hot set (default 16 x 32 MiB) is uploaded and pinned to the primary; the cold set (default
# 128 MiB each, as many as the budget copies in about 1.3x the run time, so copying lasts the
# whole run) is uploaded and pinned to the secondary. The script waits until every write-back is
# done and the cold set's primary copies are dropped (per /assets/{id}/info and the policy's
# primary bytes), then checks the sha256 of a hot and a cold asset and a 1 MiB range.
#
# Load: every request is a random 1 MiB-aligned 1 MiB range of a random hot asset, so requests
# are many and short and p99 is meaningful. Two kinds (REEL_MIG_LOAD):
#   open (default)  the issue's "steady load": `reel load`, open loop, Poisson arrivals at a
#                   fixed rate (REEL_MIG_RATE, default 60% of the closed-loop maximum measured
#                   in the warm-up), each latency timed from the request's intended start (no
#                   coordinated omission), 32 connections. Throughput is what completed of what
#                   was offered; p99 includes any queueing the copies cause.
#   closed          wrk (2 threads, 16 connections) as fast as it goes: saturation. Every device
#                   byte the copy takes is then a byte the foreground loses, so this measures the
#                   cost at saturation, not the issue's target. A Lua done() hook prints the
#                   exact totals and wrk's latency percentiles.
# Two conditions, alternated (a b, b a, a b, ...) for R repeats:
#   (a) idle        nothing pinned differently; the migration counters must not move
#   (b) migrating   the cold set is pinned to the primary; wrk starts once the first promotion
#                   has started, and the copies run at the budget for the whole run (checked:
#                   promotions must still be pending at the end). Afterwards the cold set is
#                   pinned back to the secondary and the script waits for the drops.
# During (b) reel_migration_bytes_total is sampled every 0.5 s: the bytes copied during the run
# give the achieved copy rate, shown against the budget. The counter moves by one whole asset
# per finished copy, so the rate over the run is exact to about one asset (128 MiB) per run;
# the rate from the first to the last finished copy within the run is shown too. Before the
# measurement, one run of the same length promotes with no foreground load, for the copy rate
# the scheduler reaches alone.
#
# Copies serve at once and are made durable together (a device flush pair) once the node has
# served no one for 2 s, or under load when the oldest has waited --migration-commit-interval
# (default 10 min; e.g. REEL_MIG_NODE_ARGS="--migration-commit-interval 150s" with
# REEL_MIG_SECONDS=300 puts one into every migrating run); each run records how many commits
# fell into it (reel_migration_commits_total), and the report gives the p99 ratio of repeats with
# and without one separately.
#
# Prints, per run, the numbers (stderr), then a markdown table (stdout): requests/s, MiB/s,
# p50, p99 and p99.9 latency per condition (medians over the repeats), the ratios (b)/(a) against
# the targets (throughput >= 0.95, p99 <= 1.10), the achieved copy rate, the host's load
# average and CPU use, and the read/write bandwidth and busy time of the block device under the
# volumes (/proc/diskstats, all processes) during the runs. Everything (wrk, the node's shards,
# the copy thread, both volumes) shares this host and, unless REEL_MIG_DIR says otherwise, one
# device: CPU and device contention are part of what is measured, as are other jobs on the host.
#
# Everything (node, poller, volumes) is removed on exit, Ctrl-C included.
#
# Usage: benches/migration_impact.sh [--quick] [--help]
#   --quick   sanity run: 8 s per run, 1 repeat, hot set 8 x 32 MiB, cold assets of 64 MiB
#             (any REEL_MIG_* variable still overrides)
#
# Environment (all optional):
#   REEL_MIG_DESIGN       interleaved (default with REEL_MIG_LOAD=open) or alternating
#   REEL_MIG_SECONDS      length of each window (interleaved) or run (alternating) (default 30)
#   REEL_MIG_REPEATS      migrating windows (interleaved, default 10) or runs of each
#                         condition (alternating, default 3)
#   REEL_MIG_GUARD        interleaved: seconds after each pause still counted as migrating
#                         (default 10; below REEL_MIG_SECONDS)
#   REEL_MIG_BUDGET       reel node --copy-budget, bytes/s with k/M/G suffixes = powers of 1024
#                         (default 128M; must not be 0 = unlimited)
#   REEL_MIG_LOAD         open (default: reel load at a fixed rate) or closed (wrk, saturating)
#   REEL_MIG_RATE         open loop: requests/s (default: 60% of the warm-up's closed-loop rate)
#   REEL_MIG_OPEN_CONNS   open loop: reel load connections (default 32)
#   REEL_MIG_CONNS        wrk connections (default 16; the warm-up always uses wrk)
#   REEL_MIG_THREADS      wrk threads (default 2)
#   REEL_MIG_HOT_COUNT    hot assets (default 16)
#   REEL_MIG_HOT_MB       size of each hot asset in MiB (default 32)
#   REEL_MIG_COLD_MB      size of each cold asset in MiB (default 128)
#   REEL_MIG_COLD_COUNT   cold assets (default: enough for budget x (1.3 x seconds + 3 s + lead),
#                         interleaved budget x (1.15 x repeats x seconds + 3 s))
#   REEL_MIG_RANGE_KB     size of each range request in KiB (default 1024; offsets are multiples)
#   REEL_MIG_LEAD         seconds between the first promotion's start and wrk's start in (b)
#                         (default 0: the run includes the copy thread's initial burst, one
#                         second of budget copied as fast as the devices go, as happens whenever
#                         migration starts after a pause; e.g. 3 to measure the steady state only)
#   REEL_MIG_SHARDS       reel node --shards (default 2)
#   REEL_MIG_NODE_ARGS    more reel node flags, e.g. "--copy-yield-depth 0" or
#                         "--migration-commit-interval 200ms" (to measure what they buy)
#   REEL_MIG_DIR          parent of the scratch directory (default /var/tmp; not tmpfs: the
#                         volumes need O_DIRECT)
#   REEL_MIG_RAM          primary or secondary: that tier's volume is a loop device over a file
#                         in /dev/shm instead of a file in REEL_MIG_DIR (root, losetup): a
#                         stand-in, on a host with one disk, for DESIGN's deployment of the two
#                         tiers on separate devices. "primary": the foreground reads and the
#                         copies' writes go to RAM and the copies' reads to the disk, so what is
#                         left is what the node itself costs the foreground (CPU, commits, its
#                         scheduling); "secondary": the copies' reads come from RAM and their
#                         writes share the disk with the foreground reads, the device contention
#                         a real primary sees from promotions. RAM needed: one volume.
#   REEL_MIG_REEL         use this reel binary instead of building one with cargo
#   REEL_MIG_KEEP         1 to keep the scratch directory (node log, wrk outputs, raw results)
#
# Needs: wrk, curl, python3; cargo unless REEL_MIG_REEL is set. Disk: about twice the hot plus
# cold bytes: alternating by default about 10 GiB of volume files and 4-5 minutes; interleaved
# by default (128M budget, 10 x 30 s) about 95 GiB and 20 minutes: e.g. REEL_MIG_BUDGET=64M
# halves that. Each starts with uploads, write-backs, one copy-alone run and a warm-up.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ME=migration_impact.sh

die() { echo "$ME: error: $*" >&2; exit 1; }
note() { echo "$ME: $*" >&2; }

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) die "unknown argument $arg (usage: benches/migration_impact.sh [--quick] [--help])" ;;
    esac
done

LOAD_KIND="${REEL_MIG_LOAD:-open}"
case "$LOAD_KIND" in open|closed) ;; *) die "REEL_MIG_LOAD must be open or closed, got '$LOAD_KIND'" ;; esac
if [ "$LOAD_KIND" = open ]; then DESIGN="${REEL_MIG_DESIGN:-interleaved}"; else DESIGN="${REEL_MIG_DESIGN:-alternating}"; fi
case "$DESIGN" in
    interleaved) [ "$LOAD_KIND" = open ] || die "REEL_MIG_DESIGN=interleaved needs REEL_MIG_LOAD=open (wrk keeps no per-request log)" ;;
    alternating) ;;
    *) die "REEL_MIG_DESIGN must be interleaved or alternating, got '$DESIGN'" ;;
esac
if [ "$QUICK" = 1 ]; then
    d_secs=8 d_reps=1 d_hot_count=8 d_hot_mb=32 d_cold_mb=64 d_guard=2
    [ "$DESIGN" = interleaved ] && d_reps=2
else
    d_secs=30 d_reps=3 d_hot_count=16 d_hot_mb=32 d_cold_mb=128 d_guard=10
    [ "$DESIGN" = interleaved ] && d_reps=10
fi
SECONDS_RUN="${REEL_MIG_SECONDS:-$d_secs}"
REPEATS="${REEL_MIG_REPEATS:-$d_reps}"
GUARD="${REEL_MIG_GUARD:-$d_guard}"
BUDGET="${REEL_MIG_BUDGET:-128M}"
CONNS="${REEL_MIG_CONNS:-16}"
THREADS="${REEL_MIG_THREADS:-2}"
HOT_COUNT="${REEL_MIG_HOT_COUNT:-$d_hot_count}"
HOT_MB="${REEL_MIG_HOT_MB:-$d_hot_mb}"
COLD_MB="${REEL_MIG_COLD_MB:-$d_cold_mb}"
RANGE_KB="${REEL_MIG_RANGE_KB:-1024}"
SHARDS="${REEL_MIG_SHARDS:-2}"
KEEP="${REEL_MIG_KEEP:-0}"
LEAD="${REEL_MIG_LEAD:-0}"
OPEN_CONNS="${REEL_MIG_OPEN_CONNS:-32}"
RATE="${REEL_MIG_RATE:-}"
[ -z "$RATE" ] || [[ "$RATE" =~ ^[1-9][0-9]*$ ]] || die "REEL_MIG_RATE must be a positive whole number of requests/s, got '$RATE'"
[[ "$OPEN_CONNS" =~ ^[1-9][0-9]*$ ]] || die "REEL_MIG_OPEN_CONNS must be a positive whole number, got '$OPEN_CONNS'"

for v in SECONDS_RUN REPEATS CONNS THREADS HOT_COUNT HOT_MB COLD_MB RANGE_KB SHARDS; do
    name="REEL_MIG_${v%_RUN}"
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive whole number, got '${!v}'"
done
[[ "$GUARD" =~ ^[0-9]+$ ]] && [ "$GUARD" -lt "$SECONDS_RUN" ] \
    || die "REEL_MIG_GUARD must be a whole number of seconds below REEL_MIG_SECONDS ($SECONDS_RUN), got '$GUARD'"
[[ "$LEAD" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "REEL_MIG_LEAD must be a number of seconds >= 0, got '$LEAD'"
[ "$CONNS" -ge "$THREADS" ] || die "REEL_MIG_CONNS ($CONNS) must be >= REEL_MIG_THREADS ($THREADS) for wrk"
[ $((HOT_MB * 1024)) -ge "$RANGE_KB" ] || die "REEL_MIG_RANGE_KB ($RANGE_KB) is larger than a hot asset ($HOT_MB MiB)"

# The budget in bytes/s, with the node's suffix rules (powers of 1024).
BUDGET_BPS="$(python3 - "$BUDGET" <<'PY'
import re, sys
m = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*", sys.argv[1])
if not m:
    sys.exit(1)
print(int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()])
PY
)" || die "REEL_MIG_BUDGET must be a size such as 128M or 134217728, got '$BUDGET'"
[ "$BUDGET_BPS" -gt 0 ] || die "REEL_MIG_BUDGET must be > 0: 0 means unlimited copies, which this benchmark does not measure"
BUDGET_MIBPS="$(python3 -c "print(f'{$BUDGET_BPS / 1048576:g}')")"

# Enough cold bytes that the copies at the budget outlast the run: 1.3x the run plus 3 s (the
# copy thread's 1 s burst, the wait for the first promotion, scheduler ticks) plus the lead.
if [ -n "${REEL_MIG_COLD_COUNT:-}" ]; then
    COLD_COUNT="$REEL_MIG_COLD_COUNT"
    [[ "$COLD_COUNT" =~ ^[1-9][0-9]*$ ]] || die "REEL_MIG_COLD_COUNT must be a positive whole number, got '$COLD_COUNT'"
elif [ "$DESIGN" = interleaved ]; then
    # Copies run in every migrating window (REPEATS x SECONDS_RUN in all): 1.15x that plus 3 s.
    COLD_COUNT="$(python3 -c "import math; print(max(2, math.ceil($BUDGET_BPS * (1.15 * $REPEATS * $SECONDS_RUN + 3) / ($COLD_MB << 20))))")"
else
    COLD_COUNT="$(python3 -c "import math; print(max(2, math.ceil($BUDGET_BPS * (1.3 * $SECONDS_RUN + 3 + $LEAD) / ($COLD_MB << 20))))")"
fi
HOT_BYTES=$((HOT_COUNT * HOT_MB << 20))
COLD_BYTES=$((COLD_COUNT * COLD_MB << 20))
RANGE_BYTES=$((RANGE_KB << 10))

# --- prerequisites -------------------------------------------------------------------------
missing=()
for tool in wrk curl python3; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    die "missing: ${missing[*]}; install with: apt-get install -y ${missing[*]}"
fi

if [ -n "${REEL_MIG_REEL:-}" ]; then
    REEL="$REEL_MIG_REEL"
else
    command -v cargo >/dev/null || die "cargo is not on PATH (install Rust from https://rustup.rs), or set REEL_MIG_REEL=/path/to/reel"
    note "building reel (release)"
    (cd "$ROOT" && cargo build --release -p reel-tools --bin reel >&2) || die "cargo build failed"
    REEL="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/reel"
fi
[ -x "$REEL" ] || die "reel binary not found or not executable at $REEL"
if [ "$LOAD_KIND" = open ]; then
    "$REEL" load --help >/dev/null 2>&1 || die "$REEL has no 'load' subcommand; build a newer reel or set REEL_MIG_LOAD=closed"
fi
"$REEL" node --help 2>/dev/null | grep -q -- '--copy-budget' \
    || die "$REEL has no 'node' subcommand with --secondary/--copy-budget ('$REEL node --help'); build a reel with tiering"

# --- scratch space -------------------------------------------------------------------------
PARENT="${REEL_MIG_DIR:-/var/tmp}"
[ -d "$PARENT" ] || die "REEL_MIG_DIR=$PARENT is not a directory"
[ "$(stat -f -c %T "$PARENT")" = tmpfs ] \
    && die "$PARENT is on tmpfs, which has no O_DIRECT (reel volumes); set REEL_MIG_DIR to a directory on ext4/xfs"

DATA_MIB=$(((HOT_BYTES + COLD_BYTES) >> 20))
# Both volumes hold every asset (the primary all of them while the cold set is promoted). The
# metadata (checkpoints + journal) is about 3% of a volume and the policy keeps 2% free for
# uploads and promotes freely only while more than 5% is free: leave 1/8 plus 256 MiB.
VOL_MIB=$((DATA_MIB + DATA_MIB / 8 + 256))
RAM_TIER="${REEL_MIG_RAM:-}"
case "$RAM_TIER" in
    "") DISK_VOLS=2 ;;
    primary|secondary)
        DISK_VOLS=1
        [ "$(id -u)" = 0 ] || die "REEL_MIG_RAM=$RAM_TIER needs root (losetup); run as root or unset it"
        command -v losetup >/dev/null || die "REEL_MIG_RAM=$RAM_TIER needs losetup (apt-get install -y util-linux)"
        SHM_AVAIL_MIB=$(( $(df --output=avail -B1M /dev/shm | tail -1) ))
        RAM_AVAIL_MIB=$(( $(awk '/^MemAvailable:/ {print $2}' /proc/meminfo) / 1024 ))
        # The rest of the host (node, load generator, page cache of the secondary) keeps 3 GiB.
        [ "$SHM_AVAIL_MIB" -ge "$VOL_MIB" ] && [ "$RAM_AVAIL_MIB" -ge $((VOL_MIB + 3072)) ] \
            || die "REEL_MIG_RAM=$RAM_TIER: a $VOL_MIB MiB volume in RAM needs that much free in /dev/shm ($SHM_AVAIL_MIB MiB) and 3 GiB more available memory ($RAM_AVAIL_MIB MiB); lower REEL_MIG_REPEATS / REEL_MIG_SECONDS / REEL_MIG_BUDGET"
        ;;
    *) die "REEL_MIG_RAM must be primary or secondary (or unset), got '$RAM_TIER'" ;;
esac
NEED_MIB=$((DISK_VOLS * VOL_MIB + 512))
AVAIL_MIB=$(( $(df --output=avail -B1M "$PARENT" | tail -1) ))
[ "$AVAIL_MIB" -ge "$NEED_MIB" ] \
    || die "not enough free space in $PARENT: need $NEED_MIB MiB ($DISK_VOLS volume(s) of $VOL_MIB MiB + 512 MiB margin), have $AVAIL_MIB MiB; set REEL_MIG_DIR elsewhere or lower REEL_MIG_SECONDS / REEL_MIG_BUDGET / REEL_MIG_COLD_MB"

WORK="$(mktemp -d "$PARENT/reel-migration-impact.XXXXXX")"
PRIMARY="$WORK/primary.img"
SECONDARY="$WORK/secondary.img"
RESULTS="$WORK/results.tsv"
mkdir -p "$WORK/runs"

NODE_PID="" WRK_PID="" POLL_PID="" RAM_FILE="" RAM_LOOP=""

stop_pid() { # PID NAME: TERM, wait up to 10 s, then KILL
    local pid="$1" name="$2" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        note "$name (pid $pid) did not stop on SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$WRK_PID" ] && stop_pid "$WRK_PID" wrk
    [ -n "$POLL_PID" ] && stop_pid "$POLL_PID" "metrics poller"
    [ -n "$NODE_PID" ] && stop_pid "$NODE_PID" "reel node"
    [ -n "$RAM_LOOP" ] && { losetup -d "$RAM_LOOP" || note "could not detach $RAM_LOOP"; }
    [ -n "$RAM_FILE" ] && rm -f "$RAM_FILE"
    if [ "$KEEP" = 1 ]; then
        note "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'note "interrupted; cleaning up"; exit 130' INT TERM

volumes_where() { # for the report: where the two volumes live
    local disk="in $PARENT ($(stat -f -c %T "$PARENT"), device $(df --output=source "$PARENT" | tail -1))"
    case "$RAM_TIER" in
        "") echo "both volumes are files $disk" ;;
        primary) echo "the primary is $RAM_LOOP, a loop device over a file in /dev/shm (RAM), the secondary a file $disk" ;;
        secondary) echo "the primary is a file $disk, the secondary $RAM_LOOP, a loop device over a file in /dev/shm (RAM)" ;;
    esac
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- helpers (python: /metrics, /info, the poller, the report) -------------------------------
cat >"$WORK/reel.py" <<'PY'
"""Helpers of migration_impact.sh: read the node's state over HTTP."""
import json, sys, time, urllib.request

COUNTERS = ["reel_promotions_total", "reel_write_backs_total", "reel_demotions_total",
            "reel_evictions_total", "reel_migration_failures_total", "reel_migration_bytes_total",
            "reel_policy_primary_bytes", "reel_migration_commits_total"]
# Reported when the node has them (older builds do not): the copies' backoff.
OPTIONAL = ["reel_migration_slow_ios_total", "reel_migration_backoff_seconds_total",
            "reel_migration_guard_probes_total", "reel_migration_guard_probe_seconds_total",
            "reel_migration_guard_cuts_total", "reel_migration_guard_bytes_per_second",
            "reel_migration_guard_baseline_seconds_us"]

def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()

def metrics(base):
    out = {}
    for line in get(base + "/metrics").decode().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        if name in COUNTERS or name in OPTIONAL:
            out[name] = int(float(value))
        if name == "reel_migration_guard_baseline_seconds":
            out[name + "_us"] = int(float(value) * 1e6)
    return out

def info(base, aid):
    return json.loads(get(f"{base}/assets/{aid}/info"))

def state(base, hot, cold, hot_bytes):
    """(settled, summary): hot all clean on both tiers, cold all on secondary only, nothing in flight."""
    h_ok = c_ok = 0
    odd = []
    for aid in hot:
        i = info(base, aid)
        if i.get("residence") == "clean" and sorted(i["tiers"]) == ["primary", "secondary"]:
            h_ok += 1
        else:
            odd.append(f"{aid}: {i.get('residence')} {i['tiers']}")
    for aid in cold:
        i = info(base, aid)
        if i.get("residence") == "secondary" and i["tiers"] == ["secondary"]:
            c_ok += 1
        else:
            odd.append(f"{aid}: {i.get('residence')} {i['tiers']}")
    m = metrics(base)
    pb = m.get("reel_policy_primary_bytes", -1)
    settled = h_ok == len(hot) and c_ok == len(cold) and pb == hot_bytes
    summary = (f"hot clean on both tiers {h_ok}/{len(hot)}, cold on secondary only {c_ok}/{len(cold)}, "
               f"policy primary bytes {pb} (want {hot_bytes})")
    if odd:
        summary += "; e.g. " + ", ".join(odd[:3])
    return settled, summary

def main():
    mode, base = sys.argv[1], sys.argv[2]
    if mode == "metrics":
        m = metrics(base)
        missing = [c for c in COUNTERS if c not in m]
        if missing:
            sys.exit(f"/metrics lacks {', '.join(missing)}")
        print(" ".join(f"{k}={m[k]}" for k in COUNTERS + OPTIONAL if k in m))
    elif mode == "settled":
        hot = open(sys.argv[3]).read().split()
        cold = open(sys.argv[4]).read().split()
        settled, summary = state(base, hot, cold, int(sys.argv[5]))
        print(summary)
        sys.exit(0 if settled else 1)
    elif mode == "promoting":
        # Exit 0 once the policy counts primary bytes beyond the hot set (a promotion started).
        hot_bytes, deadline = int(sys.argv[3]), time.monotonic() + float(sys.argv[4])
        while time.monotonic() < deadline:
            if metrics(base)["reel_policy_primary_bytes"] > hot_bytes:
                return
            time.sleep(0.05)
        sys.exit(1)
    elif mode == "poll":
        # Appends "unix_time migration_bytes promotions commits" every interval until killed.
        out, interval = open(sys.argv[3], "a", buffering=1), float(sys.argv[4])
        while True:
            try:
                m = metrics(base)
                out.write(f"{time.time():.3f} {m['reel_migration_bytes_total']} {m['reel_promotions_total']} "
                          f"{m['reel_migration_commits_total']}\n")
            except Exception as e:  # keep polling; the report counts the samples
                out.write(f"# {e}\n")
            time.sleep(interval)
    else:
        sys.exit(f"unknown mode {mode}")

main()
PY
metrics_now() { python3 "$WORK/reel.py" metrics "$URL"; }
kv() { # KEY "k=v k=v ...": the value of KEY
    local f
    for f in $2; do [ "${f%%=*}" = "$1" ] && { echo "${f#*=}"; return 0; }; done
    die "no $1 in '$2'"
}

# --- node ----------------------------------------------------------------------------------
note "scratch directory $WORK"
note "hot set $HOT_COUNT x $HOT_MB MiB (pinned to primary), cold set $COLD_COUNT x $COLD_MB MiB" \
    "(promoted during the runs: $((COLD_BYTES >> 20)) MiB = $(python3 -c "print(f'{$COLD_BYTES / $BUDGET_BPS:.1f}')") s at the budget of $BUDGET_MIBPS MiB/s; runs of $SECONDS_RUN s)"
if [ -n "$RAM_TIER" ]; then
    RAM_FILE="$(mktemp /dev/shm/reel-migration-impact-$RAM_TIER.XXXXXX)"
    truncate -s "${VOL_MIB}M" "$RAM_FILE"
    RAM_LOOP="$(losetup -f --show "$RAM_FILE")" || die "losetup on $RAM_FILE failed"
    if [ "$RAM_TIER" = primary ]; then PRIMARY="$RAM_LOOP"; else SECONDARY="$RAM_LOOP"; fi
    note "the $RAM_TIER volume is $RAM_LOOP, a loop device over $RAM_FILE (RAM)"
fi
note "formatting primary and secondary volumes of $VOL_MIB MiB each"
"$REEL" format "$PRIMARY" --size "${VOL_MIB}M" >"$WORK/format.log" 2>&1 \
    || die "reel format (primary) failed: $(cat "$WORK/format.log")"
"$REEL" format "$SECONDARY" --size "${VOL_MIB}M" >>"$WORK/format.log" 2>&1 \
    || die "reel format (secondary) failed: $(cat "$WORK/format.log")"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
PORT="$(free_port)"
URL="http://127.0.0.1:$PORT"
NODE_CMD=("$REEL" node --primary "$PRIMARY" --secondary "$SECONDARY" --listen "127.0.0.1:$PORT"
          --shards "$SHARDS" --copy-budget "$BUDGET_BPS")
# shellcheck disable=SC2206 # word splitting wanted: extra flags
[ -n "${REEL_MIG_NODE_ARGS:-}" ] && NODE_CMD+=(${REEL_MIG_NODE_ARGS})
note "starting: ${NODE_CMD[*]}"
"${NODE_CMD[@]}" >"$WORK/reel-node.log" 2>&1 &
NODE_PID=$!
for i in $(seq 1200); do
    kill -0 "$NODE_PID" 2>/dev/null \
        || die "reel node exited before it was ready; its log:"$'\n'"$(tail -n 30 "$WORK/reel-node.log")"
    curl -sf -o /dev/null --max-time 2 "$URL/healthz" && break
    [ "$i" = 1200 ] && die "reel node did not answer $URL/healthz within 120 s; its log:"$'\n'"$(tail -n 30 "$WORK/reel-node.log")"
    sleep 0.1
done
note "$(grep -m1 'listening on' "$WORK/reel-node.log" || echo "reel node answers on $URL")"
metrics_now >/dev/null || die "the node's /metrics lacks the migration counters"
node_alive() {
    kill -0 "$NODE_PID" 2>/dev/null || die "reel node (pid $NODE_PID) is no longer running; its log:"$'\n'"$(tail -n 30 "$WORK/reel-node.log")"
}

# --- assets --------------------------------------------------------------------------------
hot_id() { printf "hot/%02d" "$1"; }
cold_id() { printf "cold/%02d" "$1"; }
: >"$WORK/ids-hot"; : >"$WORK/ids-cold"
for i in $(seq 0 $((HOT_COUNT - 1))); do hot_id "$i" >>"$WORK/ids-hot"; echo >>"$WORK/ids-hot"; done
for i in $(seq 0 $((COLD_COUNT - 1))); do cold_id "$i" >>"$WORK/ids-cold"; echo >>"$WORK/ids-cold"; done
echo '{"pin":"primary"}' >"$WORK/pin-primary.json"
echo '{"pin":"secondary"}' >"$WORK/pin-secondary.json"

pin() { # primary|secondary IDS_FILE: one curl (keep-alive) PUTs the policy of every asset
    local args=() id codes n n_ok
    for id in $(cat "$2"); do
        args+=(-o /dev/null -T "$WORK/pin-$1.json" "$URL/assets/$id/policy")
    done
    n=$(( ${#args[@]} / 5 ))
    codes="$(curl -sS -H 'Expect:' --max-time 120 -w '%{http_code}\n' "${args[@]}")" \
        || die "PUT of the policies ($1) failed (curl exit $?)"
    n_ok="$(grep -c '^20[01]$' <<<"$codes" || true)"
    [ "$n_ok" = "$n" ] || die "not every policy PUT ($1, $2) was answered 200/201: $(sort <<<"$codes" | uniq -c | tr '\n' ' ')"
}

upload() { # ID MIB: random bytes, PUT; prints the sha256 of the source
    local id="$1" mib="$2" code sum
    head -c $((mib << 20)) /dev/urandom >"$WORK/upload.bin"
    sum="$(sha256sum <"$WORK/upload.bin" | cut -d' ' -f1)"
    code="$(curl -sS -H 'Expect:' --max-time 600 -o "$WORK/put.out" -w '%{http_code}' -T "$WORK/upload.bin" "$URL/assets/$id")" \
        || die "PUT /assets/$id failed (curl exit $?)"
    [ "$code" = 201 ] || [ "$code" = 200 ] || die "PUT /assets/$id answered $code: $(head -c 300 "$WORK/put.out")"
    echo "$sum"
}

migration_ctl() { # QUERY: PUT /migration?QUERY, dies unless answered 200
    local code
    code="$(curl -sS -X PUT --max-time 10 -o "$WORK/ctl.out" -w '%{http_code}' "$URL/migration?$1")" \
        || die "PUT /migration?$1 failed (curl exit $?)"
    [ "$code" = 200 ] || die "PUT /migration?$1 answered $code: $(head -c 300 "$WORK/ctl.out")"
}

# The setup's write-backs run with no budget (they are not measured; at a low budget, 30 cycles'
# worth of cold set took longer to write back than to measure); the budget is set back below.
migration_ctl copy_budget=0
note "uploading $HOT_COUNT hot and $COLD_COUNT cold assets ($DATA_MIB MiB); write-backs run with no budget meanwhile"
t0=$(date +%s.%N)
for i in $(seq 0 $((HOT_COUNT - 1))); do
    s="$(upload "$(hot_id "$i")" "$HOT_MB")"
    [ "$i" = 0 ] && HOT0_SHA="$s"
done
pin primary "$WORK/ids-hot"
for i in $(seq 0 $((COLD_COUNT - 1))); do
    s="$(upload "$(cold_id "$i")" "$COLD_MB")"
    [ "$i" = 0 ] && COLD0_SHA="$s"
done
rm -f "$WORK/upload.bin"
pin secondary "$WORK/ids-cold"
t1=$(date +%s.%N)
note "uploaded in $(python3 -c "print(f'{$t1 - $t0:.1f} s')")"

wait_settled() { # WHAT TIMEOUT_S: hot clean on both tiers, cold on secondary only, nothing in flight
    local what="$1" timeout="$2" start=$SECONDS summary last=0
    while true; do
        node_alive
        if summary="$(python3 "$WORK/reel.py" settled "$URL" "$WORK/ids-hot" "$WORK/ids-cold" "$HOT_BYTES")"; then
            return 0
        fi
        [ $((SECONDS - start)) -ge "$timeout" ] && die "not settled after $timeout s ($what): $summary"
        if [ $((SECONDS - last)) -ge 15 ]; then note "  waiting ($what): $summary"; last=$SECONDS; fi
        sleep 0.5
    done
}
settle_timeout=$(( (HOT_BYTES + COLD_BYTES) / BUDGET_BPS * 2 + 120 ))
note "waiting for the write-backs and the cold set's drops (at most $settle_timeout s)"
wait_settled "initial write-back" "$settle_timeout"
t2=$(date +%s.%N)
migration_ctl "copy_budget=$BUDGET_BPS"
note "settled $(python3 -c "print(f'{$t2 - $t1:.1f} s')") after the last upload: $(metrics_now); copy budget back at $BUDGET_MIBPS MiB/s"

# --- correctness ---------------------------------------------------------------------------
got="$(curl -sf --max-time 300 "$URL/assets/$(hot_id 0)" | sha256sum | cut -d' ' -f1)"
[ "$got" = "$HOT0_SHA" ] || die "GET /assets/$(hot_id 0) has sha256 $got, the upload had $HOT0_SHA"
got="$(curl -sf --max-time 300 "$URL/assets/$(cold_id 0)" | sha256sum | cut -d' ' -f1)"
[ "$got" = "$COLD0_SHA" ] || die "GET /assets/$(cold_id 0) (from the secondary) has sha256 $got, the upload had $COLD0_SHA"
r="$(curl -s --max-time 30 -o /dev/null -w '%{http_code} %{size_download}' -H "Range: bytes=$RANGE_BYTES-$((2 * RANGE_BYTES - 1))" "$URL/assets/$(hot_id 0)")"
[ "$r" = "206 $RANGE_BYTES" ] || die "a range GET of /assets/$(hot_id 0) answered '$r', expected '206 $RANGE_BYTES'"
note "verified: sha256 of $(hot_id 0) and $(cold_id 0) match the uploads; a ${RANGE_KB} KiB range is answered 206"

# --- load ----------------------------------------------------------------------------------
NRANGES=$((HOT_MB * 1024 / RANGE_KB))
cat >"$WORK/wrk.lua" <<EOF
-- Each request: a random ${RANGE_KB} KiB range (at a multiple of its size) of a random hot asset.
-- done() prints the totals and the latency percentiles (microseconds) as key=value.
local paths = {}
for line in io.lines("$WORK/ids-hot") do
    if line ~= "" then paths[#paths + 1] = "/assets/" .. line end
end
local next_id = 1
function setup(thread)
    thread:set("thread_id", next_id)
    next_id = next_id + 1
end
function init(args)
    math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
    for _ = 1, 10 do math.random() end
end
function request()
    local off = (math.random($NRANGES) - 1) * $RANGE_BYTES
    return wrk.format("GET", paths[math.random(#paths)],
        { Range = string.format("bytes=%d-%d", off, off + $RANGE_BYTES - 1) })
end
function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "RESULT bytes=%.0f duration_us=%.0f requests=%.0f errors=%.0f p50_us=%.0f p90_us=%.0f p99_us=%.0f p999_us=%.0f max_us=%.0f err_status=%.0f err_timeout=%.0f\n",
        summary.bytes, summary.duration, summary.requests,
        e.connect + e.read + e.write + e.status + e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency:percentile(99.9), latency.max, e.status, e.timeout))
end
EOF

# SPAN_PY POLL_FILE T0 T1: "seconds bytes" between the first and the last increment of
# reel_migration_bytes_total the poller saw within [T0, T1] (each increment placed midway between
# its two samples), i.e. the copy rate from completion to completion; "0 0" if fewer than two.
cat >"$WORK/span.py" <<'PY'
import sys
s = [tuple(map(float, l.split()[:2])) for l in open(sys.argv[1]) if l[0].isdigit()]
t0, t1 = float(sys.argv[2]), float(sys.argv[3])
s = [x for x in s if t0 <= x[0] <= t1]
steps = [i for i in range(1, len(s)) if s[i][1] > s[i - 1][1]]
if len(steps) < 2:
    print("0 0")
else:
    mid = lambda i: (s[i - 1][0] + s[i][0]) / 2
    print(f"{mid(steps[-1]) - mid(steps[0]):.3f} {s[steps[-1]][1] - s[steps[0]][1]:.0f}")
PY

cpu_stat() { # "busy total" jiffies of the whole host
    awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat
}
node_ticks() {
    local stat fields
    stat="$(cat "/proc/$NODE_PID/stat")"
    read -r -a fields <<<"${stat##*) }"
    echo $((fields[11] + fields[12]))
}
CLK_TCK="$(getconf CLK_TCK)"
# The block device under the volumes, for its read/write bytes and busy time (all processes).
DISK_DEV="$(basename "$(df --output=source "$PARENT" | tail -1)")"
grep -q " $DISK_DEV " /proc/diskstats || { note "no /proc/diskstats line for $DISK_DEV: disk columns will be 0"; DISK_DEV=""; }
disk_stat() { # "read_bytes written_bytes io_ms" of DISK_DEV
    if [ -n "$DISK_DEV" ]; then
        awk -v d="$DISK_DEV" '$3 == d {printf "%.0f %.0f %.0f\n", $6 * 512, $10 * 512, $13}' /proc/diskstats
    else
        echo "0 0 0"
    fi
}

printf 'cond\trep\tbytes\tduration_us\trequests\terrors\tp50_us\tp90_us\tp99_us\tp999_us\tmig_bytes\tpromotions\tpromotions_left\tcopy_span_s\tcopy_span_bytes\tload1\thost_busy\tnode_cpu\tcounters_moved\tdisk_read\tdisk_written\tdisk_busy_ms\tcommits\n' >"$RESULTS"

run_load() { # COND REP: runs the load, leaves its RESULT line in $WRK_LINE
    local out="$WORK/runs/$1-$2.txt"
    if [ "$LOAD_KIND" = open ]; then
        "$REEL" load --target "127.0.0.1:$PORT" --assets "$(paste -sd, "$WORK/ids-hot")" \
            --rate "$RATE" --arrival poisson --duration "${SECONDS_RUN}s" \
            --connections "$OPEN_CONNS" --range-bytes "$RANGE_BYTES" --seed "$2" \
            --json "$out.json" >"$out" 2>&1 &
        WRK_PID=$!
        wait "$WRK_PID" || die "reel load failed: $(tail -n 20 "$out")"
        WRK_PID=""
        WRK_LINE="$(python3 - "$out.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
print("RESULT " + " ".join([
    f"bytes={j['bytes_per_s'] * j['duration_s']:.0f}", f"duration_us={j['duration_s'] * 1e6:.0f}",
    f"requests={j['requests']}", f"errors={j['errors']}", f"p50_us={j['p50_us']}",
    f"p90_us={j['p90_us']}", f"p99_us={j['p99_us']}", f"p999_us={j['p999_us']}",
    f"max_us={j['max_us']}", f"late={j['late']}", f"offered={j['offered_per_s']}"]))
PY
)" || die "cannot read reel load's JSON $out.json: $(tail -n 20 "$out")"
        return 0
    fi
    wrk -t "$THREADS" -c "$CONNS" -d "${SECONDS_RUN}s" --timeout 10s --latency \
        -s "$WORK/wrk.lua" "$URL/" >"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || die "wrk failed: $(cat "$out")"
    WRK_PID=""
    WRK_LINE="$(grep '^RESULT ' "$out")" || die "wrk printed no RESULT line: $(cat "$out")"
    grep -q '^ *99% ' "$out" || die "wrk --latency printed no 99% line: $(cat "$out")"
}

run_one() { # COND(idle|migrating) REP
    local cond="$1" rep="$2" m0 m1 load1 c0 c1 n0 n1 moved=0 mig=0 proms=0 left=0 span_s=0 span_b=0
    local dr0 dw0 dt0 dr1 dw1 dt1
    node_alive
    wait_settled "before $cond #$rep" 300
    if [ "$cond" = migrating ]; then
        PROMOTIONS_BEFORE_PIN="$(kv reel_promotions_total "$(metrics_now)")"
        pin primary "$WORK/ids-cold"
        python3 "$WORK/reel.py" promoting "$URL" "$HOT_BYTES" 15 \
            || die "no promotion started within 15 s of pinning the cold set to primary: $(metrics_now)"
        sleep "$LEAD"
        : >"$WORK/runs/poll-$rep.txt"
        python3 "$WORK/reel.py" poll "$URL" "$WORK/runs/poll-$rep.txt" 0.5 &
        POLL_PID=$!
    fi
    load1="$(cut -d' ' -f1 /proc/loadavg)"
    m0="$(metrics_now)"; c0="$(cpu_stat)"; n0="$(node_ticks)"; read -r dr0 dw0 dt0 < <(disk_stat)
    local t_start t_end
    t_start=$(date +%s.%N)
    run_load "$cond" "$rep"
    t_end=$(date +%s.%N)
    m1="$(metrics_now)"; c1="$(cpu_stat)"; n1="$(node_ticks)"; read -r dr1 dw1 dt1 < <(disk_stat)
    local k
    for k in reel_promotions_total reel_write_backs_total reel_demotions_total reel_evictions_total reel_migration_failures_total reel_migration_bytes_total; do
        [ "$(kv "$k" "$m0")" = "$(kv "$k" "$m1")" ] || moved=1
    done
    [ "$(kv reel_migration_failures_total "$m0")" = "$(kv reel_migration_failures_total "$m1")" ] \
        || note "WARNING: reel_migration_failures_total moved during $cond #$rep (see $WORK/reel-node.log)"
    mig=$(( $(kv reel_migration_bytes_total "$m1") - $(kv reel_migration_bytes_total "$m0") ))
    proms=$(( $(kv reel_promotions_total "$m1") - $(kv reel_promotions_total "$m0") ))
    if [ "$cond" = migrating ]; then
        stop_pid "$POLL_PID" "metrics poller"; POLL_PID=""
        # Promotions finished before the run started count against the cold set too.
        left=$(( COLD_COUNT - ( $(kv reel_promotions_total "$m1") - PROMOTIONS_BEFORE_PIN ) ))
        # Completion to completion within the run: bytes copied between the first and the last
        # increment of the counter seen by the poller, over the time between them.
        read -r span_s span_b < <(python3 "$WORK/span.py" "$WORK/runs/poll-$rep.txt" "$t_start" "$t_end")
        [ "$left" -gt 0 ] || note "WARNING: all $COLD_COUNT cold assets were promoted before the run ended: the copies did not last the whole run (raise REEL_MIG_COLD_COUNT)"
        [ "$moved" = 1 ] || note "WARNING: no migration counter moved during migrating #$rep"
    elif [ "$moved" = 1 ]; then
        note "WARNING: migration counters moved during the idle run #$rep: $m0 -> $m1"
    fi
    local busy total
    busy=$(( ${c1% *} - ${c0% *} )); total=$(( ${c1#* } - ${c0#* } ))
    declare -A r=()
    local f
    for f in ${WRK_LINE#RESULT }; do r[${f%%=*}]="${f#*=}"; done
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$cond" "$rep" "${r[bytes]}" "${r[duration_us]}" "${r[requests]}" "${r[errors]}" \
        "${r[p50_us]}" "${r[p90_us]}" "${r[p99_us]}" "${r[p999_us]}" "$mig" "$proms" "$left" \
        "$span_s" "$span_b" "$load1" \
        "$(python3 -c "print(f'{$busy / max($total, 1):.3f}')")" \
        "$(python3 -c "print(f'{($n1 - $n0) / $CLK_TCK / (($t_end) - ($t_start)):.3f}')")" "$moved" \
        "$((dr1 - dr0))" "$((dw1 - dw0))" "$((dt1 - dt0))" \
        "$(( $(kv reel_migration_commits_total "$m1") - $(kv reel_migration_commits_total "$m0") ))" >>"$RESULTS"
    python3 - "$RESULTS" "$BUDGET_BPS" <<'PY' >&2
import csv, sys
r = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))[-1]
secs = float(r["duration_us"]) / 1e6
line = (f"migration_impact.sh:   {r['cond']:9s} #{r['rep']}  {float(r['requests']) / secs:8.1f} req/s "
        f"{float(r['bytes']) / secs / 2**20:7.1f} MiB/s  p50 {float(r['p50_us']) / 1000:6.2f} ms  "
        f"p99 {float(r['p99_us']) / 1000:6.2f} ms  p99.9 {float(r['p999_us']) / 1000:6.2f} ms  "
        f"load {r['load1']}  host CPU {float(r['host_busy']) * 100:3.0f}%  node CPU {float(r['node_cpu']) * 100:3.0f}%  "
        f"disk r/w {int(r['disk_read']) / 2**20 / secs:.0f}/{int(r['disk_written']) / 2**20 / secs:.0f} MiB/s "
        f"busy {int(r['disk_busy_ms']) / 10 / secs:.0f}%")
if r["cond"] == "migrating":
    line += (f"  copied {int(r['mig_bytes']) / 2**20:.0f} MiB = {int(r['mig_bytes']) / 2**20 / secs:.1f} MiB/s"
             f" (budget {int(sys.argv[2]) / 2**20:g}), {r['promotions_left']} promotions left, {r['commits']} commits")
if int(float(r["errors"])):
    line += f"  ({r['errors']} ERRORS)"
print(line)
PY
    if [ "$cond" = migrating ]; then
        pin secondary "$WORK/ids-cold"
        wait_settled "dropping the promoted cold set after #$rep" 300
    fi
}

# The copy rate the scheduler reaches with no foreground load, for comparison with (b)'s.
copy_alone() {
    local m0 m1 t0 t1 left poll="$WORK/runs/poll-alone.txt"
    wait_settled "before the copy-alone run" 300
    PROMOTIONS_BEFORE_PIN="$(kv reel_promotions_total "$(metrics_now)")"
    pin primary "$WORK/ids-cold"
    python3 "$WORK/reel.py" promoting "$URL" "$HOT_BYTES" 15 \
        || die "no promotion started within 15 s of pinning the cold set to primary: $(metrics_now)"
    : >"$poll"
    python3 "$WORK/reel.py" poll "$URL" "$poll" 0.5 &
    POLL_PID=$!
    m0="$(metrics_now)"; t0=$(date +%s.%N)
    sleep "$SECONDS_RUN" & wait $!   # (wait: a signal interrupts it at once)
    m1="$(metrics_now)"; t1=$(date +%s.%N)
    stop_pid "$POLL_PID" "metrics poller"; POLL_PID=""
    local secs bytes d b
    secs="$(python3 -c "print($t1 - $t0)")"
    bytes=$(( $(kv reel_migration_bytes_total "$m1") - $(kv reel_migration_bytes_total "$m0") ))
    read -r d b < <(python3 "$WORK/span.py" "$poll" "$t0" "$t1")
    COPY_ALONE="$(python3 -c "print(f'{$bytes / 2**20 / $secs:.1f} {($b / 2**20 / $d) if $d > 0 else 0:.1f}')")"
    left=$(( COLD_COUNT - ( $(kv reel_promotions_total "$m1") - PROMOTIONS_BEFORE_PIN ) ))
    [ "$left" -gt 0 ] || note "WARNING: all $COLD_COUNT cold assets were promoted before the copy-alone run ended"
    note "copy alone (no foreground load, ${SECONDS_RUN}s): ${COPY_ALONE% *} MiB/s over the run, ${COPY_ALONE#* } MiB/s completion to completion (budget $BUDGET_MIBPS MiB/s), load $(cut -d' ' -f1 /proc/loadavg)"
    pin secondary "$WORK/ids-cold"
    wait_settled "dropping the promoted cold set after the copy-alone run" 300
}
copy_alone

note "warm-up: ${SECONDS_RUN}s of closed-loop wrk, not recorded"
wrk -t "$THREADS" -c "$CONNS" -d "${SECONDS_RUN}s" --timeout 10s -s "$WORK/wrk.lua" "$URL/" >"$WORK/runs/warmup.txt" 2>&1 \
    || die "warm-up wrk failed: $(cat "$WORK/runs/warmup.txt")"
WARM_RPS="$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$WORK/runs/warmup.txt")"
[ -n "$WARM_RPS" ] || die "the warm-up wrk printed no Requests/sec: $(cat "$WORK/runs/warmup.txt")"
if [ "$LOAD_KIND" = open ] && [ -z "$RATE" ]; then
    RATE=$(( WARM_RPS * 6 / 10 ))
    [ "$RATE" -ge 1 ] || RATE=1
fi
note "closed-loop capacity (warm-up): $WARM_RPS req/s; load: $LOAD_KIND${RATE:+, $RATE req/s offered}"
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$LOAD_KIND" = open ]; then
    LOAD_DESC="reel load, open loop: Poisson arrivals at $RATE req/s (60% of the warm-up's closed-loop $WARM_RPS req/s unless REEL_MIG_RATE), $OPEN_CONNS connections"
else
    LOAD_DESC="wrk -t $THREADS -c $CONNS, closed loop (saturating)"
fi
# --- interleaved design --------------------------------------------------------------------
# One long open-loop run; migration is paused and resumed through PUT /migration every
# SECONDS_RUN seconds, so both conditions share the same minutes of a noisy host. Each request
# is classed by its intended start: "migrating" from a resume until GUARD seconds after the
# next pause (what the copies leave behind, e.g. the device writing their data back, counts
# against migration), "idle" the rest of each paused window. The cold set is pinned to the
# primary once, paused, before the load starts (a pin is a journal write: a device flush).
# PUT /migration?QUERY as migration_ctl (above) does, but through bash's /dev/tcp, for the
# toggles inside a measurement: no process starts there (a python3 start takes about 0.2 s of
# CPU here, and curl some; on 2 CPUs that stalled the foreground right after each pause, which
# counts as migrating).
migration_ctl_quiet() { # QUERY
    local status
    exec 9<>"/dev/tcp/127.0.0.1/$PORT" || die "PUT /migration?$1: cannot connect"
    printf 'PUT /migration?%s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' "$1" >&9
    IFS= read -r -t 10 status <&9 || status="(no answer)"
    exec 9<&-
    [[ "$status" == "HTTP/1.1 200"* ]] || die "PUT /migration?$1 answered: $status"
}

run_interleaved() {
    local total=$((2 * REPEATS * SECONDS_RUN + SECONDS_RUN)) k toggles="$WORK/runs/toggles.txt"
    local log="$WORK/runs/latency.csv" out="$WORK/runs/interleaved.txt" poll="$WORK/runs/poll.txt"
    local m0 m1 c0 c1 n0 n1 dr0 dw0 dt0 dr1 dw1 dt1 t_start t_end
    wait_settled "before the interleaved run" 300
    migration_ctl "paused=true"
    PROMOTIONS_BEFORE_PIN="$(kv reel_promotions_total "$(metrics_now)")"
    pin primary "$WORK/ids-cold"
    sleep 2
    [ "$(kv reel_promotions_total "$(metrics_now)")" = "$PROMOTIONS_BEFORE_PIN" ] \
        && [ "$(kv reel_policy_primary_bytes "$(metrics_now)")" = "$HOT_BYTES" ] \
        || die "a promotion started while migration was paused: $(metrics_now)"
    note "measuring: $REPEATS cycles of (${SECONDS_RUN}s idle, ${SECONDS_RUN}s migrating) in one run of ${total}s" \
        "(the first window idle, then alternating); $LOAD_DESC; load average now $LOAD_START"
    : >"$toggles"; : >"$poll"
    python3 "$WORK/reel.py" poll "$URL" "$poll" 0.5 &
    POLL_PID=$!
    m0="$(metrics_now)"; c0="$(cpu_stat)"; n0="$(node_ticks)"; read -r dr0 dw0 dt0 < <(disk_stat)
    t_start=$(date +%s.%N)
    "$REEL" load --target "127.0.0.1:$PORT" --assets "$(paste -sd, "$WORK/ids-hot")" \
        --rate "$RATE" --arrival poisson --duration "${total}s" --interval 10s \
        --connections "$OPEN_CONNS" --range-bytes "$RANGE_BYTES" --seed 1 \
        --json "$out.json" --latency-log "$log" >"$out" 2>&1 &
    WRK_PID=$!
    # Nothing but builtins and sleep from here to the end of the load (see migration_ctl_quiet).
    echo "$EPOCHREALTIME start" >>"$toggles"
    sleep "$SECONDS_RUN" & wait $!
    for k in $(seq "$REPEATS"); do
        echo "$EPOCHREALTIME resume" >>"$toggles"
        migration_ctl_quiet "paused=false"
        sleep "$SECONDS_RUN" & wait $!
        echo "$EPOCHREALTIME pause" >>"$toggles"
        migration_ctl_quiet "paused=true"
        sleep "$SECONDS_RUN" & wait $!
    done
    wait "$WRK_PID" || die "reel load failed: $(tail -n 20 "$out")"
    WRK_PID=""
    t_end=$(date +%s.%N)
    echo "$t_end end" >>"$toggles"
    m1="$(metrics_now)"; c1="$(cpu_stat)"; n1="$(node_ticks)"; read -r dr1 dw1 dt1 < <(disk_stat)
    stop_pid "$POLL_PID" "metrics poller"; POLL_PID=""
    python3 - "$toggles" "$poll" <<'CYC' >&2
import sys
pause = [float(t) for t, w in (l.split() for l in open(sys.argv[1])) if w == "pause"]
s = [l.split() for l in open(sys.argv[2]) if l[:1].isdigit()]
for k, t in enumerate(pause, 1):
    last = [x for x in s if float(x[0]) <= t]
    if last:
        print(f"migration_impact.sh:   cycle {k}: at its pause, copied {int(last[-1][1]) >> 20} MiB, "
              f"promotions {last[-1][2]}, commits {last[-1][3]} (totals since the node started)")
CYC
    local left=$(( COLD_COUNT - ( $(kv reel_promotions_total "$m1") - PROMOTIONS_BEFORE_PIN ) ))
    [ "$left" -gt 0 ] || note "WARNING: all $COLD_COUNT cold assets were promoted before the run ended: the last migrating windows had nothing to copy (raise REEL_MIG_COLD_COUNT)"
    local commits=$(( $(kv reel_migration_commits_total "$m1") - $(kv reel_migration_commits_total "$m0") ))
    local busy=$(( ${c1% *} - ${c0% *} )) all=$(( ${c1#* } - ${c0#* } ))
    local secs
    secs="$(python3 -c "print($t_end - $t_start)")"
    local commit_s
    commit_s="$(curl -s "$URL/metrics" | awk '$1 == "reel_migration_commit_seconds_total" {print $2}')"

    echo
    echo "reel node foreground impact of background migration, interleaved: one open-loop run of ${total}s,"
    echo "migration paused and resumed (PUT /migration) every ${SECONDS_RUN}s, $REPEATS migrating windows; requests classed by intended start"
    echo "(load: $LOAD_DESC; random ${RANGE_KB} KiB ranges of $HOT_COUNT hot assets of $HOT_MB MiB on the primary;"
    echo " migration: $COLD_COUNT cold assets of $COLD_MB MiB promoted secondary -> primary, --copy-budget $BUDGET_MIBPS MiB/s; --shards $SHARDS)"
    echo "($(uname -sr), $(nproc) CPUs, $(awk '/^MemTotal:/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo); $(volumes_where); the load generator runs on the same host)"
    echo "(node: ${NODE_CMD[*]:1})"
    echo "(whole run: host CPU busy $(python3 -c "print(f'{$busy / max($all, 1) * 100:.0f}%')"), reel node CPU $(python3 -c "print(f'{($n1 - $n0) / $CLK_TCK / $secs * 100:.0f}%')") of one core, disk ${DISK_DEV:-?} read/written $(python3 -c "print(f'{($dr1 - $dr0) / 2**20 / $secs:.0f}/{($dw1 - $dw0) / 2**20 / $secs:.0f} MiB/s')"); load average before: $LOAD_START, after: $(cut -d' ' -f1-3 /proc/loadavg))"
    echo "(commits of copies during the run: $commits, $commit_s s spent in all commits since the node started; promotions left at the end: $left)"
    if [[ " $m1 " == *" reel_migration_slow_ios_total="* ]]; then
        echo "(copy backoff during the run: $(( $(kv reel_migration_slow_ios_total "$m1") - $(kv reel_migration_slow_ios_total "$m0") )) chunk I/Os slower than --copy-slow-io, about $(( $(kv reel_migration_backoff_seconds_total "$m1") - $(kv reel_migration_backoff_seconds_total "$m0") )) s paused after them)"
    fi
    if [[ " $m1 " == *" reel_migration_guard_probes_total="* ]]; then
        echo "(latency guard during the run: $(( $(kv reel_migration_guard_probes_total "$m1") - $(kv reel_migration_guard_probes_total "$m0") )) probes, about $(( $(kv reel_migration_guard_probe_seconds_total "$m1") - $(kv reel_migration_guard_probe_seconds_total "$m0") )) s without copies for them, $(( $(kv reel_migration_guard_cuts_total "$m1") - $(kv reel_migration_guard_cuts_total "$m0") )) decisions cut the rate; at the end: rate $(( $(kv reel_migration_guard_bytes_per_second "$m1") >> 20 )) MiB/s, the last probe's p99 device read $(kv reel_migration_guard_baseline_seconds_us "$m1") us)"
    fi
    echo
    python3 "$ROOT/benches/interleaved_report.py" "$log" "$toggles" "$poll" "$GUARD" "$BUDGET_BPS" "$COPY_ALONE"
}

if [ "$DESIGN" = interleaved ]; then
    run_interleaved
    [ "$KEEP" = 1 ] && note "raw results: $WORK/runs"
    exit 0
fi

note "measuring: $REPEATS x (idle, migrating), alternating, ${SECONDS_RUN}s each; $LOAD_DESC; load average now $LOAD_START"
for rep in $(seq "$REPEATS"); do
    if [ $((rep % 2)) = 1 ]; then order="idle migrating"; else order="migrating idle"; fi
    for cond in $order; do
        run_one "$cond" "$rep"
    done
done

# --- report --------------------------------------------------------------------------------
cat >"$WORK/report.py" <<'PY'
import csv, statistics, sys

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
budget = int(sys.argv[2])
med = statistics.median

def m(r):
    secs = float(r["duration_us"]) / 1e6
    return {
        "rps": float(r["requests"]) / secs,
        "mibps": float(r["bytes"]) / secs / 2**20,
        "p50": float(r["p50_us"]) / 1000,
        "p90": float(r["p90_us"]) / 1000,
        "p99": float(r["p99_us"]) / 1000,
        "p999": float(r["p999_us"]) / 1000,
        "copy": int(r["mig_bytes"]) / 2**20 / secs,
        "span": (int(r["copy_span_bytes"]) / 2**20 / float(r["copy_span_s"])) if float(r["copy_span_s"]) > 0 else None,
        "load": float(r["load1"]),
        "host": float(r["host_busy"]) * 100,
        "node": float(r["node_cpu"]) * 100,
        "errors": int(float(r["errors"])),
        "moved": r["counters_moved"],
        "left": int(r["promotions_left"]),
        "dr": int(r["disk_read"]) / 2**20 / secs,
        "dw": int(r["disk_written"]) / 2**20 / secs,
        "dbusy": int(r["disk_busy_ms"]) / 10 / secs,
        "commits": int(r["commits"]),
    }

runs = {c: [m(r) for r in rows if r["cond"] == c] for c in ("idle", "migrating")}
if not all(runs.values()):
    sys.exit("report.py: the results lack runs of a condition: " + ", ".join(f"{c} {len(v)}" for c, v in runs.items()))
agg = {c: {k: med(x[k] for x in v) for k in ("rps", "mibps", "p50", "p90", "p99", "p999", "copy", "load", "host", "node", "dr", "dw", "dbusy")}
       for c, v in runs.items()}
a, b = agg["idle"], agg["migrating"]
tput = b["rps"] / a["rps"]
p99 = b["p99"] / a["p99"]
with_c = [(x, y) for x, y in zip(runs["idle"], runs["migrating"]) if y["commits"] > 0]
without_c = [(x, y) for x, y in zip(runs["idle"], runs["migrating"]) if y["commits"] == 0]
pairs_t = " ".join(f"{y['rps'] / x['rps']:.3f}" for x, y in zip(runs["idle"], runs["migrating"]))
pairs_p = " ".join(f"{y['p99'] / x['p99']:.2f}" for x, y in zip(runs["idle"], runs["migrating"]))

def ms(v):
    return f"{v:.2f} ms"

print("| metric | (a) no migration | (b) migrating at the budget | (b)/(a) | target |")
print("|---|---:|---:|---:|---|")
print(f"| requests/s | {a['rps']:.0f} | {b['rps']:.0f} | {tput:.3f} {'✓' if tput >= 0.95 else '✗'} | ≥ 0.95 |")
print(f"| MiB/s served | {a['mibps']:.0f} | {b['mibps']:.0f} | {b['mibps'] / a['mibps']:.3f} | — |")
print(f"| p50 latency | {ms(a['p50'])} | {ms(b['p50'])} | {b['p50'] / a['p50']:.2f} | — |")
print(f"| p90 latency | {ms(a['p90'])} | {ms(b['p90'])} | {b['p90'] / a['p90']:.2f} | — |")
print(f"| p99 latency | {ms(a['p99'])} | {ms(b['p99'])} | {p99:.2f} {'✓' if p99 <= 1.10 else '✗'} | ≤ 1.10 |")
print(f"| p99.9 latency | {ms(a['p999'])} | {ms(b['p999'])} | {b['p999'] / a['p999']:.2f} | — |")
spans = [x["span"] for x in runs["migrating"] if x["span"]]
span = f"; completion to completion {med(spans):.0f} MiB/s" if spans else ""
print(f"| copy rate (reel_migration_bytes_total) | {a['copy']:.0f} MiB/s | {b['copy']:.0f} MiB/s{span} | "
      f"{b['copy'] / (budget / 2**20):.2f} of the budget | budget {budget / 2**20:g} MiB/s |")
print(f"| load average (1 min) at the start | {a['load']:.2f} | {b['load']:.2f} | — | — |")
print(f"| host CPU busy (all cores) | {a['host']:.0f}% | {b['host']:.0f}% | — | — |")
print(f"| reel node CPU (100% = one core) | {a['node']:.0f}% | {b['node']:.0f}% | — | — |")
print(f"| disk {sys.argv[4]} read / written (all processes) | {a['dr']:.0f} / {a['dw']:.0f} MiB/s | {b['dr']:.0f} / {b['dw']:.0f} MiB/s | — | — |")
print(f"| disk {sys.argv[4]} busy (io_ticks) | {a['dbusy']:.0f}% | {b['dbusy']:.0f}% | — | — |")
print()
print(f"Per repeat (b)/(a), in run order: requests/s {pairs_t}; p99 {pairs_p}; commits of copies during (b): "
      + " ".join(str(y["commits"]) for y in runs["migrating"]) + ".")
for label, sel in (("with a commit (a device flush pair) during (b)", with_c), ("without a commit during (b)", without_c)):
    if sel:
        print(f"Repeats {label}: {len(sel)}; median p99 ratio {med(y['p99'] / x['p99'] for x, y in sel):.2f}, "
              f"p50 ratio {med(y['p50'] / x['p50'] for x, y in sel):.2f}.")
alone = [float(x) for x in sys.argv[3].split()]
print(f"Copy rate with no foreground load (one run of the same length before the measurement): {alone[0]:.0f} MiB/s"
      f" over the run, {alone[1]:.0f} MiB/s completion to completion ({alone[0] / (budget / 2**20):.2f} of the budget).")
notes = []
if any(x["errors"] for v in runs.values() for x in v):
    notes.append("some runs had failed requests (non-2xx, timeouts, socket errors): see the wrk outputs (REEL_MIG_KEEP=1)")
if any(x["moved"] == "1" for x in runs["idle"]):
    notes.append("migration counters moved during an idle run: (a) was not migration-free")
if any(x["left"] <= 0 for x in runs["migrating"]):
    notes.append("in some migrating run the cold set was fully promoted before the end: copying did not last the whole run")
for n in notes:
    print(f"WARNING: {n}.")
PY

echo
echo "reel node foreground impact of background migration: medians of $REPEATS alternating runs of ${SECONDS_RUN}s per condition"
echo "(load: $LOAD_DESC; random ${RANGE_KB} KiB ranges of $HOT_COUNT hot assets of $HOT_MB MiB on the primary;"
echo " migration: $COLD_COUNT cold assets of $COLD_MB MiB promoted secondary -> primary, --copy-budget $BUDGET_MIBPS MiB/s, the load starting ${LEAD} s after the first promotion started; --shards $SHARDS)"
echo "($(uname -sr), $(nproc) CPUs, $(awk '/^MemTotal:/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo); $(volumes_where); the load generator runs on the same host)"
echo "(node: ${NODE_CMD[*]:1})"
echo "(load average before measuring: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg); a busy host makes every number noisy, see the per-run lines on stderr)"
if [ "$LOAD_KIND" = open ]; then
    echo "MiB/s = 2^20 bytes/s of responses; latency percentiles from reel load's HdrHistogram, timed from each request's intended start"
else
    echo "MiB/s = 2^20 bytes/s of responses; latency percentiles from wrk's histogram (closed loop: $CONNS connections, one request each at a time)"
fi
echo
python3 "$WORK/report.py" "$RESULTS" "$BUDGET_BPS" "$COPY_ALONE" "${DISK_DEV:-?}"
[ "$KEEP" = 1 ] && note "raw results: $RESULTS"
exit 0

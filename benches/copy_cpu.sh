#!/usr/bin/env bash
# CPU that background copies between the tiers cost: the migration scheduler's thread's CPU
# time per GiB copied, with both tiers on loop devices over files in /dev/shm (no disk in the
# way, so the copies run as fast as the node makes them), no foreground load and no copy
# budget. The loop devices' own copying runs in kernel workers and is not counted: this is the
# node's cost (reads into registered buffers, checksums, io_uring submission, the policy).
#
# Steps: format two volumes, start `reel node --copy-budget 0 --shards 1`, upload N assets of
# 256 MiB (written back to the secondary), pin them to the secondary (the primary copies are
# dropped), then pin them to the primary and time the N promotions: the scheduler thread's
# utime+stime (/proc/PID/task/TID/stat) and reel_migration_bytes_total before and after.
#
# Usage: benches/copy_cpu.sh [N_ASSETS]   (default 8, i.e. 2 GiB copied; needs 2 x N x 256 MiB
#        of /dev/shm)
# Environment: REEL (default target/release/reel), REEL_COPY_RUNS (default 3: prints each run
# and the median).
# Needs root (losetup), curl and python3. Everything is removed on exit, Ctrl-C included.
set -euo pipefail
ME="copy_cpu.sh"
die() { echo "$ME: error: $*" >&2; exit 1; }
N="${1:-8}"
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "N_ASSETS must be a positive whole number, got '$N'"
RUNS="${REEL_COPY_RUNS:-3}"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "REEL_COPY_RUNS must be a positive whole number, got '$RUNS'"
cd "$(dirname "$0")/.."
REEL="${REEL:-target/release/reel}"
[ -x "$REEL" ] || die "$REEL not found: cargo build --release -p reel-tools --bin reel (or set REEL)"
[ "$(id -u)" = 0 ] || die "needs root for losetup (the tiers are loop devices over /dev/shm)"
for t in losetup curl python3; do command -v "$t" >/dev/null || die "needs $t (apt-get install -y util-linux curl python3)"; done
MIB=256
NEED=$(( 2 * (N * MIB + 512) ))
AVAIL=$(( $(df --output=avail -k /dev/shm | tail -1) / 1024 ))
[ "$AVAIL" -ge "$NEED" ] || die "needs $NEED MiB in /dev/shm, has $AVAIL MiB; lower N_ASSETS"

W=; L1=; L2=; PID=
cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    [ -n "$L1" ] && { losetup -d "$L1" || echo "$ME: could not detach $L1" >&2; }
    [ -n "$L2" ] && { losetup -d "$L2" || echo "$ME: could not detach $L2" >&2; }
    [ -n "$W" ] && rm -rf "$W"
    W=; L1=; L2=; PID=
}
trap cleanup EXIT
trap 'exit 130' INT TERM

one_run() {
    W="$(mktemp -d /dev/shm/reel-copy-cpu.XXXXXX)"
    truncate -s $((N * MIB + 512))M "$W/p.img" "$W/s.img"
    L1="$(losetup -f --show "$W/p.img")"
    L2="$(losetup -f --show "$W/s.img")"
    "$REEL" format "$L1" >/dev/null || die "reel format $L1 failed"
    "$REEL" format "$L2" >/dev/null || die "reel format $L2 failed"
    local port=$((20000 + RANDOM % 20000))
    "$REEL" node --primary "$L1" --secondary "$L2" --listen "127.0.0.1:$port" --shards 1 \
        --copy-budget 0 >"$W/node.log" 2>&1 &
    PID=$!
    local u="http://127.0.0.1:$port" i
    for _ in $(seq 100); do curl -sf "$u/metrics" >/dev/null && break; sleep 0.1; done
    curl -sf "$u/metrics" >/dev/null || die "reel node did not answer: $(tail -3 "$W/node.log")"
    head -c $((MIB << 20)) /dev/urandom >"$W/a.bin"
    for i in $(seq 1 "$N"); do
        curl -sf -X PUT -T "$W/a.bin" "$u/assets/c/$i" >/dev/null || die "PUT /assets/c/$i failed"
    done
    rm -f "$W/a.bin"
    m() { curl -sf "$u/metrics" | awk -v k="$1" '$1==k {print $2}'; }
    wait_for() { # METRIC VALUE
        for _ in $(seq 1500); do [ "$(m "$1")" -ge "$2" ] && return 0; sleep 0.2; done
        die "timed out waiting for $1 >= $2"
    }
    local tid
    tid="$(grep -l '^reel-scheduler$' /proc/$PID/task/*/comm | head -1 | xargs dirname | xargs basename)"
    [ -n "$tid" ] || die "no reel-scheduler thread in process $PID"
    cpu() { awk '{print $14 + $15}' "/proc/$PID/task/$tid/stat"; }
    wait_for reel_write_backs_total "$N"
    echo '{"pin":"secondary"}' >"$W/s.json"
    echo '{"pin":"primary"}' >"$W/p.json"
    for i in $(seq 1 "$N"); do curl -sf -X PUT -T "$W/s.json" "$u/assets/c/$i/policy" >/dev/null; done
    wait_for reel_demotions_total "$N"
    local b0 c0 t0 b1 c1 t1
    b0="$(m reel_migration_bytes_total)"; c0="$(cpu)"; t0="$(date +%s.%N)"
    for i in $(seq 1 "$N"); do curl -sf -X PUT -T "$W/p.json" "$u/assets/c/$i/policy" >/dev/null; done
    wait_for reel_promotions_total "$N"
    b1="$(m reel_migration_bytes_total)"; c1="$(cpu)"; t1="$(date +%s.%N)"
    echo "$b0 $b1 $c0 $c1 $t0 $t1 $(getconf CLK_TCK)" >>"$RESULTS"
    cleanup
}

RESULTS="$(mktemp)"
trap 'rm -f "$RESULTS"; cleanup' EXIT
for r in $(seq 1 "$RUNS"); do one_run; done
python3 - "$RESULTS" "$REEL" "$N" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
per_gib, rates = [], []
for b0, b1, c0, c1, t0, t1, hz in rows:
    gib = (b1 - b0) / 2**30
    cpu = (c1 - c0) / hz
    per_gib.append(cpu / gib)
    rates.append(gib * 1024 / (t1 - t0))
    print(f"run: {gib:.2f} GiB promoted in {t1 - t0:.2f} s ({rates[-1]:.0f} MiB/s); scheduler thread CPU {cpu:.2f} s = {cpu / gib:.3f} s per GiB")
med = statistics.median(per_gib)
print(f"{sys.argv[2]}: median {med:.3f} s of CPU per GiB copied ({len(rows)} runs of {sys.argv[3]} x 256 MiB), "
      f"i.e. {med * 64 / 1024 * 100:.1f}% of a core at 64 MiB/s; median copy rate {statistics.median(rates):.0f} MiB/s")
PY

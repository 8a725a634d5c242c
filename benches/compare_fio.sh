#!/usr/bin/env bash
# Compares the engine's read path (`reel bench device`) with fio on the same target, in the same
# run: sequential 1 MiB and random 4 KiB reads at queue depth 32, on a regular file and (as root)
# on a loop device backed by that file with direct I/O. Prints a markdown table of the medians
# and the reel/fio ratios (the target is >= 0.95).
#
# Each workload runs reel and fio alternately (ABBA order), REEL_BENCH_RUNS times each, so drift
# in the device or the host hits both alike; the table holds medians and, per pair of runs, the
# reel/fio IOPS ratio, whose spread shows how noisy the machine is. See `reel bench device
# --help` and tools/src/compare_fio.rs for the exact fio job (io_uring, direct, fixed buffers).
#
# Environment (all optional):
#   REEL_BENCH_DIR       directory for the data file (default: a new temp dir under /var/tmp,
#                        which must not be tmpfs: O_DIRECT needs a real filesystem)
#   REEL_BENCH_FILE      use this existing, already filled file instead of creating one
#   REEL_BENCH_SIZE_MIB  size of the data file in MiB (default 4096)
#   REEL_BENCH_RUNTIME   seconds per run (default 3)
#   REEL_BENCH_RUNS      runs of each tool per workload (default 5; more, shorter runs give a
#                        steadier median on a shared machine than fewer, longer ones)
#   REEL_BENCH_BATCH     --iodepth-batch-submit for both tools (default 1, fio's default: each
#                        read is submitted as soon as its buffer is free; 0 = one submit per
#                        reap loop)
#   REEL_BENCH_IDLE_POLL reel's --idle-poll (default 0: sleep as soon as nothing is ready; e.g.
#                        100us helps 4 KiB reads on a virtual machine under contention)
#   REEL_BENCH_LOOP      0 to skip the loop device part (default 1: on, when root)
#   REEL_BENCH_KEEP      1 to keep the data file and the JSON results
#
# Needs: cargo, fio, jq; root and losetup for the loop device part.
# Default duration: about 2.5 minutes (4 workloads x 5 runs x 2 tools x 3 s, plus filling 4 GiB).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIZE_MIB="${REEL_BENCH_SIZE_MIB:-4096}"
RUNTIME="${REEL_BENCH_RUNTIME:-3}"
RUNS="${REEL_BENCH_RUNS:-5}"
BATCH="${REEL_BENCH_BATCH:-1}"
IDLE_POLL="${REEL_BENCH_IDLE_POLL:-0}"
WANT_LOOP="${REEL_BENCH_LOOP:-1}"
KEEP="${REEL_BENCH_KEEP:-0}"

die() { echo "compare_fio.sh: $*" >&2; exit 1; }
note() { echo "compare_fio.sh: $*" >&2; }

command -v fio >/dev/null || die "fio is not installed; install it with: apt-get install fio"
command -v jq >/dev/null || die "jq is not installed; install it with: apt-get install jq"
command -v cargo >/dev/null || die "cargo is not on PATH; install Rust from https://rustup.rs"

note "building reel (release)"
(cd "$ROOT" && cargo build --release -p reel-tools --bin reel >&2)
REEL="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/release/reel"
[ -x "$REEL" ] || die "built reel not found at $REEL"

WORK="$(mktemp -d "${REEL_BENCH_DIR:-/var/tmp}/reel-compare-fio.XXXXXX")"
LOOP=""
cleanup() {
    if [ -n "$LOOP" ]; then
        losetup -d "$LOOP" || note "could not detach $LOOP; run: losetup -d $LOOP"
    fi
    if [ "$KEEP" = 1 ]; then
        note "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

if [ -n "${REEL_BENCH_FILE:-}" ]; then
    DATA="$REEL_BENCH_FILE"
    [ -f "$DATA" ] || die "REEL_BENCH_FILE=$DATA is not a regular file"
else
    DATA="$WORK/data.bin"
    fstype="$(stat -f -c %T "$WORK")"
    [ "$fstype" = tmpfs ] && die "$WORK is on tmpfs, which has no O_DIRECT; set REEL_BENCH_DIR to a directory on ext4/xfs"
    note "filling ${SIZE_MIB} MiB of data at $DATA (unwritten extents would read back as zeros without I/O)"
    fio --name=fill --filename="$DATA" --rw=write --bs=1M --size="${SIZE_MIB}m" \
        --ioengine=io_uring --direct=1 --iodepth=16 --refill_buffers --end_fsync=1 \
        --output=/dev/null >&2 || die "filling $DATA with fio failed"
fi

ROWS=()

# run TARGET_LABEL PATH WORKLOAD_LABEL RW BS
run() {
    local label="$1" path="$2" workload="$3" rw="$4" bs="$5"
    local out="$WORK/$label-$rw-$bs.json"
    note "$label: $workload ($RUNS runs of reel and fio, ${RUNTIME}s each)"
    "$REEL" bench device "$path" --rw "$rw" --bs "$bs" --iodepth 32 --runtime "$RUNTIME" \
        --iodepth-batch-submit "$BATCH" --idle-poll "$IDLE_POLL" --runs "$RUNS" --compare-fio --json >"$out"
    ROWS+=("$(jq -r --arg t "$label" --arg w "$workload" '
        def mibs: . / 1048576 | floor | tostring;
        def k: if . >= 1000 then (. / 100 | round / 10 | tostring) + "k" else (. | round | tostring) end;
        def us: . / 1000 | round | tostring;
        def r: . * 1000 | round / 1000 | tostring;
        "| \($t) | \($w) | \(.median.reel.bw_bytes | mibs) MiB/s, \(.median.reel.iops | k) IOPS "
        + "| \(.median.fio.bw_bytes | mibs) MiB/s, \(.median.fio.iops | k) IOPS "
        + "| **\(.ratio.bw_bytes | r)** "
        + "| \(.median.reel.clat_ns_p50 | us) / \(.median.reel.clat_ns_p99 | us) "
        + "| \(.median.fio.clat_ns_p50 | us) / \(.median.fio.clat_ns_p99 | us) "
        + "| \(.ratio.cpu_ns_per_io | r) "
        + "| \(.paired_iops_ratios | map(r) | join(" ")) |"' "$out")")
}

suite() {
    run "$1" "$2" "seq read 1 MiB QD32" read 1M
    run "$1" "$2" "rand read 4 KiB QD32" randread 4k
}

suite file "$DATA"

if [ "$WANT_LOOP" = 0 ]; then
    note "loop device part skipped (REEL_BENCH_LOOP=0)"
elif [ "$(id -u)" != 0 ]; then
    note "loop device part SKIPPED: needs root (losetup)"
elif ! command -v losetup >/dev/null; then
    note "loop device part SKIPPED: losetup is not installed (apt-get install mount)"
elif ! LOOP="$(losetup --direct-io=on -f --show "$DATA" 2>"$WORK/losetup.err")"; then
    LOOP=""
    note "loop device part SKIPPED: losetup failed: $(cat "$WORK/losetup.err")"
else
    dio="$(cat "/sys/block/$(basename "$LOOP")/loop/dio" 2>/dev/null || echo '?')"
    [ "$dio" = 1 ] || note "warning: $LOOP does not use direct I/O (dio=$dio); its reads go through the page cache"
    suite "loop (dio=$dio)" "$LOOP"
fi

echo
echo "reel vs fio, medians of $RUNS alternating runs of ${RUNTIME}s each, iodepth_batch_submit=$BATCH, reel idle poll $IDLE_POLL"
echo "($(uname -sr), $(nproc) CPUs, $(fio --version), data file on $(stat -f -c %T "$(dirname "$DATA")"))"
echo
echo "| target | workload | reel | fio | ratio reel/fio | reel clat p50 / p99 (us) | fio clat p50 / p99 (us) | CPU per I/O reel/fio | reel/fio per pair of runs |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"

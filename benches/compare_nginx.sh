#!/usr/bin/env bash
# Compares serving large media assets with `reel node` against nginx, in the same run, on the
# same bytes: a set of large assets (default 16 x 256 MiB) and a set of small ones (default
# 1000 x 1 MiB) are generated once from /dev/urandom, written as plain files into a docroot that
# nginx serves, and PUT into a freshly formatted reel volume (a file). All three servers answer
# the identical URLs /assets/large/NN and /assets/small/NNNN (nginx maps them with an alias).
#
# Servers (each measured in turn, for every point, REEL_NGINX_REPEATS times):
#   reel            `reel node --primary VOLUME --listen 127.0.0.1:PORT --shards N`
#   nginx-sendfile  sendfile on; tcp_nopush on; page cache warmed (all files read) before each run
#   nginx-directio  sendfile off; aio threads; directio 512; output_buffers 2 1m
# Both nginx configs: worker_processes auto, access_log off, keepalive, open_file_cache,
# reuseport. The load is wrk (2 threads) at 8/32/128 connections for 10 s per point; a Lua
# script makes each request pick a random asset of the set, and its done() hook reports the
# exact bytes and duration. Server CPU is utime+stime from /proc/PID/stat (nginx: master and
# workers; reel: the node process, all threads) sampled before and after each wrk run.
#
# Prints, per point, the medians (stderr), then a markdown table (stdout): bytes/s (GB/s,
# 10^9 bytes), requests/s and server CPU-seconds per GB for each server, the ratios
# reel/nginx-sendfile and reel/nginx-directio (of the medians) and the targets: large assets
# >= 1.0x nginx sendfile and >= 3x nginx directio in bytes/s; CPU per GB <= nginx sendfile's.
#
# Before measuring it checks, for one large and one small asset, that the sha256 of the body
# served by each server equals the source file's. Everything (servers, the volume file, the
# docroot) is removed on exit, Ctrl-C included.
#
# Usage: benches/compare_nginx.sh [--quick] [--help]
#   --quick   sanity run: 4 x 64 MiB and 100 x 1 MiB, 3 s per point, 8 and 32 connections,
#             1 repeat (any REEL_NGINX_* variable still overrides)
#
# Environment (all optional):
#   REEL_NGINX_LARGE_COUNT  number of large assets (default 16)
#   REEL_NGINX_LARGE_MB     size of each large asset in MiB (default 256)
#   REEL_NGINX_SMALL_COUNT  number of small assets (default 1000)
#   REEL_NGINX_SMALL_MB     size of each small asset in MiB (default 1)
#   REEL_NGINX_RUN_SECONDS  wrk duration per run (default 10)
#   REEL_NGINX_CONNS        connection counts (default "8 32 128")
#   REEL_NGINX_REPEATS      runs of each server per point (default 3)
#   REEL_NGINX_THREADS      wrk threads (default 2)
#   REEL_NGINX_TIMEOUT      wrk --timeout (default 60s: a 256 MiB response takes seconds at 128
#                           connections)
#   REEL_NGINX_WORKERS      nginx worker_processes (default auto)
#   REEL_NGINX_SHARDS       reel node --shards (default: number of CPUs)
#   REEL_NGINX_DIR          parent of the scratch directory (default /var/tmp; not tmpfs: the
#                           reel volume and nginx directio need O_DIRECT)
#   REEL_NGINX_REEL         use this reel binary instead of building one with cargo
#   REEL_NGINX_SKIP_REEL    1 to measure nginx only (no reel build, no volume)
#   REEL_NGINX_KEEP         1 to keep the scratch directory (data, configs, logs, raw results)
#
# Needs: nginx (with threads), wrk, curl, python3; cargo unless REEL_NGINX_REEL or
# REEL_NGINX_SKIP_REEL is set. Disk: the docroot plus a volume of about the same size.
# Default duration: about 11 minutes (2 sets x 3 connection counts x 3 servers x 3 repeats x
# 10 s, plus generating and ingesting about 5 GiB).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ME=compare_nginx.sh

die() { echo "$ME: error: $*" >&2; exit 1; }
note() { echo "$ME: $*" >&2; }

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) die "unknown argument $arg (usage: benches/compare_nginx.sh [--quick] [--help])" ;;
    esac
done

if [ "$QUICK" = 1 ]; then
    d_large_count=4 d_large_mb=64 d_small_count=100 d_small_mb=1 d_secs=3 d_conns="8 32" d_reps=1
else
    d_large_count=16 d_large_mb=256 d_small_count=1000 d_small_mb=1 d_secs=10 d_conns="8 32 128" d_reps=3
fi
LARGE_COUNT="${REEL_NGINX_LARGE_COUNT:-$d_large_count}"
LARGE_MB="${REEL_NGINX_LARGE_MB:-$d_large_mb}"
SMALL_COUNT="${REEL_NGINX_SMALL_COUNT:-$d_small_count}"
SMALL_MB="${REEL_NGINX_SMALL_MB:-$d_small_mb}"
RUN_SECONDS="${REEL_NGINX_RUN_SECONDS:-$d_secs}"
CONNS="${REEL_NGINX_CONNS:-$d_conns}"
REPEATS="${REEL_NGINX_REPEATS:-$d_reps}"
THREADS="${REEL_NGINX_THREADS:-2}"
TIMEOUT="${REEL_NGINX_TIMEOUT:-60s}"
WORKERS="${REEL_NGINX_WORKERS:-auto}"
SHARDS="${REEL_NGINX_SHARDS:-$(nproc)}"
SKIP_REEL="${REEL_NGINX_SKIP_REEL:-0}"
KEEP="${REEL_NGINX_KEEP:-0}"

for v in LARGE_COUNT LARGE_MB SMALL_COUNT SMALL_MB RUN_SECONDS REPEATS THREADS SHARDS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "REEL_NGINX_$v must be a positive whole number, got '${!v}'"
done
for c in $CONNS; do
    [[ "$c" =~ ^[1-9][0-9]*$ ]] || die "REEL_NGINX_CONNS must list positive whole numbers, got '$CONNS'"
    [ "$c" -ge "$THREADS" ] || die "each connection count must be >= REEL_NGINX_THREADS ($THREADS) for wrk, got $c"
done
[ -n "$CONNS" ] || die "REEL_NGINX_CONNS is empty"

# --- prerequisites -------------------------------------------------------------------------
missing=()
for tool in nginx wrk curl python3; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    die "missing: ${missing[*]}; install with: apt-get install -y ${missing[*]}"
fi
nginx -V 2>&1 | grep -q -- '--with-threads' \
    || die "this nginx is built without thread pools (--with-threads), needed for 'aio threads'; Debian's nginx package has them"
CLK_TCK="$(getconf CLK_TCK)"

REEL=""
if [ "$SKIP_REEL" = 1 ]; then
    note "reel part SKIPPED (REEL_NGINX_SKIP_REEL=1): measuring nginx only"
else
    if [ -n "${REEL_NGINX_REEL:-}" ]; then
        REEL="$REEL_NGINX_REEL"
    else
        command -v cargo >/dev/null || die "cargo is not on PATH (install Rust from https://rustup.rs), or set REEL_NGINX_REEL=/path/to/reel or REEL_NGINX_SKIP_REEL=1"
        note "building reel (release)"
        (cd "$ROOT" && cargo build --release -p reel-tools --bin reel >&2) || die "cargo build failed"
        REEL="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
            | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/reel"
    fi
    [ -x "$REEL" ] || die "reel binary not found or not executable at $REEL"
    "$REEL" node --help >/dev/null 2>&1 \
        || die "$REEL has no working 'node' subcommand ('$REEL node --help' failed), so the reel side cannot run; build a reel with the HTTP node, or set REEL_NGINX_SKIP_REEL=1 to measure nginx alone"
fi

# --- scratch space -------------------------------------------------------------------------
PARENT="${REEL_NGINX_DIR:-/var/tmp}"
[ -d "$PARENT" ] || die "REEL_NGINX_DIR=$PARENT is not a directory"
[ "$(stat -f -c %T "$PARENT")" = tmpfs ] \
    && die "$PARENT is on tmpfs, which has no O_DIRECT (reel volume, nginx directio); set REEL_NGINX_DIR to a directory on ext4/xfs"

DATA_MIB=$((LARGE_COUNT * LARGE_MB + SMALL_COUNT * SMALL_MB))
# The volume's metadata (checkpoints + journal) is about 3% of its size; leave room for it.
VOL_MIB=0
[ "$SKIP_REEL" = 1 ] || VOL_MIB=$((DATA_MIB + DATA_MIB / 16 + 256))
NEED_MIB=$((DATA_MIB + VOL_MIB + 512))
AVAIL_MIB=$(( $(df --output=avail -B1M "$PARENT" | tail -1) ))
[ "$AVAIL_MIB" -ge "$NEED_MIB" ] \
    || die "not enough free space in $PARENT: need $NEED_MIB MiB (docroot $DATA_MIB MiB + reel volume $VOL_MIB MiB + 512 MiB margin), have $AVAIL_MIB MiB; set REEL_NGINX_DIR elsewhere or lower REEL_NGINX_LARGE_COUNT / REEL_NGINX_LARGE_MB / REEL_NGINX_SMALL_COUNT"
MEM_AVAIL_MIB=$(( $(awk '/^MemAvailable:/ {print $2}' /proc/meminfo) / 1024 ))
[ "$MEM_AVAIL_MIB" -gt $((DATA_MIB + DATA_MIB / 4)) ] \
    || note "WARNING: only $MEM_AVAIL_MIB MiB of memory available for $DATA_MIB MiB of assets: the nginx-sendfile runs will not be served from a fully warm page cache"

WORK="$(mktemp -d "$PARENT/reel-compare-nginx.XXXXXX")"
WWW="$WORK/www"
VOL="$WORK/volume.img"
RESULTS="$WORK/results.tsv"
mkdir -p "$WWW/large" "$WWW/small" "$WORK/runs"

declare -A SERVER_PID=() SERVER_URL=()
WRK_PID=""

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
    local rc=$? name
    trap - EXIT INT TERM
    [ -n "$WRK_PID" ] && stop_pid "$WRK_PID" wrk
    for name in "${!SERVER_PID[@]}"; do
        stop_pid "${SERVER_PID[$name]}" "$name"
    done
    if [ "$KEEP" = 1 ]; then
        note "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'note "interrupted; cleaning up"; exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- assets --------------------------------------------------------------------------------
width() { # COUNT MIN_DIGITS: digits of the largest index, at least MIN_DIGITS
    local last=$(($1 - 1))
    echo $(( ${#last} > $2 ? ${#last} : $2 ))
}
LW="$(width "$LARGE_COUNT" 2)"
SW="$(width "$SMALL_COUNT" 4)"
large_id() { printf "large/%0${LW}d" "$1"; }
small_id() { printf "small/%0${SW}d" "$1"; }

note "scratch directory $WORK"
note "generating $LARGE_COUNT x $LARGE_MB MiB + $SMALL_COUNT x $SMALL_MB MiB of random data ($DATA_MIB MiB) in $WWW"
: >"$WORK/paths-large"
: >"$WORK/paths-small"
t0=$SECONDS
for i in $(seq 0 $((LARGE_COUNT - 1))); do
    id="$(large_id "$i")"
    head -c $((LARGE_MB << 20)) /dev/urandom >"$WWW/$id"
    echo "/assets/$id" >>"$WORK/paths-large"
done
for i in $(seq 0 $((SMALL_COUNT - 1))); do
    id="$(small_id "$i")"
    head -c $((SMALL_MB << 20)) /dev/urandom >"$WWW/$id"
    echo "/assets/$id" >>"$WORK/paths-small"
done
sync
note "generated in $((SECONDS - t0)) s"
chmod -R a+rX "$WORK"

# --- nginx ---------------------------------------------------------------------------------
# Servers and wrk inherit this: 128 connections plus nginx's open_file_cache need more than 1024.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
start_nginx() { # NAME DIRECTIVES
    local name="$1" directives="$2" dir="$WORK/$1" port user=""
    port="$(free_port)"
    mkdir -p "$dir/tmp"
    [ "$(id -u)" = 0 ] && user="user root;"
    cat >"$dir/nginx.conf" <<EOF
# $name, written by benches/compare_nginx.sh
$user
worker_processes $WORKERS;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    server_tokens off;
    default_type application/octet-stream;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    open_file_cache max=10000 inactive=300s;
    open_file_cache_valid 300s;
    client_body_temp_path $dir/tmp/client_body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
$directives
    server {
        listen 127.0.0.1:$port backlog=4096 reuseport;
        location /assets/ {
            alias $WWW/;
        }
        location = /healthz {
            return 200 "ok\n";
        }
    }
}
EOF
    nginx -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/test.log" 2>&1 \
        || die "nginx rejected the $name config ($dir/nginx.conf): $(cat "$dir/test.log" "$dir/error.log" 2>/dev/null)"
    nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >>"$dir/stdout.log" 2>&1 &
    SERVER_PID[$name]=$!
    SERVER_URL[$name]="http://127.0.0.1:$port"
    wait_ready "$name" "$dir/error.log" 20
}

wait_ready() { # NAME LOG TIMEOUT_S: waits for GET /healthz to answer 200
    local name="$1" log="$2" timeout="$3" i
    for i in $(seq $((timeout * 10))); do
        kill -0 "${SERVER_PID[$name]}" 2>/dev/null \
            || die "$name exited before it was ready; its log ($log):"$'\n'"$(tail -n 30 "$log" 2>/dev/null)"
        curl -sf -o /dev/null --max-time 2 "${SERVER_URL[$name]}/healthz" && return 0
        sleep 0.1
    done
    die "$name did not answer ${SERVER_URL[$name]}/healthz with 200 within $timeout s; its log ($log):"$'\n'"$(tail -n 30 "$log" 2>/dev/null)"
}

start_nginx nginx-sendfile "    sendfile on;
    tcp_nopush on;"
start_nginx nginx-directio "    sendfile off;
    aio threads;
    directio 512;
    output_buffers 2 1m;"
note "nginx-sendfile on ${SERVER_URL[nginx-sendfile]}, nginx-directio on ${SERVER_URL[nginx-directio]} (worker_processes $WORKERS)"

# --- reel ----------------------------------------------------------------------------------
SERVERS=(nginx-sendfile nginx-directio)
if [ "$SKIP_REEL" != 1 ]; then
    note "formatting a ${VOL_MIB} MiB reel volume at $VOL"
    "$REEL" format "$VOL" --size "${VOL_MIB}M" >"$WORK/format.log" 2>&1 \
        || die "reel format failed: $(cat "$WORK/format.log")"
    port="$(free_port)"
    note "starting: $REEL node --primary $VOL --listen 127.0.0.1:$port --shards $SHARDS"
    "$REEL" node --primary "$VOL" --listen "127.0.0.1:$port" --shards "$SHARDS" >"$WORK/reel-node.log" 2>&1 &
    SERVER_PID[reel]=$!
    SERVER_URL[reel]="http://127.0.0.1:$port"
    wait_ready reel "$WORK/reel-node.log" 120
    for i in $(seq 50); do
        grep -q 'listening on' "$WORK/reel-node.log" && break
        sleep 0.1
    done
    if line="$(grep -m1 'listening on' "$WORK/reel-node.log")"; then
        note "$line"
    else
        note "warning: reel node answers /healthz but printed no 'listening on' line"
    fi
    SERVERS=(reel "${SERVERS[@]}")

    # PUT every asset, a batch of files per curl (one keep-alive connection), checking each status.
    put_batch() { # FILE_IDS...
        local args=() id codes n_ok
        for id in "$@"; do
            args+=(-o /dev/null -T "$WWW/$id" "${SERVER_URL[reel]}/assets/$id")
        done
        codes="$(curl -sS -H 'Expect:' --max-time 3600 -w '%{http_code} %{url_effective}\n' "${args[@]}")" \
            || die "PUT to reel failed (curl exit $?) in the batch starting at $1; node log: $WORK/reel-node.log"$'\n'"$codes"
        n_ok="$(grep -c '^20[01] ' <<<"$codes" || true)"
        [ "$n_ok" = "$#" ] || die "reel did not answer 201 to every PUT in the batch starting at $1:"$'\n'"$(grep -v '^20[01] ' <<<"$codes")"
    }
    note "ingesting into reel (PUT /assets/{id})"
    t0=$(date +%s.%N)
    for i in $(seq 0 $((LARGE_COUNT - 1))); do
        put_batch "$(large_id "$i")"
    done
    batch=()
    for i in $(seq 0 $((SMALL_COUNT - 1))); do
        batch+=("$(small_id "$i")")
        if [ ${#batch[@]} -ge 100 ]; then put_batch "${batch[@]}"; batch=(); fi
    done
    [ ${#batch[@]} -eq 0 ] || put_batch "${batch[@]}"
    t1=$(date +%s.%N)
    note "ingested $((LARGE_COUNT + SMALL_COUNT)) assets ($DATA_MIB MiB) in $(python3 -c "print(f'{$t1 - $t0:.1f} s, {$DATA_MIB / ($t1 - $t0):.0f} MiB/s')")"
fi

# --- correctness ---------------------------------------------------------------------------
for id in "$(large_id 0)" "$(small_id 0)" "$(large_id $((LARGE_COUNT - 1)))" "$(small_id $((SMALL_COUNT - 1)))"; do
    want="$(sha256sum <"$WWW/$id" | cut -d' ' -f1)"
    for s in "${SERVERS[@]}"; do
        got="$(curl -sf --max-time 300 "${SERVER_URL[$s]}/assets/$id" | sha256sum | cut -d' ' -f1)"
        [ "$got" = "$want" ] || die "$s served /assets/$id with sha256 $got, but the source file has $want"
    done
done
note "verified: sha256 of the first and last large and small asset from ${SERVERS[*]} match the source files"

# --- load ----------------------------------------------------------------------------------
for set in large small; do
    cat >"$WORK/wrk-$set.lua" <<EOF
-- Each request GETs a random asset of the $set set; done() prints the totals as key=value.
local paths = {}
for line in io.lines("$WORK/paths-$set") do paths[#paths + 1] = line end
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
    return wrk.format("GET", paths[math.random(#paths)])
end
function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "RESULT bytes=%.0f duration_us=%.0f requests=%.0f errors=%.0f err_connect=%.0f err_read=%.0f err_write=%.0f err_status=%.0f err_timeout=%.0f\n",
        summary.bytes, summary.duration, summary.requests,
        e.connect + e.read + e.write + e.status + e.timeout,
        e.connect, e.read, e.write, e.status, e.timeout))
end
EOF
done

# Sum of utime+stime (clock ticks) of a server: nginx master and its workers, or the reel node.
server_ticks() {
    local pid="${SERVER_PID[$1]}" p total=0 stat fields
    local pids=("$pid")
    if [ "$1" != reel ]; then
        mapfile -t -O 1 pids < <(ps -o pid= --ppid "$pid" | tr -d ' ')
        pids[0]="$pid"
    fi
    for p in "${pids[@]}"; do
        stat="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
        read -r -a fields <<<"${stat##*) }"   # fields[0] is field 3 (state)
        total=$((total + fields[11] + fields[12]))  # fields 14 (utime) and 15 (stime)
    done
    echo "$total"
}

warm_cache() { # SET
    find "$WWW/$1" -type f -exec cat {} + >/dev/null
}

printf 'server\tset\tconns\trep\tbytes\tduration_us\trequests\terrors\tcpu_ticks\tclk_tck\tdetail\n' >"$RESULTS"

run_one() { # SERVER SET CONNS REP
    local server="$1" set="$2" conns="$3" rep="$4" out before after line f bytes dur reqs errs
    out="$WORK/runs/$set-c$conns-$server-$rep.txt"
    kill -0 "${SERVER_PID[$server]}" 2>/dev/null || die "$server (pid ${SERVER_PID[$server]}) is no longer running"
    [ "$server" = nginx-sendfile ] && warm_cache "$set"
    before="$(server_ticks "$server")"
    wrk -t "$THREADS" -c "$conns" -d "${RUN_SECONDS}s" --timeout "$TIMEOUT" \
        -s "$WORK/wrk-$set.lua" "${SERVER_URL[$server]}/" >"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || die "wrk against $server failed: $(cat "$out")"
    WRK_PID=""
    sleep 0.3   # let the server finish the responses cut off at the end of the run
    after="$(server_ticks "$server")"
    line="$(grep '^RESULT ' "$out")" || die "wrk printed no RESULT line for $server: $(cat "$out")"
    declare -A kv=()
    for f in ${line#RESULT }; do kv[${f%%=*}]="${f#*=}"; done
    bytes="${kv[bytes]}" dur="${kv[duration_us]}" reqs="${kv[requests]}" errs="${kv[errors]}"
    [ "$bytes" != 0 ] || die "$server returned no bytes in $RUN_SECONDS s: $(cat "$out")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$set" "$conns" "$rep" \
        "$bytes" "$dur" "$reqs" "$errs" "$((after - before))" "$CLK_TCK" "${line#RESULT }" >>"$RESULTS"
    python3 - "$bytes" "$dur" "$reqs" "$((after - before))" "$CLK_TCK" "$errs" "$server" "$set" "$conns" "$rep" <<'PY' >&2
import sys
b, d, r, t, hz, e = (float(x) for x in sys.argv[1:7])
s, st, c, rep = sys.argv[7:]
secs = d / 1e6
warn = f"  ({e:.0f} ERRORS, see the run's wrk output)" if e else ""
print(f"compare_nginx.sh:   {st} c={c} #{rep} {s:15s} {b / secs / 1e9:7.3f} GB/s {r / secs:9.1f} req/s "
      f"{(t / hz) / (b / 1e9):7.3f} CPU-s/GB{warn}")
PY
}

cat >"$WORK/report.py" <<'PY'
import csv, statistics, sys

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
mode = sys.argv[2]
SERVERS = ["reel", "nginx-sendfile", "nginx-directio"]

def metrics(r):
    secs = float(r["duration_us"]) / 1e6
    b = float(r["bytes"])
    return {
        "gbps": b / secs / 1e9,
        "rps": float(r["requests"]) / secs,
        "cpu": (float(r["cpu_ticks"]) / float(r["clk_tck"])) / (b / 1e9),
        "errors": int(float(r["errors"])),
    }

def point(st, conns):
    out = {}
    for s in SERVERS:
        ms = [metrics(r) for r in rows if r["server"] == s and r["set"] == st and r["conns"] == conns]
        if ms:
            out[s] = {k: statistics.median(m[k] for m in ms) for k in ("gbps", "rps", "cpu")}
            out[s]["errors"] = sum(m["errors"] for m in ms)
            out[s]["runs"] = ms
    return out

def ratio(p, a, b, k):
    if a in p and b in p and p[b][k] > 0:
        return p[a][k] / p[b][k]
    return None

if mode == "point":
    st, conns = sys.argv[3], sys.argv[4]
    p = point(st, conns)
    parts = [f"{s} {p[s]['gbps']:.3f} GB/s {p[s]['rps']:.1f} req/s {p[s]['cpu']:.3f} CPU-s/GB"
             for s in SERVERS if s in p]
    print(f"compare_nginx.sh: median {st} c={conns}: " + "; ".join(parts))
    if "reel" in p:
        for other in ("nginx-sendfile", "nginx-directio"):
            r = ratio(p, "reel", other, "gbps")
            pairs = [a["gbps"] / b["gbps"] for a, b in zip(p["reel"]["runs"], p[other]["runs"])]
            print(f"compare_nginx.sh:   reel/{other} bytes/s {r:.2f} (per repeat: "
                  + " ".join(f"{x:.2f}" for x in pairs) + ")")
    sys.exit(0)

labels = dict(x.split("=", 1) for x in sys.argv[3:])
conns_list = []
for r in rows:
    if r["conns"] not in conns_list:
        conns_list.append(r["conns"])
have_reel = any(r["server"] == "reel" for r in rows)

def fmt(v, k):
    if v is None:
        return "—"
    if k == "gbps":
        return f"{v:.3f}"
    if k == "rps":
        return f"{v:.1f}" if v < 100 else f"{v:.0f}"
    return f"{v:.3f}"

def rfmt(v, want=None, le=False):
    if v is None:
        return "—"
    s = f"{v:.2f}×"
    if want is not None:
        ok = v <= want if le else v >= want
        s += " ✓" if ok else " ✗"
    return s

print("| assets | conns | metric | reel | nginx sendfile | nginx directio | reel / sendfile | reel / directio | target |")
print("|---|---|---|---|---|---|---|---|---|")
any_errors = False
for st in ("large", "small"):
    for conns in conns_list:
        p = point(st, conns)
        if not p:
            continue
        def cell(s, k):
            if s not in p:
                return "skipped" if s == "reel" and not have_reel else "—"
            return fmt(p[s][k], k) + (" (errors!)" if p[s]["errors"] else "")
        any_errors = any_errors or any(v["errors"] for v in p.values())
        for k, name in (("gbps", "GB/s"), ("rps", "req/s"), ("cpu", "CPU-s/GB")):
            if k == "gbps":
                target = "≥ 1.0× sendfile, ≥ 3× directio" if st == "large" else "—"
                rs = rfmt(ratio(p, "reel", "nginx-sendfile", k), 1.0 if st == "large" else None)
                rd = rfmt(ratio(p, "reel", "nginx-directio", k), 3.0 if st == "large" else None)
            elif k == "cpu":
                target = "≤ 1.0× sendfile"
                rs = rfmt(ratio(p, "reel", "nginx-sendfile", k), 1.0, le=True)
                rd = rfmt(ratio(p, "reel", "nginx-directio", k))
            else:
                target = "—"
                rs = rfmt(ratio(p, "reel", "nginx-sendfile", k))
                rd = rfmt(ratio(p, "reel", "nginx-directio", k))
            first = k == "gbps"
            print(f"| {labels[st] if first else ''} | {conns if first else ''} | {name} | "
                  f"{cell('reel', k)} | {cell('nginx-sendfile', k)} | {cell('nginx-directio', k)} | "
                  f"{rs} | {rd} | {target} |")
print()
print("bytes/s counts every byte received, including responses cut off at the end of a run: with large"
      " assets and many connections few responses complete within a run, so req/s is coarse there"
      " (raise REEL_NGINX_RUN_SECONDS for it).")
if any_errors:
    print()
    print("(errors!) marks servers with failed requests (non-2xx, timeouts, socket errors) in some run;"
          " see the wrk outputs (REEL_NGINX_KEEP=1 keeps them).")
PY

read -r -a CONN_LIST <<<"$CONNS"
total_runs=$((2 * ${#CONN_LIST[@]} * ${#SERVERS[@]} * REPEATS))
note "measuring: $total_runs wrk runs of ${RUN_SECONDS}s (${SERVERS[*]}; connections $CONNS; $REPEATS repeats; wrk -t $THREADS --timeout $TIMEOUT)"
for set in large small; do
    for conns in "${CONN_LIST[@]}"; do
        note "== $set assets, $conns connections"
        for rep in $(seq "$REPEATS"); do
            for s in "${SERVERS[@]}"; do
                run_one "$s" "$set" "$conns" "$rep"
            done
        done
        python3 "$WORK/report.py" "$RESULTS" point "$set" "$conns" >&2
    done
done

echo
echo "reel node vs nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), medians of $REPEATS alternating runs of ${RUN_SECONDS}s per point; wrk $THREADS threads, random asset per request"
echo "($(uname -sr), $(nproc) CPUs, $(awk '/^MemTotal:/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo), data on $(stat -f -c %T "$PARENT"); reel --shards $SHARDS; nginx worker_processes $WORKERS; wrk runs on the same host)"
echo "(load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); a busy host makes every column noisy, see the per-repeat lines on stderr)"
echo "GB = 10^9 bytes; CPU-s/GB = server utime+stime per GB sent (nginx: master + workers; reel: node process)"
echo
python3 "$WORK/report.py" "$RESULTS" table \
    "large=large ${LARGE_COUNT} × ${LARGE_MB} MiB" "small=small ${SMALL_COUNT} × ${SMALL_MB} MiB"
[ "$KEEP" = 1 ] && note "raw results: $RESULTS"
exit 0

#!/usr/bin/env bash
# Bounded fuzz smoke run of the HTTP layer (engine/http) (fuzz/fuzz_targets/*.rs), for CI and by hand:
# builds the cargo-fuzz (libFuzzer) targets once, then runs each for a bounded time starting
# from the committed seeds in fuzz/corpus/<target>/. New inputs go to a temporary directory, so
# the committed corpus is never touched.
#
# Exit status: non-zero if a target crashes (the input is saved under fuzz/artifacts/<target>/
# and the panic is printed) or the build fails; 0 with a "fuzz smoke: SKIPPED: ..." line when this
# machine cannot build libFuzzer targets at all (no nightly, no RUSTC_BOOTSTRAP fallback, no
# cargo-fuzz and no way to install it).
#
# Environment:
#   REEL_FUZZ_SECONDS   seconds per target (default 30; 0 = only replay the seed corpus once)
#   REEL_FUZZ_TARGETS   space-separated targets to run (default: every fuzz/fuzz_targets/*.rs)
#   REEL_FUZZ_SANITIZER cargo-fuzz --sanitizer (default none: the code under test is safe Rust,
#                       and without ASan a run is ~5x faster and builds faster; use address to
#                       check the unsafe code in dependencies such as httparse)
set -euo pipefail

fuzz_dir="$(cd "$(dirname "$0")" && pwd)"
seconds="${REEL_FUZZ_SECONDS:-30}"
sanitizer="${REEL_FUZZ_SANITIZER:-none}"
case "$seconds" in
  '' | *[!0-9]*)
    echo "fuzz smoke: REEL_FUZZ_SECONDS must be a whole number of seconds, not '$seconds'" >&2
    exit 2
    ;;
esac
if [ -n "${REEL_FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$REEL_FUZZ_TARGETS"
else
  targets=()
  for f in "$fuzz_dir"/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

skip() {
  echo "fuzz smoke: SKIPPED: $*"
  exit 0
}

# 1. A toolchain that accepts -Z flags (cargo-fuzz passes -Zsanitizer=..., and libfuzzer-sys
#    needs the sanitizer-coverage instrumentation).
probe_dir="$(mktemp -d)"
work_dir="$(mktemp -d)"
trap 'rm -rf "$probe_dir" "$work_dir"' EXIT
if [ "$sanitizer" = none ]; then zflag=-Zunstable-options; else zflag="-Zsanitizer=$sanitizer"; fi
probe() { # probe <rustc command...>: can this rustc compile with the unstable flag?
  echo 'pub fn f() {}' >"$probe_dir/probe.rs"
  "$@" "$zflag" --crate-type=lib --emit=metadata \
    --out-dir "$probe_dir" "$probe_dir/probe.rs" >/dev/null 2>&1
}
cargo_tc=()
if command -v rustup >/dev/null 2>&1 && probe rustup run nightly rustc; then
  cargo_tc=(+nightly)
  toolchain_note="nightly ($(rustup run nightly rustc --version))"
elif RUSTC_BOOTSTRAP=1 probe rustc; then
  export RUSTC_BOOTSTRAP=1
  toolchain_note="default toolchain with RUSTC_BOOTSTRAP=1 ($(rustc --version))"
else
  skip "no nightly toolchain (rustup run nightly rustc fails) and the default rustc refuses -Z flags even with RUSTC_BOOTSTRAP=1"
fi

# 2. cargo-fuzz (a cargo subcommand; it builds with any toolchain).
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz smoke: installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  if ! cargo install cargo-fuzz --locked --version '^0.13' >"$work_dir/install.log" 2>&1; then
    tail -n 20 "$work_dir/install.log"
    skip "cargo-fuzz is not installed and 'cargo install cargo-fuzz --locked' failed (see above)"
  fi
fi

# Build output stays in fuzz/target whatever the caller's CARGO_TARGET_DIR is.
export CARGO_TARGET_DIR="$fuzz_dir/target"
mkdir -p "$CARGO_TARGET_DIR"
fuzz=(cargo "${cargo_tc[@]}" fuzz)
common=(--fuzz-dir "$fuzz_dir" --sanitizer "$sanitizer")

echo "fuzz smoke: toolchain $toolchain_note, $("${fuzz[@]}" --version), sanitizer $sanitizer"
echo "fuzz smoke: building targets: ${targets[*]}"
start=$SECONDS
build_log="$CARGO_TARGET_DIR/smoke-build.log"
build() {
  if [ -z "${REEL_FUZZ_TARGETS:-}" ]; then
    "${fuzz[@]}" build "${common[@]}" # every target in one cargo build
  else
    for t in "${targets[@]}"; do "${fuzz[@]}" build "${common[@]}" "$t" || return; done
  fi
}
if ! build >"$build_log" 2>&1; then
  tail -n 60 "$build_log"
  echo "fuzz smoke: FAILED: the fuzz targets do not build (log: $build_log)"
  exit 1
fi
echo "fuzz smoke: built in $((SECONDS - start)) s"

lib_args=(-rss_limit_mb=2048 -timeout=10 -print_final_stats=1)
[ -f "$fuzz_dir/http.dict" ] && lib_args+=("-dict=$fuzz_dir/http.dict")
if [ "$seconds" = 0 ]; then
  lib_args+=(-runs=0)
else
  lib_args+=("-max_total_time=$seconds")
fi

final_stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -n 1; }

failed=()
for t in "${targets[@]}"; do
  out="$work_dir/corpus-$t"
  mkdir -p "$out"
  seeds=()
  [ -d "$fuzz_dir/corpus/$t" ] && seeds=("$fuzz_dir/corpus/$t")
  log="$CARGO_TARGET_DIR/smoke-$t.log"
  start=$SECONDS
  status=0
  "${fuzz[@]}" run "${common[@]}" "$t" "$out" "${seeds[@]}" -- "${lib_args[@]}" >"$log" 2>&1 || status=$?
  units=$(find "$out" -type f | wc -l)
  if [ "$status" = 0 ]; then
    echo "fuzz smoke: $t: ok, $(final_stat number_of_executed_units) runs in $((SECONDS - start)) s" \
      "($(final_stat average_exec_per_sec) exec/s), $units new corpus inputs, peak RSS $(final_stat peak_rss_mb) MB"
  else
    failed+=("$t")
    echo "fuzz smoke: $t: FAILED (exit $status) after $((SECONDS - start)) s; from $log:"
    if grep -q 'panicked at\|^Failing input:' "$log"; then
      # The panic message, then cargo-fuzz's summary (input path, bytes, how to reproduce).
      sed -n '/panicked at/,/^stack backtrace:/p' "$log" | head -n 40
      sed -n '/^Failing input:/,/^Minimize test case with:/p' "$log" | head -n 40
    else
      grep -v '^#[0-9]' "$log" | tail -n 60
    fi
  fi
done

# The closing line in the plain 'N passed, N failed' form CI summaries read.
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz smoke: FAILED: ${failed[*]} (crashing inputs are in $fuzz_dir/artifacts/<target>/;" \
    "reproduce with: cargo ${cargo_tc[*]} fuzz run --fuzz-dir $fuzz_dir -s $sanitizer <target> <input>)"
  echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
  exit 1
fi
echo "fuzz: ${#targets[@]} passed, 0 failed"

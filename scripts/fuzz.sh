#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang with ASan+UBSan, in $FUZZ_BUILD) and, for each
# target: replays its regression inputs (fuzz/regressions/<target>/, which must not crash),
# then fuzzes it for FUZZ_SECONDS on a copy of its seed corpus (fuzz/corpus/<target>/; the
# repository is never written). Prints executions per second per target; exits 1 when any
# target crashed, hung or leaked, after running them all. Crash inputs are kept in
# $FUZZ_ARTIFACTS. The targets that unpack layers need root (they confine themselves in a
# private mount namespace: fuzz/fuzz_sandbox.h) and are skipped without it.
#
#   scripts/fuzz.sh [TARGET...]        default: every target
#   FUZZ_SECONDS=60                    fuzzing time per target (0: replay and seeds only)
#   FUZZ_BUILD=build-fuzz              build directory
#   FUZZ_ARTIFACTS=/tmp/coppice-fuzz-artifacts
#   FUZZ_KEEP_CORPUS=DIR               keep the grown corpora in DIR/<target>/
#   FUZZ_JOBS=$(nproc)                 ninja jobs
set -euo pipefail
cd "$(dirname "$0")/.."

ALL=(layer_unpack layer_view spawn_request import_request manifest sse_parser)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")
SECS=${FUZZ_SECONDS:-60}
BUILD=${FUZZ_BUILD:-build-fuzz}
ARTIFACTS=${FUZZ_ARTIFACTS:-/tmp/coppice-fuzz-artifacts}
JOBS=${FUZZ_JOBS:-$(nproc)}

# Inputs larger than this are not generated (tars need room; the JSON parsers do not).
max_len() {
  case $1 in
    layer_unpack) echo 65536 ;;
    layer_view) echo 2048 ;;
    *) echo 8192 ;;
  esac
}

if [ ! -f "$BUILD/build.ninja" ]; then
  launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_CXX_COMPILER=clang++ \
    -DCOPPICE_FUZZ=ON "${launcher[@]}" >/dev/null
fi
ninja -C "$BUILD" -j "$JOBS" "${TARGETS[@]/%/_fuzz}"

work=$(mktemp -d /tmp/coppice-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$ARTIFACTS"
failed=()
summary=()
for t in "${TARGETS[@]}"; do
  bin="$BUILD/fuzz/${t}_fuzz"
  if [[ $t == layer_* ]] && [ "$(id -u)" -ne 0 ]; then
    summary+=("$(printf '%-15s skipped (needs root)' "$t")")
    continue
  fi
  opts=(-artifact_prefix="$ARTIFACTS/$t-" -timeout=10 -rss_limit_mb=2048 -max_len="$(max_len "$t")")
  [ -f "fuzz/$t.dict" ] && opts+=(-dict="fuzz/$t.dict")
  log="$work/$t.log"

  if [ -d "fuzz/regressions/$t" ]; then
    mapfile -t regs < <(find "fuzz/regressions/$t" -type f | sort)
    if ! "$bin" "${opts[@]}" "${regs[@]}" >"$log" 2>&1; then
      echo "== $t: a regression input crashed (fuzz/regressions/$t/):"
      grep -aE 'Running:|FINDING|ERROR|SUMMARY|runtime error' "$log" | tail -n 8
      failed+=("$t (regressions)")
      summary+=("$(printf '%-15s REGRESSION FAILED' "$t")")
      continue
    fi
  fi

  corpus="$work/$t-corpus"
  mkdir -p "$corpus"
  cp fuzz/corpus/"$t"/* "$corpus"/
  seeds=$(find "$corpus" -type f | wc -l)
  rc=0
  limit=(-max_total_time="$SECS")
  [ "$SECS" -gt 0 ] || limit=(-runs=0)  # libFuzzer reads max_total_time=0 as "no limit"
  "$bin" "${opts[@]}" "${limit[@]}" -print_final_stats=1 "$corpus" >"$log" 2>&1 || rc=$?
  runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
  eps=$(awk '/stat::average_exec_per_sec/ {print $2}' "$log")
  size=$(find "$corpus" -type f | wc -l)
  line=$(printf '%-15s %9s execs in %ss, %6s exec/s, corpus %s -> %s' "$t" "${runs:-?}" "$SECS" \
    "${eps:-?}" "$seeds" "$size")
  if [ "$rc" -ne 0 ]; then
    echo "== $t: crashed (exit $rc):"
    grep -aE 'FINDING|ERROR|SUMMARY|runtime error|Test unit written' "$log" | tail -n 8
    failed+=("$t")
    line+="  CRASH (input in $ARTIFACTS)"
  fi
  summary+=("$line")
  if [ -n "${FUZZ_KEEP_CORPUS:-}" ]; then
    mkdir -p "$FUZZ_KEEP_CORPUS/$t"
    cp -n "$corpus"/* "$FUZZ_KEEP_CORPUS/$t"/
  fi
done

echo "fuzz summary (ASan+UBSan):"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz: ok"

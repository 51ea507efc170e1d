#!/usr/bin/env bash
# bench/run.sh [BUILD_DIR] [--quick]   (make bench runs ./bench/run.sh $(BUILD))
#
# 1. sets up a fresh data dir under /var/tmp (busybox:latest + a token) and starts coppiced on it,
# 2. runs BUILD_DIR/api_bench against it over HTTP (scenarios a-e, see bench/api_bench.cc),
# 3. runs bench/peers.sh (bwrap, podman) on the same busybox rootfs,
# 4. prints a summary: our numbers, the peers' numbers and the ratios.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-build}
shift || true
QUICK=""
[ "${1:-}" = "--quick" ] && QUICK=--quick
BUILD=$(cd "$BUILD" && pwd) || { echo "no build dir $BUILD" >&2; exit 2; }
COPPICED=$BUILD/coppiced
BENCH=$BUILD/api_bench
if [ ! -x "$COPPICED" ] || [ ! -x "$BENCH" ]; then
  echo "building coppiced and api_bench in $BUILD"
  ninja -C "$BUILD" -j "${JOBS:-2}" coppiced api_bench || exit 1
fi
if [ "$(id -u)" != 0 ]; then echo "run.sh needs root (the sandbox and the peers do)" >&2; exit 2; fi
for p in bwrap podman runc; do
  command -v $p >/dev/null || echo "note: $p is missing (apt-get install -y bubblewrap podman runc)"
done

DATA=$(mktemp -d /var/tmp/coppice-bench-XXXXXX)
chmod 755 "$DATA"
OUT=$(mktemp /var/tmp/coppice-bench-out-XXXXXX)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
  rm -rf "$DATA" "$OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$COPPICED" image bootstrap busybox --data-dir "$DATA" >/dev/null 2>>"$DATA/admin.log" ||
  { cat "$DATA/admin.log"; exit 1; }
TOKEN=$("$COPPICED" token create --project bench --data-dir "$DATA" 2>>"$DATA/admin.log") ||
  { cat "$DATA/admin.log"; exit 1; }
"$COPPICED" serve --listen 127.0.0.1:0 --data-dir "$DATA" --log-level warn \
  >"$DATA/serve.out" 2>"$DATA/server.log" &
SERVER_PID=$!
PORT=""
for _ in $(seq 100); do
  PORT=$(sed -n 's/^listening on port \([0-9]*\)$/\1/p' "$DATA/serve.out" 2>/dev/null)
  [ -n "$PORT" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
[ -n "$PORT" ] || { echo "coppiced did not start:"; cat "$DATA/server.log"; exit 1; }

echo "=== api_bench: $COPPICED on 127.0.0.1:$PORT, data dir $DATA"
START=$(date +%s)
timeout 600 "$BENCH" --url "http://127.0.0.1:$PORT" --token "$TOKEN" $QUICK | tee -a "$OUT"
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] || { echo "api_bench failed (rc $rc); server log:"; tail -20 "$DATA/server.log"; }

echo
echo "=== peers (bash bench/peers.sh)"
timeout 420 bash "$HERE/peers.sh" --data-dir "$DATA" $QUICK | tee -a "$OUT"

# --------------------------------------------------------------------------------------------
declare -A R
while read -r _ k v; do R[$k]=$v; done < <(grep '^RESULT ' "$OUT")
get() { echo "${R[$1]:-}"; }
# line LABEL OURS_KEY PEER_LABEL PEER_KEY ...
fmt_ms() { [ -n "$1" ] && printf '%.2f ms' "$1" || printf 'n/a'; }
ratio() {  # ours / peer, with a readable "N x faster/slower"
  if [ -z "$1" ] || [ -z "$2" ]; then printf 'n/a'; return; fi
  awk -v a="$1" -v b="$2" 'BEGIN { if (a <= 0 || b <= 0) { printf "n/a (a value <= 0: within noise)"; exit } r = a / b; if (r <= 1) printf "%.3fx (%.1fx faster)", r, 1 / r; else printf "%.2fx (%.1fx slower)", r, r }'
}
line() {
  local label=$1 ours=$2; shift 2
  printf '%-34s coppice %s' "$label" "$(fmt_ms "$ours")"
  while [ $# -ge 2 ]; do
    printf ' | %s %s → ratio %s' "$1" "$(fmt_ms "$2")" "$(ratio "$ours" "$2")"
    shift 2
  done
  printf '\n'
}
snap_podman=""
if [ -n "$(get podman_commit_big_p50)" ] && [ -n "$(get podman_write_disposable_p50)" ]; then
  snap_podman=$(awk -v a="$(get podman_commit_big_p50)" -v b="$(get podman_write_disposable_p50)" 'BEGIN{printf "%.3f", a-b}')
fi
echo
echo "=== summary (p50 unless noted; ratio = coppice / peer)"
line "true run" "$(get true_p50)" "fork+exec (no sandbox)" "$(get exec_true_p50)" \
  "bwrap" "$(get bwrap_true_p50)" "podman run --rm" "$(get podman_true_p50)"
line "true run p99" "$(get true_p99)" "bwrap p99" "$(get bwrap_true_p99)" \
  "podman p99" "$(get podman_true_p99)"
line "small change + snapshot" "$(get chain_d1_p50)" "podman run+commit+rm" "$(get podman_commit_small_p50)"
line "30MB/1000 files + snapshot" "$(get snap_write_nd_p50)" "podman run+commit+rm" "$(get podman_commit_big_p50)"
line "30MB/1000 files disposable" "$(get snap_write_d_p50)" "podman run --rm" "$(get podman_write_disposable_p50)"
line "snapshot cost (nd - d, paired median)" "$(get snap_cost_paired)" "podman (commit+rm - run --rm)" "$snap_podman"
line "snapshot step, server-side (30MB)" "$(get snap_server_p50)" "same, nothing written" "$(get snap_server_nowrite_p50)"
line "8 branches, median total" "$(get fan8_total_p50)" "podman 8 parallel" "$(get podman_fan8_p50)"
line "64 branches, median total" "$(get fan64_total_p50)"
printf '%-34s depth-1 %s, deep %s, ratio %s (target <= 1.5)\n' "chain depth" \
  "$(fmt_ms "$(get chain_d1_p50)")" "$(fmt_ms "$(get chain_deep_p50)")" "$(get chain_ratio)"
line "inspect download /etc/passwd" "$(get download_p50)"
echo "bench finished in $(( $(date +%s) - START )) s"

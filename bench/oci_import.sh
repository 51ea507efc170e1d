#!/usr/bin/env bash
# bench/oci_import.sh [BUILD_DIR] [--quick] [-n N] [--full]     (make bench-oci)
#
# OCI import: coppiced against skopeo + umoci on a real Debian image, all on loopback.
#   1. builds a Debian bookworm minbase rootfs with mmdebstrap (cached in
#      /var/tmp/coppice-bench-cache/): by default "slim" like the debian:bookworm-slim image
#      (merged-/usr by the debootstrap method instead of the usrmerge package, which drags in
#      perl; no docs, man pages or locales): ~80 MB, ~30 MB gzipped, ~4,800 entries. --full: the
#      plain `mmdebstrap --variant=minbase` (usrmerge + perl + docs): ~170 MB, ~63 MB gzipped,
#      ~8,700 entries. It makes it a one-layer gzip OCI image with umoci (the layout
#      is cached too) plus N variants (new config and manifest, same layer), and pushes them with
#      skopeo to Debian's docker-registry started on 127.0.0.1 (a free port, storage under
#      /var/tmp);
#   2. runs bench/oci_import.py, which times, N times each (5; --quick: 2), interleaved:
#        ours cold: POST /v1/images/import → SUCCESS on a fresh coppiced (fresh data dir),
#        peer:      skopeo copy docker://… oci:DIR:latest + umoci unpack (fresh DIR/BUNDLE),
#        ours warm: a re-import of the same reference, and an import of a new tag sharing the
#                   layer, on a server that already holds it;
#        reference: tar -x of the uncompressed rootfs tar (what creating the files costs here);
#      and prints p50/min/max, ours/peer (PASS if <= 1.0) and warm re-import (PASS if < 100 ms).
#   3. removes everything it started (registry, servers, temporary directories), Ctrl-C included.
# Needs root, mmdebstrap, umoci, skopeo and docker-registry (all in Debian 12), and the Debian
# mirror the first time (mmdebstrap).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
PY=/usr/bin/python3
BUILD=build
N=5
FLAVOUR=slim
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) N=2; shift ;;
    -n|--n) N=$2; shift 2 ;;
    --full) FLAVOUR=full; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "usage: $0 [BUILD_DIR] [--quick] [-n N] [--full]" >&2; exit 2 ;;
    *) BUILD=$1; shift ;;
  esac
done
COPPICED=$(cd "$BUILD" 2>/dev/null && pwd)/coppiced
[ -x "$COPPICED" ] || { echo "no $BUILD/coppiced: build it first (make build)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "oci_import.sh needs root (mmdebstrap, umoci unpack, coppiced)" >&2; exit 2; }
missing=""
for t in mmdebstrap umoci skopeo docker-registry curl; do
  command -v $t >/dev/null || missing="$missing $t"
done
[ -z "$missing" ] || { echo "missing:$missing (apt-get install -y mmdebstrap umoci skopeo docker-registry curl)" >&2; exit 2; }

CACHE=/var/tmp/coppice-bench-cache
if [ "$FLAVOUR" = slim ]; then
  ROOTFS_TAR=$CACHE/bookworm-minbase-slim.tar
  MMDEBSTRAP_OPTS=(--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-include=/usr/share/man/man[1-9]/*'
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-include=/usr/share/doc/*/changelog.Debian.*')
else
  ROOTFS_TAR=$CACHE/bookworm-minbase.tar
  MMDEBSTRAP_OPTS=()
fi
LAYOUT_CACHE=${ROOTFS_TAR%.tar}.oci
REPO=debian
TAG=bookworm
VARIANT=variant-

mkdir -p "$CACHE"
WORK=$(mktemp -d /var/tmp/coppice-oci-bench-XXXXXX)
chmod 755 "$WORK"
: >"$WORK/pids"
REG_PID=""
PY_PID=""

cleanup() {
  trap - INT TERM HUP PIPE
  if [ -n "$PY_PID" ] && kill -0 "$PY_PID" 2>/dev/null; then
    kill -TERM "$PY_PID" 2>/dev/null   # it stops its servers and removes their data dirs
    wait "$PY_PID" 2>/dev/null
  fi
  # servers the helper could not stop (it was killed): end them by pid
  while read -r pid; do
    if [ -n "$pid" ] && grep -q coppiced "/proc/$pid/cmdline" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
  done <"$WORK/pids"
  if [ -n "$REG_PID" ]; then
    kill -TERM "$REG_PID" 2>/dev/null
    wait "$REG_PID" 2>/dev/null
  fi
  awk -v w="$WORK" 'index($2, w "/") == 1 {print $2}' /proc/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null; done
  rm -rf "$WORK" "$ROOTFS_TAR.part.$$" "$LAYOUT_CACHE.part.$$"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE

step() { printf '\n=== %s\n' "$*"; }
run() {  # run CMD...: quiet, but show its output if it fails
  local out
  out=$("$@" 2>&1) || { echo "failed: $*"; echo "$out" | tail -20; return 1; }
}

# ------------------------------------------------------------------------------------------------
step "1. image: Debian bookworm minbase ($FLAVOUR)"
if [ -s "$ROOTFS_TAR" ]; then
  echo "rootfs tar: cached $ROOTFS_TAR ($(du -m "$ROOTFS_TAR" | cut -f1) MB)"
else
  echo "rootfs tar: mmdebstrap --variant=minbase --mode=root --format=tar ${MMDEBSTRAP_OPTS[*]} bookworm (from the Debian mirror)"
  t0=$(date +%s)
  run mmdebstrap --quiet --variant=minbase --mode=root --format=tar "${MMDEBSTRAP_OPTS[@]}" \
    bookworm "$ROOTFS_TAR.part.$$" ||
    exit 1
  mv "$ROOTFS_TAR.part.$$" "$ROOTFS_TAR"
  rm -rf "$LAYOUT_CACHE"
  echo "rootfs tar: built in $(( $(date +%s) - t0 )) s, $(du -m "$ROOTFS_TAR" | cut -f1) MB"
fi

if [ -f "$LAYOUT_CACHE/index.json" ] && [ "$LAYOUT_CACHE/index.json" -nt "$ROOTFS_TAR" ]; then
  echo "OCI layout: cached $LAYOUT_CACHE"
else
  echo "OCI layout: umoci init/new/unpack, tar -x --numeric-owner, umoci repack"
  t0=$(date +%s)
  L=$LAYOUT_CACHE.part.$$
  B=$WORK/build-bundle
  rm -rf "$L"
  run umoci init --layout "$L" &&
    run umoci new --image "$L:$TAG" &&
    run umoci unpack --image "$L:$TAG" "$B" &&
    run tar --numeric-owner -xpf "$ROOTFS_TAR" -C "$B/rootfs" &&
    run umoci repack --image "$L:$TAG" "$B" &&
    run umoci config --image "$L:$TAG" --config.cmd /bin/bash &&
    run umoci gc --layout "$L" || exit 1
  rm -rf "$B" "$LAYOUT_CACHE"
  mv "$L" "$LAYOUT_CACHE"
  echo "OCI layout: built in $(( $(date +%s) - t0 )) s"
fi
read -r LAYER_DIGEST LAYER_SIZE UNCOMPRESSED < <($PY "$HERE/oci_import.py" layout-info "$LAYOUT_CACHE" "$TAG") ||
  exit 1
echo "layer: $LAYER_DIGEST ($(tar -tf "$ROOTFS_TAR" | wc -l) tar entries)"
printf 'compressed size: %d bytes (%.1f MB); uncompressed tar %.1f MB\n' "$LAYER_SIZE" \
  "$(awk -v b="$LAYER_SIZE" 'BEGIN{print b/1e6}')" "$(awk -v b="$UNCOMPRESSED" 'BEGIN{print b/1e6}')"

# variants: a new config (and so a new manifest) over the same layer, one per iteration
L=$WORK/layout
cp -a "$LAYOUT_CACHE" "$L"
for i in $(seq "$N"); do
  run umoci config --image "$L:$TAG" --tag "$VARIANT$i" --config.env "BENCH_VARIANT=$i" || exit 1
done

# ------------------------------------------------------------------------------------------------
step "registry: docker-registry on 127.0.0.1"
REG=$WORK/registry
mkdir -p "$REG/storage"
REG_HOST=""
for _ in 1 2 3 4 5; do
  port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$REG/config.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REG/storage
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
YML
  docker-registry serve "$REG/config.yml" >>"$REG/registry.log" 2>&1 </dev/null &
  REG_PID=$!
  for _ in $(seq 150); do
    if curl -fs -o /dev/null "http://127.0.0.1:$port/v2/"; then REG_HOST=127.0.0.1:$port; break; fi
    kill -0 "$REG_PID" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$REG_HOST" ] && break
  kill -TERM "$REG_PID" 2>/dev/null; wait "$REG_PID" 2>/dev/null; REG_PID=""
done
[ -n "$REG_HOST" ] || { echo "docker-registry did not start:"; tail -20 "$REG/registry.log"; exit 1; }
echo "registry: $REG_HOST (storage $REG/storage)"

t0=$(date +%s)
run skopeo copy --quiet --dest-tls-verify=false "oci:$L:$TAG" "docker://$REG_HOST/$REPO:$TAG" || exit 1
for i in $(seq "$N"); do
  run skopeo copy --quiet --dest-tls-verify=false "oci:$L:$VARIANT$i" \
    "docker://$REG_HOST/$REPO:$VARIANT$i" || exit 1
done
rm -rf "$L"
echo "pushed $REPO:$TAG and $N variants ($REPO:${VARIANT}1..$N, same layer) in $(( $(date +%s) - t0 )) s"

# ------------------------------------------------------------------------------------------------
step "2-3. timing: ours ($COPPICED) vs skopeo copy + umoci unpack, n=$N each"
echo "skopeo $(skopeo --version | awk '{print $3}'), umoci $(umoci --version | awk '{print $3}'), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
START=$(date +%s)
$PY "$HERE/oci_import.py" bench --coppiced "$COPPICED" --registry "$REG_HOST" --repo "$REPO" \
  --tag "$TAG" --variant-prefix "$VARIANT" --n "$N" --work "$WORK" \
  --layer-size "$LAYER_SIZE" --uncompressed "$UNCOMPRESSED" --rootfs-tar "$ROOTFS_TAR" &
PY_PID=$!
wait "$PY_PID"
rc=$?
PY_PID=""
echo "oci bench finished in $(( $(date +%s) - START )) s (rc $rc), load average $(cut -d' ' -f1-3 /proc/loadavg)"
exit $rc

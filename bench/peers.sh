#!/usr/bin/env bash
# peers.sh [--data-dir DATA] [--quick]
#
# Times the tools a user would pick instead of Coppice, on the same busybox root filesystem:
#   * bwrap --unshare-all --ro-bind ROOTFS / --proc /proc --dev /dev /bin/true
#   * podman (runc, cgroupfs, --network none, host ulimits): run --rm /bin/true; run + commit + rm for a small
#     change, for a 30 MB / 1,000-file change, and 8 such branches in parallel.
# The rootfs is exported from DATA/layers/<id>/ (the busybox base layer, ownership shifted back
# by the store's uid base) when --data-dir is given, else built from /bin/busybox the way the server does.
# Prints p50/p99 per scenario and `RESULT key value` lines (bench/run.sh reads them).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=""
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) DATA=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "usage: $0 [--data-dir DATA] [--quick]" >&2; exit 2 ;;
  esac
done
if [ "$QUICK" = 1 ]; then N_FAST=50; N_POD=8; N_POD_BIG=3; REPS=3; else N_FAST=200; N_POD=20; N_POD_BIG=8; REPS=5; fi
UID_SHIFT=100000  # the data directory's recorded base replaces it below
if [ -n "$DATA" ] && [ -r "$DATA/coppice.db" ]; then
  UID_SHIFT=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(
    "SELECT value FROM settings WHERE key=?", ("sandbox_ids",)).fetchone()[0].split(":")[0])' \
    "$DATA/coppice.db" 2>/dev/null || echo 100000)
fi

WORK=$(mktemp -d /var/tmp/coppice-peers-XXXXXX)
chmod 755 "$WORK"
ROOTFS=$WORK/rootfs
PODMAN_OK=0
P=""

cleanup() {
  if [ "$PODMAN_OK" = 1 ] || [ -n "$P" ]; then
    timeout 60 $P rm -af >/dev/null 2>&1
    timeout 60 $P rmi -af >/dev/null 2>&1
  fi
  # Unmount whatever podman's storage left mounted under the work dir, deepest first.
  awk -v w="$WORK" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

T() { python3 "$HERE/timer.py" "$@"; }

# ------------------------------------------------------------------------------------------------
# Root filesystem
make_rootfs() {
  if [ -n "$DATA" ] && [ -d "$DATA/layers" ]; then
    for l in "$DATA"/layers/*/; do
      if [ -e "$l/bin/busybox" ] && [ -e "$l/etc/passwd" ]; then
        cp -a "$l" "$ROOTFS" &&
          chown -R -h --from=$UID_SHIFT:$UID_SHIFT 0:0 "$ROOTFS" &&
          { echo "rootfs: exported from $l (ownership shifted back by -$UID_SHIFT)"; return 0; }
      fi
    done
    echo "rootfs: no busybox layer found under $DATA/layers; building one from /bin/busybox"
  fi
  [ -x /bin/busybox ] || { echo "rootfs: /bin/busybox missing (apt-get install busybox-static)"; return 1; }
  mkdir -p "$ROOTFS"
  for d in bin sbin usr/bin usr/sbin etc proc dev sys tmp root home var/tmp run mnt; do
    mkdir -p "$ROOTFS/$d"
  done
  chmod 1777 "$ROOTFS/tmp" "$ROOTFS/var/tmp"
  chmod 700 "$ROOTFS/root"
  cp /bin/busybox "$ROOTFS/bin/busybox"
  /bin/busybox --list-full | while read -r a; do
    [ "$a" = bin/busybox ] || { mkdir -p "$ROOTFS/$(dirname "$a")"; ln -sf /bin/busybox "$ROOTFS/$a"; }
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$ROOTFS/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOTFS/etc/group"
  echo "rootfs: built from /bin/busybox"
}
make_rootfs || exit 1

# The 30 MB / 1,000-file workload, identical to api_bench scenario b (printf is an ash builtin).
export WRITE_CMD='mkdir /w && i=0; while [ $i -lt 1000 ]; do printf "%30720s" "" > /w/f$i; i=$((i+1)); done'
export ROOTFS

# ------------------------------------------------------------------------------------------------
echo
echo "[floor] no isolation"
T exec_true "fork+exec ROOTFS/bin/true (no sandbox)" "$N_FAST" 10 -- '"$ROOTFS/bin/true"'

echo
echo "[bwrap] $(bwrap --version 2>/dev/null || echo 'not installed')"
if command -v bwrap >/dev/null; then
  T bwrap_true "bwrap --unshare-all --ro-bind ROOTFS / true" "$N_FAST" 10 -- \
    'bwrap --unshare-all --ro-bind "$ROOTFS" / --proc /proc --dev /dev /bin/true'
else
  echo "  bwrap: not installed (apt-get install -y bubblewrap)"
fi

# ------------------------------------------------------------------------------------------------
echo
echo "[podman] $(podman --version 2>/dev/null || echo 'not installed'), runtime: $(runc --version 2>/dev/null | head -1 || echo 'runc missing')"
# Podman asks runc for nofile/nproc limits above this host's hard limits ("error setting rlimit
# type 7: operation not permitted"; --ulimit host does not help with podman 4.3, and even the
# host's own hard nproc is refused): pin both well below.
ULIM="--ulimit nofile=1024:1024 --ulimit nproc=4096:4096"
export ULIM
podman_setup() {
  command -v podman >/dev/null || { echo "  podman: not installed (apt-get install -y podman runc)"; return 1; }
  command -v runc >/dev/null || { echo "  podman: runc not installed (apt-get install -y runc)"; return 1; }
  tar -C "$ROOTFS" --numeric-owner -cf "$WORK/rootfs.tar" . || return 1
  local drv out
  for drv in overlay vfs; do
    P="podman --root $WORK/podman-$drv/root --runroot $WORK/podman-$drv/run --storage-driver $drv --cgroup-manager=cgroupfs --runtime runc --events-backend=file"
    if ! out=$(timeout 180 $P import -q "$WORK/rootfs.tar" coppice-busybox:latest 2>&1); then
      echo "  podman ($drv): import failed: $(echo "$out" | tail -3)"
      continue
    fi
    if ! out=$(timeout 60 $P run --rm --network none $ULIM coppice-busybox:latest /bin/true 2>&1); then
      echo "  podman ($drv): run failed: $(echo "$out" | tail -3)"
      timeout 60 $P rmi -af >/dev/null 2>&1
      continue
    fi
    echo "  podman storage driver: $drv (root $WORK/podman-$drv)"
    return 0
  done
  P=""
  return 1
}
if podman_setup; then
  PODMAN_OK=1
  export P
  IMG=coppice-busybox:latest
  export IMG
  T podman_true "podman run --rm IMG /bin/true" "$N_POD" 60 -- \
    'timeout 60 $P run --rm --network none $ULIM $IMG /bin/true'
  T podman_commit_small "podman run + commit + rm (echo hi > /f)" "$N_POD" 120 -- \
    'timeout 60 $P run --network none $ULIM --name small{i} $IMG /bin/sh -c "echo hi > /f" &&
     timeout 60 $P commit -q small{i} small{i} >/dev/null && timeout 60 $P rm small{i} >/dev/null'
  T podman_write_disposable "podman run --rm, 30MB/1000 files (disposable)" "$N_POD_BIG" 120 -- \
    'timeout 60 $P run --rm --network none $ULIM $IMG /bin/sh -c "$WRITE_CMD"'
  T podman_commit_big "podman run + commit + rm, 30MB/1000 files" "$N_POD_BIG" 180 -- \
    'timeout 60 $P run --network none $ULIM --name big{i} $IMG /bin/sh -c "$WRITE_CMD" &&
     timeout 120 $P commit -q big{i} big{i} >/dev/null && timeout 60 $P rm big{i} >/dev/null'
  T podman_fan8 "podman 8 branches in parallel (run+commit+rm)" 0 300 --parallel 8 --reps "$REPS" -- \
    'timeout 120 $P run --network none $ULIM --name fan{rep}-{i} $IMG /bin/sh -c "echo {i} > /branch" &&
     timeout 120 $P commit -q fan{rep}-{i} fan{rep}-{i} >/dev/null && timeout 60 $P rm fan{rep}-{i} >/dev/null'
else
  echo "  podman: unusable on this host (errors above); skipping the podman scenarios"
fi
exit 0

#!/usr/bin/env bash
# `make run`: prepares a data directory (busybox:latest, a token) and serves on LISTEN.
# Usage: run-server.sh COPPICED DATA_DIR LISTEN [more coppiced serve flags]
# A local registry at 127.0.0.1:5000 (README's examples) is allowed over plain http; coppiced
# refuses registries at loopback or private addresses that the operator does not name.
#
# Per-run write limits bind a running sandbox through project quotas when the data directory's
# filesystem has them (XFS mounted with prjquota, or ext4 with the project feature). When it
# has not, and the data directory is new (empty or missing), this script puts it on a sparse XFS
# image mounted with prjquota: DATA.xfs, COPPICE_XFS_SIZE big (default 64G; sparse, so it
# takes only what is used). COPPICE_XFS_IMAGE=0 leaves the data directory as it is. If the
# kernel cannot mount XFS with quotas (no CONFIG_XFS_QUOTA), the script says so and coppiced
# stops runs past their limit with its watchdog instead (coppiced serve --help, README).
set -euo pipefail
bin=$1 data=$2 listen=$3
shift 3
has_project_quota() {
  findmnt -n -o FSTYPE,OPTIONS -T "$1" 2>/dev/null | grep -Eq '^(xfs|ext4) .*(prjquota|pquota)'
}
mkdir -p "$data"
if [ "${COPPICE_XFS_IMAGE:-1}" != 0 ] && ! has_project_quota "$data" && ! mountpoint -q "$data"; then
  img="${data%/}.xfs"
  if [ ! -e "$img" ] && [ -z "$(ls -A "$data")" ] && command -v mkfs.xfs >/dev/null; then
    echo "the data directory has no project quotas: making $img (${COPPICE_XFS_SIZE:-64G}, sparse, XFS)"
    truncate -s "${COPPICE_XFS_SIZE:-64G}" "$img"
    mkfs.xfs -q "$img"
  fi
  if [ -e "$img" ]; then
    if mount -o loop,prjquota,nodev,nosuid "$img" "$data" 2>/dev/null; then
      echo "data directory: $img mounted on $data with project quotas"
    else
      echo "warning: could not mount $img with prjquota ($(dmesg 2>/dev/null | tail -n 1)):"
      echo "  coppiced enforces the per-run write limit with its watchdog instead"
      [ -z "$(ls -A "$data")" ] && rm -f "$img"
    fi
  elif [ -n "$(ls -A "$data")" ]; then
    echo "note: $data has no project quotas and is not empty: left as it is (watchdog mode)"
  fi
fi
if [ ! -e "$data/.bootstrapped" ]; then
  "$bin" image bootstrap busybox --data-dir "$data" >/dev/null
  touch "$data/.bootstrapped"
fi
token_file="$data/token"
if [ ! -s "$token_file" ]; then
  "$bin" token create --project default --data-dir "$data" 2>/dev/null >"$token_file"
  chmod 600 "$token_file"
fi
token=$(cat "$token_file")
cat <<EOT

  coppiced on http://$listen   data dir: $data
  API token (project "default"): $token

  try:  curl -s -H "Authorization: Bearer $token" http://$listen/v1/images

EOT
exec "$bin" serve --listen "$listen" --data-dir "$data" --insecure-registry 127.0.0.1:5000 "$@"

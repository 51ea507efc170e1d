#!/usr/bin/env bash
# `make run`: prepares a data directory (busybox:latest, a token) and serves on LISTEN.
# Usage: run-server.sh COPPICED DATA_DIR LISTEN [more coppiced serve flags]
# A local registry at 127.0.0.1:5000 (README's examples) is allowed over plain http; coppiced
# refuses registries at loopback or private addresses that the operator does not name.
set -euo pipefail
bin=$1 data=$2 listen=$3
shift 3
mkdir -p "$data"
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

#!/usr/bin/env bash
# `make run`: prepares a data directory (busybox:latest, a token) and serves on LISTEN.
# Usage: run-server.sh COPPICED DATA_DIR LISTEN
set -euo pipefail
bin=$1 data=$2 listen=$3
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
exec "$bin" serve --listen "$listen" --data-dir "$data"

#!/usr/bin/env bash
# Time the JWT layer adds per request: the same server answers
#   GET /health               (no credentials checked: the reference), and
#   GET /sovra/v1/whoami      (apikey checked + Bearer token verified + claims returned)
# under the same load from wrk on loopback, one after the other in one run.
#
#   bench/jwt_layer.sh [seconds] [connections]   (defaults 10 s, 16 connections)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"; conns="${2:-16}"
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null; }
bin=./target/release/sovra
[ -x "$bin" ] || cargo build --release --locked --bin sovra >/dev/null
dir="$(mktemp -d /tmp/sovra-bench-XXXXXX)"; chmod 755 "$dir"
port=54398
"$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
until curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1; do sleep 0.05; done
anon=$("$bin" keys --json --data-dir "$dir/data" | python3 -c 'import json,sys; print(json.load(sys.stdin)["anon_key"])')
# A user's access token would be signed by the auth service; the anon key is
# a token of the same size and algorithm (HS256), verified the same way.
run() { wrk -t2 -c"$conns" -d"${secs}s" --latency "$@" | awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {printf "%s req/s, p50 %s, p99 %s", rps, p50, p99}'; }
health=$(run "http://127.0.0.1:$port/health")
whoami=$(run -H "apikey: $anon" -H "Authorization: Bearer $anon" "http://127.0.0.1:$port/sovra/v1/whoami")
echo "| endpoint (wrk -t2 -c$conns -d${secs}s) | result |"
echo "|---|---|"
echo "| GET /health (reference: no JWT layer) | $health |"
echo "| GET /sovra/v1/whoami (apikey + Bearer verified) | $whoami |"

#!/usr/bin/env bash
# REST GET by primary key (owner RLS, bench/rest/fixture.sql) at 32
# connections against one server per pool size, started side by side and
# measured alternately (pool 4, 8, 16, 32, then again): how pool size trades
# throughput for tail latency on this machine.
#
#   bench/rest_pool.sh [seconds] [rounds]   (defaults: 5 s, 2 rounds)
#
# SOVRA_BIN picks another sovra binary; otherwise the release build of this
# tree is used. Prints Markdown rows.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"; rounds="${2:-2}"
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
command -v psql >/dev/null || export PATH="$(pg_config --bindir):$PATH"
if [ -z "${SOVRA_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin sovra
  SOVRA_BIN=./target/release/sovra
fi
bin="$SOVRA_BIN"
sizes=(4 8 16 32)
start() { # pool -> sets pid url dir
  dir="$(mktemp -d /tmp/sovra-bench-XXXXXX)"; chmod 755 "$dir"
  port=$((54480 + $1))
  env -u SOVRA_BIN SOVRA_DATABASE_POOL_SIZE=$1 SOVRA_LOG_LEVEL=warn "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >/dev/null 2>"$dir/err.log" &
  pid=$!
  url="http://127.0.0.1:$port"
  until curl -fs "$url/ready" >/dev/null 2>&1; do sleep 0.05; done
  psql -h "$dir/data/pg" -U postgres -d postgres -q -v ON_ERROR_STOP=1 -f bench/rest/fixture.sql >/dev/null
  anon="$("$bin" keys --json --data-dir "$dir/data" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["anon_key"])')"
  token="$(python3 - "$dir/data/keys.json" <<'PY'
import base64, hashlib, hmac, json, sys, time
key = next(k for k in json.load(open(sys.argv[1]))["keys"] if k["status"] == "active")
b64 = lambda v: base64.urlsafe_b64encode(json.dumps(v, separators=(",", ":")).encode()).rstrip(b"=").decode()
now = int(time.time())
head = b64({"alg": "HS256", "typ": "JWT", "kid": key["kid"]})
body = b64({"sub": "00000000-0000-0000-0000-00000000000a", "role": "authenticated", "aud": "authenticated", "iat": now, "exp": now + 7200})
sig = base64.urlsafe_b64encode(hmac.new(key["secret"].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
print(f"{head}.{body}.{sig}")
PY
)"
  until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "apikey: $anon" "$url/rest/v1/items?limit=1")" = 200 ]; do sleep 0.05; done
}
declare -A P U A T D
cleanup() { for n in "${!P[@]}"; do kill -INT "${P[$n]}" 2>/dev/null || true; done; wait 2>/dev/null || true; for n in "${!D[@]}"; do rm -rf "${D[$n]}"; done; }
trap cleanup EXIT
for n in "${sizes[@]}"; do start "$n"; P[$n]=$pid; U[$n]=$url; A[$n]=$anon; T[$n]=$token; D[$n]=$dir; done
declare -A R
for n in "${sizes[@]}"; do R[$n]=""; done
head="| pool size (wrk -t2 -c32 -d${secs}s, GET by key as the owner) |"; rule="|---|"
for ((round = 1; round <= rounds; round++)); do head+=" round $round |"; rule+="---|"; done
echo "$head"; echo "$rule"
for ((round = 0; round < rounds; round++)); do
  for n in "${sizes[@]}"; do
    R[$n]+="$(wrk -t2 -c32 -d"${secs}s" --latency -H "apikey: ${A[$n]}" -H "Authorization: Bearer ${T[$n]}" "${U[$n]}/rest/v1/items?id=eq.2" \
      | awk '/Requests\/sec/ {rps=$2} /^ +99%/ {p99=$2} /Non-2xx/ {bad=$NF} END {printf " %.0f req/s, p99 %s%s |", rps, p99, (bad ? ", NON-2XX " bad : "")}')"
  done
done
for n in "${sizes[@]}"; do echo "| $n |${R[$n]}"; done

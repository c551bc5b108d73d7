#!/usr/bin/env bash
# REST throughput and p99 latency against pgbench running the minimal
# transaction each request needs (bench/rest/min_*.sql: BEGIN; one select of
# four set_config calls for role, claims, method and path; the statement
# written by hand; COMMIT; simple protocol, not pipelined) at the same
# concurrency, in the same run, on the same fixture (bench/rest/fixture.sql:
# 10,000 rows under an RLS policy). The reference is deliberately not
# Sovra's own prologue and statement, whose cost it would hide.
#
#   bench/rest.sh [seconds] [clients]     (defaults: 10 s, 32 clients)
#
# SOVRA_BIN picks another sovra binary (to compare builds); otherwise the
# release build of this tree is used.
#
# Cases: GET one row by primary key as an authenticated user; GET a page of
# 20 rows with one embedded (many-to-one) relation; POST one row; POST 100
# rows in one request. Prints Markdown rows.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"; clients="${2:-32}"
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
command -v pgbench >/dev/null || export PATH="$(pg_config --bindir):$PATH"
if [ -z "${SOVRA_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin sovra
  SOVRA_BIN=./target/release/sovra
fi
bin="$SOVRA_BIN"
dir="$(mktemp -d /tmp/sovra-bench-XXXXXX)"; chmod 755 "$dir"
port=54397
env -u SOVRA_BIN SOVRA_DATABASE_POOL_SIZE="$clients" SOVRA_LOG_LEVEL=warn "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >/dev/null 2>"$dir/err.log" &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
url="http://127.0.0.1:$port"
until curl -fs "$url/ready" >/dev/null 2>&1; do sleep 0.05; done
sock="$dir/data/pg"
psql -h "$sock" -U postgres -d postgres -q -v ON_ERROR_STOP=1 -f bench/rest/fixture.sql >/dev/null
anon="$("$bin" keys --json --data-dir "$dir/data" | python3 -c 'import json,sys; print(json.load(sys.stdin)["anon_key"])')"
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

threads=2
sovra_run() { # path [lua body-file]
  local path="$1" extra=()
  if [ $# -gt 1 ]; then extra=(-s bench/rest/post.lua); export BODY_FILE="$2"; fi
  wrk -t"$threads" -c"$clients" -d"${secs}s" --latency "${extra[@]}" \
    -H "apikey: $anon" -H "Authorization: Bearer $token" "$url/rest/v1$path" \
    | awk '/Requests\/sec/ {rps=$2} /^ +99%/ {p99=$2} /Non-2xx/ {bad=$NF} END {printf "%.0f req/s, p99 %s%s", rps, p99, (bad ? ", NON-2XX " bad : "")}'
}
pg_run() { # script
  local logdir; logdir="$(mktemp -d)"
  local tps
  tps="$(cd "$logdir" && pgbench -n -h "$sock" -U authenticator postgres -c "$clients" -j "$threads" -T "$secs" \
      -l -f "$OLDPWD/$1" 2>/dev/null | awk '/^tps = / {print $3; exit}')"
  local p99
  p99="$(cat "$logdir"/pgbench_log.* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.2fms", a[int(NR*0.99)]/1000}')"
  rm -rf "$logdir"
  printf '%.0f tx/s, p99 %s' "$tps" "$p99"
}

echo "| case ($clients clients, ${secs} s each) | sovra over HTTP (wrk) | minimal transaction through pgbench | sovra / pgbench |"
echo "|---|---|---|---|"
row() {
  local name="$1" s="$2" p="$3"
  local sr pr
  sr="$(echo "$s" | awk '{print $1}')"; pr="$(echo "$p" | awk '{print $1}')"
  echo "| $name | $s | $p | $(awk -v a="$sr" -v b="$pr" 'BEGIN {printf "%.0f%%", 100 * a / b}') |"
}
row "GET one row by primary key (RLS)" "$(sovra_run '/items?id=eq.2')" "$(pg_run bench/rest/min_get_one.sql)"
row "GET 20 rows with one embed" "$(sovra_run '/items?select=*,categories(name)&order=id&limit=20')" "$(pg_run bench/rest/min_page_embed.sql)"
row "POST one row" "$(sovra_run '/items' bench/rest/one.json)" "$(pg_run bench/rest/min_insert_one.sql)"
row "POST 100 rows" "$(sovra_run '/items' bench/rest/bulk100.json)" "$(pg_run bench/rest/min_insert_bulk.sql)"

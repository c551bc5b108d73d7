#!/usr/bin/env bash
# Auth throughput and latency at 32 connections: token refresh, GET /user
# and password sign-in, each beside a reference measured in the same run:
# pgbench running the same SQL (refresh, GET /user) on the same database,
# and argon2id verifications per second with the same parameters (sign-in).
#
#   bench/auth.sh [seconds] [connections]     (defaults: 10 s, 32)
#
# SOVRA_BIN (and SOVRA_LOAD_BIN) pick other binaries (to compare builds);
# otherwise the release build of this tree is used.
#
# Prints Markdown rows. Load comes from `sovra-load` (bench/load), a
# closed-loop Rust client: each connection has one request in flight and
# refreshes chain (each presents the token the previous one returned).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"; conns="${2:-32}"
command -v pgbench >/dev/null || export PATH="$(pg_config --bindir):$PATH"
if [ -z "${SOVRA_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin sovra --bin sovra-load
fi
bin="${SOVRA_BIN:-./target/release/sovra}"; load="${SOVRA_LOAD_BIN:-./target/release/sovra-load}"
# The server would warn about options it does not know.
unset SOVRA_BIN SOVRA_LOAD_BIN
dir="$(mktemp -d /tmp/sovra-bench-XXXXXX)"; chmod 755 "$dir"
port=54398
SOVRA_DATABASE_POOL_SIZE="$conns" SOVRA_LOG_LEVEL=warn \
SOVRA_AUTH_RATE_LIMIT_SIGN_IN=0 SOVRA_AUTH_RATE_LIMIT_TOKEN_REFRESH=0 \
  "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >/dev/null 2>"$dir/err.log" &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
url="http://127.0.0.1:$port"
until curl -fs "$url/ready" >/dev/null 2>&1; do sleep 0.05; done
keys="$("$bin" keys --json --data-dir "$dir/data")"
anon="$(echo "$keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["anon_key"])')"
service="$(echo "$keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["service_role_key"])')"
sock="$dir/data/pg"
"$load" sql --url "$dir" >/dev/null
psql -h "$sock" -U postgres -d postgres -q -v ON_ERROR_STOP=1 -f "$dir/pg_setup.sql" >/dev/null

sovra_run() { "$load" "$1" --url "$url" --anon-key "$anon" --service-key "$service" --connections "$conns" --secs "$secs"; }
pg_run() { # script: as the auth service's role, same concurrency
  local logdir; logdir="$(mktemp -d)"
  local tps p99
  tps="$(cd "$logdir" && PGOPTIONS='-c role=supabase_auth_admin' pgbench -n -h "$sock" -U postgres postgres \
      -M prepared -c "$conns" -j 2 -T "$secs" -l -f "$1" 2>"$logdir/err" | awk '/^tps = / {print $3; exit}')"
  p99="$(cat "$logdir"/pgbench_log.* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.2fms", a[int(NR*0.99)]/1000}')"
  [ -n "$tps" ] || { echo "pgbench failed:" >&2; cat "$logdir/err" >&2; }
  rm -rf "$logdir"
  printf '%.0f tx/s, p99 %s' "$tps" "$p99"
}
row() {
  local name="$1" s="$2" p="$3" sr pr
  sr="$(echo "$s" | awk '{print $1}')"; pr="$(echo "$p" | awk '{print $1}')"
  echo "| $name | $s | $p | $(awk -v a="$sr" -v b="$pr" 'BEGIN {printf "%.0f%%", 100 * a / b}') |"
}
echo "| case ($conns connections, ${secs} s each) | sovra over HTTP (sovra-load) | reference | sovra / reference |"
echo "|---|---|---|---|"
row "token refresh (rotation, reuse check, new JWT)" "$(sovra_run refresh)" "$(pg_run "$dir/pg_refresh.sql") (pgbench -M prepared, same SQL)"
row "GET /user" "$(sovra_run user)" "$(pg_run "$dir/pg_user.sql") (pgbench -M prepared, same SQL)"
row "sign-in with password (argon2id)" "$(sovra_run signin)" "$("$load" hash --secs "$secs") (argon2id alone)"

#!/usr/bin/env bash
# What a shared rate limit (server.shared_state = postgres, #21) costs the
# database: pgbench runs the one statement a check sends
# (crates/sovra-auth/src/shared_limits.rs) on one hot bucket (every client
# on the same key, the worst case: the row lock orders them) and on 10,000
# buckets (distinct clients), against `select 1` (one round trip, the
# floor) and against the same takes on a logged copy of the table (why
# the table is UNLOGGED), interleaved, on a scratch PostgreSQL of the
# installed version with its default settings (fsync on).
#
#   bench/rate_limits.sh [seconds] [clients]    (defaults: 10 s, 8 clients)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"; clients="${2:-8}"
bindir="$(pg_config --bindir)"
dir="$(mktemp -d /tmp/sovra-bench-rl-XXXXXX)"; chmod 755 "$dir"
as_pg=()
[ "$(id -u)" != 0 ] || { chown postgres "$dir"; as_pg=(runuser -u postgres --); }
"${as_pg[@]}" "$bindir/initdb" -D "$dir/pg" -U postgres -A trust >/dev/null
"${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/pg" -o "-k $dir -c listen_addresses= -c max_connections=100" -l "$dir/pg.log" -w start >/dev/null
trap '"${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/pg" -m fast stop >/dev/null; rm -rf "$dir"' EXIT
psql -h "$dir" -U postgres -d postgres -q -v ON_ERROR_STOP=1 <<'SQL'
create schema sovra;
create role supabase_auth_admin; create role anon; create role authenticated;
SQL
psql -h "$dir" -U postgres -d postgres -q -v ON_ERROR_STOP=1 -f crates/sovra-pg/migrations/0023_rate_limits.sql
psql -h "$dir" -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
  -c 'create table sovra.rate_limits_logged (like sovra.rate_limits including all)'
sed 's/sovra\.rate_limits as b/sovra.rate_limits_logged as b/' bench/rate_limits/take.sql >"$dir/take_logged.sql"
cp bench/rate_limits/take.sql bench/rate_limits/select1.sql "$dir/"
run() { # script [buckets]
  pgbench -n -M prepared -h "$dir" -U postgres -d postgres -c "$clients" -j 2 -T "$secs" -D buckets="${2:-1}" -f "$dir/$1.sql" 2>/dev/null \
    | awk '/^latency average/ {lat=$4} /^tps = / {tps=$3} END {printf "%.0f/s, %.3f ms", tps, lat}'
}
echo "| round ($clients clients, ${secs} s each) | select 1 (floor) | take, one hot bucket | take, 10,000 buckets | logged table: hot | logged table: 10,000 |"
echo "|---|---|---|---|---|---|"
for round in 1 2; do
  a="$(run select1)"; b="$(run take 1)"; c="$(run take 10000)"; d="$(run take_logged 1)"; e="$(run take_logged 10000)"
  echo "| $round | $a | $b | $c | $d | $e |"
done
rows="$(psql -h "$dir" -U postgres -d postgres -tA -c 'select count(*) from sovra.rate_limits')"
echo "rows in sovra.rate_limits after the run: $rows"

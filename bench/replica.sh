#!/usr/bin/env bash
# Read replicas (#21, database.read_urls): GET throughput of one Sovra node
# with every read on the primary against one node that sends reads to one
# streaming standby (pg_basebackup -R of the primary), both on the same
# primary, with pgbench's select of one row on the primary as the
# reference, interleaved in the same run: primary-only, replica, pgbench,
# twice.
#
#   bench/replica.sh [seconds] [clients]   (defaults: 10 s, 32 clients)
#
# REST: wrk, GET /rest/v1/items?id=eq.N as anon (RLS policy), keep-alive
# (bench/cluster/fixture.sql and random_id.lua). Besides throughput, CPU
# seconds of the primary's and the standby's postgres processes per request,
# to show where the reads' database work went.
#
# On one machine the standby shares the primary's cores: this shows what
# the routing costs and that the database work moves, not the throughput a
# replica on its own machine adds.
#
# SOVRA_BIN picks a prebuilt release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"; clients="${2:-32}"
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
command -v pgbench >/dev/null || export PATH="$(pg_config --bindir):$PATH"
if [ -z "${SOVRA_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin sovra
fi
bin="${SOVRA_BIN:-./target/release/sovra}"
unset SOVRA_BIN
ulimit -n 65536 2>/dev/null || true
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
dir="$(mktemp -d /tmp/sovra-bench-replica-XXXXXX)"; chmod 755 "$dir"
pgbin="$(pg_config --bindir)"
as_pg=()
[ "$(id -u)" != 0 ] || { chown postgres "$dir"; as_pg=(runuser -u postgres --); }
node_pids=()
cleanup() {
  for p in "${node_pids[@]:-}"; do [ -z "$p" ] || kill -INT "$p" 2>/dev/null || true; done
  for p in "${node_pids[@]:-}"; do [ -z "$p" ] || wait "$p" 2>/dev/null || true; done
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/standby" -m fast stop >/dev/null 2>&1 || true
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
opts="-c listen_addresses= -c wal_level=logical -c max_connections=300 -c shared_buffers=128MB"
"${as_pg[@]}" "$pgbin/initdb" -D "$dir/pg" -U postgres -A trust >/dev/null
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w start -o "-k $dir $opts" >/dev/null
db="host=$dir user=postgres dbname=postgres"
"${as_pg[@]}" mkdir -m 700 "$dir/sb"
"${as_pg[@]}" "$pgbin/pg_basebackup" -D "$dir/standby" -R -X stream --checkpoint=fast -h "$dir" -U postgres
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/standby" -l "$dir/standby.log" -w start -o "-k $dir/sb $opts" >/dev/null
export SOVRA_JWT_SECRET="bench-replica-secret-bench-replica-secret-01"
# Both nodes share the primary, so they share its tenant registry and the
# key its secrets are sealed with (docs/tenants.md).
export SOVRA_SERVER_TENANT_SECRETS_KEY="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n")"
"$bin" keys --json --data-dir "$dir/n1" >/dev/null
mkdir -p "$dir/n2"; cp "$dir/n1/keys.json" "$dir/n2/"
ports=()
for n in 1 2; do
  port="$(free_port)"; ports+=("$port")
  reads=""; [ "$n" = 1 ] || reads="postgres://${dir//\//%2F}%2Fsb:5432"
  SOVRA_DATABASE_URL="$db" SOVRA_DATABASE_READ_URLS="$reads" SOVRA_LOG_LEVEL=warn SOVRA_DATABASE_POOL_SIZE=16 \
    "$bin" serve --data-dir "$dir/n$n" --listen "127.0.0.1:$port" >/dev/null 2>"$dir/n$n.err" &
  node_pids+=($!)
  until curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1; do
    kill -0 "${node_pids[-1]}" 2>/dev/null || { cat "$dir/n$n.err" >&2; exit 1; }
    sleep 0.1
  done
  [ "$n" != 1 ] || psql "$db" -q -v ON_ERROR_STOP=1 -f bench/cluster/fixture.sql >/dev/null
done
keys="$("$bin" keys --json --data-dir "$dir/n1")"
anon="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["anon_key"])' "$keys")"
for p in "${ports[@]}"; do
  until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "apikey: $anon" "http://127.0.0.1:$p/rest/v1/items?id=eq.1")" = 200 ]; do sleep 0.1; done
done
# The replica node's reads must reach the standby: a stable function says where it runs.
psql "$db" -q -c "create function public.in_recovery() returns boolean language sql stable as 'select pg_is_in_recovery()'" >/dev/null
until [ "$(curl -s -X POST -H "apikey: $anon" -H 'content-type: application/json' -d '{}' "http://127.0.0.1:${ports[1]}/rest/v1/rpc/in_recovery")" = true ]; do sleep 0.2; done
cat >"$dir/one.sql" <<'SQL'
\set id random(1, 10000)
begin read only;
set local role anon;
select to_json(i) from public.items i where id = :id;
commit;
SQL
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{s += ($14 + $15) / hz} END {printf "%.2f", s}' "$@" 2>/dev/null || echo 0; }
tree_cpu() { # postmaster.pid of a cluster
  local pm; pm="$(head -1 "$1")"
  cpu_of $(for p in "$pm" $(pgrep -P "$pm"); do echo "/proc/$p/stat"; done)
}
measure() { # label kind [port]
  local a0 b0 a1 b1 rps n
  a0="$(tree_cpu "$dir/pg/postmaster.pid")"; b0="$(tree_cpu "$dir/standby/postmaster.pid")"
  if [ "$2" = wrk ]; then
    rps="$(wrk -t2 -c"$clients" -d"${secs}s" -s bench/cluster/random_id.lua -H "apikey: $anon" "http://127.0.0.1:$3/rest/v1/items" | awk '/Requests\/sec/ {print $2}')"
  else
    rps="$(pgbench -n -h "$dir" -U postgres postgres -c "$clients" -j 2 -T "$secs" -f "$dir/one.sql" 2>/dev/null | awk '/^tps/ {print $3}')"
  fi
  a1="$(tree_cpu "$dir/pg/postmaster.pid")"; b1="$(tree_cpu "$dir/standby/postmaster.pid")"
  awk -v l="$1" -v r="$rps" -v a="$a0" -v A="$a1" -v b="$b0" -v B="$b1" -v t="$secs" \
    'BEGIN {n = r * t; printf "| %s | %.0f/s | %.3f | %.3f |\n", l, r, 1000 * (A - a) / n, 1000 * (B - b) / n}'
}
echo "| case ($clients clients, ${secs} s each) | throughput | primary CPU ms per request | standby CPU ms per request |"
echo "|---|---|---|---|"
for round in 1 2; do
  measure "sovra, reads on the primary (round $round)" wrk "${ports[0]}"
  measure "sovra, reads on the standby (round $round)" wrk "${ports[1]}"
  measure "pgbench, one-row select on the primary (round $round)" pgbench
done

#!/usr/bin/env bash
# Realtime: idle connections held and server memory per connection;
# broadcast fan-out (delivered messages/s, send-to-receipt p50/p99); and
# database changes delivered per second under RLS (commit-to-receipt p50/p99),
# with pgbench's insert rate on the same table in the same run as the
# reference for the change rate. Load comes from `sovra-load rt-*`
# (bench/load), connecting from several loopback source addresses.
#
#   bench/realtime.sh [idle_connections] [receivers] [rate] [subscribers] [seconds]
#   (defaults: 20000 1000 200 100 10)
#
# Prints Markdown rows.
set -euo pipefail
cd "$(dirname "$0")/.."
idle_n="${1:-20000}"; receivers="${2:-1000}"; rate="${3:-200}"; subs="${4:-100}"; secs="${5:-10}"
command -v pgbench >/dev/null || export PATH="$(pg_config --bindir):$PATH"
# SOVRA_BIN (and SOVRA_LOAD_BIN) run prebuilt binaries instead of building
# (e.g. the previous commit's, to measure before and after in one run).
if [ -z "${SOVRA_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin sovra --bin sovra-load
fi
bin="${SOVRA_BIN:-./target/release/sovra}"; load="${SOVRA_LOAD_BIN:-./target/release/sovra-load}"
# The server would warn about options it does not know.
unset SOVRA_BIN SOVRA_LOAD_BIN
# RT_BENCH_ONLY=changes measures only the database changes (section 3).
only="${RT_BENCH_ONLY:-}"
# Both ends hold one descriptor per connection: raise the limit as far as
# this machine allows, and hold no more connections than fit.
ulimit -n "$(( idle_n + 10000 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fds="$(ulimit -n)"
if [ "$idle_n" -gt "$(( fds - 2000 ))" ]; then
  echo "note: descriptor limit is $fds here; holding $(( fds - 2000 )) idle connections instead of $idle_n" >&2
  idle_n=$(( fds - 2000 ))
fi
dir="$(mktemp -d /var/tmp/sovra-bench-XXXXXX)"; chmod 755 "$dir"
port=54395
SOVRA_LOG_LEVEL=warn SOVRA_AUTH_RATE_LIMIT_SIGN_IN=0 \
SOVRA_REALTIME_MAX_EVENTS_PER_SECOND=100000 SOVRA_REALTIME_OUTBOUND_QUEUE_BYTES=67108864 \
  "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >/dev/null 2>"$dir/err.log" &
pid=$!
trap 'kill -INT $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
url="http://127.0.0.1:$port"
until curl -fs "$url/ready" >/dev/null 2>&1; do sleep 0.05; done
keys="$("$bin" keys --json --data-dir "$dir/data")"
anon="$(echo "$keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["anon_key"])')"
service="$(echo "$keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["service_role_key"])')"
sock="$dir/data/pg"
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"; }
run_load() { "$load" "$@" --url "$url" --anon-key "$anon" --service-key "$service"; }

echo "| case | sovra | reference |"
echo "|---|---|---|"

if [ "$only" != changes ]; then
# 1. Idle connections and memory per connection.
before="$(rss_kib)"
fifo="$dir/idle.out"; mkfifo "$fifo"
run_load rt-idle --connections "$idle_n" --secs 5 >"$fifo" 2>"$dir/idle.err" &
loader=$!
exec 3<"$fifo"
read -r line <&3   # READY
after="$(rss_kib)"
read -r summary <&3 || true
wait $loader || true
exec 3<&-
per_conn="$(awk -v a="$after" -v b="$before" -v n="$idle_n" 'BEGIN {printf "%.1f", (a - b) / n}')"
echo "| idle connections (each joined to a channel) | ${summary} | server RSS ${before} KiB idle, ${after} KiB with them: ${per_conn} KiB per connection |"

# 2. Broadcast fan-out: one sender, $receivers receivers on one topic.
bc="$(run_load rt-broadcast --connections "$receivers" --rate "$rate" --secs "$secs" 2>>"$dir/err.log")"
echo "| broadcast fan-out: 1 sender at ${rate}/s to ${receivers} receivers (${secs} s) | ${bc} | offered $(( rate * receivers )) deliveries/s |"
fi

# 3. Database changes under RLS: $subs users each subscribed to INSERTs on a
#    table whose policy shows each only their own rows; pgbench inserts rows
#    owned round-robin by them, 100 per transaction.
# The policy as Supabase's RLS guide writes every owner policy,
# `(select auth.uid()) = owner_id` (auth.uid() run once per query, as an
# initplan), or with RT_BENCH_POLICY=per_row the form its performance advice
# warns against (`owner_id = auth.uid()`, auth.uid() run for every row
# PostgreSQL looks at, once per subscriber group); RT_BENCH_OWNER_INDEX=1
# adds the index on owner_id that the same advice recommends.
policy='(select auth.uid()) = owner_id'
[ "${RT_BENCH_POLICY:-}" = per_row ] && policy='owner_id = auth.uid()'
owner_index=''
[ "${RT_BENCH_OWNER_INDEX:-}" = 1 ] && owner_index='create index on public.bench_changes (owner_id);'
psql -h "$sock" -U postgres -d postgres -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
create table public.bench_changes (
  id bigint generated always as identity primary key,
  owner_id uuid not null,
  body text not null
);
alter table public.bench_changes enable row level security;
create policy own on public.bench_changes for select to authenticated using ( $policy );
$owner_index
grant select on public.bench_changes to authenticated;
alter publication supabase_realtime add table public.bench_changes;
create table public.bench_owners (n int primary key, id uuid not null);
SQL
changes_run() { # $1 label, $2 pgbench flags, $3 seconds the subscribers listen
  local fifo="$dir/changes-$RANDOM.out" line result tps
  mkfifo "$fifo"
  run_load rt-changes --connections "$subs" --tokens "$dir/ids" --secs "$3" >"$fifo" 2>>"$dir/err.log" &
  local loader=$!
  exec 4<"$fifo"
  read -r line <&4   # READY: users made and subscribed
  psql -h "$sock" -U postgres -d postgres -q -c 'truncate public.bench_owners' >/dev/null
  awk '{printf "insert into public.bench_owners values (%d, %c%s%c);\n", NR - 1, 39, $1, 39}' "$dir/ids" \
    | psql -h "$sock" -U postgres -d postgres -q -v ON_ERROR_STOP=1 >/dev/null
  tps="$(pgbench -n -h "$sock" -U postgres postgres -c 4 -j 2 $2 -f "$dir/insert.sql" 2>"$dir/pgbench.err" \
    | awk '/^tps = / {print $3; exit}')"
  read -r result <&4 || true
  wait $loader || true
  exec 4<&-
  echo "| database changes under RLS, $1: ${subs} subscribers, each sees only its own rows (policy ${policy}${owner_index:+, index on owner_id}; 100-row transactions) | ${result} | rows written: $(awk -v t="$tps" 'BEGIN {printf "%.0f", t * 100}') rows/s (pgbench -c4 $2) |"
}
cat >"$dir/insert.sql" <<SQL
insert into public.bench_changes (owner_id, body)
select o.id, 'row' from generate_series(1, 100) g join public.bench_owners o on o.n = g % $subs;
SQL
# Latency below capacity first, then throughput: 200,000 rows written as
# fast as pgbench can, delivered as fast as the feed can (rate measured over
# the span in which deliveries arrived).
changes_run "writers at 50 tx/s (5,000 rows/s)" "-T $secs -R 50" "$((secs + 5))"
changes_run "200,000 rows written unthrottled" "-t 500" 40

#!/usr/bin/env bash
# Background work (#18): queue throughput and cron jitter.
#
#   bench/jobs.sh [seconds] [clients]     (defaults: 10 s, 16 clients)
#
# Queues: each client repeats send → read (vt 30 s, one message) → delete
# through /rest/v1/rpc on pgmq_public with the service role key (wrk,
# bench/jobs/cycle.lua), against pgbench running the same three
# pgmq_public calls, each in the minimal transaction a request needs
# (bench/jobs/min_cycle.sql), at the same concurrency, interleaved: Sovra,
# pgbench, Sovra, pgbench. A cycle is three requests.
#
# Cron: a '1 seconds' job for 60 s; the jitter is start_time in
# cron.job_run_details minus the second boundary it was due at.
#
# SOVRA_BIN picks another sovra binary; otherwise the release build of this
# tree is used. (bench/webhooks.sh, when present, measures HTTP delivery.)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"; clients="${2:-16}"
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
command -v pgbench >/dev/null || export PATH="$(pg_config --bindir):$PATH"
if [ -z "${SOVRA_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin sovra
  SOVRA_BIN=./target/release/sovra
fi
bin="$SOVRA_BIN"
dir="$(mktemp -d /tmp/sovra-bench-XXXXXX)"; chmod 755 "$dir"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
env -u SOVRA_BIN SOVRA_DATABASE_POOL_SIZE="$clients" SOVRA_LOG_LEVEL=warn SOVRA_REST_SCHEMAS=public,pgmq_public \
  "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >/dev/null 2>"$dir/err.log" &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
url="http://127.0.0.1:$port"
until curl -fs "$url/ready" >/dev/null 2>&1; do sleep 0.05; done
sock="$dir/data/pg"
psql -h "$sock" -U postgres -d postgres -q -v ON_ERROR_STOP=1 -f bench/jobs/fixture.sql >/dev/null
service="$("$bin" keys --json --data-dir "$dir/data" | python3 -c 'import json,sys; print(json.load(sys.stdin)["service_role_key"])')"
until [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Profile: pgmq_public' -H 'Content-Type: application/json' \
  -H "apikey: $service" -H "Authorization: Bearer $service" -d '{"queue_name":"bench"}' "$url/rest/v1/rpc/pop")" = 200 ]; do sleep 0.05; done

threads=2
sovra_run() {
  wrk -t"$threads" -c"$clients" -d"${secs}s" --latency -s bench/jobs/cycle.lua \
    -H "apikey: $service" -H "Authorization: Bearer $service" \
    -H 'Content-Type: application/json' -H 'Content-Profile: pgmq_public' "$url" \
    | awk '/Requests\/sec/ {rps=$2} /^ +99%/ {p99=$2} /Non-2xx/ {bad=$NF} END {printf "%.0f cycles/s (%.0f req/s), p99 %s%s", rps / 3, rps, p99, (bad ? ", NON-2XX " bad : "")}'
}
pg_run() {
  pgbench -n -h "$sock" -U authenticator postgres -c "$clients" -j "$threads" -T "$secs" \
    -f bench/jobs/min_cycle.sql 2>"$dir/pgbench.err" | awk '/^tps = / {printf "%.0f cycles/s", $3; exit}' || true
}
echo "| queue send+read+delete ($clients clients, ${secs} s each) | sovra over HTTP (wrk) | the same calls through pgbench | sovra / pgbench |"
echo "|---|---|---|---|"
for round in 1 2; do
  s="$(sovra_run)"; p="$(pg_run)"
  sr="$(echo "$s" | awk '{print $1}')"; pr="$(echo "$p" | awk '{print $1}')"
  echo "| round $round | $s | $p | $(awk -v a="$sr" -v b="$pr" 'BEGIN {printf "%.0f%%", 100 * a / b}') |"
done
left="$(psql -h "$sock" -U postgres -d postgres -tA -c "select count(*) from pgmq.q_bench")"
echo
echo "Messages left in the queue after the runs (each cycle deletes what it read): $left"

# Cron jitter.
psql -h "$sock" -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
  -c "create table public.beats (at timestamptz default clock_timestamp())" \
  -c "select cron.schedule('beat', '1 seconds', 'insert into public.beats default values')" >/dev/null
sleep 62
psql -h "$sock" -U postgres -d postgres -q -v ON_ERROR_STOP=1 -c "select cron.unschedule('beat')" >/dev/null
echo
echo "| cron '1 seconds' for 60 s | runs | p50 | p99 | max |"
echo "|---|---|---|---|---|"
psql -h "$sock" -U postgres -d postgres -tA -F ' | ' -c "
  with j as (
    select extract(epoch from start_time - date_trunc('second', start_time)) * 1000 as ms
    from cron.job_run_details where status = 'succeeded'
  )
  select '| start_time after the second boundary', count(*),
         round(percentile_cont(0.5) within group (order by ms)::numeric, 1) || ' ms',
         round(percentile_cont(0.99) within group (order by ms)::numeric, 1) || ' ms',
         round(max(ms)::numeric, 1) || ' ms |'
  from j"

#!/usr/bin/env bash
# Background work (#18): queue throughput, cron jitter and (through
# bench/webhooks.sh) webhook delivery.
#
#   bench/jobs.sh [seconds] [clients]     (defaults: 10 s, 16 clients)
#
# JOBS_PARTS picks the parts (default "queue cron webhooks"); JOBS_CRON_SECS
# the length of the cron run (default 60); webhooks.sh gets WEBHOOKS_ARGS
# (default "20000 500 10").
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
# tree is used.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"; clients="${2:-16}"
parts="${JOBS_PARTS:-queue cron webhooks}"; cron_secs="${JOBS_CRON_SECS:-60}"
has() { case " $parts " in *" $1 "*) return 0;; esac; return 1; }
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
stop() { kill -INT $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"; }
trap stop EXIT
url="http://127.0.0.1:$port"
until curl -fs "$url/ready" >/dev/null 2>&1; do sleep 0.05; done
sock="$dir/data/pg"
psql -h "$sock" -U postgres -d postgres -q -v ON_ERROR_STOP=1 -f bench/jobs/fixture.sql >/dev/null
service="$("$bin" keys --json --data-dir "$dir/data" | python3 -c 'import json,sys; print(json.load(sys.stdin)["service_role_key"])')"
until [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Profile: pgmq_public' -H 'Content-Type: application/json' \
  -H "apikey: $service" -H "Authorization: Bearer $service" -d '{"queue_name":"bench"}' "$url/rest/v1/rpc/pop")" = 200 ]; do sleep 0.05; done

threads=2
if has queue; then
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
fi

# Cron jitter.
if has cron; then
psql -h "$sock" -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
  -c "create table public.beats (at timestamptz default clock_timestamp())" \
  -c "select cron.schedule('beat', '1 seconds', 'insert into public.beats default values')" >/dev/null
sleep $((cron_secs + 2))
psql -h "$sock" -U postgres -d postgres -q -v ON_ERROR_STOP=1 -c "select cron.unschedule('beat')" >/dev/null
echo
echo "| cron '1 seconds' for $cron_secs s | runs | p50 | p99 | max |"
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
fi

# Webhook delivery, on a server of its own once this one has stopped.
if has webhooks; then
  stop
  trap - EXIT
  echo
  # shellcheck disable=SC2086
  SOVRA_BIN="$bin" bench/webhooks.sh ${WEBHOOKS_ARGS:-20000 500 10}
fi

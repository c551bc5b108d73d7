#!/usr/bin/env bash
# Webhook delivery (HTTP from SQL, crates/sovra-net) to a local receiver
# (bench/webhooks/receiver.py, one Python process, keep-alive):
#
# 1. throughput: N requests queued by one committed statement
#    (`select net.http_post(...) from generate_series(1, N)`), timed from
#    the commit until the receiver has counted all N; reference: the same
#    receiver driven directly by wrk (POST of the same body, 64
#    connections), in the same run, which bounds what any sender can get;
# 2. latency: pgbench inserting one `net.http_post` per transaction at a
#    fixed rate (-R) for S seconds; each body carries the statement's
#    clock_timestamp() in ms, the receiver records arrival - that; p50/p99
#    over all deliveries. Reference: the p99 of the same pgbench statement
#    alone (commit latency; pgbench's own log).
#
#   bench/webhooks.sh [N] [rate] [seconds]     (defaults: 20000, 500, 10)
#
# SOVRA_BIN picks another sovra binary; otherwise the release build of
# this tree. Prints Markdown rows.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-20000}"; rate="${2:-500}"; secs="${3:-10}"
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
command -v pgbench >/dev/null || export PATH="$(pg_config --bindir):$PATH"
if [ -z "${SOVRA_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin sovra
  SOVRA_BIN=./target/release/sovra
fi
bin="$SOVRA_BIN"
dir="$(mktemp -d /tmp/sovra-bench-XXXXXX)"; chmod 755 "$dir"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port="$(free_port)"; rport="$(free_port)"
python3 bench/webhooks/receiver.py "$rport" &
rpid=$!
env -u SOVRA_BIN SOVRA_NET_ALLOW_PRIVATE=true SOVRA_NET_CONCURRENCY=64 SOVRA_LOG_LEVEL=warn \
  "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >/dev/null 2>"$dir/err.log" &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null; kill $rpid 2>/dev/null; rm -rf "$dir"' EXIT
until curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1; do sleep 0.05; done
until curl -fs "http://127.0.0.1:$rport/stats" >/dev/null 2>&1; do sleep 0.05; done
sock="$dir/data/pg"
target="http://127.0.0.1:$rport/hook"
stats() { curl -fs "http://127.0.0.1:$rport/stats"; }
count() { stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])'; }
# Blocks until the receiver has counted $1 requests; prints when it did.
wait_for() { curl -fs "http://127.0.0.1:$rport/wait/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["at"])'; }

# WEBHOOKS_SQL (optional): a file of SQL run first as the superuser, e.g. a
# migration's statements to measure them with a binary built without it.
[ -z "${WEBHOOKS_SQL:-}" ] || psql -h "$sock" -U postgres -d postgres -q -v ON_ERROR_STOP=1 -f "$WEBHOOKS_SQL" >/dev/null
# Warm-up (connections, prepared statements).
psql -h "$sock" -U postgres -d postgres -qAt -c "select count(net.http_post('$target', '{\"warm\": 1}')) from generate_series(1, 200)" >/dev/null
wait_for 200 >/dev/null

# 1. Throughput, timed from the commit (nothing can be sent before it)
# until the receiver counted the last of the N (the receiver reports the
# arrival time: no polling beside the server under test); the rate
# including the queuing statement is printed too (what runs before
# 2026-12-07 h-hook measured).
# WEBHOOKS_PERF=FILE: `perf record -a -g` during this phase into FILE.
before="$(count)"
queued="$(date +%s.%N)"
psql -h "$sock" -U postgres -d postgres -qAt -c "select count(net.http_post('$target', jsonb_build_object('n', n))) from generate_series(1, $n) n" >/dev/null
start="$(date +%s.%N)"
if [ -n "${WEBHOOKS_PERF:-}" ]; then
  perf record -a -g -o "$WEBHOOKS_PERF" -- sleep "${WEBHOOKS_PERF_SECS:-4}" >/dev/null 2>&1 &
  perf_pid=$!
fi
end="$(wait_for $((before + n)))"
[ -z "${WEBHOOKS_PERF:-}" ] || wait "$perf_pid"
sovra_rps="$(python3 -c "print(round($n / ($end - $start)))")"
with_queue_rps="$(python3 -c "print(round($n / ($end - $queued)))")"
queue_s="$(python3 -c "print(round($start - $queued, 2))")"
printf 'wrk.method = "POST"\nwrk.body = "{\\"n\\": 1}"\nwrk.headers["Content-Type"] = "application/json"\n' > "$dir/post.lua"
wrk_rps="$(wrk -t2 -c64 -d10s -s "$dir/post.lua" "$target" | awk '/Requests\/sec/ {printf "%.0f", $2}')"
echo "| case | sovra (HTTP from SQL) | reference |"
echo "|---|---|---|"
echo "| deliveries per second, $n queued in one commit (timed from the commit; with the queuing statement, ${queue_s} s: $with_queue_rps/s) | $sovra_rps/s | receiver driven directly by wrk -t2 -c64: $wrk_rps req/s |"

# 2. Latency at a fixed rate.
stats >/dev/null
cat > "$dir/one.sql" <<SQL
select net.http_post('$target', jsonb_build_object('t', extract(epoch from clock_timestamp()) * 1000));
SQL
logdir="$dir/pgb"; mkdir -p "$logdir"
(cd "$logdir" && pgbench -n -h "$sock" -U postgres postgres -c 4 -j 2 -R "$rate" -T "$secs" -f "$dir/one.sql" -l >/dev/null 2>&1)
expected="$(cat "$logdir"/pgbench_log.* | wc -l)"
sleep 2
result="$(stats)"
pg_p99="$(cat "$logdir"/pgbench_log.* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.2f ms", a[int(NR*0.99)]/1000}')"
echo "$result" | python3 -c "
import json, sys
d = json.load(sys.stdin); lat = sorted(d['lat'])
p = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))]
print('| commit to delivery at $rate/s for ${secs} s (%d of $expected delivered) | p50 %.1f ms, p99 %.1f ms | the same insert through pgbench, p99 of its transaction: $pg_p99 |' % (len(lat), p(0.5), p(0.99)))
"

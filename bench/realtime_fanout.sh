#!/usr/bin/env bash
# Realtime broadcast fan-out per server core: the server pinned to one core
# (taskset -c 1, its PostgreSQL too, which a broadcast does not use), the
# load generator (`sovra-load rt-broadcast`: one sender, `receivers`
# receivers on one topic) pinned to the other (taskset -c 0). Reports
# delivered messages/s, the server's CPU time over the whole load run
# (utime + stime from /proc, connecting and joining included), and
# delivered messages (rate × seconds) per second of server CPU: a lower
# bound, since the connection setup is charged too.
#
#   bench/realtime_fanout.sh [receivers] [rate...]   (defaults: 1000; 100 200 400)
#
# SOVRA_BIN / SOVRA_LOAD_BIN pick other binaries; otherwise the release
# builds of this tree are used. Prints Markdown rows.
set -euo pipefail
cd "$(dirname "$0")/.."
receivers="${1:-1000}"; shift || true
rates=("$@"); [ ${#rates[@]} -gt 0 ] || rates=(100 200 400)
secs="${SECS:-10}"
if [ -z "${SOVRA_BIN:-}" ] || [ -z "${SOVRA_LOAD_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin sovra --bin sovra-load
fi
bin="${SOVRA_BIN:-./target/release/sovra}"; load="${SOVRA_LOAD_BIN:-./target/release/sovra-load}"
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
dir="$(mktemp -d /var/tmp/sovra-fanout-XXXXXX)"; chmod 755 "$dir"
port=54393
env -u SOVRA_BIN -u SOVRA_LOAD_BIN SOVRA_LOG_LEVEL=warn SOVRA_REALTIME_MAX_EVENTS_PER_SECOND=100000 SOVRA_REALTIME_OUTBOUND_QUEUE_BYTES=67108864 \
  taskset -c 1 "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >/dev/null 2>"$dir/err.log" &
pid=$!
trap 'kill -INT $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
url="http://127.0.0.1:$port"
until curl -fs "$url/ready" >/dev/null 2>&1; do sleep 0.05; done
keys="$("$bin" keys --json --data-dir "$dir/data")"
anon="$(echo "$keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["anon_key"])')"
service="$(echo "$keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["service_role_key"])')"
ticks="$(getconf CLK_TCK)"
cpu() { awk -v t="$ticks" '{print ($14 + $15) / t}' "/proc/$pid/stat"; }

echo "| receivers × rate (offered deliveries/s), ${secs} s | delivered (sovra-load) | server CPU over the run | delivered per server-core second |"
echo "|---|---|---|---|"
for rate in "${rates[@]}"; do
  c0="$(cpu)"; t0="$(date +%s.%N)"
  out="$(taskset -c 0 "$load" rt-broadcast --connections "$receivers" --rate "$rate" --secs "$secs" \
    --url "$url" --anon-key "$anon" --service-key "$service" 2>>"$dir/err.log")"
  c1="$(cpu)"; t1="$(date +%s.%N)"
  delivered="$(echo "$out" | grep -o '^[0-9]*' | head -1)"
  awk -v r="$receivers" -v rate="$rate" -v out="$out" -v d="$delivered" -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v s="$secs" 'BEGIN {
    cpu = c1 - c0; wall = t1 - t0
    printf "| %d × %d (%d/s) | %s | %.1f s of %.1f s wall (%.0f%% of its core) | %.0f |\n",
      r, rate, r * rate, out, cpu, wall, 100 * cpu / wall, (cpu > 0 ? d * s / cpu : 0) }'
done

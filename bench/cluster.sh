#!/usr/bin/env bash
# Scale-out on this machine (#21): the same REST and realtime loads against
# one node and against three nodes, both through HAProxy (two frontends:
# one whose backend is node 1 only, one with all three), on one PostgreSQL
# and one nats-server -js, interleaved: 1, 3, 1, 3. Every node runs with
# NATS (a cluster), in both cases.
#
#   bench/cluster.sh [seconds] [clients] [receivers] [rate]
#   (defaults: 10 s, 32 clients, 300 receivers, 100 messages/s)
#
# REST: wrk, GET /rest/v1/items?id=eq.N as anon (RLS policy), keep-alive.
# Realtime: sovra-load rt-broadcast, `receivers` sockets through the
# balancer (round robin: a third on each node when three serve) and one
# sender at `rate` messages/s; every message crosses NATS to the nodes
# that did not receive it.
# Besides throughput, CPU seconds of the sovra processes (utime + stime
# from /proc) and of PostgreSQL over each run, per request and per
# delivered message: the sizing model of docs/scale-out.md.
#
# SOVRA_BIN / SOVRA_LOAD_BIN pick prebuilt release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"; clients="${2:-32}"; receivers="${3:-300}"; rate="${4:-100}"
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
if [ -z "${SOVRA_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin sovra --bin sovra-load
fi
bin="${SOVRA_BIN:-./target/release/sovra}"; load="${SOVRA_LOAD_BIN:-./target/release/sovra-load}"
unset SOVRA_BIN SOVRA_LOAD_BIN
ulimit -n 65536 2>/dev/null || true
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
dir="$(mktemp -d /tmp/sovra-bench-cluster-XXXXXX)"; chmod 755 "$dir"
pgbin="$(pg_config --bindir)"
as_pg=()
[ "$(id -u)" != 0 ] || { chown postgres "$dir"; as_pg=(runuser -u postgres --); }
pids=()
cleanup() {
  for p in "${node_pids[@]:-}"; do [ -z "$p" ] || kill -INT "$p" 2>/dev/null || true; done
  for p in "${node_pids[@]:-}"; do [ -z "$p" ] || wait "$p" 2>/dev/null || true; done
  for p in "${pids[@]:-}"; do [ -z "$p" ] || kill "$p" 2>/dev/null || true; done
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
"${as_pg[@]}" "$pgbin/initdb" -D "$dir/pg" -U postgres -A trust >/dev/null
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w start \
  -o "-k $dir -c listen_addresses= -c wal_level=logical -c max_connections=300 -c shared_buffers=128MB" >/dev/null
db="host=$dir user=postgres dbname=postgres"
nats_port="$(free_port)"
"$(command -v nats-server || echo /usr/sbin/nats-server)" -js -sd "$dir/nats" -a 127.0.0.1 -p "$nats_port" >"$dir/nats.log" 2>&1 &
pids+=($!)
export SOVRA_JWT_SECRET="bench-cluster-secret-bench-cluster-secret-01"
"$bin" keys --json --data-dir "$dir/n1" >/dev/null
node_pids=(); ports=()
for n in 1 2 3; do
  port="$(free_port)"; ports+=("$port")
  mkdir -p "$dir/n$n"; [ "$n" = 1 ] || cp "$dir/n1/keys.json" "$dir/n$n/"
  SOVRA_DATABASE_URL="$db" SOVRA_REALTIME_NATS_URL="nats://127.0.0.1:$nats_port" SOVRA_LOG_LEVEL=warn \
    SOVRA_DATABASE_POOL_SIZE=16 SOVRA_AUTH_RATE_LIMIT_SIGN_IN=0 \
    SOVRA_REALTIME_MAX_EVENTS_PER_SECOND=100000 SOVRA_REALTIME_OUTBOUND_QUEUE_BYTES=67108864 \
    "$bin" serve --data-dir "$dir/n$n" --listen "127.0.0.1:$port" >/dev/null 2>"$dir/n$n.err" &
  node_pids+=($!)
  until curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1; do
    kill -0 "${node_pids[-1]}" 2>/dev/null || { cat "$dir/n$n.err" >&2; exit 1; }
    sleep 0.1
  done
  [ "$n" != 1 ] || psql "$db" -q -v ON_ERROR_STOP=1 -f bench/cluster/fixture.sql >/dev/null
done
one_port="$(free_port)"; three_port="$(free_port)"
cat >"$dir/haproxy.cfg" <<CFG
global
    maxconn 8000
defaults
    mode http
    option forwardfor
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
frontend one
    bind 127.0.0.1:$one_port
    default_backend one
frontend three
    bind 127.0.0.1:$three_port
    default_backend three
backend one
    server node1 127.0.0.1:${ports[0]}
backend three
    balance roundrobin
    server node1 127.0.0.1:${ports[0]}
    server node2 127.0.0.1:${ports[1]}
    server node3 127.0.0.1:${ports[2]}
CFG
haproxy -f "$dir/haproxy.cfg" -db >"$dir/haproxy.log" 2>&1 &
pids+=($!)
keys="$("$bin" keys --json --data-dir "$dir/n1")"
anon="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["anon_key"])' "$keys")"
for p in "$one_port" "$three_port"; do
  until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "apikey: $anon" "http://127.0.0.1:$p/rest/v1/items?id=eq.1")" = 200 ]; do
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$dir/haproxy.log" >&2; exit 1; }
    sleep 0.1
  done
done
# CPU seconds (utime + stime) of the sovra nodes, and of every postgres process.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{s += ($14 + $15) / hz} END {printf "%.2f", s}' "$@" 2>/dev/null || echo 0; }
sovra_cpu() { cpu_of $(for p in "${node_pids[@]}"; do echo "/proc/$p/stat"; done); }
pg_cpu() { cpu_of $(for p in $(pgrep -u postgres -f "$dir/pg" ; pgrep -P "$(head -1 "$dir/pg/postmaster.pid")"); do echo "/proc/$p/stat"; done | sort -u); }
rest_run() { # port
  wrk -t2 -c"$clients" -d"${secs}s" --latency -s bench/cluster/random_id.lua -H "apikey: $anon" "http://127.0.0.1:$1/rest/v1/items" \
    | awk '/Requests\/sec/ {rps=$2} /^ +99%/ {p99=$2} /Non-2xx/ {bad=$NF} END {printf "%.0f %s %s", rps, p99, (bad ? bad : 0)}'
}
rt_run() { # port
  "$load" rt-broadcast --url "http://127.0.0.1:$1" --anon-key "$anon" --connections "$receivers" --rate "$rate" --secs "$secs"
}
measure() { # label kind port
  local s0 p0 out s1 p1
  s0="$(sovra_cpu)"; p0="$(pg_cpu)"
  if [ "$2" = rest ]; then out="$(rest_run "$3")"; else out="$(rt_run "$3")"; fi
  s1="$(sovra_cpu)"; p1="$(pg_cpu)"
  if [ "$2" = rest ]; then
    read -r rps p99 bad <<<"$out"
    awk -v l="$1" -v r="$rps" -v p="$p99" -v b="$bad" -v s="$(awk -v a="$s0" -v b="$s1" 'BEGIN {print b - a}')" \
        -v g="$(awk -v a="$p0" -v b="$p1" 'BEGIN {print b - a}')" -v t="$secs" \
      'BEGIN {n = r * t; printf "| %s | REST GET one row | %.0f req/s, p99 %s%s | %.3f | %.3f |\n", l, r, p, (b ? ", NON-2XX " b : ""), 1000 * s / n, 1000 * g / n}'
  else
    # "N messages/s, p50 …, p99 …" from sovra-load.
    local mps; mps="$(echo "$out" | awk '{print $1}')"
    awk -v l="$1" -v o="$out" -v m="$mps" -v s="$(awk -v a="$s0" -v b="$s1" 'BEGIN {print b - a}')" \
        -v g="$(awk -v a="$p0" -v b="$p1" 'BEGIN {print b - a}')" -v t="$secs" \
      'BEGIN {n = m * t; printf "| %s | realtime broadcast fan-out | %s | %.4f | %.4f |\n", l, o, 1000 * s / n, 1000 * g / n}'
  fi
}
echo "| nodes | load | throughput | sovra CPU ms per request or delivered message | PostgreSQL CPU ms per request or message |"
echo "|---|---|---|---|---|"
for round in 1 2; do
  measure "1 (round $round)" rest "$one_port"
  measure "3 (round $round)" rest "$three_port"
done
for round in 1 2; do
  measure "1 (round $round)" rt "$one_port"
  measure "3 (round $round)" rt "$three_port"
done
# Resident memory per node after the runs.
for p in "${node_pids[@]}"; do awk '/VmRSS/ {printf "node rss %d MiB\n", $2 / 1024}' "/proc/$p/status"; done

#!/usr/bin/env bash
# Fairness between tenants (#14): "one tenant saturating its quota must not
# raise another tenant's p99 by more than 20%". Tenant t2 has a light client
# (wrk -t1 -c2, each connection waiting FAIR_LIGHT_DELAY_MS, default 5 ms,
# after a response: about 340 requests/s). FAIR_LIGHT_DELAY_MS=0 makes t2
# closed-loop, which on a 2-core machine is not light: two connections with
# no pause keep the cores busy by themselves, so any load beside them raises
# their p99, fair or not (that row measures two saturating tenants sharing
# the machine). Tenant t1 is offered TWICE its quota:
#
#   rate:  t1 limited to RATE requests/s, offered 2*RATE requests/s by a
#          paced wrk (PACED connections, each waiting PACED*1000/(2*RATE) ms
#          between a response and its next request: wrk's `delay()`), so
#          about half are served and half refused with 429 (wrk's pacing is
#          closed-loop: when responses are slow it offers less; the row
#          prints what was offered);
#   conc:  t1 limited to CONC concurrent requests (rate lifted), offered
#          2*CONC closed-loop connections: CONC in service all the time,
#          CONC waiting their turn (while t2 is busy, t1 is held to its share
#          of server.tenant_shared_requests, by default the cores);
#   flood: t1 limited to RATE requests/s but flooded by an unbounded wrk
#          -c32 (as bench/tenants.sh does): this measures what the flood's
#          connections and wrk itself cost the machine, not the quota.
#
# Each row is ROUNDS pairs, interleaved: t2 alone, then t2 beside t1's load
# (the reference is measured right before each loaded run). Prints one
# Markdown table: t2's p99 alone and loaded per round, the ratio of the
# medians, and what t1 was served and refused.
#
#   SOVRA_BIN=<release build> bench/tenants_fair.sh [seconds] [rounds] [rate] [conc] [paced]
#   (default 10 3 200 2 4)
#
# Needs a release build and wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
rounds="${2:-3}"
rate="${3:-200}"
conc="${4:-2}"
paced="${5:-4}"
bin="${SOVRA_BIN:-./target/release/sovra}"
# The server would warn about options it does not know.
unset SOVRA_BIN SOVRA_LOAD_BIN
[ -x "$bin" ] || { echo "no release build at $bin (set SOVRA_BIN)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is needed" >&2; exit 1; }
root="$(mktemp -d /tmp/sovra-bench-fair-XXXXXX)"
chmod 755 "$root"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$root"
}
trap cleanup EXIT

SOVRA_LOG_LEVEL=warn "$bin" serve --data-dir "$root/data" --listen "127.0.0.1:$port" >"$root/out.log" 2>"$root/err.log" &
pid=$!
until curl -fs "$url/ready" >/dev/null 2>&1; do
  kill -0 "$pid" 2>/dev/null || { cat "$root/err.log" >&2; exit 1; }
  sleep 0.05
done
key="$(cat "$root/data/platform.key")"
declare -a keys
for t in t1 t2; do
  keys+=("$(curl -fs -X POST "$url/sovra/v1/tenants" -H "authorization: Bearer $key" \
    -H 'content-type: application/json' -d "{\"name\":\"$t\"}" |
    sed -E 's/.*"service_role_key":"([^"]+)".*/\1/')")
  psql -h "$root/data/pg" -U postgres -d "tenant_$t" -X -q -v ON_ERROR_STOP=1 -c \
    "create table public.items (id int primary key, label text);
     insert into public.items select g, 'item ' || g from generate_series(1, 100) g;" >/dev/null
done
patch_t1() {
  curl -fs -o /dev/null -X PATCH "$url/sovra/v1/tenants/t1" -H "authorization: Bearer $key" \
    -H 'content-type: application/json' -d "$1"
}
script() { # $1 tenant, $2 key, $3 delay in ms between a response and the next request (0: none)
  cat <<LUA
request = function()
  return wrk.format("GET", "/t/$1/rest/v1/items?select=id,label&id=eq.7",
    { ["apikey"] = "$2", ["authorization"] = "Bearer $2" })
end
LUA
  if [ "$3" != 0 ]; then echo "delay = function() return $3 end"; fi
}
script t2 "${keys[1]}" "${FAIR_LIGHT_DELAY_MS:-5}" >"$root/light.lua"
script t1 "${keys[0]}" 0 >"$root/closed.lua"
# PACED connections at 2*rate in all: each waits PACED*1000/(2*rate) ms.
script t1 "${keys[0]}" "$((paced * 1000 / (2 * rate)))" >"$root/paced.lua"

# t2's p99 in microseconds (wrk --latency prints e.g. "99%  12.34ms").
light() {
  wrk -t1 -c2 -d"${secs}s" --latency -s "$root/light.lua" "$url" |
    awk '/^ +99%/ {v=$2; u=1; if (v ~ /us$/) {u=0.001} else if (v ~ /ms$/) {u=1} else if (v ~ /s$/) {u=1000}
                    sub(/[a-z]+$/, "", v); printf "%d\n", v * u * 1000}'
}
# t1's load: $1 connections, $2 script; t2's light client in the middle.
loaded() {
  wrk -t1 -c"$1" -d"$((secs + 2))s" -s "$root/$2" "$url" >"$root/t1.out" &
  local t1=$!
  sleep 1
  light
  wait "$t1"
}
t1_summary() { # offered, served and refused per second, from wrk's output
  awk -v s="$((secs + 2))" '/requests in/ {n=$1} /Non-2xx/ {bad=$5} END {printf "offered %.0f/s: %.0f/s served, %.0f/s refused", n/s, (n-bad)/s, bad/s}' "$root/t1.out"
}
ms() { awk '{printf "%.1f", $1 / 1000}'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

row() { # $1 label, $2 connections, $3 script
  local alone=() with=() t1s=()
  for _ in $(seq 1 "$rounds"); do
    alone+=("$(light)")
    with+=("$(loaded "$2" "$3")")
    t1s+=("$(t1_summary)")
  done
  local ma mw
  ma=$(printf '%s\n' "${alone[@]}" | median)
  mw=$(printf '%s\n' "${with[@]}" | median)
  echo "| $1 | $(for v in "${with[@]}"; do printf '%s; ' "$(echo "$v" | ms)"; done | sed 's/; $//') ms | $(for v in "${alone[@]}"; do printf '%s; ' "$(echo "$v" | ms)"; done | sed 's/; $//') ms | $(awk -v a="$ma" -v w="$mw" 'BEGIN {printf "%+.0f%%", (w / a - 1) * 100}') | $(printf '%s\n' "${t1s[@]}" | head -1) |"
}

echo "| t1's load ($secs s runs, $rounds rounds, interleaved) | t2's p99 with t1 loaded | t2's p99 alone (just before) | medians | t1 (round 1) |"
echo "|---|---|---|---|---|"
patch_t1 "{\"requests_per_second\": $rate}"
row "t1 limited to $rate req/s, offered $((2 * rate))/s (paced wrk -c$paced)" "$paced" paced.lua
patch_t1 "{\"requests_per_second\": 1000000, \"max_concurrent_requests\": $conc}"
row "t1 limited to $conc concurrent, offered $((2 * conc)) (closed-loop wrk -c$((2 * conc)))" "$((2 * conc))" closed.lua
patch_t1 "{\"requests_per_second\": $rate, \"max_concurrent_requests\": 0}"
row "t1 limited to $rate req/s, unbounded flood (wrk -c32)" 32 closed.lua

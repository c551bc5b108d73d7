#!/usr/bin/env bash
# Many tenants on one sovra (#14), each figure beside a reference measured
# in the same run:
#
#   1. creation time per tenant (POST /sovra/v1/tenants), interleaved with
#      the bare `CREATE DATABASE … TEMPLATE` of the same template by psql;
#   2. RSS of sovra and of its PostgreSQL with every tenant created and
#      idle, beside the same with no tenant (before creating them);
#   3. the first request to a cold tenant (pools, schema cache and services
#      built on the way), beside the second request to the same tenant;
#   4. REST throughput with requests spread over ACTIVE tenants, beside all
#      requests to one tenant (wrk, interleaved: one, spread, one, spread);
#   5. fairness: the p99 of a light client of tenant t2 while t1 is flooded
#      (without, with a requests_per_second quota, and with a
#      max_concurrent_requests quota on t1), beside t2's p99 alone. This
#      is an unbounded flood (what wrk -c32 costs the machine); the goal's
#      case, t1 offered twice its quota, is bench/tenants_fair.sh.
#
#   bench/tenants.sh [tenants] [active] [seconds]   (default 1000 100 10)
#
# Needs a release build (`cargo build --release --bin sovra`, or SOVRA_BIN)
# and wrk. Each tenant database takes about 8 MiB of disk.
set -euo pipefail
cd "$(dirname "$0")/.."
tenants="${1:-1000}"
active="${2:-100}"
secs="${3:-10}"
bin="${SOVRA_BIN:-./target/release/sovra}"
# The server would warn about options it does not know.
unset SOVRA_BIN SOVRA_LOAD_BIN
[ -x "$bin" ] || cargo build --release --locked --bin sovra >/dev/null
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
root="$(mktemp -d /tmp/sovra-bench-tenants-XXXXXX)"
chmod 755 "$root"
port="${BENCH_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
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
sock="$root/data/pg"
psql_q() { psql -h "$sock" -U postgres -d "${2:-postgres}" -X -q -t -A -v ON_ERROR_STOP=1 -c "$1"; }
now_us() { date +%s%6N; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
pg_tree_rss_kb() {
  local pm total=0 p
  pm="$(head -n1 "$sock/postmaster.pid")"
  for p in "$pm" $(pgrep -P "$pm"); do total=$((total + $(rss_kb "$p"))); done
  echo "$total"
}
pct() { # percentile $1 of the numbers on stdin
  sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p/100+0.999); if (i<1) i=1; if (i>NR) i=NR; print a[i]}'
}

sleep 3
base_sovra=$(rss_kb "$pid")
base_pg=$(pg_tree_rss_kb)

# 1. Creation, interleaved with the bare clone.
create() {
  curl -fs -o /dev/null -X POST "$url/sovra/v1/tenants" \
    -H "authorization: Bearer $key" -H 'content-type: application/json' \
    -d "{\"name\":\"$1\"}"
}
create t0 # makes the template
template="$(psql_q "select datname from pg_database where datname like '%_tenant_template'")"
: >"$root/create.us"; : >"$root/clone.us"
for i in $(seq 1 "$((tenants - 1))"); do
  t0=$(now_us); create "t$i"; echo $(( $(now_us) - t0 )) >>"$root/create.us"
  t0=$(now_us); psql_q "create database bench_ref_$i template \"$template\""; echo $(( $(now_us) - t0 )) >>"$root/clone.us"
  psql_q "drop database bench_ref_$i"
done
created=$(psql_q "select count(*) from sovra.tenants")

# 2. Idle RSS with every tenant created (none started).
sleep 3
idle_sovra=$(rss_kb "$pid")
idle_pg=$(pg_tree_rss_kb)
db_mb=$(psql_q "select pg_database_size('tenant_t1') / 1048576")

# 3. First (cold) request to ACTIVE tenants, beside the second (warm) one.
: >"$root/cold.us"; : >"$root/warm.us"
declare -a names keys
for i in $(seq 1 "$active"); do
  name="t$i"
  service="$(curl -fs "$url/sovra/v1/tenants/$name" -H "authorization: Bearer $key" | sed -E 's/.*"service_role_key":"([^"]+)".*/\1/')"
  psql_q "create table public.items (id int primary key, label text);
          insert into public.items select g, 'item ' || g from generate_series(1, 100) g;" "tenant_t$i"
  names+=("$name"); keys+=("$service")
  get() { curl -fs -o /dev/null -w '%{time_total}' "$url/t/$name/rest/v1/items?select=id,label&id=eq.7" -H "apikey: $service" -H "authorization: Bearer $service"; }
  cold=$(get); warm=$(get)
  awk -v s="$cold" 'BEGIN {printf "%d\n", s * 1000000}' >>"$root/cold.us"
  awk -v s="$warm" 'BEGIN {printf "%d\n", s * 1000000}' >>"$root/warm.us"
done
active_sovra=$(rss_kb "$pid")
active_pg=$(pg_tree_rss_kb)

# 4. Throughput: spread over ACTIVE tenants vs one tenant.
{
  echo 'local tenants = {'
  for i in "${!names[@]}"; do echo "  {\"${names[$i]}\", \"${keys[$i]}\"},"; done
  echo '}'
  cat <<'LUA'
local n = tonumber(os.getenv("SPREAD")) or #tenants
local i = 0
request = function()
  i = i + 1
  local t = tenants[(i % n) + 1]
  return wrk.format("GET", "/t/" .. t[1] .. "/rest/v1/items?select=id,label&id=eq.7",
    { ["apikey"] = t[2], ["authorization"] = "Bearer " .. t[2] })
end
LUA
} >"$root/spread.lua"
run_wrk() { # $1 = number of tenants to spread over
  SPREAD="$1" wrk -t2 -c32 -d"${secs}s" --latency -s "$root/spread.lua" "$url" |
    awk '/Requests\/sec/ {rps=$2} /^ +99%/ {p99=$2} END {print rps, p99}'
}
one_a=$(run_wrk 1); spread_a=$(run_wrk "$active"); one_b=$(run_wrk 1); spread_b=$(run_wrk "$active")

# 5. Fairness: t2's light client alone, then beside a flood of t1.
one_lua() { # $1 name, $2 key -> a wrk script for that tenant
  cat <<LUA
request = function()
  return wrk.format("GET", "/t/$1/rest/v1/items?select=id,label&id=eq.7",
    { ["apikey"] = "$2", ["authorization"] = "Bearer $2" })
end
LUA
}
one_lua "${names[0]}" "${keys[0]}" >"$root/flood.lua"
one_lua "${names[1]}" "${keys[1]}" >"$root/light.lua"
light() { wrk -t1 -c2 -d"${secs}s" --latency -s "$root/light.lua" "$url" | awk '/^ +99%/ {print $2}'; }
flooded() {
  wrk -t1 -c32 -d"$((secs + 2))s" -s "$root/flood.lua" "$url" >"$root/flood.out" &
  local flood=$!
  sleep 1
  light
  wait "$flood"
}
alone_a=$(light); flood_a=$(flooded); alone_b=$(light); flood_b=$(flooded)
curl -fs -o /dev/null -X PATCH "$url/sovra/v1/tenants/${names[0]}" -H "authorization: Bearer $key" \
  -H 'content-type: application/json' -d '{"requests_per_second": 100}'
quota_a=$(flooded); quota_b=$(flooded)
# The same with a concurrency quota instead of a rate (the rate lifted).
curl -fs -o /dev/null -X PATCH "$url/sovra/v1/tenants/${names[0]}" -H "authorization: Bearer $key" \
  -H 'content-type: application/json' -d '{"requests_per_second": 1000000, "max_concurrent_requests": 2}'
conc_a=$(flooded); conc_b=$(flooded)

ms() { awk '{printf "%.1f", $1 / 1000}'; }
echo "| measure ($created tenants, $active active) | figure | reference (same run) |"
echo "|---|---|---|"
echo "| create a tenant, median / p99 | $(pct 50 <"$root/create.us" | ms) ms / $(pct 99 <"$root/create.us" | ms) ms | bare CREATE DATABASE … TEMPLATE by psql: $(pct 50 <"$root/clone.us" | ms) ms / $(pct 99 <"$root/clone.us" | ms) ms |"
echo "| sovra RSS, every tenant created, none started | $((idle_sovra / 1024)) MiB | no tenants: $((base_sovra / 1024)) MiB |"
echo "| PostgreSQL RSS (postmaster + children), same | $((idle_pg / 1024)) MiB | no tenants: $((base_pg / 1024)) MiB |"
echo "| disk per tenant database | $db_mb MiB | — |"
echo "| first request to a cold tenant, median / p99 | $(pct 50 <"$root/cold.us" | ms) ms / $(pct 99 <"$root/cold.us" | ms) ms | second request, same tenant: $(pct 50 <"$root/warm.us" | ms) ms / $(pct 99 <"$root/warm.us" | ms) ms |"
echo "| sovra RSS with $active tenants started | $((active_sovra / 1024)) MiB | none started: $((idle_sovra / 1024)) MiB |"
echo "| PostgreSQL RSS with $active tenants started | $((active_pg / 1024)) MiB | none started: $((idle_pg / 1024)) MiB |"
echo "| p99 of tenant t2 (wrk -c2) while t1 is flooded (wrk -c32), runs 1, 2 | $flood_a; $flood_b | t2 alone: $alone_a; $alone_b |"
echo "| same, t1 limited to 100 requests/s | $quota_a; $quota_b | t2 alone: $alone_a; $alone_b |"
echo "| same, t1 limited to 2 concurrent requests | $conc_a; $conc_b | t2 alone: $alone_a; $alone_b |"
echo "| REST req/s, p99, spread over $active tenants (runs 1, 2) | ${spread_a% *} req/s, ${spread_a#* }; ${spread_b% *} req/s, ${spread_b#* } | one tenant: ${one_a% *} req/s, ${one_a#* }; ${one_b% *} req/s, ${one_b#* } |"

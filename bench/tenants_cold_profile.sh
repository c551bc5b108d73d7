#!/usr/bin/env bash
# Where a cold tenant's first request waits (#14): makes TENANTS tenants with
# a 100-row table each (psql), turns on PostgreSQL's connection and statement
# log (log_connections, log_min_duration_statement = 0, '%m [%p] %d %u '),
# then sends each tenant one first and one second request. Leaves the data
# dir (KEEP) for reading: <dir>/data/postgres.log (PostgreSQL's timeline),
# <dir>/err.log (Sovra's `tenant started start_ms` and `latency_ms`),
# <dir>/marks (curl's times).
#
#   SOVRA_BIN=<release build> bench/tenants_cold_profile.sh [tenants] [dir]   (default 6, a new temp dir)
set -euo pipefail
n="${1:-6}"
root="${2:-$(mktemp -d /tmp/sovra-cold-profile-XXXXXX)}"
bin="${SOVRA_BIN:?SOVRA_BIN: a release build}"
# The server would warn about options it does not know.
unset SOVRA_BIN SOVRA_LOAD_BIN
mkdir -p "$root"; chmod 755 "$root"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
SOVRA_LOG_LEVEL=info "$bin" serve --data-dir "$root/data" --listen "127.0.0.1:$port" >"$root/out.log" 2>"$root/err.log" &
pid=$!
trap 'kill -INT $pid; wait $pid' EXIT
until curl -fs "$url/ready" >/dev/null 2>&1; do sleep 0.1; done
key="$(cat "$root/data/platform.key")"
declare -a keys
for i in $(seq 1 "$n"); do
  keys[i]="$(curl -fs -X POST "$url/sovra/v1/tenants" -H "authorization: Bearer $key" \
    -H 'content-type: application/json' -d "{\"name\":\"t$i\"}" | sed -E 's/.*"service_role_key":"([^"]+)".*/\1/')"
  psql -h "$root/data/pg" -U postgres -d "tenant_t$i" -X -q -c \
    "create table public.items (id int primary key, label text);
     insert into public.items select g, 'item ' || g from generate_series(1, 100) g;"
done
psql -h "$root/data/pg" -U postgres -X -q -c "alter system set log_connections = on" \
  -c "alter system set log_min_duration_statement = 0" \
  -c "alter system set log_line_prefix = '%m [%p] %d %u '" -c "select pg_reload_conf()" >/dev/null
sleep 2
for i in $(seq 1 "$n"); do
  for r in first second; do
    curl -fs -o /dev/null -w "t$i $r %{time_total}\n" "$url/t/t$i/rest/v1/items?select=id,label&id=eq.7" \
      -H "apikey: ${keys[i]}" -H "authorization: Bearer ${keys[i]}" >>"$root/marks"
  done
  sleep 3
done
echo "$root"

#!/usr/bin/env bash
# The first request to a cold tenant (#14), two builds side by side in the
# same run: each build serves its own data dir with TENANTS tenants made
# through `POST /sovra/v1/tenants` and a 100-row table in each (made by
# psql before any request, as bench/tenants.sh does); then, tenant by
# tenant, A's first request, B's first request, alternating which build
# goes first, each followed by the second request to the same tenant (the
# reference: a started tenant). Prints one Markdown table.
#
#   SOVRA_BIN_A=<before> SOVRA_BIN_B=<after> bench/tenants_cold.sh [tenants]   (default 60)
#
# Needs release builds. Each tenant database takes about 8 MiB of disk.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-60}"
bin_a="${SOVRA_BIN_A:?SOVRA_BIN_A: the build before}"
bin_b="${SOVRA_BIN_B:?SOVRA_BIN_B: the build after}"
# The server would warn about options it does not know.
unset SOVRA_BIN_A SOVRA_BIN_B
root="$(mktemp -d /tmp/sovra-bench-cold-XXXXXX)"
chmod 755 "$root"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$root"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now_us() { date +%s%6N; }
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p/100+0.999); if (i<1) i=1; if (i>NR) i=NR; print a[i]}'; }
ms() { awk '{printf "%.1f", $1 / 1000}'; }

declare -A url
start() { # side binary
  local side="$1" bin="$2" port
  port="$(free_port)"
  url[$side]="http://127.0.0.1:$port"
  SOVRA_LOG_LEVEL=warn nice -n -15 "$bin" serve --data-dir "$root/$side" --listen "127.0.0.1:$port" \
    >"$root/$side.out" 2>"$root/$side.err" &
  pids+=($!)
  until curl -fs "${url[$side]}/ready" >/dev/null 2>&1; do sleep 0.05; done
}
start a "$bin_a"
start b "$bin_b"
declare -A keys
for side in a b; do
  key="$(cat "$root/$side/platform.key")"
  for i in $(seq 1 "$n"); do
    keys[$side$i]="$(curl -fs -X POST "${url[$side]}/sovra/v1/tenants" -H "authorization: Bearer $key" \
      -H 'content-type: application/json' -d "{\"name\":\"t$i\"}" |
      sed -E 's/.*"service_role_key":"([^"]+)".*/\1/')"
    psql -h "$root/$side/pg" -U postgres -d "tenant_t$i" -X -q -v ON_ERROR_STOP=1 -c \
      "create table public.items (id int primary key, label text);
       insert into public.items select g, 'item ' || g from generate_series(1, 100) g;" >/dev/null
  done
done
sleep 2
get() { # side tenant -> microseconds
  local s
  s="$(curl -fs -o /dev/null -w '%{time_total}' "${url[$1]}/t/t$2/rest/v1/items?select=id,label&id=eq.7" \
    -H "apikey: ${keys[$1$2]}" -H "authorization: Bearer ${keys[$1$2]}")"
  awk -v s="$s" 'BEGIN {printf "%d\n", s * 1000000}'
}
for side in a b; do : >"$root/$side.cold"; : >"$root/$side.warm"; done
for i in $(seq 1 "$n"); do
  if [ $((i % 2)) = 1 ]; then order="a b"; else order="b a"; fi
  for side in $order; do
    get "$side" "$i" >>"$root/$side.cold"
    get "$side" "$i" >>"$root/$side.warm"
    sleep 0.2
  done
done
echo "| build ($n cold tenants each, interleaved) | first request, median | p90 | p99 | second request, median / p99 |"
echo "|---|---|---|---|---|"
for side in a b; do
  label="A ($bin_a)"; [ "$side" = b ] && label="B ($bin_b)"
  echo "| $label | $(pct 50 <"$root/$side.cold" | ms) ms | $(pct 90 <"$root/$side.cold" | ms) ms | $(pct 99 <"$root/$side.cold" | ms) ms | $(pct 50 <"$root/$side.warm" | ms) / $(pct 99 <"$root/$side.warm" | ms) ms |"
done

#!/usr/bin/env bash
# Two Sovra builds side by side on the REST cases of bench/peers.sh, in the
# same run, interleaved (A, B, A, B, ...), on the same 10,000 records:
#
#   SOVRA_BIN_A=<before> SOVRA_BIN_B=<after> bench/rest_ab.sh [seconds] [rounds] [connections]
#                                              (defaults: 5 s, 3 rounds, 32)
#
# Both servers run on the embedded default (their own PostgreSQL each),
# seeded by bench/peers/sovra.sql, with the auth rate limits off; load is
# wrk -t2 with the request shapes of bench/peers.sh (bench/peers/req.lua:
# requests by id pick one of the 10,000 records at random). Each figure is
# the mean of the rounds; p99 is the mean of the rounds' p99. CPU/request
# is the CPU time (user + system) the server and its PostgreSQL used during
# the run divided by the requests served: on a shared machine it moves much
# less with other processes' load than throughput does. Prints one
# Markdown table with both figures and B / A.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"; rounds="${2:-3}"; conns="${3:-32}"
: "${SOVRA_BIN_A:?the build to compare against}" "${SOVRA_BIN_B:?the build to measure}"
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
command -v psql >/dev/null || export PATH="$(pg_config --bindir):$PATH"

dir="$(mktemp -d /tmp/sovra-ab-XXXXXX)"; chmod 755 "$dir"
pids=()
trap 'for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$dir"' EXIT

# start NAME BIN PORT: a server with its data in $dir/NAME; sets up the
# bench user, the tables, and NAME's anon key and user token in $dir/NAME.*
start() {
  local name="$1" bin="$2" port="$3" url="http://127.0.0.1:$3"
  env -u SOVRA_BIN_A -u SOVRA_BIN_B SOVRA_LOG_LEVEL=warn SOVRA_AUTH_RATE_LIMIT_SIGN_IN=0 \
    SOVRA_AUTH_RATE_LIMIT_TOKEN_REFRESH=0 \
    "$bin" serve --data-dir "$dir/$name" --listen "127.0.0.1:$port" >/dev/null 2>"$dir/$name.log" &
  pids+=($!)
  until curl -fs "$url/ready" >/dev/null 2>&1; do sleep 0.05; done
  local keys anon service owner
  keys="$("$bin" keys --json --data-dir "$dir/$name")"
  anon="$(echo "$keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["anon_key"])')"
  service="$(echo "$keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["service_role_key"])')"
  owner="$(curl -fs -X POST "$url/auth/v1/admin/users" -H "apikey: $service" -H "Authorization: Bearer $service" \
    -H 'Content-Type: application/json' \
    -d '{"email":"bench@example.com","password":"bench-password-1","email_confirm":true}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
  psql -h "$dir/$name/pg" -U postgres -d postgres -q -v ON_ERROR_STOP=1 -v owner="$owner" \
    -f bench/peers/sovra.sql >/dev/null
  curl -fs -X POST "$url/auth/v1/token?grant_type=password" -H "apikey: $anon" \
    -H 'Content-Type: application/json' -d '{"email":"bench@example.com","password":"bench-password-1"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' >"$dir/$name.token"
  echo "$anon" >"$dir/$name.anon"
  until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "apikey: $anon" "$url/rest/v1/posts_public?id=eq.2")" = 200 ]; do
    sleep 0.05
  done
}
start a "$SOVRA_BIN_A" 54411
start b "$SOVRA_BIN_B" 54412
for t in posts_public posts_signed_in posts_owner; do seq 1 10000 | sed "s|^|/rest/v1/$t?id=eq.|" >"$dir/$t.paths"; done
echo '{"title":"new post","body":"written by the benchmark"}' >"$dir/create.json"
echo '{"title":"patched title"}' >"$dir/patch.json"

# CPU seconds (user + system, in clock ticks) used so far by server NAME and
# its PostgreSQL (the postmaster's children, which live as long as the pool).
cpu_ticks() {
  local name="$1" pm p t=0
  pm="$(head -1 "$dir/$name/pg/postmaster.pid")"
  for p in "${pids[$([ "$name" = a ] && echo 0 || echo 1)]}" "$pm" $(pgrep -P "$pm"); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}

# run NAME connections method body-file paths-file path [header...] -> "req/s p99_ms non2xx cpu_us_per_request"
run() {
  local name="$1" c="$2" method="$3" body="$4" paths="$5" path="$6"; shift 6
  local port=54411; [ "$name" = b ] && port=54412
  local hdrs=(-H "apikey: $(cat "$dir/$name.anon")") h
  for h in "$@"; do
    if [ "$h" = AUTH ]; then hdrs+=(-H "Authorization: Bearer $(cat "$dir/$name.token")"); else hdrs+=(-H "$h"); fi
  done
  local before after
  before="$(cpu_ticks "$name")"
  WRK_METHOD="$method" WRK_BODY="$body" WRK_PATHS="$paths" wrk -t2 -c"$c" -d"${secs}s" --latency -s bench/peers/req.lua \
    "${hdrs[@]}" "http://127.0.0.1:$port$path" >"$dir/wrk.out"
  after="$(cpu_ticks "$name")"
  awk -v cpu="$((after - before))" -v hz="$(getconf CLK_TCK)" '
      function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
      /Requests\/sec/ {rps = $2} /^ +99%/ {p99 = ms($2)} /Non-2xx/ {bad = $NF} /requests in/ {n = $1}
      END {printf "%.0f %.2f %d %.1f\n", rps, p99, bad + 0, (n ? cpu / hz * 1e6 / n : 0)}' "$dir/wrk.out"
}
one="Accept: application/vnd.pgrst.object+json"
rep="Prefer: return=representation"

echo "| case ($conns connections, ${secs} s, mean of $rounds interleaved rounds) | A req/s | A p99 | A CPU/request | B req/s | B p99 | B CPU/request | B / A req/s | B / A CPU |"
echo "|---|---|---|---|---|---|---|---|---|"
case_row() { # name; then the arguments of run after the server name
  local name="$1"; shift
  local ar=0 ap=0 ab=0 ac=0 br=0 bp=0 bb=0 bc=0 i r p b c
  add() { awk -v x="$1" -v y="$2" 'BEGIN {print x + y}'; }
  for ((i = 0; i < rounds; i++)); do
    read -r r p b c <<<"$(run a "$@")"; ar=$((ar + r)); ap="$(add "$ap" "$p")"; ab=$((ab + b)); ac="$(add "$ac" "$c")"
    read -r r p b c <<<"$(run b "$@")"; br=$((br + r)); bp="$(add "$bp" "$p")"; bb=$((bb + b)); bc="$(add "$bc" "$c")"
  done
  awk -v n="$name" -v ar="$ar" -v ap="$ap" -v ab="$ab" -v ac="$ac" -v br="$br" -v bp="$bp" -v bb="$bb" -v bc="$bc" -v k="$rounds" 'BEGIN {
    printf "| %s | %d%s | %.2f ms | %.0f µs | %d%s | %.2f ms | %.0f µs | %.2f | %.2f |\n", n, ar / k, (ab ? " (" ab " non-2xx)" : ""), ap / k, ac / k,
      br / k, (bb ? " (" bb " non-2xx)" : ""), bp / k, bc / k, (ar ? br / ar : 0), (ac ? bc / ac : 0) }'
}
case_row "GET one record by id, public" "$conns" GET "" "$dir/posts_public.paths" / "$one"
case_row "GET one by id, signed-in users only" "$conns" GET "" "$dir/posts_signed_in.paths" / AUTH "$one"
case_row "GET one by id, owner-only RLS" "$conns" GET "" "$dir/posts_owner.paths" / AUTH "$one"
case_row "page of 20, no total (public)" "$conns" GET "" "" "/rest/v1/posts_public?select=*&limit=20"
case_row "page of 20 with total count (public)" "$conns" GET "" "" "/rest/v1/posts_public?select=*&limit=20" "Prefer: count=exact"
case_row "create one, record returned (signed-in)" "$conns" POST "$dir/create.json" "" /rest/v1/posts_signed_in AUTH "$rep"
case_row "PATCH one by id, record returned (signed-in)" "$conns" PATCH "$dir/patch.json" "$dir/posts_signed_in.paths" / AUTH "$rep"

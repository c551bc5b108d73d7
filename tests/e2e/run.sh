#!/usr/bin/env bash
# End-to-end: starts the real `sovra` binary on the embedded default in a
# fresh data directory, loads fixture.sql, and drives it with the real
# supabase-js client (node --test); a second instance on the same database
# and a real nats-server serve the tests that cross instances. Prints
# node's TAP output.
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"
bin="${SOVRA_BIN:-$root/target/debug/sovra}"
[ -n "${SOVRA_BIN:-}" ] || (cd "$root" && cargo build --locked --quiet --bin sovra)
{ [ -d node_modules/@supabase/supabase-js ] && [ -d node_modules/@aws-sdk/client-s3 ] && [ -d node_modules/@modelcontextprotocol/sdk ]; } || npm ci --no-audit --no-fund --loglevel=error
# The quickstart (quickstart.test.js) runs examples/quickstart with its own
# dependencies, as a developer who copied it would.
[ -d ../../examples/quickstart/node_modules/@supabase/supabase-js ] \
  || (cd ../../examples/quickstart && npm ci --no-audit --no-fund --loglevel=error)
export E2E_SOVRA_BIN="$bin"
dir="$(mktemp -d /tmp/sovra-e2e-XXXXXX)"
chmod 755 "$dir"
port="$(node -e "const s = require('net').createServer(); s.listen(0, '127.0.0.1', () => { console.log(s.address().port); s.close(); })")"
# Auth as a new project would have it, with confirmation mails read from
# the mailbox, and limits high enough for a test run from one address.
export SOVRA_AUTH_ANONYMOUS_USERS=true SOVRA_AUTH_EMAIL_MAX_FREQUENCY=0 \
  SOVRA_AUTH_RATE_LIMIT_SIGN_IN=10000 SOVRA_AUTH_RATE_LIMIT_VERIFY=10000 \
  SOVRA_AUTH_RATE_LIMIT_OTP=10000 SOVRA_AUTH_RATE_LIMIT_ANONYMOUS=10000
free_port() { node -e "const s = require('net').createServer(); s.listen(0, '127.0.0.1', () => { console.log(s.address().port); s.close(); })"; }
# A real nats-server joins this instance and a second one (started below on
# the same database) for the tests that cross instances.
nats_bin="$(command -v nats-server || echo /usr/sbin/nats-server)"
nats_port="$(free_port)"
"$nats_bin" -a 127.0.0.1 -p "$nats_port" >"$dir/nats.log" 2>&1 &
nats_pid=$!
export SOVRA_REALTIME_NATS_URL="nats://127.0.0.1:$nats_port"
# Opaque keys (sb_publishable_/sb_secret_), made before the server starts
# so that it loads them; shown this once.
opaque="$("$bin" keys --rotate-opaque --json --data-dir "$dir/data")"
export SOVRA_PUBLISHABLE_KEY="$(node -e 'console.log(JSON.parse(process.argv[1]).publishable_key)' "$opaque")"
export SOVRA_SECRET_KEY="$(node -e 'console.log(JSON.parse(process.argv[1]).secret_key)' "$opaque")"
SOVRA_REST_SCHEMAS=public,personal,pgmq_public "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >"$dir/out.log" 2>"$dir/err.log" &
pid=$!
pid2=""
pid3=""
pid4=""
pid5=""
oidc_pid=""
cleanup() {
  kill -INT "$pid" $pid2 $pid3 $pid4 $pid5 2>/dev/null || true
  wait "$pid" $pid2 $pid3 $pid4 $pid5 2>/dev/null || true
  [ -z "$oidc_pid" ] || kill "$oidc_pid" 2>/dev/null || true
  kill "$nats_pid" 2>/dev/null || true
  wait "$nats_pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
# wait_ready URL PID ERR_LOG: until the server answers /ready, or fail
# with its log when it exits or takes a minute.
wait_ready() {
  for _ in $(seq 600); do
    curl -fs "$1/ready" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { cat "$3" >&2; exit 1; }
    sleep 0.1
  done
  echo "sovra at $1 did not become ready" >&2; cat "$3" >&2; exit 1
}
url="http://127.0.0.1:$port"
wait_ready "$url" "$pid" "$dir/err.log"
psql -h "$dir/data/pg" -U postgres -d postgres -v ON_ERROR_STOP=1 -q -f fixture.sql >/dev/null
# node_dir DIR: a data directory for another instance on the first one's
# database: the same API keys, and the same tenant secrets key (the registry's
# secrets are sealed with it; a node with another key refuses to start).
node_dir() {
  mkdir -p "$1"
  cp "$dir/data/keys.json" "$dir/data/tenant-secrets.key" "$1/"
}
# The second instance: same database (the first one's cluster, through its
# socket), same keys, same NATS server; its own port and data directory.
port2="$(free_port)"
node_dir "$dir/data2"
SOVRA_REST_SCHEMAS=public,personal SOVRA_DATABASE_URL="host=$dir/data/pg user=postgres dbname=postgres" \
  "$bin" serve --data-dir "$dir/data2" --listen "127.0.0.1:$port2" >"$dir/out2.log" 2>"$dir/err2.log" &
pid2=$!
url2="http://127.0.0.1:$port2"
wait_ready "$url2" "$pid2" "$dir/err2.log"
export E2E_SECOND_URL="$url2"
# A third instance on the same database that signs access tokens with an
# EC private key (a fixed test key), for auth-js' local getClaims().
port3="$(free_port)"
node_dir "$dir/data3"
SOVRA_JWT_JWKS='{"keys":[{"kty":"EC","crv":"P-256","kid":"e2e-ec","alg":"ES256","d":"xk-UCYVX6qgVDvNQffbgeUrXH4yiQJTNB4zWcfMOAKk","x":"kPEvY2IfeFBp164JNCro7Fy-U9KZKmvI9mzbtkRz7Ng","y":"NsifjvHI5lvyKGXlAOPkZCYzxjApuwwVwpmEmo7X-2U"}]}' \
  SOVRA_REST_SCHEMAS=public,personal SOVRA_DATABASE_URL="host=$dir/data/pg user=postgres dbname=postgres" \
  "$bin" serve --data-dir "$dir/data3" --listen "127.0.0.1:$port3" >"$dir/out3.log" 2>"$dir/err3.log" &
pid3=$!
url3="http://127.0.0.1:$port3"
wait_ready "$url3" "$pid3" "$dir/err3.log"
export E2E_ES256_URL="$url3"
# A fourth instance on the same database with the custom access token hook
# of docs/examples/rbac.sql turned on (rbac.test.js applies the recipe).
port4="$(free_port)"
node_dir "$dir/data4"
SOVRA_AUTH_HOOK_CUSTOM_ACCESS_TOKEN_ENABLED=true \
  SOVRA_AUTH_HOOK_CUSTOM_ACCESS_TOKEN_URI=pg-functions://postgres/public/custom_access_token_hook \
  SOVRA_REST_SCHEMAS=public,personal SOVRA_DATABASE_URL="host=$dir/data/pg user=postgres dbname=postgres" \
  "$bin" serve --data-dir "$dir/data4" --listen "127.0.0.1:$port4" >"$dir/out4.log" 2>"$dir/err4.log" &
pid4=$!
url4="http://127.0.0.1:$port4"
wait_ready "$url4" "$pid4" "$dir/err4.log"
export E2E_HOOKS_URL="$url4"
# A fifth instance with a real OpenID Connect provider (oidc-provider.mjs)
# as its `keycloak` provider (external.test.js).
port5="$(free_port)"
oidc_port="$(free_port)"
export E2E_OIDC_URL="http://127.0.0.1:$oidc_port" E2E_OIDC_CLIENT_ID=sovra-e2e E2E_OIDC_CLIENT_SECRET=e2e-client-secret
export E2E_OIDC_NATIVE_REDIRECT="http://127.0.0.1:$oidc_port/native-app"
OIDC_PORT="$oidc_port" OIDC_CLIENT_ID="$E2E_OIDC_CLIENT_ID" OIDC_CLIENT_SECRET="$E2E_OIDC_CLIENT_SECRET" \
  OIDC_REDIRECT_URIS="http://127.0.0.1:$port5/auth/v1/callback,$E2E_OIDC_NATIVE_REDIRECT" \
  node oidc-provider.mjs >"$dir/oidc.log" 2>&1 &
oidc_pid=$!
for _ in $(seq 100); do
  curl -fs "$E2E_OIDC_URL/.well-known/openid-configuration" >/dev/null 2>&1 && break
  kill -0 "$oidc_pid" 2>/dev/null || { cat "$dir/oidc.log" >&2; exit 1; }
  sleep 0.1
done
node_dir "$dir/data5"
SOVRA_AUTH_MANUAL_LINKING_ENABLED=true \
  SOVRA_AUTH_EXTERNAL_KEYCLOAK_ENABLED=true SOVRA_AUTH_EXTERNAL_KEYCLOAK_URL="$E2E_OIDC_URL" \
  SOVRA_AUTH_EXTERNAL_KEYCLOAK_CLIENT_ID="$E2E_OIDC_CLIENT_ID" SOVRA_AUTH_EXTERNAL_KEYCLOAK_SECRET="$E2E_OIDC_CLIENT_SECRET" \
  SOVRA_REST_SCHEMAS=public,personal SOVRA_DATABASE_URL="host=$dir/data/pg user=postgres dbname=postgres" \
  "$bin" serve --data-dir "$dir/data5" --listen "127.0.0.1:$port5" >"$dir/out5.log" 2>"$dir/err5.log" &
pid5=$!
url5="http://127.0.0.1:$port5"
wait_ready "$url5" "$pid5" "$dir/err5.log"
export E2E_OIDC_SOVRA_URL="$url5"
keys="$("$bin" keys --json --data-dir "$dir/data")"
export SOVRA_URL="$url"
export SOVRA_ANON_KEY="$(node -e 'console.log(JSON.parse(process.argv[1]).anon_key)' "$keys")"
export SOVRA_SERVICE_KEY="$(node -e 'console.log(JSON.parse(process.argv[1]).service_role_key)' "$keys")"
export SOVRA_KEYS_FILE="$dir/data/keys.json"
export SOVRA_PLATFORM_KEY="$(node -e 'console.log(JSON.parse(process.argv[1]).platform_key)' "$keys")"
export SOVRA_PG_SOCKET="$dir/data/pg"
# The fixture's DDL reloads the schema cache; wait until it has.
for _ in $(seq 100); do
  code="$(curl -s -o /dev/null -w '%{http_code}' -H "apikey: $SOVRA_ANON_KEY" "$url/rest/v1/messages")"
  [ "$code" = 200 ] && break
  sleep 0.1
done
# E2E_FILES (optional) names the test files to run.
node --test --test-reporter=tap ${E2E_FILES:-}

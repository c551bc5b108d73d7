#!/usr/bin/env bash
# End-to-end: starts the real `sovra` binary on the embedded default in a
# fresh data directory, loads fixture.sql, and drives it with the real
# supabase-js client (node --test). Prints node's TAP output.
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"
bin="${SOVRA_BIN:-$root/target/debug/sovra}"
[ -n "${SOVRA_BIN:-}" ] || (cd "$root" && cargo build --locked --quiet --bin sovra)
[ -d node_modules/@supabase/supabase-js ] || npm ci --no-audit --no-fund --loglevel=error
dir="$(mktemp -d /tmp/sovra-e2e-XXXXXX)"
chmod 755 "$dir"
port="$(node -e "const s = require('net').createServer(); s.listen(0, '127.0.0.1', () => { console.log(s.address().port); s.close(); })")"
# Auth as a new project would have it, with confirmation mails read from
# the mailbox, and limits high enough for a test run from one address.
export SOVRA_AUTH_ANONYMOUS_USERS=true SOVRA_AUTH_EMAIL_MAX_FREQUENCY=0 \
  SOVRA_AUTH_RATE_LIMIT_SIGN_IN=10000 SOVRA_AUTH_RATE_LIMIT_VERIFY=10000 \
  SOVRA_AUTH_RATE_LIMIT_OTP=10000 SOVRA_AUTH_RATE_LIMIT_ANONYMOUS=10000
SOVRA_REST_SCHEMAS=public,personal "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >"$dir/out.log" 2>"$dir/err.log" &
pid=$!
cleanup() {
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
url="http://127.0.0.1:$port"
for _ in $(seq 600); do
  curl -fs "$url/ready" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/err.log" >&2; exit 1; }
  sleep 0.1
done
curl -fs "$url/ready" >/dev/null || { echo "sovra did not become ready" >&2; cat "$dir/err.log" >&2; exit 1; }
psql -h "$dir/data/pg" -U postgres -d postgres -v ON_ERROR_STOP=1 -q -f fixture.sql >/dev/null
keys="$("$bin" keys --json --data-dir "$dir/data")"
export SOVRA_URL="$url"
export SOVRA_ANON_KEY="$(node -e 'console.log(JSON.parse(process.argv[1]).anon_key)' "$keys")"
export SOVRA_SERVICE_KEY="$(node -e 'console.log(JSON.parse(process.argv[1]).service_role_key)' "$keys")"
export SOVRA_KEYS_FILE="$dir/data/keys.json"
# The fixture's DDL reloads the schema cache; wait until it has.
for _ in $(seq 100); do
  code="$(curl -s -o /dev/null -w '%{http_code}' -H "apikey: $SOVRA_ANON_KEY" "$url/rest/v1/messages")"
  [ "$code" = 200 ] && break
  sleep 0.1
done
node --test --test-reporter=tap

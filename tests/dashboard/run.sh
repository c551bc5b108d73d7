#!/usr/bin/env bash
# Browser tests of the dashboard at /_/: builds the front end and the
# binary, starts `sovra serve` on the embedded default in a fresh data
# directory, loads fixture.sql, and drives the system's Chromium (Debian's
# `chromium`, no browser download) with playwright-core (node --test).
# Screenshots go to tests/dashboard/screenshots/ (not committed). Prints
# node's TAP output.
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"
bin="${SOVRA_BIN:-$root/target/debug/sovra}"
if [ -z "${SOVRA_BIN:-}" ]; then
  bash "$root/scripts/dashboard.sh"
  (cd "$root" && cargo build --locked --quiet --bin sovra)
fi
[ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --loglevel=error
chromium="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
[ -n "$chromium" ] || { echo "dashboard tests: no chromium (scripts/setup.sh test installs it)" >&2; exit 1; }
export DASHBOARD_CHROMIUM="$chromium"
dir="$(mktemp -d /tmp/sovra-dash-XXXXXX)"
chmod 755 "$dir"
port="$(node -e "const s = require('net').createServer(); s.listen(0, '127.0.0.1', () => { console.log(s.address().port); s.close(); })")"
SOVRA_AUTH_EMAIL_MAX_FREQUENCY=0 "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >"$dir/out.log" 2>"$dir/err.log" &
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
export DASHBOARD_URL="$url"
export DASHBOARD_SERVICE_KEY="$(node -e 'console.log(JSON.parse(process.argv[1]).service_role_key)' "$keys")"
export DASHBOARD_ANON_KEY="$(node -e 'console.log(JSON.parse(process.argv[1]).anon_key)' "$keys")"
export DASHBOARD_PLATFORM_KEY="$(node -e 'console.log(JSON.parse(process.argv[1]).platform_key)' "$keys")"
mkdir -p screenshots
node --test --test-reporter=tap ${DASHBOARD_FILES:-}

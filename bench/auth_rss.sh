#!/usr/bin/env bash
# Resident memory of the real release server around a burst of password
# sign-ins: VmRSS from /proc/<pid>/status before the burst, at its peak
# (sampled every 50 ms while it runs) and after it (once the process has
# been idle for a few seconds).
#
#   bench/auth_rss.sh [sign-ins] [parallel] [binary]
#       defaults: 300 sign-ins, 16 at a time, ./target/release/sovra
#
# The binary argument lets the same script measure an older build (copy it
# aside first). Sign-in rate limits are off for the run; everything else is
# the embedded default. Prints one Markdown row.
set -euo pipefail
cd "$(dirname "$0")/.."
total="${1:-300}"; par="${2:-16}"; bin="${3:-./target/release/sovra}"
if [ "$bin" = "./target/release/sovra" ]; then
  cargo build --release --locked --quiet --bin sovra
fi
dir="$(mktemp -d /tmp/sovra-rss-XXXXXX)"; chmod 755 "$dir"
port=54397
SOVRA_LOG_LEVEL=warn SOVRA_AUTH_RATE_LIMIT_SIGN_IN=0 SOVRA_AUTH_EMAIL_AUTOCONFIRM=true \
  "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >/dev/null 2>"$dir/err.log" &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
url="http://127.0.0.1:$port"
until curl -fs "$url/ready" >/dev/null 2>&1; do sleep 0.05; done
keys="$("$bin" keys --json --data-dir "$dir/data")"
anon="$(echo "$keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["anon_key"])')"
service="$(echo "$keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["service_role_key"])')"
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"; }   # KiB
mib() { awk -v k="$1" 'BEGIN {printf "%.0f MiB", k / 1024}'; }

curl -sS -o /dev/null -X POST "$url/auth/v1/admin/users" -H "apikey: $anon" \
  -H "authorization: Bearer $service" -H 'content-type: application/json' \
  -d '{"email":"rss@example.com","password":"rss-password","email_confirm":true}'
# One sign-in to warm up (first connections, first hash), then settle.
signin() {
  curl -s -o /dev/null -w '%{http_code}\n' -X POST "$url/auth/v1/token?grant_type=password" \
    -H "apikey: $anon" -H 'content-type: application/json' \
    -d '{"email":"rss@example.com","password":"rss-password"}'
}
export -f signin; export url anon
signin >/dev/null
sleep 2
before="$(rss)"

peak="$before"
( while kill -0 $pid 2>/dev/null; do rss; sleep 0.05; done ) >"$dir/samples" &
sampler=$!
start="$(date +%s.%N)"
seq "$total" | xargs -P "$par" -I{} bash -c signin >"$dir/codes"
end="$(date +%s.%N)"
kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
peak="$(sort -n "$dir/samples" | tail -1)"
sleep 5
after="$(rss)"
ok="$(grep -c '^200$' "$dir/codes" || true)"
other="$(grep -vc '^200$' "$dir/codes" || true)"
secs="$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}')"
echo "| $("$bin" --version 2>/dev/null | head -1) | $total sign-ins, $par at a time, ${secs} s ($ok × 200, $other other) | $(mib "$before") | $(mib "$peak") | $(mib "$after") |"

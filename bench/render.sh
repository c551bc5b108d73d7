#!/usr/bin/env bash
# Image transformations (`/storage/v1/render/image/public/…`), each figure
# beside a reference measured in the same run, rounds interleaved:
#
# - throughput and latency (wrk) of rendering a real photograph (a 720x477
#   JPEG from the Rust documentation, 253 KB) to width=300, every request
#   rendered (a server with `storage.image.cache_size = 0`, and each
#   request a different quality, so that none shares a rendering in
#   progress), and the same
#   served from the disk cache (a second server with the default cache),
#   beside plain downloads of the original object from the same server
#   (`/object/public/…`, the reference);
# - the same for a 3000x2000 PNG (generated: gradients) to width=400, with
#   the rendering server's peak RSS;
# - output sizes at width=600: JPEG (quality 80) beside lossless WebP, and
#   PNG beside lossless WebP, which is why a JPEG is not turned into WebP
#   by `Accept` alone.
#
#   bench/render.sh [seconds] [connections]   (defaults: 10 s, 4)
#
# Prints Markdown rows.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"; conns="${2:-4}"
photo="${PHOTO:-$(ls "$HOME"/.rustup/toolchains/*/share/doc/rust/html/embedded-book/assets/f3.jpg | head -1)}"
cargo build --release --locked --quiet --bin sovra
bin=./target/release/sovra
dir="$(mktemp -d /var/tmp/sovra-bench-XXXXXX)"; chmod 755 "$dir"
pids=()
trap 'kill -INT "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT

# start PORT [VAR=VALUE…]: a release server on a fresh data directory.
start() {
  local port="$1"; shift
  env SOVRA_LOG_LEVEL=warn "$@" nice -n -15 "$bin" serve --data-dir "$dir/d$port" \
    --listen "127.0.0.1:$port" >/dev/null 2>"$dir/err$port.log" &
  pids+=("$!")
}
start 54381 SOVRA_STORAGE_IMAGE_CACHE_SIZE=0
nocache_pid="${pids[0]}"
start 54382
for port in 54381 54382; do
  until curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1; do sleep 0.05; done
done

python3 - "$dir/big.png" <<'EOF'
import struct, sys, zlib
w, h = 3000, 2000
xs = bytes(x * 255 // w for x in range(w))
rows = []
for y in range(h):
    g = y * 255 // h
    row = bytearray(3 * w)
    row[0::3] = xs
    row[1::3] = bytes([g]) * w
    row[2::3] = bytes((x + y) % 256 for x in range(w))
    rows.append(b"\0" + bytes(row))
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(b"".join(rows), 6)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
EOF

for port in 54381 54382; do
  service="$("$bin" keys --json --data-dir "$dir/d$port" | python3 -c 'import json,sys; print(json.load(sys.stdin)["service_role_key"])')"
  curl -fsS -o /dev/null -X POST "http://127.0.0.1:$port/storage/v1/bucket" -H "Authorization: Bearer $service" \
    -H 'content-type: application/json' -d '{"id":"bench","name":"bench","public":true}'
  curl -fsS -o /dev/null -X POST --data-binary "@$photo" -H "Authorization: Bearer $service" \
    -H 'content-type: image/jpeg' "http://127.0.0.1:$port/storage/v1/object/bench/photo.jpg"
  curl -fsS -o /dev/null -X POST --data-binary "@$dir/big.png" -H "Authorization: Bearer $service" \
    -H 'content-type: image/png' "http://127.0.0.1:$port/storage/v1/object/bench/big.png"
done

nocache="http://127.0.0.1:54381/storage/v1"
cached="http://127.0.0.1:54382/storage/v1"
# Every request a different rendering (quality 20 to 100 in turn), so
# that none shares another's: concurrent requests for the same rendering
# wait for one and share it, even without the cache.
cat >"$dir/vary.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, wrk.path .. "&quality=" .. (20 + counter % 81))
end
LUA
# wrk_row LABEL URL [wrk args...]: one Markdown row (req/s, p50, p99).
wrk_row() {
  local out
  out="$(wrk -t1 -c"$conns" -d"${secs}s" --latency "${@:3}" "$2")"
  local rps p50 p99
  rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
  p50="$(echo "$out" | awk '$1 == "50%" {print $2}')"
  p99="$(echo "$out" | awk '$1 == "99%" {print $2}')"
  echo "| $1 | $rps req/s | $p50 | $p99 |"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

echo "| request (wrk -t1 -c$conns -d${secs}s) | throughput | p50 | p99 |"
echo "|---|---|---|---|"
for round in 1 2; do
  wrk_row "round $round: GET /object/public photo.jpg (reference: the original, 253 KB)" "$nocache/object/public/bench/photo.jpg"
  wrk_row "round $round: render photo.jpg width=300, every request rendered" "$nocache/render/image/public/bench/photo.jpg?width=300" -s "$dir/vary.lua"
  curl -fsS -o /dev/null "$cached/render/image/public/bench/photo.jpg?width=300"
  wrk_row "round $round: render photo.jpg width=300, from the disk cache" "$cached/render/image/public/bench/photo.jpg?width=300"
  wrk_row "round $round: GET /object/public big.png (reference: the original)" "$nocache/object/public/bench/big.png"
  idle="$(rss_kib "$nocache_pid")"
  : >"$dir/rss"
  ( while true; do rss_kib "$nocache_pid" >>"$dir/rss"; sleep 0.05; done ) & sampler=$!
  wrk_row "round $round: render big.png (3000x2000) width=400, every request rendered" "$nocache/render/image/public/bench/big.png?width=400" -s "$dir/vary.lua"
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  echo "| round $round: RSS of the rendering server | idle $((idle / 1024)) MiB, peak $(( $(sort -n "$dir/rss" | tail -1) / 1024 )) MiB during the big.png run | | |"
done

size() { curl -fsS -o /dev/null -w '%{size_download}' "$@"; }
echo
echo "| output at width=600 | bytes |"
echo "|---|---|"
echo "| photo.jpg original (720x477) | $(stat -c %s "$photo") |"
echo "| photo.jpg → JPEG quality 80 (format=origin) | $(size "$cached/render/image/public/bench/photo.jpg?width=600&format=origin") |"
echo "| photo.jpg → WebP lossless (format=webp) | $(size "$cached/render/image/public/bench/photo.jpg?width=600&format=webp") |"
echo "| big.png → PNG (format=origin) | $(size "$cached/render/image/public/bench/big.png?width=600&format=origin") |"
echo "| big.png → WebP lossless (Accept: image/webp) | $(size -H 'accept: image/webp' "$cached/render/image/public/bench/big.png?width=600") |"

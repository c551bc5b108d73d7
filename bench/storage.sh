#!/usr/bin/env bash
# Storage throughput, each figure beside a reference measured in the same run:
#
# - a 1 GiB object uploaded and downloaded with curl (bytes on the local
#   disk, synced before the upload is acknowledged) beside a plain file copy
#   of the same bytes on the same disk (`cp` + `sync` of the copy), and
#   Sovra's resident memory sampled every 50 ms during both transfers;
# - 4 KiB uploads and downloads at 32 connections (sovra-load) beside
#   pgbench running the metadata statement alone (insert / select of the
#   object's row) at the same concurrency.
#
#   bench/storage.sh [seconds] [connections] [size_mib]   (defaults: 10 s, 32, 1024)
#
# Prints Markdown rows.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"; conns="${2:-32}"; mib="${3:-1024}"
command -v pgbench >/dev/null || export PATH="$(pg_config --bindir):$PATH"
cargo build --release --locked --quiet --bin sovra --bin sovra-load
bin=./target/release/sovra; load=./target/release/sovra-load
dir="$(mktemp -d /var/tmp/sovra-bench-XXXXXX)"; chmod 755 "$dir"
port=54397
SOVRA_DATABASE_POOL_SIZE="$conns" SOVRA_LOG_LEVEL=warn \
SOVRA_STORAGE_FILE_SIZE_LIMIT=$(( (mib + 1) * 1024 * 1024 )) \
  "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >/dev/null 2>"$dir/err.log" &
pid=$!
sampler=""
trap 'kill $sampler 2>/dev/null; kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
url="http://127.0.0.1:$port"
until curl -fs "$url/ready" >/dev/null 2>&1; do sleep 0.05; done
keys="$("$bin" keys --json --data-dir "$dir/data")"
service="$(echo "$keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["service_role_key"])')"
sock="$dir/data/pg"
curl -fsS -o /dev/null -X POST "$url/storage/v1/bucket" -H "Authorization: Bearer $service" \
  -H 'content-type: application/json' -d '{"id":"bench","name":"bench"}'

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# Samples Sovra's RSS every 50 ms into $dir/rss until killed.
sample_rss() { while true; do rss_kib "$pid" >>"$dir/rss"; sleep 0.05; done; }
secs_of() { python3 -c "import sys; print(float(sys.argv[1]))" "$1"; }
rate() { awk -v mib="$mib" -v t="$1" 'BEGIN {printf "%.0f MiB/s", mib / t}'; }
now() { date +%s.%N; }

head -c "$((mib * 1024 * 1024))" /dev/urandom >"$dir/src.bin"
sync "$dir/src.bin"
idle="$(rss_kib "$pid")"

# Reference: copy the file on the same disk and make the copy durable.
t0="$(now)"; cp "$dir/src.bin" "$dir/copy.bin"; sync "$dir/copy.bin"; t1="$(now)"
copy_secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')"
rm -f "$dir/copy.bin"

: >"$dir/rss"; sample_rss & sampler=$!
up="$(curl -sS -o /dev/null -w '%{http_code} %{time_total}' -X POST -T "$dir/src.bin" -H 'Expect:' \
  -H "Authorization: Bearer $service" -H 'content-type: application/octet-stream' \
  "$url/storage/v1/object/bench/big.bin")"
[ "${up%% *}" = 200 ] || { echo "upload failed: $up" >&2; cat "$dir/err.log" >&2; exit 1; }
up_secs="${up#* }"
t0="$(now)"
code="$(curl -sS -o "$dir/down.bin" -w '%{http_code}' -H "Authorization: Bearer $service" \
  "$url/storage/v1/object/bench/big.bin")"
sync "$dir/down.bin"; t1="$(now)"
kill $sampler 2>/dev/null; wait $sampler 2>/dev/null || true; sampler=""
[ "$code" = 200 ] || { echo "download failed: $code" >&2; exit 1; }
cmp -s "$dir/src.bin" "$dir/down.bin" || { echo "downloaded bytes differ" >&2; exit 1; }
down_secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')"
rm -f "$dir/down.bin"
peak="$(sort -n "$dir/rss" | tail -n1)"

echo "| case | sovra | reference | sovra / reference |"
echo "|---|---|---|---|"
echo "| upload ${mib} MiB (curl POST, synced) | $(rate "$up_secs") ($(printf '%.2f' "$up_secs") s) | $(rate "$copy_secs") (cp + sync, $(printf '%.2f' "$copy_secs") s) | $(awk -v a="$copy_secs" -v b="$up_secs" 'BEGIN {printf "%.0f%%", 100 * a / b}') |"
echo "| download ${mib} MiB (curl GET to a file, synced) | $(rate "$down_secs") ($(printf '%.2f' "$down_secs") s) | $(rate "$copy_secs") (cp + sync) | $(awk -v a="$copy_secs" -v b="$down_secs" 'BEGIN {printf "%.0f%%", 100 * a / b}') |"
echo "| sovra RSS during both transfers | peak $((peak / 1024)) MiB, idle $((idle / 1024)) MiB: +$(((peak - idle) / 1024)) MiB | | |"

# Small objects.
psql -h "$sock" -U postgres -d postgres -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
insert into storage.objects (bucket_id, name, version, metadata)
values ('bench', 'pg-ref.bin', md5('x'), jsonb_build_object('size', 4096, 'mimetype', 'application/octet-stream'));
SQL
cat >"$dir/pg_put.sql" <<'SQL'
insert into storage.objects (bucket_id, name, owner_id, version, metadata, user_metadata)
values ('bench', 'pg-' || md5(random()::text), null, md5(random()::text),
        jsonb_build_object('eTag', '"x"', 'size', 4096, 'mimetype', 'application/octet-stream',
                           'cacheControl', 'no-cache', 'contentLength', 4096, 'httpStatusCode', 200), null)
returning id::text;
SQL
cat >"$dir/pg_get.sql" <<'SQL'
select version, metadata from storage.objects where bucket_id = 'bench' and name = 'pg-ref.bin';
SQL
pg_run() {
  local logdir tps p99; logdir="$(mktemp -d)"
  tps="$(cd "$logdir" && PGOPTIONS='-c role=service_role' pgbench -n -h "$sock" -U postgres -d postgres \
      -M prepared -c "$conns" -j 2 -T "$secs" -l -f "$1" 2>"$logdir/err" | awk '/^tps = / {print $3; exit}')"
  p99="$(cat "$logdir"/pgbench_log.* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.2fms", a[int(NR*0.99)]/1000}')"
  [ -n "$tps" ] || { echo "pgbench failed:" >&2; cat "$logdir/err" >&2; }
  rm -rf "$logdir"
  printf '%.0f tx/s, p99 %s' "$tps" "$p99"
}
sovra_run() { "$load" "$1" --url "$url" --service-key "$service" --connections "$conns" --secs "$secs"; }
row() {
  local name="$1" s="$2" p="$3" sr pr
  sr="$(echo "$s" | awk '{print $1}')"; pr="$(echo "$p" | awk '{print $1}')"
  echo "| $name | $s | $p | $(awk -v a="$sr" -v b="$pr" 'BEGIN {printf "%.0f%%", 100 * a / b}') |"
}
row "4 KiB uploads, $conns connections, ${secs} s" "$(sovra_run put4k)" "$(pg_run "$dir/pg_put.sql") (pgbench: the row insert alone)"
row "4 KiB downloads, $conns connections, ${secs} s" "$(sovra_run get4k)" "$(pg_run "$dir/pg_get.sql") (pgbench: the row select alone)"

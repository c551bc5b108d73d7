#!/usr/bin/env bash
# Storage throughput, each figure beside a reference measured in the same run:
#
# - a 1 GiB object uploaded and downloaded with curl (bytes on the local
#   disk, synced before the upload is acknowledged; the download written to
#   a file and synced, and once more to /dev/null) beside a plain file copy
#   of the same bytes on the same disk (`cp` + `sync`, and `dd conv=fsync`),
#   three rounds each, medians; Sovra's resident memory sampled every 50 ms
#   throughout;
# - 4 KiB uploads and downloads at 32 connections (sovra-load) beside
#   pgbench running the same transactions Sovra runs (prologue, settings,
#   bucket lookup / dry run of the row insert / row insert / row select),
#   pipelined as Sovra does, at
#   the same concurrency; the bytes' file IO has no part in the reference.
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
trap 'kill $sampler 2>/dev/null || true; kill -INT $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
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

# Three rounds; each reports the median. Reference: copy the file on the
# same disk and make the copy durable (cp + sync), and the same with a
# plain userspace read/write loop (dd bs=1M conv=fsync).
elapsed() { local t0 t1; t0="$(now)"; "$@"; t1="$(now)"; awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
cp_sync() { cp "$dir/src.bin" "$dir/copy.bin" && sync "$dir/copy.bin"; }
dd_sync() { dd if="$dir/src.bin" of="$dir/copy.bin" bs=1M conv=fsync status=none; }
upload() {
  local up
  up="$(curl -sS -o /dev/null -w '%{http_code}' -X POST -T "$dir/src.bin" -H 'Expect:' -H 'x-upsert: true' \
    -H "Authorization: Bearer $service" -H 'content-type: application/octet-stream' \
    "$url/storage/v1/object/bench/big.bin")"
  [ "$up" = 200 ] || { echo "upload failed: $up" >&2; cat "$dir/err.log" >&2; exit 1; }
}
download() {
  local code
  code="$(curl -sS -o "$dir/down.bin" -w '%{http_code}' -H "Authorization: Bearer $service" \
    "$url/storage/v1/object/bench/big.bin")"
  [ "$code" = 200 ] || { echo "download failed: $code" >&2; exit 1; }
  sync "$dir/down.bin"
}
download_null() {
  curl -fsS -o /dev/null -H "Authorization: Bearer $service" "$url/storage/v1/object/bench/big.bin"
}
: >"$dir/rss"; sample_rss & sampler=$!
for _ in 1 2 3; do
  elapsed cp_sync >>"$dir/t_cp"; rm -f "$dir/copy.bin"
  elapsed dd_sync >>"$dir/t_dd"; rm -f "$dir/copy.bin"
  elapsed upload >>"$dir/t_up"
  elapsed download >>"$dir/t_down"
  cmp -s "$dir/src.bin" "$dir/down.bin" || { echo "downloaded bytes differ" >&2; exit 1; }
  rm -f "$dir/down.bin"
  elapsed download_null >>"$dir/t_null"
done
kill $sampler 2>/dev/null || true; wait $sampler 2>/dev/null || true; sampler=""
copy_secs="$(median <"$dir/t_cp")"; dd_secs="$(median <"$dir/t_dd")"
up_secs="$(median <"$dir/t_up")"; down_secs="$(median <"$dir/t_down")"; null_secs="$(median <"$dir/t_null")"
peak="$(sort -n "$dir/rss" | tail -n1)"
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.0f%%", 100 * a / b}'; }

echo "| case | sovra | reference | sovra / reference |"
echo "|---|---|---|---|"
echo "| upload ${mib} MiB (curl POST from a file, synced; median of 3) | $(rate "$up_secs") | cp + sync $(rate "$copy_secs"); dd conv=fsync $(rate "$dd_secs") | $(pct "$copy_secs" "$up_secs") of cp; $(pct "$dd_secs" "$up_secs") of dd |"
echo "| download ${mib} MiB (curl GET to a file, synced; median of 3) | $(rate "$down_secs") | cp + sync $(rate "$copy_secs"); dd conv=fsync $(rate "$dd_secs") | $(pct "$copy_secs" "$down_secs") of cp; $(pct "$dd_secs" "$down_secs") of dd |"
echo "| download ${mib} MiB (curl GET to /dev/null; median of 3) | $(rate "$null_secs") | | |"
echo "| sovra RSS during all transfers | peak $((peak / 1024)) MiB, idle $((idle / 1024)) MiB: +$(((peak - idle) / 1024)) MiB | | |"

# Small objects.
psql -h "$sock" -U postgres -d postgres -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
insert into storage.objects (bucket_id, name, version, metadata)
values ('bench', 'pg-ref.bin', md5('x'), jsonb_build_object('size', 4096, 'mimetype', 'application/octet-stream'));
SQL
# The references run the transactions Sovra runs for one request, pipelined
# as Sovra pipelines them: the request prologue (role and claims), the
# storage settings, the statement; an upload is the bucket lookup and then
# the row insert, a download the row select.
prologue() { # $1 method, $2 path, $3 operation, $4 may write the version column
  cat <<SQL
BEGIN;
select set_config('role', 'service_role', true), set_config('request.jwt.claims', '{"role":"service_role"}', true),
       set_config('request.jwt.claim.role', 'service_role', true), set_config('request.jwt.claim.sub', '', true),
       set_config('request.jwt.claim.email', '', true), set_config('request.method', '$1', true),
       set_config('request.path', '$2', true), set_config('request.headers', '{}', true),
       set_config('request.cookies', '{}', true);
select set_config('storage.operation', '$3', true), set_config('storage.allow_delete_query', 'false', true),
       set_config('storage.allow_version_write', '${4:-false}', true);
SQL
}
{
  echo '\startpipeline'
  prologue POST /object/bench/x bucket.lookup
  echo "select coalesce(public, false), file_size_limit, allowed_mime_types from storage.buckets where id = 'bench';"
  echo 'COMMIT;'
  echo '\endpipeline'
  # The dry run of the row write that authorises the upload before its
  # body is read (Sovra sends it alongside the bucket lookup).
  echo '\startpipeline'
  prologue POST /object/bench/x object.upload.check true
  cat <<'SQL'
insert into storage.objects (bucket_id, name, owner, owner_id, version, metadata, user_metadata)
values ('bench', 'pg-' || md5(random()::text), null, null, '',
        jsonb_build_object('eTag', '""', 'size', 0, 'mimetype', '',
                           'cacheControl', '', 'lastModified', now()::text,
                           'contentLength', 0, 'httpStatusCode', 200), null)
returning id::text, null::text;
ROLLBACK;
\endpipeline
SQL
  echo '\startpipeline'
  prologue POST /object/bench/x object.upload true
  cat <<'SQL'
insert into storage.objects (bucket_id, name, owner, owner_id, version, metadata, user_metadata)
values ('bench', 'pg-' || md5(random()::text), null, null, md5(random()::text),
        jsonb_build_object('eTag', '"x"', 'size', 4096, 'mimetype', 'application/octet-stream',
                           'cacheControl', 'no-cache', 'lastModified', now()::text,
                           'contentLength', 4096, 'httpStatusCode', 200), null)
returning id::text, null::text;
COMMIT;
\endpipeline
SQL
} >"$dir/pg_put.sql"
{
  echo '\startpipeline'
  prologue GET /object/bench/pg-ref.bin object.get
  echo "select version, metadata, extract(epoch from coalesce(updated_at, created_at))::float8 from storage.objects where bucket_id = 'bench' and name = 'pg-ref.bin';"
  echo 'COMMIT;'
  echo '\endpipeline'
} >"$dir/pg_get.sql"
pg_run() {
  local logdir tps p99; logdir="$(mktemp -d)"
  tps="$(cd "$logdir" && pgbench -n -h "$sock" -U postgres postgres \
      -M extended -c "$conns" -j 2 -T "$secs" -l -f "$1" 2>"$logdir/err" | awk '/^tps = / {print $3; exit}')"
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
row "4 KiB uploads, $conns connections, ${secs} s" "$(sovra_run put4k)" "$(pg_run "$dir/pg_put.sql") (pgbench -M extended: the same three transactions, pipelined)"
row "4 KiB downloads, $conns connections, ${secs} s" "$(sovra_run get4k)" "$(pg_run "$dir/pg_get.sql") (pgbench -M extended: the same transaction, pipelined)"

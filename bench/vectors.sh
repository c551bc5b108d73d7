#!/usr/bin/env bash
# Vector buckets: bulk insert rate, recall@10 of HNSW queries against exact
# search, and query throughput and p99 through Sovra's QueryVectors against
# the same pgvector query through pgbench, in the same run.
#
#   bench/vectors.sh [vectors] [seconds] [clients]   (defaults: 100000, 10 s, 16)
#   VECTORS_ROUNDS: interleaved query rounds (default 2)
#
# Data: 384-dimensional clustered vectors from a fixed seed
# (bench/vectors/gen.py), a cosine index. Steps, each printed as a Markdown row:
# 1. insert every vector through PutVectors (500 per request, 4 concurrent
#    clients; HNSW maintained as rows arrive); reference: the same rows with
#    4 concurrent COPY streams as postgres into a second index of the same
#    shape (the floor of what an insert costs there).
# 2. recall@10 of 100 queries through the API against exact search (index
#    scans off), and of the same queries in SQL at other hnsw.ef_search
#    values, to show the choice.
# 3. QueryVectors (topK 10) driven by wrk against pgbench running the
#    minimal transaction the same query needs (BEGIN; role, claims and
#    search settings; the query; COMMIT), both over 16 rotating query vectors.
#
# SOVRA_BIN picks another sovra binary; otherwise the release build of this
# tree is used.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-100000}"; secs="${2:-10}"; clients="${3:-16}"
dim=384
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
command -v pgbench >/dev/null || export PATH="$(pg_config --bindir):$PATH"
if [ -z "${SOVRA_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin sovra
  SOVRA_BIN=./target/release/sovra
fi
bin="$SOVRA_BIN"
dir="$(mktemp -d /tmp/sovra-bench-XXXXXX)"; chmod 755 "$dir"
port=54398
env -u SOVRA_BIN SOVRA_DATABASE_POOL_SIZE="$clients" SOVRA_LOG_LEVEL=warn "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >/dev/null 2>"$dir/err.log" &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null; [ -z "${KEEP:-}" ] || cat "$dir"/pgbench.err "$dir"/err.log >&2 2>/dev/null; rm -rf "$dir"' EXIT
url="http://127.0.0.1:$port"
until curl -fs "$url/ready" >/dev/null 2>&1; do sleep 0.05; done
sock="$dir/data/pg"
psql_() { psql -h "$sock" -U postgres -d postgres -q -v ON_ERROR_STOP=1 -At "$@"; }
keys="$("$bin" keys --json --data-dir "$dir/data")"
anon="$(echo "$keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["anon_key"])')"
service="$(echo "$keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["service_role_key"])')"
api() { # operation json
  curl -fsS -X POST "$url/storage/v1/vector/$1" -H "apikey: $anon" -H "Authorization: Bearer $service" \
    -H 'content-type: application/json' -d "$2"
}

python3 bench/vectors/gen.py data "$n" "$dim" "$dir/gen"
python3 bench/vectors/gen.py queries 100 "$dim" "$dir/queries.json"
api CreateVectorBucket '{"vectorBucketName":"bench"}'
for index in api ref; do
  api CreateIndex "{\"vectorBucketName\":\"bench\",\"indexName\":\"$index\",\"dataType\":\"float32\",\"dimension\":$dim,\"distanceMetric\":\"cosine\"}"
done
api_id="$(psql_ -c "select id from storage.vector_indexes where name = 'api'")"
ref_id="$(psql_ -c "select id from storage.vector_indexes where name = 'ref'")"

echo "| measure | sovra | reference in the same run |"
echo "|---|---|---|"
# 1. Bulk insert.
api_rate="$(python3 bench/vectors/put.py "$url" "$anon" "$service" "$dir/gen" 4)"
split -n l/4 "$dir/gen/data.csv" "$dir/gen/part_"
start="$(date +%s.%N)"
copies=()
for part in "$dir"/gen/part_*; do
  psql_ -c "\\copy storage.vectors (index_id, bucket_id, index_name, key, embedding, metadata) from program 'sed \"s/^/$ref_id\tbench\tref\t/\" $part'" &
  copies+=($!)
done
wait "${copies[@]}"
copy_rate="$(awk -v n="$n" -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.0f", n / (e - s)}')"
echo "| bulk insert, $n vectors of $dim dimensions (HNSW maintained) | PutVectors, 500 per request, 4 clients: $api_rate vectors/s | COPY as postgres, 4 streams: $copy_rate vectors/s |"
psql_ -c "vacuum analyze storage.vectors"

# 2. Recall.
python3 - "$dir/queries.json" "$api_id" "$dim" > "$dir/exact.sql" <<'PY'
import json, sys
qs, idx, dim = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
print("set enable_indexscan = off;")
for q in qs:
    v = "[" + ",".join(map(str, q)) + "]"
    print(f"select string_agg(key, ' ' order by d) from (select key, embedding::extensions.vector({dim}) "
          f"operator(extensions.<=>) '{v}'::extensions.vector({dim}) as d from storage.vectors "
          f"where index_id = '{idx}' order by d limit 10) t;")
PY
psql_ -f "$dir/exact.sql" > "$dir/exact.tsv"
recall="$(python3 bench/vectors/recall.py "$url" "$anon" "$service" "$dir/queries.json" "$dir/exact.tsv")"
sql_recall() { # ef_search
  sed "s/^set enable_indexscan = off;/begin; set local hnsw.ef_search = $1; set local hnsw.iterative_scan = strict_order;/" "$dir/exact.sql" \
    | { cat; echo "commit;"; } | psql_ -f - > "$dir/hnsw_$1.tsv"
  paste -d'|' "$dir/exact.tsv" "$dir/hnsw_$1.tsv" | awk -F'|' '{n = split($1, a, " "); split($2, b, " "); for (i in a) for (j in b) if (a[i] == b[j]) h++; t += n} END {printf "%.4f", h / t}'
}
echo "| recall@10, 100 queries, against exact search | QueryVectors (ef_search 100, the default): $recall | same query in SQL: ef_search 40 (pgvector's default): $(sql_recall 40); 100: $(sql_recall 100); 200: $(sql_recall 200) |"

# 3. Throughput and p99.
python3 - "$dir/queries.json" "$dir" "$api_id" "$dim" <<'PY'
import json, sys
qs, out, idx, dim = json.load(open(sys.argv[1]))[:16], sys.argv[2], sys.argv[3], sys.argv[4]
with open(f"{out}/bodies.txt", "w") as f:
    for q in qs:
        f.write(json.dumps({"vectorBucketName": "bench", "indexName": "api", "queryVector": {"float32": q},
                            "topK": 10, "returnDistance": True}, separators=(",", ":")) + "\n")
for i, q in enumerate(qs):
    v = "[" + ",".join(map(str, q)) + "]"
    with open(f"{out}/q{i}.sql", "w") as f:
        f.write("BEGIN;\n")
        f.write("select set_config('role', 'service_role', true), set_config('request.jwt.claims', '{\"role\":\"service_role\"}', true), "
                "set_config('hnsw.ef_search', '100', true), set_config('hnsw.iterative_scan', 'strict_order', true);\n")
        f.write(f"select key, embedding::extensions.vector({dim}) operator(extensions.<=>) '{v}'::extensions.vector({dim}) as distance "
                f"from storage.vectors where index_id = '{idx}' order by embedding::extensions.vector({dim}) operator(extensions.<=>) "
                f"'{v}'::extensions.vector({dim}) limit 10;\n")
        f.write("COMMIT;\n")
PY
sovra_run() {
  BODY_FILE="$dir/bodies.txt" wrk -t2 -c"$clients" -d"${secs}s" --latency -s bench/vectors/query.lua \
    -H "apikey: $anon" -H "Authorization: Bearer $service" "$url/storage/v1/vector/QueryVectors" \
    | awk '/Requests\/sec/ {rps=$2} /^ +99%/ {p99=$2} /Non-2xx/ {bad=$NF} END {printf "%.0f req/s, p99 %s%s", rps, p99, (bad ? ", NON-2XX " bad : "")}'
}
pg_run() {
  local logdir tps p99 files=()
  logdir="$(mktemp -d)"
  for i in $(seq 0 15); do files+=(-f "$dir/q$i.sql"); done
  (cd "$logdir" && pgbench -n -h "$sock" -U authenticator -c "$clients" -j 2 -T "$secs" \
      -l "${files[@]}" postgres >"$dir/pgbench.out" 2>"$dir/pgbench.err") || { tail -5 "$dir/pgbench.err" >&2; }
  tps="$(awk '/^tps = / {print $3; exit}' "$dir/pgbench.out")"
  p99="$(cat "$logdir"/pgbench_log.* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.2fms", a[int(NR*0.99)]/1000}')"
  rm -rf "$logdir"
  printf '%.0f tx/s, p99 %s' "$tps" "$p99"
}
# Warm both paths, then interleave: sovra, pgbench, sovra, pgbench.
secs_warm="$secs"; secs=3; sovra_run >/dev/null; pg_run >/dev/null; secs="$secs_warm"
for round in $(seq 1 "${VECTORS_ROUNDS:-2}"); do
  s="$(sovra_run)"; p="$(pg_run)"
  ratio="$(awk -v a="$(echo "$s" | awk '{print $1}')" -v b="$(echo "$p" | awk '{print $1}')" 'BEGIN {printf "%.0f%%", 100 * a / b}')"
  echo "| QueryVectors topK 10, $clients clients, ${secs} s (round $round) | $s | same query through pgbench: $p (sovra/pgbench $ratio) |"
done

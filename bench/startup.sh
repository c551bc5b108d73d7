#!/usr/bin/env bash
# Cold start and idle memory of `sovra serve` on the embedded default, with a
# reference measured beside it in the same run: plain PostgreSQL (initdb +
# pg_ctl start, and pg_ctl start of an existing cluster) with the same
# binaries and user.
#
#   bench/startup.sh [runs]        (default 5 runs; prints Markdown rows)
#
# Needs a release build (`cargo build --release --bin sovra`).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
bin=./target/release/sovra
[ -x "$bin" ] || cargo build --release --locked --bin sovra >/dev/null
pg_bin="$(pg_config --bindir)"
root="$(mktemp -d /tmp/sovra-bench-XXXXXX)"
chmod 755 "$root"
trap 'pkill -f "$root" 2>/dev/null || true; rm -rf "$root"' EXIT
port=54399
as_pg=()
if [ "$(id -u)" -eq 0 ]; then as_pg=(runuser -u postgres --); fi

now_ms() { date +%s%3N; }
wait_ready() {
  until curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1; do sleep 0.005; done
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
pg_tree_rss_kb() { # postmaster and its children
  local pm="$1" total=0 pid
  for pid in "$pm" $(pgrep -P "$pm"); do total=$((total + $(rss_kb "$pid"))); done
  echo "$total"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

first=(); restart=(); sovra_rss=(); pg_rss=()
for i in $(seq "$runs"); do
  dir="$root/sovra-$i"
  t0=$(now_ms)
  "$bin" serve --data-dir "$dir" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
  pid=$!
  wait_ready; first+=($(( $(now_ms) - t0 )))
  kill -INT "$pid"; wait "$pid" || true
  t0=$(now_ms)
  "$bin" serve --data-dir "$dir" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
  pid=$!
  wait_ready; restart+=($(( $(now_ms) - t0 )))
  sleep 3
  sovra_rss+=($(rss_kb "$pid"))
  pm=$(head -n1 "$dir/pg/postmaster.pid")
  pg_rss+=($(pg_tree_rss_kb "$pm"))
  kill -INT "$pid"; wait "$pid" || true
done

ref_init=(); ref_start=(); ref_rss=()
for i in $(seq "$runs"); do
  dir="$root/ref-$i"
  mkdir -p "$dir" && [ "$(id -u)" -ne 0 ] || chown postgres "$dir"
  t0=$(now_ms)
  "${as_pg[@]}" "$pg_bin/initdb" -D "$dir/pg" -U postgres --encoding=UTF8 --locale=C --auth-local=trust >/dev/null 2>&1
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$dir/pg" -w -s -o "-c listen_addresses='' -c unix_socket_directories=$dir/pg -c wal_level=logical" -l "$dir/log" start
  ref_init+=($(( $(now_ms) - t0 )))
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$dir/pg" -w -s -m fast stop
  t0=$(now_ms)
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$dir/pg" -w -s -o "-c listen_addresses='' -c unix_socket_directories=$dir/pg -c wal_level=logical" -l "$dir/log" start
  ref_start+=($(( $(now_ms) - t0 )))
  sleep 3
  ref_rss+=($(pg_tree_rss_kb "$(head -n1 "$dir/pg/postmaster.pid")"))
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$dir/pg" -w -s -m fast stop
done

m() { printf '%s\n' "$@" | median; }
echo "| measure (median of $runs) | sovra | reference: plain PostgreSQL |"
echo "|---|---|---|"
echo "| first start to ready (initdb, migrations, keys) | $(m "${first[@]}") ms | initdb + pg_ctl start -w: $(m "${ref_init[@]}") ms |"
echo "| restart of an existing data dir to ready | $(m "${restart[@]}") ms | pg_ctl start -w: $(m "${ref_start[@]}") ms |"
echo "| idle RSS of the sovra process | $(( $(m "${sovra_rss[@]}") / 1024 )) MiB | — |"
echo "| idle RSS of its PostgreSQL (postmaster + children) | $(( $(m "${pg_rss[@]}") / 1024 )) MiB | plain cluster: $(( $(m "${ref_rss[@]}") / 1024 )) MiB |"

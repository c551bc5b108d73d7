#!/usr/bin/env bash
# CPU time of the one PostgreSQL backend that serves pgbench, per
# transaction: robust against other processes' load, unlike tx/s.
#
#   bench/rest/levers/backend_cpu.sh SCRIPT N HOST USER [DB]
#
# Runs pgbench -M prepared -c 1 -t N with SCRIPT (as USER on the socket
# directory HOST), samples the new backend's /proc/<pid>/stat while it runs
# (the OS user running PostgreSQL must be `postgres`), and prints
# microseconds of backend CPU per transaction (clock ticks: use N >= 3000).
set -euo pipefail
script="$1"; n="$2"; host="$3"; user="$4"; db="${5:-postgres}"
command -v pgbench >/dev/null || export PATH="$(pg_config --bindir):$PATH"
before=" $(pgrep -u postgres | tr '\n' ' ') "
log="$(mktemp)"
pgbench -n -h "$host" -U "$user" -M prepared -c 1 -t "$n" -f "$script" "$db" >/dev/null 2>"$log" &
bench=$!
pid=""
while [ -z "$pid" ]; do
  sleep 0.02
  for p in $(pgrep -u postgres); do case "$before" in *" $p "*) ;; *) pid=$p ;; esac; done
done
last=0
while kill -0 "$bench" 2>/dev/null; do
  v="$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null)" && last="$v"
  sleep 0.05
done
if grep -q aborted "$log"; then cat "$log" >&2; exit 1; fi
rm -f "$log"
awk -v c="$last" -v n="$n" -v t="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f us/tx\n", c / t * 1e6 / n}'

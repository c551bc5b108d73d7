#!/usr/bin/env bash
# Sets up this machine (scripts/setup.sh test) and runs Sovra's whole test
# suite: formatting, lints, every test of every crate against real
# PostgreSQL processes that the test harness starts itself, the bounded fuzz
# run, and the end-to-end tests through the real supabase-js client against
# the sovra binary (the quickstart in examples/ among them). Extra arguments
# go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# The dashboard's front end, embedded by the build below.
bash scripts/dashboard.sh
# moto_server, when setup put it in the project's virtual environment.
if [ -x .tools/venv/bin/moto_server ]; then export PATH="$PWD/.tools/venv/bin:$PATH"; fi
echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log="$(mktemp)"
e2e_log="$(mktemp)"
fuzz_log="$(mktemp)"
dash_log="$(mktemp)"
cluster_log="$(mktemp)"
trap 'rm -f "$log" "$e2e_log" "$fuzz_log" "$dash_log" "$cluster_log"' EXIT
set +e
echo "test: cargo test"
env -u SOVRA_FUZZ_CASES cargo test --workspace --locked "$@" 2>&1 | tee "$log"
cargo_status=${PIPESTATUS[0]}
# The bounded fuzz run: every proptest target named `fuzz_*` again, with
# SOVRA_FUZZ_CASES cases each (256 in the run above). The debug build is
# already compiled and runs them within a few minutes on 2 cores; a release
# build would run them ~10x faster but costs more to compile than it saves
# at this scale (docs/security.md, "Fuzzing and hostile-input tests").
# SOVRA_FUZZ_CASES=0 skips the step.
fuzz_cases="${SOVRA_FUZZ_CASES:-10000}"
fuzz_status=0
if [ "$fuzz_cases" != 0 ]; then
  echo "test: fuzz targets (fuzz_*, $fuzz_cases cases each)"
  SOVRA_FUZZ_CASES="$fuzz_cases" cargo test --workspace --locked fuzz_ 2>&1 | tee "$fuzz_log"
  fuzz_status=${PIPESTATUS[0]}
fi
echo "test: end-to-end with supabase-js (tests/e2e)"
bash tests/e2e/run.sh 2>&1 | tee "$e2e_log"
e2e_status=${PIPESTATUS[0]}
echo "test: three nodes behind HAProxy, one killed and restarted (tests/cluster)"
bash tests/cluster/run.sh 2>&1 | tee "$cluster_log"
cluster_status=${PIPESTATUS[0]}
echo "test: the dashboard in headless Chromium (tests/dashboard)"
bash tests/dashboard/run.sh 2>&1 | tee "$dash_log"
dash_status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary, and
# the last is often an empty doc-test binary; node prints its own).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     (FILENAME == ARGV[2] || FILENAME == ARGV[4] || FILENAME == ARGV[5]) && /^# pass / { p += $3 }
     (FILENAME == ARGV[2] || FILENAME == ARGV[4] || FILENAME == ARGV[5]) && /^# fail / { f += $3 }
     END { printf "%d passed, %d failed\n", p, f }' "$log" "$e2e_log" "$fuzz_log" "$dash_log" "$cluster_log"
# A stage that stops before its tests run counts none of them: name it.
for stage in "cargo:$cargo_status" "fuzz:$fuzz_status" "e2e:$e2e_status" "cluster:$cluster_status" "dashboard:$dash_status"; do
  [ "${stage#*:}" -eq 0 ] || echo "FAILED: stage ${stage%%:*} exited with ${stage#*:}"
done
[ "$cargo_status" -eq 0 ] && [ "$e2e_status" -eq 0 ] && [ "$fuzz_status" -eq 0 ] && [ "$dash_status" -eq 0 ] && [ "$cluster_status" -eq 0 ]

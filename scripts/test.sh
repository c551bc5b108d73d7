#!/usr/bin/env bash
# Sets up this machine (scripts/setup.sh) and runs Sovra's whole test suite:
# formatting, lints, every test of every crate against real PostgreSQL
# processes that the test harness starts itself, and the end-to-end tests
# through the real supabase-js client against the sovra binary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log="$(mktemp)"
e2e_log="$(mktemp)"
trap 'rm -f "$log" "$e2e_log"' EXIT
set +e
echo "test: cargo test"
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
cargo_status=${PIPESTATUS[0]}
echo "test: end-to-end with supabase-js (tests/e2e)"
bash tests/e2e/run.sh 2>&1 | tee "$e2e_log"
e2e_status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary, and
# the last is often an empty doc-test binary; node prints its own).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     FILENAME == ARGV[2] && /^# pass / { p += $3 }
     FILENAME == ARGV[2] && /^# fail / { f += $3 }
     END { printf "%d passed, %d failed\n", p, f }' "$log" "$e2e_log"
[ "$cargo_status" -eq 0 ] && [ "$e2e_status" -eq 0 ]

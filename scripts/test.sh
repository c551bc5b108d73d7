#!/usr/bin/env bash
# Sets up this machine (scripts/setup.sh) and runs Sovra's whole test suite:
# formatting, lints, and every test of every crate against real PostgreSQL
# processes that the test harness starts itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "test: cargo test"
cargo test --workspace --locked "$@"

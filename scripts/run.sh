#!/usr/bin/env bash
# Sets up this machine (scripts/setup.sh), builds Sovra and starts it on the
# embedded default: its own PostgreSQL in ./sovra-data, the API on
# http://127.0.0.1:54321. Extra arguments go to `sovra serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked --bin sovra
exec ./target/release/sovra serve "$@"

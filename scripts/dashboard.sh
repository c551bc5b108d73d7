#!/usr/bin/env bash
# Builds the dashboard's front end (dashboard/ -> dashboard/dist/), which
# `cargo build` then embeds in the binary (crates/sovra-dashboard). Does
# nothing when dist/ is newer than every source; installs the locked npm
# packages first when they are missing or the lockfile changed. Without
# Node.js it says so and leaves the "dashboard not built" page in place.
#
#   scripts/dashboard.sh          build when the sources changed
#   scripts/dashboard.sh --force  build anyway
set -euo pipefail
cd "$(dirname "$0")/../dashboard"
force=0
[ "${1:-}" = --force ] && force=1
if ! command -v npm >/dev/null 2>&1; then
  echo "dashboard: npm not found: the binary will serve a \"dashboard not built\" page (scripts/setup.sh test installs Node.js)" >&2
  exit 0
fi
if [ ! -d node_modules/preact ] || [ ! -d node_modules/esbuild ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "dashboard: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi
if [ "$force" -eq 0 ] && [ -f dist/index.html ] \
  && [ -z "$(find src build.mjs package-lock.json -newer dist/index.html -print -quit)" ]; then
  exit 0
fi
npm run --silent build

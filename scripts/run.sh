#!/usr/bin/env bash
# Sets up what the server needs (scripts/setup.sh run: PostgreSQL with
# pgvector and a C toolchain, nothing for the tests), checks that the data
# directory will work, builds Sovra (release; the first build takes about
# 15 minutes on 2 cores) and starts it on the embedded default: its own
# PostgreSQL in the data directory, the API on http://127.0.0.1:54321.
# Extra arguments go to `sovra serve` (for example --data-dir DIR or
# --listen ADDR).
#
#   scripts/run.sh --dry-run [ARGS]   say what setup would install and check
#                                     the data directory; no build, no start
set -euo pipefail
cd "$(dirname "$0")/.."

dry=""
if [ "${1:-}" = --dry-run ]; then dry=--dry-run; shift; fi

# The data directory `sovra serve "$@"` will use, found as the binary finds
# it: --data-dir, SOVRA_DATA_DIR, `data_dir` in the configuration file, then
# the default (/var/lib/sovra for root, unless ./sovra-data already holds a
# project; ./sovra-data otherwise). Empty with an external database.
data_dir() {
  local dir="" config="${SOVRA_CONFIG:-}" url="${SOVRA_DATABASE_URL:-}"
  while [ $# -gt 0 ]; do
    case "$1" in
      --data-dir) dir="${2:-}"; shift ;;
      --data-dir=*) dir="${1#--data-dir=}" ;;
      --config | -c) config="${2:-}"; shift ;;
      --config=*) config="${1#--config=}" ;;
      --database-url) url="${2:-}"; shift ;;
      --database-url=*) url="${1#--database-url=}" ;;
    esac
    shift
  done
  [ -z "$config" ] && [ -f sovra.toml ] && config=sovra.toml
  if [ -z "$url" ] && [ -n "$config" ] && [ -f "$config" ]; then
    url="$(awk -F'"' '/^\[database\]/ { s = 1; next } /^\[/ { s = 0 } s && /^[[:space:]]*url[[:space:]]*=/ { print $2 }' "$config")"
  fi
  [ -z "$url" ] || return 0
  [ -n "$dir" ] || dir="${SOVRA_DATA_DIR:-}"
  if [ -z "$dir" ] && [ -n "$config" ] && [ -f "$config" ]; then
    dir="$(awk -F'"' '/^\[/ { exit } /^[[:space:]]*data_dir[[:space:]]*=/ { print $2 }' "$config")"
  fi
  if [ -z "$dir" ]; then
    if [ "$(id -u)" -eq 0 ] && [ ! -f sovra-data/keys.json ]; then dir=/var/lib/sovra; else dir=./sovra-data; fi
  fi
  echo "$dir"
}

# As root, Sovra runs PostgreSQL as the `postgres` system user, which must
# pass through every directory above the data directory. Checked here, as
# that user, so that a wrong place fails before the build and not after.
check_data_dir() {
  local dir="$1" user="${SOVRA_EMBEDDED_SYSTEM_USER:-postgres}" parent
  [ -n "$dir" ] || { echo "run: external database: no embedded PostgreSQL to check"; return 0; }
  if [ "$(id -u)" -ne 0 ]; then echo "run: data directory $dir"; return 0; fi
  if ! id "$user" >/dev/null 2>&1; then
    echo "run: data directory $dir (user \`$user\` is not there yet to check it: it comes with PostgreSQL)"
    return 0
  fi
  parent="$(dirname "$(realpath -m "$dir")")"
  while [ ! -d "$parent" ]; do parent="$(dirname "$parent")"; done
  if setpriv --reuid="$(id -u "$user")" --regid="$(id -g "$user")" --clear-groups test -x "$parent"; then
    echo "run: data directory $dir (PostgreSQL runs as \`$user\`, which can reach it)"
    return 0
  fi
  cat >&2 <<MSG
run: Sovra runs as root, so its PostgreSQL runs as the system user \`$user\`,
     which cannot reach $parent (a directory above it is closed to other
     users, as /root is). The data directory $dir would not work.
     Use a directory it can reach, for example the default for root:
       scripts/run.sh --data-dir /var/lib/sovra
     or open the way with \`chmod o+x\` on the closed directories.
MSG
  return 1
}

bash scripts/setup.sh run $dry
check_data_dir "$(data_dir "$@")"
if [ -n "$dry" ]; then exit 0; fi
bash scripts/dashboard.sh
cargo build --release --locked --bin sovra
exec ./target/release/sovra serve "$@"

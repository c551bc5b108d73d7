#!/usr/bin/env bash
# Installs what Sovra needs on a Debian or Ubuntu machine, with apt-get, and
# nothing that is already there (safe to run before every build).
#
#   scripts/setup.sh run    what `sovra serve` needs: PostgreSQL (15, 16 or
#                           17) with pgvector, a C toolchain for the build, and
#                           Node.js and npm to build the dashboard it embeds
#   scripts/setup.sh test   that, plus what the test suite needs: nats-server,
#                           PostGIS, HAProxy, Chromium (the dashboard's browser
#                           tests), and moto's S3-compatible server (from PyPI,
#                           into a virtual environment in .tools/)
#   (no mode)               the same as `test`
#
# Options:
#   --list      print the packages the mode installs on a machine that has
#               none of them, one a line, and change nothing
#   --dry-run   say what would be installed or changed here, change nothing
#
# The PostgreSQL major is SOVRA_PG_MAJOR when set, else the newest supported
# one already installed, else the one the distribution ships (`postgresql`).
# Installing it does not create the distribution's own `main` cluster:
# Sovra runs its own clusters. Every lasting change is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=test
list=0
dry=0
for arg in "$@"; do
  case "$arg" in
    run | test) mode="$arg" ;;
    --list) list=1 ;;
    --dry-run) dry=1 ;;
    -h | --help) sed -n '2,22s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) printf 'setup: unknown argument %s (see --help)\n' "$arg" >&2; exit 2 ;;
  esac
done

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

SUPPORTED_MAJORS="17 16 15"
VENV=".tools/venv"
changes=()
change() { changes+=("$*"); }

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
apt_known() { apt-cache show "$1" >/dev/null 2>&1; }

apt_updated=0
apt_update() {
  [ "$apt_updated" -eq 0 ] || return 0
  apt_updated=1
  [ "$dry" -eq 0 ] || return 0
  log "apt-get update"
  $SUDO apt-get update -qq >/dev/null
}
apt_install() {
  if [ "$dry" -eq 1 ]; then log "would install with apt-get: $*"; return 0; fi
  if [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; then
    die "not root and no sudo: install these packages by hand, then run again: $*"
  fi
  apt_update
  log "installing with apt-get: $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  change "installed with apt-get: $*"
}

# The PostgreSQL major: asked for, installed, or the distribution's.
pick_major() {
  if [ -n "${SOVRA_PG_MAJOR:-}" ]; then echo "$SOVRA_PG_MAJOR"; return; fi
  local m
  for m in $SUPPORTED_MAJORS; do
    if [ -x "/usr/lib/postgresql/$m/bin/postgres" ]; then echo "$m"; return; fi
  done
  apt_known postgresql || apt_update >&2
  apt-cache depends postgresql 2>/dev/null | sed -n 's/^ *Depends: postgresql-\([0-9][0-9]*\)$/\1/p' | head -n1
}
PG_MAJOR="$(pick_major)"
case " $SUPPORTED_MAJORS " in
  *" ${PG_MAJOR:-none} "*) ;;
  *) die "PostgreSQL ${PG_MAJOR:-(none found in the apt sources)} is not supported: Sovra needs 15, 16 or 17; set SOVRA_PG_MAJOR to one your apt sources have (apt.postgresql.org has them all)" ;;
esac

# pgvector: the distribution's package when it has one (Ubuntu, Debian
# trixie), else built from Debian trixie's source package (bookworm).
VECTOR_PKG="postgresql-$PG_MAJOR-pgvector"
vector_packaged=0
if apt_known "$VECTOR_PKG"; then vector_packaged=1; fi

# What each mode needs, as packages.
wanted() {
  echo "postgresql-$PG_MAJOR"
  if [ "$vector_packaged" -eq 1 ]; then
    echo "$VECTOR_PKG"
  else
    echo "postgresql-server-dev-$PG_MAJOR"
    echo dpkg-dev
  fi
  echo build-essential
  echo ca-certificates
  echo curl
  # Node.js builds the dashboard (dashboard/, scripts/dashboard.sh).
  echo nodejs
  echo npm
  if [ "$mode" = test ]; then
    echo nats-server
    echo python3-venv
    # The load balancer of the deploy/ reference layout (its configuration
    # is checked by the tests).
    echo haproxy
    # The dashboard's browser tests (tests/dashboard) drive it.
    echo chromium
    # For the GeoJSON responses of /rest/v1 (tests only; PostGIS is optional).
    echo "postgresql-$PG_MAJOR-postgis-3"
  fi
}

if [ "$list" -eq 1 ]; then
  wanted
  [ "$mode" = run ] || echo "moto[server] and boto3 (PyPI, into $VENV)"
  exit 0
fi

PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
missing=()
while read -r pkg; do
  case "$pkg" in
    nodejs) command -v node >/dev/null 2>&1 || missing+=(nodejs) ;;
    npm) command -v npm >/dev/null 2>&1 || missing+=(npm) ;;
    chromium) command -v chromium >/dev/null 2>&1 || have_pkg chromium || missing+=(chromium) ;;
    nats-server) command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server) ;;
    python3-venv)
      # Only for moto, and only when no moto_server is on the PATH yet.
      if ! command -v moto_server >/dev/null 2>&1 && [ ! -x "$VENV/bin/moto_server" ] \
        && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then missing+=(python3-venv); fi ;;
    postgresql-server-dev-* | dpkg-dev)
      # Only to build pgvector, and only when it is not built yet.
      [ -f "/usr/share/postgresql/$PG_MAJOR/extension/vector.control" ] || have_pkg "$pkg" || missing+=("$pkg") ;;
    *) have_pkg "$pkg" || missing+=("$pkg") ;;
  esac
done < <(wanted)

# The distribution's `main` cluster: not created when PostgreSQL is
# installed here (postgresql-common reads this before it makes one).
CREATECLUSTER=/etc/postgresql-common/createcluster.conf
if [[ " ${missing[*]:-} " == *" postgresql-$PG_MAJOR "* ]]; then
  have_pkg postgresql-common || apt_install postgresql-common
  if [ "$dry" -eq 1 ]; then
    log "would set create_main_cluster = false in $CREATECLUSTER"
  elif ! grep -Eq '^[[:space:]]*create_main_cluster[[:space:]]*=[[:space:]]*false' "$CREATECLUSTER"; then
    $SUDO sed -ri 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' "$CREATECLUSTER"
    grep -q '^create_main_cluster = false' "$CREATECLUSTER" \
      || echo 'create_main_cluster = false' | $SUDO tee -a "$CREATECLUSTER" >/dev/null
    change "set create_main_cluster = false in $CREATECLUSTER: installing PostgreSQL creates no \`main\` cluster on port 5432 (Sovra runs its own)"
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
if command -v pg_lsclusters >/dev/null 2>&1 && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
  log "note: the distribution's own PostgreSQL clusters exist (pg_lsclusters); Sovra does not use them"
fi

# pgvector from source, when no package has it.
EXT_DIR="/usr/share/postgresql/$PG_MAJOR/extension"
if [ -x "$PG_BIN/pg_config" ]; then EXT_DIR="$("$PG_BIN/pg_config" --sharedir)/extension"; fi
SRC_LIST=/etc/apt/sources.list.d/sovra-trixie-src.sources
if [ ! -f "$EXT_DIR/vector.control" ] && [ "$vector_packaged" -eq 0 ]; then
  if [ "$dry" -eq 1 ]; then
    log "would build pgvector from Debian trixie's source package (a deb-src entry for trixie, removed afterwards)"
  else
    # shellcheck disable=SC1091
    [ "$(. /etc/os-release && echo "${ID:-}")" = debian ] \
      || die "no $VECTOR_PKG in the apt sources and no way to build it here: install pgvector for PostgreSQL $PG_MAJOR (https://github.com/pgvector/pgvector#installation), then run again"
    log "adding a deb-src entry for Debian trixie (source packages only) to build pgvector"
    $SUDO tee "$SRC_LIST" >/dev/null <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    $SUDO apt-get update -qq >/dev/null
    build_dir="$(mktemp -d)"
    log "building pgvector in $build_dir"
    (
      cd "$build_dir"
      apt-get source -qq --download-only pgvector >/dev/null 2>&1 || apt-get source -qq pgvector >/dev/null
      dpkg-source -x --no-check ./pgvector_*.dsc src >/dev/null 2>&1 || true
      dir="$(find . -maxdepth 1 -type d \( -name src -o -name 'pgvector-*' \) | head -n1)"
      cd "$dir"
      make -s PG_CONFIG="$PG_BIN/pg_config" OPTFLAGS="" >/dev/null
      $SUDO make -s PG_CONFIG="$PG_BIN/pg_config" install >/dev/null
    )
    rm -rf "$build_dir"
    change "built and installed pgvector into $EXT_DIR (make install; files of no package)"
  fi
fi
# The source entry is only for that build (earlier versions of this script
# left it behind).
if [ -f "$SRC_LIST" ]; then
  if [ "$dry" -eq 1 ]; then
    log "would remove $SRC_LIST"
  else
    $SUDO rm -f "$SRC_LIST"
    $SUDO apt-get update -qq >/dev/null || true
    change "removed the deb-src entry $SRC_LIST (only needed to build pgvector)"
  fi
fi

# moto's S3-compatible server for the storage tests of the S3 backend, and
# boto3 (which moto needs anyway) as the real S3 client of the tests of
# /storage/v1/s3, in a virtual environment inside the project (not the
# system Python).
if [ "$mode" = test ] && ! command -v moto_server >/dev/null 2>&1 && [ ! -x "$VENV/bin/moto_server" ]; then
  if [ "$dry" -eq 1 ]; then
    log "would install moto[server] from PyPI into $VENV"
  else
    log "installing moto[server] from PyPI into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]' boto3 >/dev/null
    change "installed moto[server] into $PWD/$VENV (remove with rm -rf .tools)"
  fi
fi

if [ "$dry" -eq 1 ]; then log "dry run: nothing was changed"; exit 0; fi

versions="PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') ($PG_BIN)"
versions+=", pgvector $(sed -n "s/^default_version = '\(.*\)'/\1/p" "$EXT_DIR/vector.control")"
if [ "$mode" = test ]; then
  nats="$(command -v nats-server || echo /usr/sbin/nats-server)"
  versions+=", nats-server $("$nats" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p')"
  versions+=", Node.js $(node --version | sed 's/^v//'), npm $(npm --version)"
  versions+=", $(chromium --version 2>/dev/null || echo 'chromium (version unknown)')"
  moto="$(command -v moto_server || echo "$VENV/bin/moto_server")"
  versions+=", moto_server ($moto)"
fi
log "ready: $versions"
if [ ${#changes[@]} -gt 0 ]; then
  log "changed on this machine:"
  for c in "${changes[@]}"; do printf '  - %s\n' "$c"; done
else
  log "nothing to install: everything was already here"
fi

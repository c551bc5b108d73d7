#!/usr/bin/env bash
# Installs what Sovra's server and test suite need on a Debian/Ubuntu machine:
# PostgreSQL 15 with its server headers, pgvector (built from Debian's source
# package), nats-server, redis-server, Node.js, and moto's S3-compatible
# server (PyPI) for the storage tests of the S3 backend. Does nothing for a piece
# that is already present, so it is safe to run before every build.
set -euo pipefail

log() { printf 'setup: %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    log "not root and no sudo: install the missing packages by hand"; fi
fi

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    $SUDO apt-get update -qq >/dev/null
    apt_updated=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

PG_MAJOR="${SOVRA_PG_MAJOR:-15}"
missing=()
for pkg in "postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR" postgresql-contrib \
           "postgresql-$PG_MAJOR-postgis-3" \
           redis-server nats-server build-essential ca-certificates pkg-config; do
  have_pkg "$pkg" || missing+=("$pkg")
done
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi

# Debian's package starts a default cluster; Sovra manages its own clusters,
# so the packaged one is left alone (it listens only on its own socket).

# pgvector: bookworm has no package, so build it from trixie's source package.
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
EXT_DIR="$("$PG_BIN/pg_config" --sharedir)/extension"
if [ ! -f "$EXT_DIR/vector.control" ]; then
  src_list=/etc/apt/sources.list.d/sovra-trixie-src.sources
  if [ ! -f "$src_list" ]; then
    log "adding a deb-src entry for trixie (source packages only)"
    $SUDO tee "$src_list" >/dev/null <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    $SUDO apt-get update -qq >/dev/null
    apt_updated=1
  fi
  have_pkg dpkg-dev || apt_install dpkg-dev
  build_dir="$(mktemp -d)"
  log "building pgvector in $build_dir"
  (
    cd "$build_dir"
    apt-get source -qq --download-only pgvector >/dev/null 2>&1 || apt-get source -qq pgvector >/dev/null
    dpkg-source -x --no-check ./pgvector_*.dsc src >/dev/null 2>&1 || true
    dir="$(find . -maxdepth 1 -type d -name 'src' -o -maxdepth 1 -type d -name 'pgvector-*' | head -n1)"
    cd "$dir"
    make -s PG_CONFIG="$PG_BIN/pg_config" OPTFLAGS="" >/dev/null
    $SUDO make -s PG_CONFIG="$PG_BIN/pg_config" install >/dev/null
  )
  rm -rf "$build_dir"
  log "pgvector installed"
fi

# An S3-compatible server for the storage tests (moto's server mode).
if ! command -v moto_server >/dev/null 2>&1; then
  if ! command -v pip3 >/dev/null 2>&1 && ! command -v pip >/dev/null 2>&1; then
    apt_install python3-pip
  fi
  pip_cmd="$(command -v pip3 || command -v pip)"
  log "installing moto[server] (S3-compatible test server)"
  "$pip_cmd" install -q 'moto[server]' >/dev/null 2>&1 \
    || "$pip_cmd" install -q --break-system-packages 'moto[server]' >/dev/null
  hash -r
fi

log "ready: postgres $("$PG_BIN/postgres" --version | awk '{print $3}'), pgvector $(sed -n "s/default_version = '\(.*\)'/\1/p" "$EXT_DIR/vector.control"), $(nats-server --version 2>/dev/null || echo 'nats-server ?'), $(redis-server --version | awk '{print $3}'), node $(node --version), $(command -v moto_server >/dev/null && echo moto_server || echo 'moto_server ?')"

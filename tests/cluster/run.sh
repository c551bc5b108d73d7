#!/usr/bin/env bash
# The cluster test (#21): on this machine, one PostgreSQL (initdb'd here,
# wal_level=logical), one `nats-server -js`, moto's S3-compatible server,
# three `sovra serve` nodes sharing them (server.shared_state = auto: on,
# since NATS is set), and HAProxy in front (health-checked on /ready, as in
# deploy/haproxy.cfg). cluster.test.js then drives them with the real
# supabase-js client, directly and through the balancer, and kills and
# restarts a node (node-N.sh, written here, starts node N again) and
# NATS (nats.sh), and cuts one node from NATS: each node reaches NATS
# through its own TCP proxy (nats-proxy.mjs; its pid in nats-proxy-N.pid:
# SIGUSR2 cuts, SIGHUP heals).
# Prints node's TAP output; scripts/test.sh counts its passes and failures.
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"
bin="${SOVRA_BIN:-$root/target/debug/sovra}"
[ -n "${SOVRA_BIN:-}" ] || (cd "$root" && cargo build --locked --quiet --bin sovra)
unset SOVRA_BIN
# supabase-js and ws from the e2e suite's lockfile.
{ [ -d ../e2e/node_modules/@supabase/supabase-js ] && [ -d ../e2e/node_modules/ws ]; } \
  || (cd ../e2e && npm ci --no-audit --no-fund --loglevel=error)
ln -sfn ../e2e/node_modules node_modules
free_port() { node -e "const s = require('net').createServer(); s.listen(0, '127.0.0.1', () => { console.log(s.address().port); s.close(); })"; }
dir="$(mktemp -d /tmp/sovra-cluster-XXXXXX)"
chmod 755 "$dir"
pids=()
cleanup() {
  for f in "$dir"/node-*.pid; do [ -f "$f" ] && kill -INT "$(cat "$f")" 2>/dev/null || true; done
  for f in "$dir"/node-*.pid; do [ -f "$f" ] && while kill -0 "$(cat "$f")" 2>/dev/null; do sleep 0.1; done; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  [ ! -f "$dir/nats.pid" ] || kill "$(cat "$dir/nats.pid")" 2>/dev/null || true
  [ ! -d "$dir/pg" ] || "${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

# PostgreSQL, on a Unix socket in $dir (as `postgres` when run as root).
pgbin="$(pg_config --bindir)"
as_pg=()
[ "$(id -u)" != 0 ] || { chown postgres "$dir"; as_pg=(runuser -u postgres --); }
"${as_pg[@]}" "$pgbin/initdb" -D "$dir/pg" -U postgres -A trust >/dev/null
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w start \
  -o "-k $dir -c listen_addresses= -c wal_level=logical -c max_connections=300 -c fsync=off -c full_page_writes=off" >/dev/null
db="host=$dir user=postgres dbname=postgres"

# NATS with JetStream, and the S3-compatible store with its bucket.
# nats.sh starts it (again: the test restarts it) and records its pid.
nats_port="$(free_port)"
cat >"$dir/nats.sh" <<NATS
#!/usr/bin/env bash
"$(command -v nats-server || echo /usr/sbin/nats-server)" -js -sd "$dir/nats" -a 127.0.0.1 -p "$nats_port" >>"$dir/nats.log" 2>&1 &
echo \$! >"$dir/nats.pid"
NATS
bash "$dir/nats.sh"
s3_port="$(free_port)"
moto_server -H 127.0.0.1 -p "$s3_port" >"$dir/s3.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do curl -fs "http://127.0.0.1:$s3_port/" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs -X PUT "http://127.0.0.1:$s3_port/sovra-cluster" >/dev/null

# The nodes: same database, keys, JWT secret, tenant secrets key, NATS and bucket; each its own
# port and data directory. node-N.sh starts node N (again) and records its
# pid, so that the test can kill -9 and restart it.
export SOVRA_JWT_SECRET="cluster-test-secret-cluster-test-secret-0123"
"$bin" keys --json --data-dir "$dir/node1" >/dev/null
ports=()
for n in 1 2 3; do
  port="$(free_port)"; ports+=("$port")
  proxy_port="$(free_port)"
  node nats-proxy.mjs "$proxy_port" "$nats_port" >>"$dir/nats-proxy-$n.log" 2>&1 &
  pids+=($!)
  echo $! >"$dir/nats-proxy-$n.pid"
  mkdir -p "$dir/node$n"
  [ "$n" = 1 ] || cp "$dir/node1/keys.json" "$dir/node$n/keys.json"
  cat >"$dir/node-$n.sh" <<NODE
#!/usr/bin/env bash
export SOVRA_DATABASE_URL="$db" SOVRA_REALTIME_NATS_URL="nats://127.0.0.1:$proxy_port"
export SOVRA_JWT_SECRET="$SOVRA_JWT_SECRET"
export SOVRA_SERVER_TENANT_SECRETS_KEY=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
export SOVRA_STORAGE_BACKEND=s3 SOVRA_STORAGE_S3_ENDPOINT="http://127.0.0.1:$s3_port" SOVRA_STORAGE_S3_BUCKET=sovra-cluster
export SOVRA_STORAGE_S3_FORCE_PATH_STYLE=true SOVRA_STORAGE_S3_ACCESS_KEY_ID=test SOVRA_STORAGE_S3_SECRET_ACCESS_KEY=test
export SOVRA_AUTH_EMAIL_AUTOCONFIRM=true SOVRA_AUTH_TRUSTED_PROXIES=127.0.0.1
export SOVRA_AUTH_RATE_LIMIT_SIGN_IN=10000 SOVRA_AUTH_RATE_LIMIT_VERIFY=9
export SOVRA_SERVER_SHARED_STATE=auto SOVRA_SERVER_DRAIN_DELAY=0 SOVRA_LOG_LEVEL="${CLUSTER_LOG_LEVEL:-warn}"
env -u SOVRA_ANON_KEY -u SOVRA_SERVICE_KEY "$bin" serve --data-dir "$dir/node$n" --listen "127.0.0.1:$port" >>"$dir/node$n.out" 2>>"$dir/node$n.err" &
echo \$! >"$dir/node-$n.pid"
NODE
done
wait_ready() {
  for _ in $(seq 600); do
    curl -fs "$1/ready" >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$2")" 2>/dev/null || { cat "$3" >&2; exit 1; }
    sleep 0.1
  done
  echo "sovra at $1 did not become ready" >&2; cat "$3" >&2; exit 1
}
# Node 1 first: it migrates the database and takes the change feed, which
# the failure test then kills.
bash "$dir/node-1.sh"
wait_ready "http://127.0.0.1:${ports[0]}" "$dir/node-1.pid" "$dir/node1.err"
psql "$db" -v ON_ERROR_STOP=1 -q -f fixture.sql >/dev/null
for n in 2 3; do bash "$dir/node-$n.sh"; done
for n in 2 3; do wait_ready "http://127.0.0.1:${ports[$((n - 1))]}" "$dir/node-$n.pid" "$dir/node$n.err"; done

# HAProxy: deploy/haproxy.cfg's settings, with these nodes and a faster
# health check (a killed node is out after 2 × 500 ms).
lb_port="$(free_port)"
cat >"$dir/haproxy.cfg" <<CFG
global
    maxconn 2000
defaults
    mode http
    option forwardfor
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout http-request 30s
    retries 2
    option redispatch
frontend api
    bind 127.0.0.1:$lb_port
    default_backend sovra
backend sovra
    balance roundrobin
    option httpchk GET /ready
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
    server node1 127.0.0.1:${ports[0]} check
    server node2 127.0.0.1:${ports[1]} check
    server node3 127.0.0.1:${ports[2]} check
CFG
haproxy -f "$dir/haproxy.cfg" -db >"$dir/haproxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$lb_port/ready" >/dev/null 2>&1 && break; sleep 0.1; done

keys="$("$bin" keys --json --data-dir "$dir/node1")"
export CLUSTER_LB_URL="http://127.0.0.1:$lb_port"
export CLUSTER_NODE_URLS="http://127.0.0.1:${ports[0]},http://127.0.0.1:${ports[1]},http://127.0.0.1:${ports[2]}"
export CLUSTER_DIR="$dir" CLUSTER_DB="$db"
export SOVRA_ANON_KEY="$(node -e 'console.log(JSON.parse(process.argv[1]).anon_key)' "$keys")"
export SOVRA_SERVICE_KEY="$(node -e 'console.log(JSON.parse(process.argv[1]).service_role_key)' "$keys")"
status=0
node --test --test-reporter=tap ${CLUSTER_FILES:-cluster.test.js} || status=$?
if [ "$status" != 0 ]; then
  for n in 1 2 3; do echo "# node$n.err:"; tail -n 30 "$dir/node$n.err" | sed 's/^/#   /'; done
  # CLUSTER_KEEP_LOGS=<dir>: the nodes', NATS's and the proxies' logs are
  # copied there.
  [ -z "${CLUSTER_KEEP_LOGS:-}" ] || { mkdir -p "$CLUSTER_KEEP_LOGS"; cp "$dir"/*.log "$dir"/*.err "$CLUSTER_KEEP_LOGS"/ 2>/dev/null || true; }
fi
exit "$status"

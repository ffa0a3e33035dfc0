#!/usr/bin/env bash
# A front door on this machine, for measuring it without a test host: a network namespace of
# its own with pebble (the ACME test CA), a PostgreSQL cluster, the tribist server (release
# build, restarted like systemd would, with the unit's LimitNOFILE=4096 and a 1024-task cap)
# and Caddy configured by `tribist-host front-render`, exactly as install would render it.
# Root only. Traffic stays in the namespace (loopback). See docs/front-door.md.
set -euo pipefail

readonly NS=${FRONT_NS:-fd-lab}
readonly WORK=${FRONT_WORK:-/var/tmp/$NS}
readonly DOMAIN=${DOMAIN:-api.example.test}
readonly PORT=${SERVICE_PORT:-8383}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
readonly ROOT

usage() {
  cat <<USAGE
usage: front-lab.sh up      start everything in network namespace $NS (work dir $WORK);
                            prints the front-flood.sh command that measures it
       front-lab.sh down    stop what 'up' started (by its recorded pids), delete the namespace
       front-lab.sh exec CMD...   run CMD in the namespace
Environment: FRONT_NS (must start with fd-), FRONT_WORK, DOMAIN, SERVICE_PORT,
SERVER (default target/release/server; build: cargo build --release --bin server).
USAGE
}

die() {
  echo "front-lab.sh: $*" >&2
  exit 1
}

in_ns() { ip netns exec "$NS" "$@"; }

# Starts "$@" in the namespace in the background, its pid recorded in $WORK/NAME.pid.
spawn() {
  local name=$1
  shift
  # shellcheck disable=SC2016 # expanded by the inner bash
  in_ns setsid bash -c 'echo $$ >"$0"; exec "$@"' "$WORK/$name.pid" "$@" \
    >"$WORK/$name.log" 2>&1 </dev/null &
}

wait_for() {
  local what=$1 tries=$2
  shift 2
  local i
  for ((i = 0; i < tries; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "$what did not come up; see $WORK/*.log"
}

up() {
  [[ $(id -u) -eq 0 ]] || die "run as root (network namespaces, ports 80 and 443)"
  [[ $NS == fd-* ]] || die "FRONT_NS must start with fd- (got $NS)"
  local server=${SERVER:-$ROOT/target/release/server} host=$ROOT/target/debug/tribist-host
  [[ -x $server ]] || die "no server binary at $server; run: cargo build --release --bin server"
  [[ -x $host ]] || die "no tribist-host at $host; run: cargo build --bin tribist-host"
  local c
  for c in caddy pebble wrk ss openssl curl; do
    command -v "$c" >/dev/null || die "$c is missing; run: apt-get install caddy pebble wrk iproute2 openssl curl"
  done
  ip netns list | grep -qw "$NS" && die "namespace $NS exists; run: $0 down"
  mkdir -p "$WORK" && chmod 755 "$WORK"
  ip netns add "$NS"
  in_ns ip link set lo up

  # pebble: its own HTTPS certificate, challenges always valid (the namespace has no DNS).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=pebble -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
    -keyout "$WORK/pebble-key.pem" -out "$WORK/pebble-cert.pem" 2>/dev/null
  cat >"$WORK/pebble.json" <<EOF
{"pebble": {"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
 "certificate": "$WORK/pebble-cert.pem", "privateKey": "$WORK/pebble-key.pem",
 "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": false}}
EOF
  PEBBLE_VA_ALWAYS_VALID=1 PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 \
    spawn pebble pebble -config "$WORK/pebble.json"
  wait_for pebble 40 in_ns curl -sf --cacert "$WORK/pebble-cert.pem" https://127.0.0.1:15000/roots/0

  # PostgreSQL and the server, as the unit limits it.
  local url
  url=$(in_ns "$ROOT/tests/support/pg.sh" start "$WORK/pg" 5432)
  mkdir -p "$WORK/run" && chown nobody: "$WORK/run"
  # shellcheck disable=SC2016 # expanded by the inner bash
  spawn server-loop env DATABASE_URL="$url" TRIBIST_LISTEN="127.0.0.1:$PORT" bash -c '
    cd "$0"
    while :; do
      runuser -u nobody -- bash -c "ulimit -n 4096; ulimit -u 1024; exec \"\$0\"" "$1" || true
      echo "server exited; restarting in 2 s" >&2
      sleep 2
    done' "$WORK/run" "$server"
  wait_for server 60 in_ns curl -sf "http://127.0.0.1:$PORT/health"

  # Caddy with the files install would write; only the paths point into $WORK.
  "$host" front-render servers >"$WORK/servers.caddy"
  "$host" front-render site DOMAIN="$DOMAIN" UPSTREAM="127.0.0.1:$PORT" \
    ACME_EMAIL=ops@example.test ACME_CA=https://127.0.0.1:14000/dir \
    ACME_CA_ROOT="$WORK/pebble-cert.pem" |
    sed "s|/var/log/caddy/tribist-access.log|$WORK/access.log|" >"$WORK/site.caddy"
  printf '{\n\tstorage file_system %s/caddy-data\n\timport %s/servers.caddy\n}\nimport %s/site.caddy\n' \
    "$WORK" "$WORK" "$WORK" >"$WORK/Caddyfile"
  caddy validate --adapter caddyfile --config "$WORK/Caddyfile" >"$WORK/validate.log" 2>&1 ||
    die "caddy validate refused $WORK/Caddyfile; see $WORK/validate.log"
  # shellcheck disable=SC2016 # expanded by the inner bash
  spawn caddy env HOME="$WORK" XDG_CONFIG_HOME="$WORK/caddy-config" bash -c \
    'ulimit -n 1048576; exec caddy run --adapter caddyfile --config "$0"' "$WORK/Caddyfile"
  in_ns curl -sf --cacert "$WORK/pebble-cert.pem" https://127.0.0.1:15000/roots/0 >"$WORK/pebble-root.pem"
  wait_for "the certificate" 60 in_ns curl -sf --cacert "$WORK/pebble-root.pem" \
    --resolve "$DOMAIN:443:127.0.0.1" "https://$DOMAIN/health"
  echo "front-lab: https://$DOMAIN/health answers through Caddy in $NS (service on 127.0.0.1:$PORT)"
  echo "measure: ip netns exec $NS $ROOT/tests/support/front-flood.sh --front https://$DOMAIN --connect 127.0.0.1 --cacert $WORK/pebble-root.pem --direct http://127.0.0.1:$PORT"
}

down() {
  local name pid
  for name in caddy server-loop pebble; do
    [[ -f $WORK/$name.pid ]] || continue
    pid=$(cat "$WORK/$name.pid")
    # Its session: the loop and the server it runs.
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    rm -f "$WORK/$name.pid"
  done
  if ip netns list | grep -qw "$NS"; then
    if [[ -f $WORK/pg/data/PG_VERSION ]]; then
      in_ns "$ROOT/tests/support/pg.sh" stop "$WORK/pg" || true
    fi
    ip netns del "$NS"
  fi
  echo "front-lab: $NS is down (work dir $WORK kept)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  exec) shift; in_ns "$@" ;;
  -h | --help) usage ;;
  *) usage >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# A throwaway host for the HTTPS front door (issue 19): tribist installed with `make install`
# as a user would, DOMAIN resolving to the host (its /etc/hosts), and pebble — the ACME test
# CA, with a certificate of its own made here by openssl — running on the host, since the
# hosts have no network. Used by tests/e2e-front.bats and tests/e2e/bench-front.sh; the host
# itself comes from tests/e2e/host.sh. Needs root (as host.sh), openssl.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
readonly REPO
readonly HOSTSH=$REPO/tests/e2e/host.sh
readonly DB_PASSWORD=front-db-password-4711
# pebble on the host: its ACME directory (ACME_CA) and the file with its own HTTPS
# certificate (ACME_CA_ROOT); the root that signs what it issues is fetched at each start.
readonly PEBBLE_DIR=/root/pebble
readonly ACME_CA=https://127.0.0.1:14000/dir

usage() {
  cat <<USAGE
usage: front-host.sh up NAME DOMAIN WORK   boot host NAME, install tribist (make install), make
                                          DOMAIN resolve to it, start pebble; WORK (a directory
                                          here) receives database_url, install.out and
                                          pebble-root.pem (the root of what pebble issues)
       front-host.sh pebble NAME WORK     (re)start pebble on host NAME
       front-host.sh apply-args DOMAIN    print the arguments of tribist-host front apply that
                                          use pebble
USAGE
}

die() {
  echo "front-host.sh: $*" >&2
  exit 1
}

on() { "$HOSTSH" ssh "$1" "cd / && $2"; }

pebble() {
  local name=$1 work=$2 i
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=pebble \
    -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
    -keyout "$work/pebble-key.pem" -out "$work/pebble-cert.pem" 2>/dev/null ||
    die "openssl could not make pebble's certificate"
  on "$name" "systemctl stop pebble 2>/dev/null; systemctl reset-failed pebble 2>/dev/null; install -d -m 700 $PEBBLE_DIR"
  "$HOSTSH" ssh "$name" "cat >$PEBBLE_DIR/key.pem" <"$work/pebble-key.pem"
  "$HOSTSH" ssh "$name" "cat >$PEBBLE_DIR/cert.pem" <"$work/pebble-cert.pem"
  "$HOSTSH" ssh "$name" "cat >$PEBBLE_DIR/pebble.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
 "certificate": "$PEBBLE_DIR/cert.pem", "privateKey": "$PEBBLE_DIR/key.pem",
 "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": false}}
JSON
  # Challenges always valid (the host has no DNS), no artificial delays, no rejected nonces.
  on "$name" "systemd-run --quiet --unit pebble -E PEBBLE_VA_ALWAYS_VALID=1 -E PEBBLE_VA_NOSLEEP=1 -E PEBBLE_WFE_NONCEREJECT=0 /usr/bin/pebble -config $PEBBLE_DIR/pebble.json"
  for i in $(seq 50); do
    on "$name" "curl -sf --cacert $PEBBLE_DIR/cert.pem -o $PEBBLE_DIR/root.pem https://127.0.0.1:15000/roots/0" && break
    ((i < 50)) || die "pebble did not answer on host $name: $("$HOSTSH" ssh "$name" 'journalctl -u pebble -n 20 --no-pager' 2>&1)"
    sleep 0.2
  done
  "$HOSTSH" ssh "$name" "cat $PEBBLE_DIR/root.pem" >"$work/pebble-root.pem"
}

up() {
  local name=$1 domain=$2 work=$3 cfg
  [[ $domain =~ ^[a-z0-9.-]+$ ]] || die "DOMAIN must be a plain name, got '$domain'"
  mkdir -p "$work"
  "$HOSTSH" up "$name"
  cfg=$("$HOSTSH" ssh-config)
  "$HOSTSH" db "$name" "$DB_PASSWORD"
  (umask 077 && echo "postgres://tribist:$DB_PASSWORD@localhost:5432/tribist" >"$work/database_url")
  make -s -C "$REPO" install HOST="root@$name" SSH_OPTS="-F $cfg" DATABASE_URL_FILE="$work/database_url" \
    >"$work/install.out" 2>&1 || die "make install failed: $(cat "$work/install.out")"
  on "$name" "echo '127.0.0.1 $domain' >>/etc/hosts"
  pebble "$name" "$work"
}

case "${1:-}" in
  up) [[ $# -eq 4 ]] || { usage >&2; exit 2; }; up "$2" "$3" "$4" ;;
  pebble) [[ $# -eq 3 ]] || { usage >&2; exit 2; }; pebble "$2" "$3" ;;
  apply-args)
    [[ $# -eq 2 ]] || { usage >&2; exit 2; }
    echo "--domain $2 --acme-email ops@example.test --acme-ca $ACME_CA --acme-ca-root $PEBBLE_DIR/cert.pem"
    ;;
  -h | --help) usage ;;
  *) usage >&2; exit 2 ;;
esac

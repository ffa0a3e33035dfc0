#!/usr/bin/env bash
# `make demo`: the whole mission on one machine, narrated. Boots a throwaway Debian host with
# systemd (tests/e2e/host.sh), then runs, with this very Makefile: install, upgrade to another
# release, an upgrade to a broken binary that its preflight refuses, and a rollback. Cleans up after
# itself, also when interrupted.
set -euo pipefail

readonly NAME=tribdemo
readonly DB_PASSWORD=demo-db-password

usage() {
  cat <<'USAGE'
usage: demo.sh [--help]      (root, Debian: debootstrap, systemd-nspawn, ip netns)
USAGE
}

narrate() { printf '\n\033[1m### %s\033[0m\n' "$*"; }
run() {
  printf '$ %s\n' "$*"
  "$@"
}

main() {
  case "${1:-}" in
    -h | --help) usage; return 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
  esac
  [[ $(id -u) -eq 0 ]] || { echo "demo.sh: needs root" >&2; exit 1; }
  local repo hostsh cfg work
  repo=$(cd "$(dirname "$0")/../.." && pwd)
  hostsh="$repo/tests/e2e/host.sh"
  work=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now
  trap "echo; echo '### cleaning up: powering off $NAME'; '$hostsh' down $NAME >/dev/null 2>&1 || true; rm -rf '$work'" EXIT
  cd "$repo"

  narrate "1. Two releases: this checkout, and the same code one commit later"
  make -s release
  tests/e2e/build-alt.sh "$work/server-next"
  # shellcheck disable=SC2016 # $1 belongs to the generated script
  printf '#!/bin/sh\n[ "$1" = --version ] && { echo "server 0.0.0 (commit broken-build)"; exit 0; }\necho "panic: cannot start" >&2; exit 1\n' >"$work/server-broken"
  chmod 755 "$work/server-broken"
  echo "current: $("${RELEASE_BIN:-target/x86_64-unknown-linux-gnu/release/server}" --version | head -n 1)"
  echo "next:    $("$work/server-next" --version | head -n 1)"

  narrate "2. A fresh Debian host with systemd, sshd and PostgreSQL (systemd-nspawn, loopback only)"
  "$hostsh" up "$NAME"
  cfg=$("$hostsh" ssh-config)
  "$hostsh" db "$NAME" "$DB_PASSWORD"
  echo "host $NAME is up; ssh reaches it by name through $cfg"

  narrate "3. make install: user, units, sudoers, scripts, binary, configuration; then wait for /health"
  (umask 077 && echo "postgres://tribist:$DB_PASSWORD@localhost/tribist" >"$work/database_url")
  run make -s install HOST="root@$NAME" SSH_OPTS="-F $cfg" DATABASE_URL_FILE="$work/database_url"
  run "$hostsh" ssh "$NAME" curl -sS http://localhost:8383/health
  echo

  narrate "4. make upgrade: the next release, health-checked, no connection refused meanwhile"
  run make -s upgrade HOST="root@$NAME" SSH_OPTS="-F $cfg" BIN="$work/server-next"

  narrate "5. make upgrade to a broken binary: its preflight fails, it is refused before any traffic, the previous release serves on"
  run make -s upgrade HOST="root@$NAME" SSH_OPTS="-F $cfg" BIN="$work/server-broken" || echo "(make exited $? — as it should)"

  narrate "6. make rollback: back to the first release"
  run make -s rollback HOST="root@$NAME" SSH_OPTS="-F $cfg"
  run make -s status HOST="root@$NAME" SSH_OPTS="-F $cfg"

  narrate "7. The host's audit trail of what just happened"
  run make -s audit HOST="root@$NAME" SSH_OPTS="-F $cfg"
}

main "$@"

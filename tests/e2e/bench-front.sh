#!/usr/bin/env bash
# `make bench-front`: what the HTTPS front door buys, measured on a throwaway systemd host
# (tests/e2e/host.sh): tribist installed with this Makefile, the front applied with
# `tribist-host front apply` (Caddy, certificate from pebble on the host), then
# tests/support/front-flood.sh inside the host's network namespace: the cost of the front on
# /health (wrk), a paced prober alone, then 10,000 idle and 500 slowloris connections at the
# front and at the service directly while the prober asks /health (docs/front-door.md).
# Arguments go to front-flood.sh (--idle N, --slow N, --seconds S, --skip-direct, …).
set -euo pipefail

readonly NAME=${TRIBIST_E2E_NAMES:-trib}bench
readonly DOMAIN=api.bench.test
# Its host apart from the e2e suites' (host.sh): their cleanup never takes it.
export TRIBIST_E2E_RUN=${TRIBIST_E2E_RUN:-/var/tmp/tribist-e2e-bench-front}
export TRIBIST_E2E_NETNS=${TRIBIST_E2E_NETNS:-tbbench}

usage() {
  cat <<'USAGE'
usage: bench-front.sh [front-flood.sh options]   (e.g. --idle 2000 --seconds 20)
Needs root (systemd-nspawn, ip netns), wrk, python3, openssl. Cleans up its host even when
interrupted. Takes about 5 minutes with the default flood.
USAGE
}

say() { printf '==> %s\n' "$*" >&2; }

main() {
  case "${1:-}" in
    -h | --help) usage; return 0 ;;
  esac
  [[ $(id -u) -eq 0 ]] || { echo "bench-front.sh: needs root" >&2; exit 1; }
  local c
  for c in wrk python3 openssl; do
    command -v "$c" >/dev/null || { echo "bench-front.sh: $c is missing: make deps" >&2; exit 1; }
  done
  local repo hostsh work
  repo=$(cd "$(dirname "$0")/../.." && pwd)
  hostsh="$repo/tests/e2e/host.sh"
  work=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now
  trap "'$hostsh' down $NAME >/dev/null 2>&1 || true; rm -rf '$work'" EXIT
  say "building the release"
  make -s -C "$repo" release
  "$hostsh" prepare
  say "booting a throwaway systemd host ($NAME), make install, pebble"
  "$repo/tests/e2e/front-host.sh" up "$NAME" "$DOMAIN" "$work"
  say "tribist-host front apply on $NAME"
  "$hostsh" ssh "$NAME" "/home/tribist/bin/tribist-host front apply $("$repo/tests/e2e/front-host.sh" apply-args "$DOMAIN")" >&2
  say "front-flood.sh in the host's network namespace"
  ip netns exec "$TRIBIST_E2E_NETNS-$NAME" "$repo/tests/support/front-flood.sh" --front "https://$DOMAIN" \
    --connect 127.0.0.1 --cacert "$work/pebble-root.pem" --direct http://127.0.0.1:8383 "$@"
  say "the service's unit limits: $("$hostsh" ssh "$NAME" 'systemctl show -p TasksMax -p LimitNOFILE tribist | paste -sd " "')"
  say "caddy: $("$hostsh" ssh "$NAME" 'systemctl show -p TasksMax -p LimitNOFILE -p MemoryMax caddy | paste -sd " "')"
}

main "$@"

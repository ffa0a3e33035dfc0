#!/usr/bin/env bash
# `make soak`: steady load on /health (wrk, 16 connections) against the release server with a
# real PostgreSQL for SOAK_SECONDS (default 300). Fails on any error or non-2xx answer, or if
# RSS grows by 1 MiB or more between the end of a 30 s warm-up and the end of the run.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: soak.sh [--help]
Environment: BIN (default target/x86_64-unknown-linux-gnu/release/server), SOAK_SECONDS (300), CONNECTIONS (16).
USAGE
}

die() {
  echo "soak.sh: $*" >&2
  exit 1
}

# shellcheck source=tests/support/stack.sh
source "$(dirname "$0")/stack.sh"

main() {
  case "${1:-}" in
    -h | --help) usage; return 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
  esac
  local repo bin secs work port pid warm end
  repo=$(cd "$(dirname "$0")/../.." && pwd)
  bin=${BIN:-$repo/target/x86_64-unknown-linux-gnu/release/server}
  secs=${SOAK_SECONDS:-300}
  [[ -x "$bin" ]] || die "no server binary at $bin"
  work=$(mktemp -d /tmp/tribist-soak.XXXXXX)
  # shellcheck disable=SC2064 # expand now: the path is fixed
  trap "stack_down '$work'" EXIT
  stack_up "$work" "$bin" || die "cannot start PostgreSQL and the server"
  pid=$STACK_PID
  port=$STACK_PORT
  echo "soak: ${secs}s of /health, ${CONNECTIONS:-16} connections; idle RSS $(rss_kb "$pid") kB"
  wrk -t2 -c"${CONNECTIONS:-16}" -d"${secs}s" "http://127.0.0.1:$port/health" >"$work/wrk.txt" &
  local load=$!
  sleep 30
  warm=$(rss_kb "$pid")
  wait "$load"
  end=$(rss_kb "$pid")
  local requests errors
  requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  errors=$(grep -E 'Non-2xx|Socket errors' "$work/wrk.txt" || true)
  echo "soak: $requests requests, errors: ${errors:-none}; RSS after warm-up $warm kB, at the end $end kB (growth $((end - warm)) kB)"
  [[ -z "$errors" ]] || die "errors under steady load"
  ((end - warm < 1024)) || die "RSS grew by $((end - warm)) kB"
}

main "$@"

#!/usr/bin/env bash
# `make bench`: /health throughput and latency under wrk against a real PostgreSQL, beside
# pgbench's `SELECT 1` rate over as many connections as the server has workers, and the
# server's memory. Prints figures; asserts nothing (targets are in the README).
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: bench.sh [--help]
Environment: BIN (release server binary, default target/x86_64-unknown-linux-gnu/release/server), WORKERS (4),
CONNECTIONS (64), DURATION (seconds per run, 10).
USAGE
}

die() {
  echo "bench.sh: $*" >&2
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
  local bin workers conns secs work pg_port port pid
  bin=${BIN:-target/x86_64-unknown-linux-gnu/release/server}
  workers=${WORKERS:-4}
  conns=${CONNECTIONS:-64}
  secs=${DURATION:-10}
  [[ -x "$bin" ]] || die "no server binary at $bin (run: cargo build --release)"
  command -v wrk >/dev/null || die "wrk is missing (apt-get install wrk)"
  work=$(mktemp -d /tmp/tribist-bench.XXXXXX)
  # shellcheck disable=SC2064 # expand now: the path is fixed
  trap "stack_down '$work'" EXIT
  stack_up "$work" "$bin" TRIBIST_WORKERS="$workers" || die "cannot start PostgreSQL and the server"
  pid=$STACK_PID
  port=$STACK_PORT
  pg_port=${STACK_URL##*:}
  pg_port=${pg_port%%/*}
  echo "server pid $pid on 127.0.0.1:$port, $workers workers, PostgreSQL on port $pg_port"
  echo "idle RSS before any request: $(rss_kb "$pid") kB"
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null || die "/health is not 200"
  for _ in $(seq "$workers"); do curl -fsS "http://127.0.0.1:$port/health" >/dev/null; done
  echo "idle RSS with DB connections open: $(rss_kb "$pid") kB"

  echo "--- wrk: $conns connections, ${secs}s, GET /health"
  wrk -t2 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$port/health" >"$work/wrk.txt"
  local rps p50 p99 errors
  rps=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk.txt")
  p50=$(awk '$1 == "50%" {print $2}' "$work/wrk.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$work/wrk.txt")
  errors=$(grep -E 'Non-2xx|Socket errors' "$work/wrk.txt" || true)
  echo "health req/s: $rps   p50: $p50   p99: $p99   ${errors:-errors: none}"
  echo "RSS after load: $(rss_kb "$pid") kB"

  echo "--- pgbench: SELECT 1, $workers connections, ${secs}s"
  echo 'SELECT 1;' >"$work/select1.sql"
  local tps
  tps=$(PGPASSWORD=tribist-test-pw pgbench -n -h 127.0.0.1 -p "$pg_port" -U tribist -c "$workers" \
    -j "$workers" -T "$secs" -f "$work/select1.sql" tribist 2>/dev/null |
    awk '/^tps/ {print $3; exit}')
  echo "pgbench tps: $tps"
  awk -v r="$rps" -v t="$tps" 'BEGIN { printf "health req/s / pgbench tps = %.2f (target >= 0.80)\n", r / t }'
}

main "$@"

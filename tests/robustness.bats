#!/usr/bin/env bats
# Slow clients against the real server with a real PostgreSQL: slowhttptest holds hundreds of
# connections open, sending a header line every few seconds (slowloris), while a probe checks
# that /health keeps answering fast and that threads and descriptors stay bounded.

load /usr/lib/bats/bats-support/load.bash
load /usr/lib/bats/bats-assert/load.bash

REPO=$(cd "$BATS_TEST_DIRNAME/.." && pwd)
BIN=${BIN:-$REPO/target/debug/server}

setup_file() {
  # shellcheck source=tests/support/stack.sh
  source "$REPO/tests/support/stack.sh"
  export WORK PORT SERVER_PID
  WORK=$(mktemp -d /tmp/tribist-robust.XXXXXX)
  stack_up "$WORK" "$BIN" 3>&-
  PORT=$STACK_PORT
  SERVER_PID=$STACK_PID
}

teardown_file() {
  # shellcheck source=tests/support/stack.sh
  source "$REPO/tests/support/stack.sh"
  stack_down "$WORK"
}

threads() { awk '/^Threads/ {print $2}' "/proc/$SERVER_PID/status"; }
fds() { find "/proc/$SERVER_PID/fd" -mindepth 1 | wc -l; }

@test "500 slowloris connections: /health probed every 100 ms always answers within 1 s" {
  local base_threads base_fds
  base_threads=$(threads)
  base_fds=$(fds)
  slowhttptest -H -c 500 -r 250 -i 5 -x 24 -l 20 -p 3 -g -o "$WORK/slow" \
    -u "http://127.0.0.1:$PORT/livez" >"$WORK/slowhttptest.out" 2>&1 &
  local slow=$! worst=0 probes=0 slow_probes=0 max_threads=0 max_fds=0 t ms code
  sleep 4 # let it open its connections
  local end=$((SECONDS + 12))
  while ((SECONDS < end)); do
    read -r code t < <(curl -sS -o /dev/null --max-time 5 -w '%{http_code} %{time_total}\n' "http://127.0.0.1:$PORT/health")
    ms=$(awk -v t="$t" 'BEGIN {printf "%d", t * 1000}')
    ((probes += 1))
    [[ "$code" == 200 ]] || fail "probe $probes: HTTP $code"
    ((ms > worst)) && worst=$ms
    ((ms >= 1000)) && ((slow_probes += 1))
    t=$(threads)
    ((t > max_threads)) && max_threads=$t
    t=$(fds)
    ((t > max_fds)) && max_fds=$t
    sleep 0.1
  done
  wait "$slow" || true
  local held
  held=$(grep -o 'connected: *[0-9]*' "$WORK/slowhttptest.out" | tail -n 1 || true)
  echo "probes: $probes, slowest: ${worst} ms, >= 1 s: $slow_probes; threads ${base_threads} -> max $max_threads; fds ${base_fds} -> max $max_fds; slowhttptest last $held" | tee "$REPO/target/slowloris.txt" >&3
  ((slow_probes == 0))
  ((probes > 50))
  # tiny_http: one thread and two descriptors (read and write halves) per open connection.
  ((max_threads <= base_threads + 520))
  ((max_fds <= base_fds + 2 * 500 + 20))
  ((max_threads > base_threads + 300)) || fail "slowhttptest did not hold its connections open"
}

@test "after the slow clients leave, threads and descriptors come back down" {
  local i
  for i in $(seq 100); do
    (($(threads) < 40)) && break
    sleep 0.2
  done
  (($(threads) < 40)) || fail "still $(threads) threads"
  (($(fds) < 40)) || fail "still $(fds) descriptors"
  run curl -fsS "http://127.0.0.1:$PORT/health"
  assert_success
}

#!/usr/bin/env bats
# Slow clients against the real server with a real PostgreSQL: slowhttptest holds hundreds of
# connections open, sending a header line every few seconds (slowloris), while a probe checks
# that /health keeps answering fast and that threads and descriptors stay bounded.

load /usr/lib/bats/bats-support/load.bash
load /usr/lib/bats/bats-assert/load.bash

REPO=$(cd "$BATS_TEST_DIRNAME/.." && pwd)
BIN=${BIN:-$REPO/target/debug/server}

setup_file() {
  local work port
  work=$(mktemp -d /tmp/tribist-robust.XXXXXX)
  chmod 755 "$work"
  export WORK=$work
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  export DATABASE_URL
  DATABASE_URL=$("$REPO/tests/support/pg.sh" start "$work/pg" "$port")
  mkdir -p "$work/run"
  (cd "$work/run" && TRIBIST_LISTEN=127.0.0.1:0 exec "$BIN" 2>"$work/server.log") 3>&- &
  local i
  for i in $(seq 100); do grep -q 'listening on' "$work/server.log" 2>/dev/null && break; sleep 0.05; done
  export PORT SERVER_PID
  PORT=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$work/server.log")
  SERVER_PID=$(cat "$work/run/PID")
}

teardown_file() {
  kill "$SERVER_PID" 2>/dev/null || true
  "$REPO/tests/support/pg.sh" stop "$WORK/pg" 2>/dev/null || true
  rm -rf "$WORK"
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

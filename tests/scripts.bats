#!/usr/bin/env bats
# sbin/wait_for_it.sh and sbin/server.sh against real local listeners and real files.

load /usr/lib/bats/bats-support/load.bash
load /usr/lib/bats/bats-assert/load.bash

WAIT="$BATS_TEST_DIRNAME/../sbin/wait_for_it.sh"
SERVER_SH="$BATS_TEST_DIRNAME/../sbin/server.sh"

# Starts a listener answering STATUS (after DELAY s); sets PORT.
listen() {
  coproc STUB { exec python3 "$BATS_TEST_DIRNAME/support/status_server.py" "$@"; }
  read -r PORT <&"${STUB[0]}"
  STUB_PID_KEEP=$STUB_PID
}

teardown() {
  [[ -n "${STUB_PID_KEEP:-}" ]] && kill "$STUB_PID_KEEP" 2>/dev/null || true
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

ms() { local t=${EPOCHREALTIME/./}; echo $((10#${t:0:${#t}-3})); }

@test "wait_for_it: --help exits 0 and documents the exit codes" {
  run "$WAIT" --help
  assert_success
  assert_output --partial "124"
  assert_output --partial "-t SECONDS"
}

@test "wait_for_it: misuse exits 2 with a message" {
  run "$WAIT" -t
  assert_equal "$status" 2
  assert_output --partial "-t needs"
  run "$WAIT" -t abc
  assert_equal "$status" 2
  run "$WAIT" --bogus
  assert_equal "$status" 2
  assert_output --partial "unknown option"
  run "$WAIT" http://a http://b
  assert_equal "$status" 2
}

@test "wait_for_it: a 2xx listener succeeds at once" {
  listen 200
  run "$WAIT" -t 5 "http://127.0.0.1:$PORT/health"
  assert_success
  assert_output --partial "answered 200"
}

@test "wait_for_it: -q prints nothing on success and -- runs the command" {
  listen 204
  run "$WAIT" -q -t 5 "http://127.0.0.1:$PORT/health" -- echo ran-after
  assert_success
  assert_output "ran-after"
}

@test "wait_for_it: the command after -- gives its own exit code" {
  listen 200
  run "$WAIT" -q -t 5 "http://127.0.0.1:$PORT/" -- sh -c 'exit 7'
  assert_equal "$status" 7
}

@test "wait_for_it: a 503 listener times out with 124 and shows the last answer" {
  listen 503
  run "$WAIT" -t 1 "http://127.0.0.1:$PORT/health"
  assert_equal "$status" 124
  assert_output --partial "last answer: HTTP 503"
  assert_output --partial '"status":"fail"'
}

@test "wait_for_it: nothing listening times out with 124 and says so" {
  run "$WAIT" -t 1 "http://127.0.0.1:$(free_port)/health"
  assert_equal "$status" 124
  assert_output --partial "no HTTP answer"
}

@test "wait_for_it: the timeout bounds the wait even when the listener hangs (elapsed < 1.5 x -t)" {
  listen 200 30
  local start elapsed
  start=$(ms)
  run "$WAIT" -t 2 "http://127.0.0.1:$PORT/health"
  elapsed=$(($(ms) - start))
  assert_equal "$status" 124
  ((elapsed < 3000)) || fail "took ${elapsed} ms for -t 2"
  ((elapsed >= 1900)) || fail "gave up early: ${elapsed} ms for -t 2"
}

@test "wait_for_it: a listener that comes up late is waited for" {
  local port
  port=$(free_port)
  (sleep 1; exec python3 -m http.server --bind 127.0.0.1 "$port" >/dev/null 2>&1) &
  STUB_PID_KEEP=$!
  run "$WAIT" -t 10 "http://127.0.0.1:$port/"
  assert_success
}

@test "server.sh: --help exits 0, misuse exits 2" {
  run "$SERVER_SH" --help
  assert_success
  assert_output --partial "start|stop|restart|status"
  run "$SERVER_SH"
  assert_equal "$status" 2
  run "$SERVER_SH" launch
  assert_equal "$status" 2
  assert_output --partial "unknown command"
}

@test "server.sh promote: server_new replaces server, the old one is kept as server.prev" {
  local api="$BATS_TEST_TMPDIR/api"
  mkdir -p "$api"
  printf '#!/bin/sh\necho old\n' >"$api/server"
  printf '#!/bin/sh\necho new\n' >"$api/server_new"
  chmod 750 "$api/server" "$api/server_new"
  TRIBIST_API_DIR=$api run "$SERVER_SH" promote
  assert_success
  assert_output --partial "previous binary kept as server.prev"
  assert_equal "$("$api/server")" new
  assert_equal "$("$api/server.prev")" old
  [[ ! -e "$api/server_new" ]]
  # Nothing to promote: nothing changes.
  TRIBIST_API_DIR=$api run "$SERVER_SH" promote
  assert_success
  assert_equal "$("$api/server")" new
}

@test "server.sh promote: a non-executable server_new is refused and nothing moves" {
  local api="$BATS_TEST_TMPDIR/api"
  mkdir -p "$api"
  printf '#!/bin/sh\necho old\n' >"$api/server"
  chmod 750 "$api/server"
  echo junk >"$api/server_new"
  TRIBIST_API_DIR=$api run "$SERVER_SH" promote
  assert_failure 1
  assert_output --partial "not an executable file"
  assert_equal "$("$api/server")" old
}

@test "deploy.sh: --help exits 0, misuse exits 2, install needs root" {
  local deploy="$BATS_TEST_DIRNAME/../sbin/deploy.sh"
  run "$deploy" --help
  assert_success
  run "$deploy" frobnicate
  assert_equal "$status" 2
  run "$deploy" upgrade onlyone
  assert_equal "$status" 2
}

@test "sudoers drop-in parses" {
  run visudo -c -f "$BATS_TEST_DIRNAME/../etc/tribist.sudoers"
  assert_success
}

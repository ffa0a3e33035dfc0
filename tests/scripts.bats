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
  [[ -n "${API_PARENT:-}" ]] && rm -rf "$API_PARENT"
  true
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

ms() { local t=${EPOCHREALTIME/./}; echo $((10#${t:0:${#t}-3})); }

# Fails unless $1 holds only printable ASCII and line breaks: no ESC, BEL, C1 or other byte.
only_printable() {
  local bad
  bad=$(printf '%s' "$1" | LC_ALL=C tr -d '\40-\176\n' | od -An -tx1)
  [[ -z "${bad//[[:space:]]/}" ]] || fail "bytes other than printable ASCII in the output:$bad"
}

# run_bounded T URL: runs wait_for_it -t T URL under /usr/bin/time; sets status and output (as
# bats' run), ELAPSED (ms) and RSS_KB (the largest resident set of it or any of its children).
# A safety net for the script as it was: killed after 2 x T, address space capped at 512 MB.
run_bounded() {
  local t=$1 url=$2 start
  [[ -x /usr/bin/time ]] || fail "/usr/bin/time is missing: apt-get install time (make deps)"
  start=$(ms)
  run bash -c 'ulimit -v 524288 && exec timeout -s KILL "$1" /usr/bin/time -f "maxrss_kb=%M" -o "$2" "${@:3}"' \
    _ $((2 * t)) "$BATS_TEST_TMPDIR/rusage" "$WAIT" -t "$t" "$url"
  ELAPSED=$(($(ms) - start))
  RSS_KB=$(sed -n 's/^maxrss_kb=//p' "$BATS_TEST_TMPDIR/rusage" 2>/dev/null || true)
}

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

@test "wait_for_it: terminal escapes in the answer never reach the terminal, the text does" {
  # OSC 0 (title), CSI 2K + CR (a forged result line), OSC 52 (clipboard), C1, UTF-8, NUL, DEL.
  listen 503 0 escapes
  run "$WAIT" -t 1 "http://127.0.0.1:$PORT/health"
  assert_equal "$status" 124
  only_printable "$output"
  assert_line 'wait_for_it.sh: last answer: HTTP 503 {"status":"fail"}]0;root@owned[2K wait_for_it.sh: http://x/health answered 200 after 0s ]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==31mC1-CSI\ 32mutf8-C1 cafnuldelbs end'
  assert_equal "${#lines[@]}" 3
}

@test "wait_for_it: a 6 MB answer is read only in part: 124 within 1.5 x -t, RSS < 50 MB" {
  listen 503 0 size:6000000
  run_bounded 3 "http://127.0.0.1:$PORT/health"
  assert_equal "$status" 124
  ((ELAPSED < 4500)) || fail "took ${ELAPSED} ms for -t 3"
  [[ "$RSS_KB" =~ ^[0-9]+$ ]] && ((RSS_KB < 50000)) || fail "max RSS ${RSS_KB:-unknown} KB"
  assert_line --partial "last answer: HTTP 503 xxxxxxxxxx"
  ((${#lines[-1]} <= 2100)) || fail "last answer shown in ${#lines[-1]} characters"
}

@test "wait_for_it: an endless streamed 503 answer: 124 within 1.5 x -t, RSS < 50 MB" {
  listen 503 0 stream
  run_bounded 3 "http://127.0.0.1:$PORT/health"
  assert_equal "$status" 124
  ((ELAPSED < 4500)) || fail "took ${ELAPSED} ms for -t 3"
  [[ "$RSS_KB" =~ ^[0-9]+$ ]] && ((RSS_KB < 50000)) || fail "max RSS ${RSS_KB:-unknown} KB"
  assert_line --partial "last answer: HTTP 503 yyyyyyyyyy"
  ((${#lines[-1]} <= 2100)) || fail "last answer shown in ${#lines[-1]} characters"
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
  assert_output --partial "start|stop|restart|reload|status"
  run "$SERVER_SH"
  assert_equal "$status" 2
  run "$SERVER_SH" launch
  assert_equal "$status" 2
  assert_output --partial "unknown command"
}

# tribist-host releases refuses root: run it as nobody in a directory nobody owns. The debug
# build (make test-scripts builds it first).
HOST_BIN="$BATS_TEST_DIRNAME/../target/debug/tribist-host"
as_nobody() {
  setpriv --reuid=nobody --regid=nogroup --clear-groups --reset-env env TRIBIST_API_DIR="$API" "$@"
}
new_api() {
  # Outside bats' temporary directories, which nobody cannot enter.
  API_PARENT=$(mktemp -d /tmp/tribist-releases.XXXXXX)
  chmod 755 "$API_PARENT"
  API="$API_PARENT/api"
  mkdir -p "$API"
  printf '#!/bin/sh\necho "server 1.0 (commit old)"\n' >"$API/server"
  chmod 750 "$API/server"
  chown -R nobody:nogroup "$API"
}

@test "tribist-host releases: refuses root, --help exits 0, misuse exits 2" {
  new_api
  run env TRIBIST_API_DIR="$API" "$HOST_BIN" releases promote
  assert_failure 1
  assert_output --partial "refusing to run as root"
  run "$HOST_BIN" releases --help
  assert_success
  assert_output --partial "receive SHA256"
  run as_nobody "$HOST_BIN" releases stage ../../etc/passwd
  assert_equal "$status" 2
  assert_output --partial "not an upload name"
  run as_nobody "$HOST_BIN" releases version /bin/sh
  assert_equal "$status" 2
}

@test "tribist-host releases: root's verified copy (TRIBIST_VERIFIED_DIR) runs by its path; no other path does" {
  new_api
  local v="$API_PARENT/verified"
  install -d -o root -g root -m 0755 "$v"
  printf '#!/bin/sh\necho "server 1.0 (commit verified)"\n' >"$v/server"
  chmod 755 "$v/server"
  run as_nobody env TRIBIST_VERIFIED_DIR="$v" "$HOST_BIN" releases version "$v/server"
  assert_success
  assert_output verified
  run as_nobody env TRIBIST_VERIFIED_DIR="$v" "$HOST_BIN" releases hands-over "$v/server"
  assert_failure 1
  # Only describe, version, hands-over and preflight take one.
  run as_nobody env TRIBIST_VERIFIED_DIR="$v" "$HOST_BIN" releases identity "$v/server" verified
  assert_failure 2
  # Not in that directory, or a file or directory someone else could change: refused.
  run as_nobody "$HOST_BIN" releases version "$v/server"
  assert_failure 2
  assert_output --partial "TRIBIST_VERIFIED_DIR"
  chown nobody "$v/server"
  run as_nobody env TRIBIST_VERIFIED_DIR="$v" "$HOST_BIN" releases version "$v/server"
  assert_failure 2
  chown root "$v/server"
  chmod 0775 "$v"
  run as_nobody env TRIBIST_VERIFIED_DIR="$v" "$HOST_BIN" releases version "$v/server"
  assert_failure 2
  assert_output --partial "is not a directory only uid 0 can change"
}

@test "tribist-host releases promote: server_new replaces server, the old one is kept as server.prev" {
  new_api
  printf '#!/bin/sh\necho new\n' >"$API/server_new"
  chmod 750 "$API/server_new"
  chown nobody:nogroup "$API/server_new"
  run as_nobody "$HOST_BIN" releases promote
  assert_success
  assert_output --partial "previous binary kept as server.prev"
  assert_equal "$("$API/server")" new
  assert_equal "$("$API/server.prev")" "server 1.0 (commit old)"
  [[ ! -e "$API/server_new" ]]
  # Nothing to promote: nothing changes.
  run as_nobody "$HOST_BIN" releases promote
  assert_success
  assert_equal "$("$API/server")" new
}

@test "tribist-host releases promote: a non-executable server_new is refused and nothing moves" {
  new_api
  echo junk >"$API/server_new"
  chown nobody:nogroup "$API/server_new"
  run as_nobody "$HOST_BIN" releases promote
  assert_failure 1
  assert_output --partial "not an executable file"
  assert_equal "$("$API/server")" "server 1.0 (commit old)"
}

@test "tribist-host releases receive: a matching upload is kept, a damaged one removed (exit 3)" {
  new_api
  local bin="$BATS_TEST_TMPDIR/bin" sum
  printf '#!/bin/sh\necho "server 2.0 (commit new)"\n' >"$bin"
  sum=$(sha256sum "$bin" | cut -d' ' -f1)
  run as_nobody "$HOST_BIN" releases receive "$sum" <"$bin"
  assert_success
  assert_output --regexp '^\.upload\.[A-Za-z0-9]{6}$'
  local name=$output
  run as_nobody "$HOST_BIN" releases version "$name"
  assert_output new
  run as_nobody "$HOST_BIN" releases receive "$sum" < <(head -c 10 "$bin")
  assert_equal "$status" 3
  assert_output --partial "checksum mismatch"
  assert_equal "$(find "$API" -name '.upload.*' | wc -l)" 1
}

@test "tribist-host releases version: output that is not 'server V (commit C)' is refused, never echoed" {
  new_api
  printf '#!/bin/sh\nprintf "server 1.0 (commit a\\nb)\\n* * * * * root touch /tmp/x\\n\\033[2J"\n' >"$API/server"
  run as_nobody "$HOST_BIN" releases version server
  assert_failure 1
  refute_output --partial "* * *"
  refute_output --partial $'\033'
}

@test "tribist-host releases stage, revert and swap: a failed upgrade puts everything back as it was" {
  # (revert goes by the files, not by what they report: a re-deployed release reports the same)
  new_api
  local v
  for v in prev new; do
    printf '#!/bin/sh\necho "server 1.0 (commit %s)"\n' "$v" >"$BATS_TEST_TMPDIR/$v"
  done
  cp "$BATS_TEST_TMPDIR/prev" "$API/server.prev"
  cp "$BATS_TEST_TMPDIR/new" "$API/.upload.abcdef"
  chmod 750 "$API"/*  "$API/.upload.abcdef"
  chown -R nobody:nogroup "$API"
  as_nobody "$HOST_BIN" releases stage .upload.abcdef
  as_nobody "$HOST_BIN" releases promote
  assert_equal "$(as_nobody "$HOST_BIN" releases version server)" new
  run as_nobody "$HOST_BIN" releases revert
  assert_success
  assert_equal "$(as_nobody "$HOST_BIN" releases version server)" old
  assert_equal "$(as_nobody "$HOST_BIN" releases version server.prev)" prev
  assert_equal "$(as_nobody "$HOST_BIN" releases version server.failed)" new
  # Staged but not promoted (interrupted before the restart): nothing to put back.
  cp "$BATS_TEST_TMPDIR/new" "$API/.upload.ghijkl"
  chown nobody:nogroup "$API/.upload.ghijkl"
  as_nobody "$HOST_BIN" releases stage .upload.ghijkl
  run as_nobody "$HOST_BIN" releases revert
  assert_output --partial "server is unchanged"
  assert_equal "$(as_nobody "$HOST_BIN" releases version server)" old
  [[ ! -e "$API/server_new" ]]
  # A manual rollback swaps; a second one undoes it.
  as_nobody "$HOST_BIN" releases swap
  assert_equal "$(as_nobody "$HOST_BIN" releases version server)" prev
  as_nobody "$HOST_BIN" releases swap
  assert_equal "$(as_nobody "$HOST_BIN" releases version server)" old
}

# A fake binary in api/ named NAME whose --describe prints LINE and whose --version prints
# VERSION_LINES (printf format); any other argument runs the rest of the script, REST.
fake_binary() {
  local name=$1 line=$2 version=$3 rest=${4:-exit 0}
  printf '%s\n' "$line" >"$API/$name.describe"
  printf '#!/bin/sh\nif [ "$1" = --describe ]; then cat "$0.describe"; exit 0; fi\nif [ "$1" = --version ]; then printf "%s"; exit 0; fi\n%s\n' \
    "$version" "$rest" >"$API/$name"
  chmod 750 "$API/$name"
  chown nobody:nogroup "$API/$name" "$API/$name.describe"
}

# A binary that predates --describe: it refuses the option as the server does (exit 2).
old_binary() {
  local name=$1 version=$2 rest=${3:-exit 0}
  printf '#!/bin/sh\nif [ "$1" = --version ]; then printf "%s"; exit 0; fi\nif [ "$1" != --env-file ]; then echo "server: error: unexpected argument \\"$1\\" (see server --help)" >&2; exit 2; fi\n%s\n' \
    "$version" "$rest" >"$API/$name"
  chmod 750 "$API/$name"
  chown nobody:nogroup "$API/$name"
}

DESCRIBED='{"contract":1,"name":"tribist","version":"0.2.0","releaseId":"rel-new","features":["env-file","check-config","handover","failure","describe","address-file"]}'

@test "tribist-host releases describe: a binary's --describe, checked, as releaseId, version and features" {
  new_api
  fake_binary server "$DESCRIBED" 'server 0.2.0 (commit rel-new)\n'
  run as_nobody "$HOST_BIN" releases describe server
  assert_success
  assert_output "releaseId=rel-new
version=0.2.0
features=env-file check-config handover failure describe address-file"
  # Fields in another order, and fields and features this kit does not know, are fine.
  fake_binary server '{"features":["handover","x-new"],"releaseId":"r1","later":[],"n":7,"version":"1.0","name":"tribist","contract":1}' x
  run as_nobody "$HOST_BIN" releases describe server
  assert_success
  assert_line "releaseId=r1"
  assert_line "features=handover x-new"
}

@test "tribist-host releases describe: a line this kit cannot read is refused and never echoed" {
  new_api
  local line
  for line in \
    '{"contract":2,"name":"tribist","version":"1","releaseId":"r","features":[]}' \
    '{"contract":1,"name":"other","version":"1","releaseId":"r","features":[]}' \
    '{"contract":1,"name":"tribist","version":"1","releaseId":"r","releaseId":"s","features":[]}' \
    '{"contract":1,"name":"tribist","version":"1","releaseId":"a\"b","features":[]}' \
    '{"contract":1,"name":"tribist","version":"1","releaseId":"../x","features":[]}' \
    '{"contract":1,"name":"tribist","version":"1","releaseId":"r","features":["UPPER"]}' \
    '{"contract":1, "name":"tribist","version":"1","releaseId":"r","features":[]}' \
    $'{"contract":1,"name":"tribist","version":"1","releaseId":"r","features":[]}\n* * * * * root x' \
    $'{"contract":1,"name":"tribist","version":"1","releaseId":"\033[2Jr","features":[]}' \
    "{\"contract\":1,\"name\":\"tribist\",\"version\":\"1\",\"releaseId\":\"r\",\"features\":[],\"pad\":\"$(printf '%2100s' x)\"}"; do
    fake_binary server "$line" x
    run as_nobody "$HOST_BIN" releases describe server
    assert_failure 1
    assert_output --partial "server does not describe itself"
    refute_output --partial "releaseId="
    refute_output --partial "* * *"
    refute_output --partial $'\033'
  done
  old_binary server 'server 0.1.0 (commit old)\nhandover: SIGUSR2\n'
  run as_nobody "$HOST_BIN" releases describe server
  assert_failure 1
  assert_output --partial "predates --describe"
}

@test "tribist-host releases version and hands-over: --describe first, --version's words for a binary that predates it" {
  new_api
  # Its --version words say another commit and no handover: --describe is what counts.
  fake_binary server "$DESCRIBED" 'server 0.2.0 (commit words)\n'
  run as_nobody "$HOST_BIN" releases version server
  assert_success
  assert_output rel-new
  run as_nobody "$HOST_BIN" releases hands-over server
  assert_success
  fake_binary server '{"contract":1,"name":"tribist","version":"0.2.0","releaseId":"r2","features":["env-file"]}' 'server 0.2.0 (commit r2)\nhandover: SIGUSR2\n'
  run as_nobody "$HOST_BIN" releases hands-over server
  assert_failure 1
  # Today's release, which predates --describe, still upgrades from and to.
  old_binary server.prev 'server 0.1.0 (commit old-one)\nhandover: SIGUSR2\n'
  run as_nobody "$HOST_BIN" releases version server.prev
  assert_success
  assert_output old-one
  run as_nobody "$HOST_BIN" releases hands-over server.prev
  assert_success
  old_binary server.prev 'server 0.0.9 (commit older)\n'
  run as_nobody "$HOST_BIN" releases hands-over server.prev
  assert_failure 1
}

@test "tribist-host releases preflight: the port comes from the address file, not from a log line" {
  new_api
  cp "$BATS_TEST_DIRNAME/support/fake_release.py" "$API/fake_release.py"
  echo 'DATABASE_URL="postgres://x@localhost/x"' >"$API/env"
  chown nobody:nogroup "$API/fake_release.py" "$API/env"
  fake_binary server "$DESCRIBED" 'server 0.2.0 (commit rel-new)\n' "exec python3 \"\$(dirname \"\$0\")/fake_release.py\" rel-new address-file"
  run as_nobody "$HOST_BIN" releases preflight server rel-new 5 "$API/env"
  assert_success
  assert_output --regexp "preflight: release rel-new answered /health 200 \(127\.0\.0\.1:[0-9]+, "
  # A binary that predates the address file: its "listening on" line.
  old_binary server 'server 0.1.0 (commit rel-old)\nhandover: SIGUSR2\n' "exec python3 \"\$(dirname \"\$0\")/fake_release.py\" rel-old log-line"
  run as_nobody "$HOST_BIN" releases preflight server rel-old 5 "$API/env"
  assert_success
  assert_output --partial "preflight: release rel-old answered /health 200"
  # One that predates --env-file is taken, and said so.
  printf '#!/bin/sh\necho "server: error: unexpected argument \\"$1\\" (see server --help)" >&2\nexit 2\n' >"$API/server"
  run as_nobody "$HOST_BIN" releases preflight server rel-older 5 "$API/env"
  assert_success
  assert_output --partial "predates server --env-file"
}

@test "tribist-host releases preflight: SIGTERM (a deployment's interrupt) stops its server and scratch directory; SIGKILL its server" {
  new_api
  echo 'DATABASE_URL="postgres://x@localhost/x"' >"$API/env"
  chown nobody:nogroup "$API/env"
  # A release that never answers: it notes its pid and its working directory, and sleeps.
  fake_binary server "$DESCRIBED" 'server 0.2.0 (commit rel-new)\n' 'd=$(dirname "$0"); pwd >"$d/cwd.tmp" && mv "$d/cwd.tmp" "$d/cwd"; echo $$ >"$d/pid"; exec sleep 60'
  local signal pid i
  for signal in TERM KILL; do
    rm -f "$API/cwd" "$API/pid"
    # Not through as_nobody (a function, so a subshell): $! is then the program itself.
    setpriv --reuid=nobody --regid=nogroup --clear-groups --reset-env \
      env TRIBIST_API_DIR="$API" "$HOST_BIN" releases preflight server rel-new 30 "$API/env" &
    pid=$!
    for ((i = 0; i < 100; i++)); do [[ -s "$API/pid" && -s "$API/cwd" ]] && break; sleep 0.05; done
    [[ -s "$API/pid" ]] || fail "the release did not start"
    kill -"$signal" "$pid"
    status=0
    wait "$pid" || status=$?
    assert_equal "$status" "$([[ $signal == TERM ]] && echo 130 || echo 137)"
    for ((i = 0; i < 40; i++)); do kill -0 "$(cat "$API/pid")" 2>/dev/null || break; sleep 0.05; done
    ! kill -0 "$(cat "$API/pid")" 2>/dev/null || fail "its server outlived a SIG$signal"
    if [[ $signal == TERM ]]; then
      [[ ! -e "$(cat "$API/cwd")" ]] || fail "its scratch directory $(cat "$API/cwd") is left"
    else
      rm -rf "$(cat "$API/cwd")"
    fi
  done
}

@test "server.sh promote refuses root (api/ is tribist's)" {
  run "$SERVER_SH" promote
  assert_failure 1
  assert_output --partial "never as root"
}

@test "tribist-host: --help exits 0 and lists the deployment commands, misuse exits 2" {
  local host="$BATS_TEST_DIRNAME/../target/debug/tribist-host"
  run "$host" --help
  assert_success
  assert_output --partial "upgrade UPLOAD"
  run "$host" frobnicate
  assert_equal "$status" 2
  run "$host" --by me upgrade
  assert_equal "$status" 2
  # An argument that is not text is refused, not a panic.
  run "$host" logs $'\xff'
  assert_equal "$status" 2
  assert_output --partial "is not UTF-8 text; nothing was done"
}

REMOTE="$BATS_TEST_DIRNAME/../sbin/remote.sh"
MAKE_DIR="$BATS_TEST_DIRNAME/.."

@test "remote.sh: the remote command line rebuilds exactly our words, in sh and bash" {
  # (Each word's quoting, newlines and empty words included, is tested by cargo test:
  # deployer::words; here the whole way from the environment to the line ssh is given.)
  local stub="$BATS_TEST_TMPDIR/ssh" mark=/tmp/tribist-pwned d line
  rm -f "$mark"
  # The stub ssh keeps its last argument, the remote line, and fails as a host would.
  printf '#!/bin/sh\nfor a in "$@"; do line=$a; done\nprintf "%%s" "$line" >"%s/line"\nexit 7\n' "$BATS_TEST_TMPDIR" >"$stub"
  chmod 755 "$stub"
  d="o'brien \$(touch $mark) \`touch $mark\` a;b  \\ \" * \$HOME"
  SSH=$stub HOST=app1 DEPLOYER="$d" TO=r1 PREFLIGHT=0 run "$REMOTE" rollback
  assert_equal "$status" 7
  line=$(sed "s|'/home/tribist/bin/tribist-host'|printf '[%s]\\\\n'|" "$BATS_TEST_TMPDIR/line")
  local expected
  expected=$(printf '[%s]\n' --by "$d" --target app1 --preflight 0 rollback --to r1)
  run sh -c "$line"
  assert_success
  assert_output "$expected"
  run bash -c "$line"
  assert_output "$expected"
  [[ ! -e "$mark" ]]
}

@test "remote.sh: hostile or malformed values are refused with exit 2 before anything runs" {
  local stub="$BATS_TEST_TMPDIR/ssh"
  printf '#!/bin/sh\ntouch "%s/ssh-ran"\n' "$BATS_TEST_TMPDIR" >"$stub"
  chmod 755 "$stub"
  export SSH=$stub BIN=/bin/true
  HOST='root@app1; touch /tmp/x' run "$REMOTE" status
  assert_equal "$status" 2
  assert_output --partial "not an ssh destination"
  HOST='-oProxyCommand=touch /tmp/x' run "$REMOTE" status
  assert_equal "$status" 2
  HOSTS='app1 app$(id)' run "$REMOTE" upgrade
  assert_equal "$status" 2
  HOST=app1 LINES='5; id' run "$REMOTE" logs
  assert_equal "$status" 2
  assert_output --partial "LINES must be a whole number"
  HOST=app1 DEPLOYER=$'alice\nresult=ok' run "$REMOTE" rollback
  assert_equal "$status" 2
  assert_output --partial "DEPLOYER must be printable"
  HOST=app1 SSH_OPTS="-o 'User=x" run "$REMOTE" status
  assert_equal "$status" 2
  assert_output --partial "unmatched quote"
  HOST=app1 SSH_OPTS="-p 22 evil-host" run "$REMOTE" status
  assert_equal "$status" 2
  assert_output --partial "neither an option nor an option's argument"
  HOST=app1 SSH_OPTS="-i" run "$REMOTE" status
  assert_equal "$status" 2
  HOSTS=" " run "$REMOTE" upgrade
  assert_equal "$status" 2
  HOST=app1 PURGE=yes run "$REMOTE" uninstall
  assert_equal "$status" 2
  HOST=app1 BIN="$BATS_TEST_TMPDIR/no such file" run "$REMOTE" upgrade
  assert_equal "$status" 2
  ssh-keygen -q -t ed25519 -N '' -f "$BATS_TEST_TMPDIR/k"
  HOST=app1 DEPLOY_KEY="$BATS_TEST_TMPDIR/k" run "$REMOTE" install
  assert_equal "$status" 2
  assert_output --partial "private key"
  [[ ! -e "$BATS_TEST_TMPDIR/ssh-ran" ]]
}

# A stub ssh that runs the remote line here, with FAKE in place of the host program.
fake_host() {
  FAKE="$BATS_TEST_TMPDIR/deploy"
  export FAKE SSH="$BATS_TEST_TMPDIR/ssh"
  cat >"$SSH" <<'STUB'
#!/bin/sh
for a; do line=$a; done
exec sh -c "$(printf '%s' "$line" | sed "s|'/home/tribist/bin/tribist-host'|'$FAKE'|")"
STUB
  cat >"$FAKE" <<'HOST'
#!/bin/sh
case "$*" in
  receive*) cat >/dev/null; echo .upload.AbCdEf ;;
  *"--target app2 upgrade"*) echo "refused: the preflight failed"; exit 1 ;;
  *upgrade*) echo "upgraded" ;;
  serving) echo r2 ;;
  summary) echo "active release=r2"; [ "$(cat "$0.n" 2>/dev/null)" = 1 ] && exit 7; echo 1 >"$0.n" ;;
esac
HOST
  chmod 755 "$SSH" "$FAKE"
}

@test "remote.sh upgrade and status over several hosts: PARALLEL at once, each line its host's, the worst status" {
  [[ $(id -u) -eq 0 ]] || skip "the remote line's wrapper runs as root, tribist or with sudo only"
  fake_host
  HOSTS="app1 app2 app3" PARALLEL=2 BIN=/bin/true run "$REMOTE" upgrade
  assert_equal "$status" 1
  assert_line "==> rolling upgrade: app1 app2"
  assert_line "[app1] ==> upgrade of app1 done"
  assert_line "[app2] refused: the preflight failed"
  assert_line "[app2] tribist-deploy: make upgrade: FAILED on app2 (exit 1); see the messages above"
  refute_output --partial "to app3"
  assert_line --regexp '^    app3 +r2$'
  assert_output --partial "make upgrade: stopped at app2 (it serves its previous release)"
  HOSTS="app1 app2" run "$REMOTE" status
  assert_equal "$status" 7
  assert_line --regexp '^app1 +active release=r2$'
  assert_line --regexp '^app2 +active release=r2$'
}

@test "make install refuses DATABASE_URL on its command line (ps, shell history) and says what to do" {
  run make -s -C "$MAKE_DIR" install HOST=app1 'DATABASE_URL=postgres://u:pa$word@h/d' SSH=/bin/false
  assert_failure
  assert_output --partial "DATABASE_URL_FILE=path"
  refute_output --partial "pa"'$'"word"
}

@test "make passes deployment values through literally: no \$ expansion, no quote processing" {
  local stub="$BATS_TEST_TMPDIR/ssh"
  # The stub ssh records its arguments one per line and answers nothing.
  printf '#!/bin/sh\nfor a in "$@"; do printf "%%s\\n" "$a"; done >"%s/argv"\nexit 7\n' "$BATS_TEST_TMPDIR" >"$stub"
  chmod 755 "$stub"
  run make -s -C "$MAKE_DIR" rollback HOST=app1 SSH="$stub" 'DEPLOYER=o'"'"'brien $(id) `id` ; $$x' 'SSH_OPTS=-o "User=a b" -p 2222'
  assert_failure
  run cat "$BATS_TEST_TMPDIR/argv"
  assert_line --index 0 -- "-o"
  assert_line --index 1 -- "User=a b"
  assert_line --index 2 -- "-p"
  assert_line --index 3 -- "2222"
  # Then one shared connection per host (the user's options first, so theirs win), in a
  # private directory that is gone when the run ends.
  assert_line --index 5 -- "ControlMaster=auto"
  assert_line --index 7 --regexp '^ControlPath=/tmp/tribist-ssh\.[A-Za-z0-9]+/%C$'
  local control
  control=$(sed -n '8p' "$BATS_TEST_TMPDIR/argv")
  control=${control#ControlPath=}
  [[ ! -e "${control%/%C}" ]]
  assert_line --index 11 -- "--"
  assert_line --index 12 -- "app1"
  # The remote line, run by a shell, gives back DEPLOYER exactly as typed.
  local line
  line=$(sed -n '14,$p' "$BATS_TEST_TMPDIR/argv" | sed "s|'/home/tribist/bin/tribist-host'|printf '[%s]\\\\n'|")
  run sh -c "$line"
  assert_line '[o'"'"'brien $(id) `id` ; $$x]'
}

@test "sudoers drop-in parses" {
  run visudo -c -f "$BATS_TEST_DIRNAME/../etc/tribist.sudoers"
  assert_success
}

@test "tools/elf.sh reads an executable's machine and the glibc it needs, with od and grep only" {
  source "$BATS_TEST_DIRNAME/../tools/elf.sh"
  local f="$BATS_TEST_TMPDIR/elf"
  { printf '\177ELF\2\1\1\0\0\0\0\0\0\0\0\0\2\0\267\0'; head -c 64 /dev/zero; } >"$f"
  run elf_machine "$f"
  assert_output aarch64
  run glibc_needed "$f"
  assert_success
  assert_output ""
  { printf '\177ELF\2\1\1\0\0\0\0\0\0\0\0\0\2\0\076\0'; printf 'GLIBC_2.2.5\0GLIBC_2.17\0GLIBC_2.3.4\0'; } >"$f"
  run elf_machine "$f"
  assert_output x86_64
  run glibc_needed "$f"
  assert_output 2.17
  run elf_machine "$BATS_TEST_DIRNAME/../sbin/server.sh"
  assert_output not-elf
  version_le 2.17 2.36
  version_le 2.17 2.17
  ! version_le 2.39 2.31
  ! version_le 2.3.4 2.2.5
}

@test "ENV= takes the hosts from deploy/ENV.hosts; a bad line, a bad name or ENV with HOST is refused" {
  local dir="$BATS_TEST_TMPDIR/deploy" stub="$BATS_TEST_TMPDIR/ssh"
  mkdir -p "$dir"
  printf '#!/bin/sh\nfor a in "$@"; do case "$a" in app*) echo "$a" >>"%s/hosts";; esac; done\necho "active release=r1 health=200 up=01:02 listen=127.0.0.1:8383"\n' "$BATS_TEST_TMPDIR" >"$stub"
  chmod 755 "$stub"
  printf '# staging\napp1   # the first\n\n  app2\n' >"$dir/staging.hosts"
  TRIBIST_DEPLOY_DIR=$dir run make -s -C "$MAKE_DIR" status ENV=staging SSH="$stub"
  assert_success
  assert_line --regexp "^app1 +active release=r1 health=200 up=01:02 listen=127.0.0.1:8383$"
  assert_line --regexp "^app2 +active release=r1"
  TRIBIST_DEPLOY_DIR=$dir run make -s -C "$MAKE_DIR" status ENV=production SSH="$stub"
  assert_failure 2
  assert_output --partial "production.hosts (one ssh destination per line"
  printf 'app1\napp2; id\n' >"$dir/bad.hosts"
  TRIBIST_DEPLOY_DIR=$dir run make -s -C "$MAKE_DIR" status ENV=bad SSH="$stub"
  assert_failure 2
  assert_output --partial "bad.hosts line 2: one ssh destination per line"
  TRIBIST_DEPLOY_DIR=$dir run make -s -C "$MAKE_DIR" status ENV=staging HOST=app3 SSH="$stub"
  assert_failure 2
  assert_output --partial "and HOST/HOSTS both name hosts"
  TRIBIST_DEPLOY_DIR=$dir run make -s -C "$MAKE_DIR" status 'ENV=../x' SSH="$stub"
  assert_failure 2
  assert_output --partial "is not an environment name"
  run make -s -C "$MAKE_DIR" upgrade HOSTS="app1 app2" PARALLEL=0 SSH="$stub" BIN=/bin/true
  assert_failure 2
  assert_output --partial "PARALLEL must be a whole number from 1 to 99"
  # A shell's own ENV in the environment (sh reads it at start) is not a deployment's.
  rm -f "$BATS_TEST_TMPDIR/hosts"
  ENV=$dir/staging.hosts run make -s -C "$MAKE_DIR" status HOST=app9 SSH="$stub"
  assert_success
}

@test "tribist-host releases keep, list, restage: the last KEEP by releaseId, never the serving or the previous one" {
  new_api
  local v
  for v in r1 r2 r3 r4; do
    printf '#!/bin/sh\necho "server 1.%s (commit %s)"\n' "${v#r}" "$v" >"$API/$v"
  done
  chmod 750 "$API"/r?
  chown -R nobody:nogroup "$API"
  # r1 serves, then r2, r3, r4 in turn (as upgrades do: promote, then keep).
  for v in r1 r2 r3 r4; do
    as_nobody sh -c 'cd "$TRIBIST_API_DIR" && { [ ! -e server ] || ln -f server server.prev; } && ln -f "$1" server' sh "$v"
    run as_nobody "$HOST_BIN" releases keep "$v" 2 "alice@laptop (tribist)"
    assert_success
  done
  assert_output --partial "pruned release r2 (KEEP=2)"
  run as_nobody "$HOST_BIN" releases list
  assert_success
  assert_line --index 1 --regexp '^r4 +1\.4 +20[0-9-]+T[0-9:]+Z +alice@laptop \(tribist\) \[serving\]$'
  assert_line --index 2 --regexp '^r3 +1\.3 .* \[previous\]$'
  refute_output --partial r2
  # r1 is older than the last two, and neither serving nor previous: gone too.
  refute_output --regexp '^r1 '
  run as_nobody "$HOST_BIN" releases restage r3
  assert_success
  [[ "$output" =~ ^\.upload\.[A-Za-z0-9]{8}$ ]]
  [[ "$API/$output" -ef "$API/releases/r3" ]]
  run as_nobody "$HOST_BIN" releases restage r
  assert_failure
  assert_output --partial "'r' names 2 kept releases"
  run as_nobody "$HOST_BIN" releases restage ../x
  assert_failure 2
  run as_nobody "$HOST_BIN" releases keep '../../etc' 2 x
  assert_failure 2
}

@test "make never evaluates what is typed in ENV, LISTEN or the other deployment values" {
  local mark="$BATS_TEST_TMPDIR/ran"
  run make -s -C "$MAKE_DIR" help "ENV=\$(shell touch $mark-env)" "DEPLOY_ENV=\$(shell touch $mark-denv)" \
    "TRIBIST_SSH_SHARE=\$(shell touch $mark-share)" "LISTEN=\$(shell touch $mark-listen)" "TO=\$(shell touch $mark-to)"
  assert_success
  run make -n -C "$MAKE_DIR" run "LISTEN=127.0.0.1:1; touch $mark-run #"
  refute_output --partial "touch"
  [[ ! -e "$mark-env" && ! -e "$mark-denv" && ! -e "$mark-share" && ! -e "$mark-listen" && ! -e "$mark-to" ]]
}

@test "tribist-host releases keep after a rollback: no raw tool error, no temporary file left, strays pruned" {
  new_api
  printf '#!/bin/sh\necho "server 1.2 (commit r2)"\n' >"$API/r2"
  chmod 750 "$API/r2"
  chown -R nobody:nogroup "$API"
  # server (old) is kept; r2 is promoted and kept; a plain rollback swaps them; the kept old
  # release is kept again: it is the very file already there (the raw mv error before).
  run as_nobody "$HOST_BIN" releases keep old 5 alice
  assert_success
  as_nobody sh -c 'cd "$TRIBIST_API_DIR" && ln -f server server.prev && ln -f r2 server'
  run as_nobody "$HOST_BIN" releases keep r2 5 alice
  assert_success
  run as_nobody "$HOST_BIN" releases swap
  assert_success
  # A stray from an older run, and a note without its binary.
  as_nobody sh -c 'cd "$TRIBIST_API_DIR/releases" && ln -f ../server .old.tmp && echo x >lone.meta'
  run as_nobody "$HOST_BIN" releases keep old 5 alice
  assert_success
  refute_output --partial "same file"
  assert_output --partial "release old is kept already"
  run ls -A "$API/releases"
  assert_output "old
old.meta
r2
r2.meta"
  run as_nobody "$HOST_BIN" releases list
  assert_line --regexp '^old .*\[serving\]$'
  assert_line --regexp '^r2 .*\[previous\]$'
}

@test "tribist-host releases: a release is its bytes: identity says installed, new, conflict or kept-other; keep never replaces other bytes" {
  new_api
  run as_nobody "$HOST_BIN" releases keep old 5 alice
  assert_success
  # The same bytes as the installed binary; other bytes under a new id; other bytes under the
  # installed id (a build of uncommitted changes at the same commit).
  cp "$API/server" "$API/.upload.same01"
  printf '#!/bin/sh\necho "server 1.1 (commit new)"\n' >"$API/.upload.new001"
  printf '#!/bin/sh\n# other bytes\necho "server 1.0 (commit old)"\n' >"$API/.upload.other1"
  chmod 750 "$API"/.upload.*
  chown -R nobody:nogroup "$API"
  run as_nobody "$HOST_BIN" releases identity .upload.same01 old
  assert_output installed
  run as_nobody "$HOST_BIN" releases identity .upload.new001 new
  assert_output new
  run as_nobody "$HOST_BIN" releases identity .upload.other1 old
  assert_output "conflict: the installed binary is release old with other bytes"
  # Once release new is installed, other bytes under the kept id old may serve, never be kept.
  as_nobody sh -c 'cd "$TRIBIST_API_DIR" && ln -f server server.prev && ln -f .upload.new001 server'
  run as_nobody "$HOST_BIN" releases keep new 5 alice
  run as_nobody "$HOST_BIN" releases identity .upload.other1 old
  assert_output "kept-other: release old is kept with other bytes (releases/old)"
  as_nobody sh -c 'cd "$TRIBIST_API_DIR" && ln -f server server.prev && ln -f .upload.other1 server'
  run as_nobody "$HOST_BIN" releases keep old 5 alice
  assert_failure
  assert_output --partial "holds other bytes than the serving binary; not replacing it"
  run as_nobody cat "$API/releases/old"
  refute_output --partial "other bytes"
  run as_nobody "$HOST_BIN" releases list
  assert_line --regexp '^old .*\(not kept: releases/old holds other bytes\) \[serving\]$'
  # The same bytes as a kept release, in another file (shipped again): kept as that file.
  cp "$API/releases/new" "$API/.upload.again1"
  chown nobody:nogroup "$API/.upload.again1"
  as_nobody sh -c 'cd "$TRIBIST_API_DIR" && ln -f server server.prev && ln -f .upload.again1 server'
  run as_nobody "$HOST_BIN" releases keep new 5 alice
  assert_success
  [[ "$API/releases/new" -ef "$API/server" ]]
}

@test "tribist-host releases list: a binary promoted by hand (not kept) is listed as serving" {
  new_api
  run as_nobody "$HOST_BIN" releases list
  assert_success
  assert_line --index 0 --partial "no release kept yet"
  assert_line --regexp '^old +1\.0 +- +\(not kept: installed by hand or not yet healthy\) \[serving\]$'
  run as_nobody "$HOST_BIN" releases keep old 5 alice
  printf '#!/bin/sh\necho "server 1.3 (commit byhand)"\n' >"$API/server_new"
  chmod 750 "$API/server_new"
  chown nobody:nogroup "$API/server_new"
  run as_nobody "$HOST_BIN" releases promote
  assert_success
  run as_nobody "$HOST_BIN" releases list
  assert_line --regexp '^byhand +1\.3 .*\[serving\]$'
  assert_line --regexp '^old .*\[previous\]$'
}

@test "make with a mistyped target names the nearest one and exits 2" {
  run make -s -C "$BATS_TEST_DIRNAME/.." upgarde
  assert_failure 2
  assert_output --partial "there is no target upgarde (did you mean: make upgrade?); make help lists them all"
  refute_output --partial "No rule to make target"
}

@test "remote.sh never has a shell read a BIN the kernel refuses (asking its --version for the dirty-build warning)" {
  local dir
  dir=$(mktemp -d)
  # An x86-64 ELF header with nothing behind it: execve refuses it, and execvp's fallback
  # would run it through /bin/sh, whose '>' (byte 076 of the header) creates a file here.
  { printf '\177ELF\2\1\1\0\0\0\0\0\0\0\0\0\2\0\076\0'; head -c 200 /dev/zero; printf 'GLIBC_2.17\0x\0'; } >"$dir/server"
  chmod 755 "$dir/server"
  cd "$dir"
  run env BIN="$dir/server" HOST=root@nohost SSH=false "$BATS_TEST_DIRNAME/../sbin/remote.sh" upgrade
  assert_failure
  run ls -A "$dir"
  assert_output server
  rm -rf "$dir"
}

@test "tribist-host releases restage: a whole id wins over the longer ids it begins (a dirty build of the same commit)" {
  new_api
  run as_nobody "$HOST_BIN" releases keep old 5 alice
  printf '#!/bin/sh\necho "server 1.0 (commit old-dirty-0123456789ab)"\n' >"$API/server_new"
  chmod 750 "$API/server_new"
  chown nobody:nogroup "$API/server_new"
  as_nobody "$HOST_BIN" releases promote >/dev/null
  run as_nobody "$HOST_BIN" releases keep old-dirty-0123456789ab 5 alice
  run as_nobody "$HOST_BIN" releases restage old
  assert_success
  [[ "$API/$output" -ef "$API/releases/old" ]]
  run as_nobody "$HOST_BIN" releases restage ol
  assert_failure
  assert_output --partial "'ol' names 2 kept releases"
}

# check.sh's front door lines (make check DOMAIN=…), in a network and mount namespace of its
# own (unshare: root there, nobody here): lo up, an /etc/hosts of the test's, and listeners on
# 80 and 443 started in it, one of them a program named caddy.
@test "check.sh DOMAIN: 80/443 free or caddy's, else a FAIL naming the holder; DOMAIN here PASS, elsewhere WARN, nowhere FAIL" {
  unshare -rmn true 2>/dev/null || skip "no unprivileged user namespaces here (unshare -rmn)"
  local dir=$BATS_TEST_TMPDIR
  printf '127.0.0.1 here.example.test\n203.0.113.7 far.example.test\n' >"$dir/hosts"
  # Named caddy, as the kernel names a process: a link to python3 (which finds its library
  # through the link).
  ln -s "$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')" "$dir/caddy"
  # shellcheck disable=SC2016
  run unshare -rmn bash -c '
    dir=$1 check=$2
    ip link set lo up
    mount --bind "$dir/hosts" /etc/hosts
    listening() {
      local i
      for i in $(seq 100); do
        [[ -n "$(ss -Hltn "sport = :$1")" ]] && return 0
        sleep 0.05
      done
      echo "nothing listens on $1 after 5 s"
    }
    echo "== free"
    bash "$check" 127.0.0.1:1 any none here.example.test
    "$dir/caddy" -m http.server 80 --bind 127.0.0.1 >/dev/null 2>&1 &
    caddy=$!
    python3 -m http.server 443 --bind 127.0.0.1 >/dev/null 2>&1 &
    other=$!
    echo "holder=$other"
    listening 80
    listening 443
    echo "== taken"
    bash "$check" 127.0.0.1:1 any none far.example.test
    echo "rc=$?"
    kill "$caddy" "$other"
    wait
    echo "== nowhere"
    bash "$check" 127.0.0.1:1 any none nowhere.example.invalid
    echo "== misuse"
    bash "$check" 127.0.0.1:1 any none -x.example.test
    echo "rc=$?"
  ' _ "$dir" "$BATS_TEST_DIRNAME/../sbin/check.sh"
  local holder
  holder=$(sed -n 's/^holder=//p' <<<"$output")
  refute_output --partial "nothing listens"
  # Free: both ports; the name resolves to an address of this (namespace's) host.
  assert_equal "$(sed -n '/^== free/,/^holder=/p' <<<"$output" | grep -E '^(PASS|FAIL|WARN) (port|domain|caddy)')" \
    "$(printf '%s\n' 'PASS port 80: free (for the front door)' 'PASS port 443: free (for the front door)' \
      'PASS domain here.example.test: resolves to 127.0.0.1, an address of this host')
$(grep -E '^(PASS|WARN) caddy: ' <<<"$output" | head -n 1)"
  assert_line --regexp '^(PASS caddy: [0-9.:+~-]+ installed|PASS caddy: not installed; apt can install .*|WARN caddy: not installed, and apt knows no candidate .*)$'
  # Taken: caddy's port passes, another program's is named with what stops it; a name that
  # resolves elsewhere is only a warning.
  assert_line "PASS port 80: caddy's (the front door)"
  assert_line "FAIL port 443: taken by python3 (pid $holder, outside systemd); fix: stop it (kill $holder), the front door needs ports 80 and 443"
  assert_line "WARN domain far.example.test: resolves to 203.0.113.7, not an address of this host (normal behind NAT or a load balancer); the certificate authority must reach this host on ports 80 and 443 through it"
  assert_line rc=1
  assert_line "FAIL domain nowhere.example.invalid: does not resolve on this host (getent ahosts nowhere.example.invalid); fix: an A or AAAA record for nowhere.example.invalid pointing at this host (or at its load balancer), or DOMAIN=the name clients use"
  # A DOMAIN the deployer would never send: misuse, before any check.
  assert_equal "$(sed -n '/^== misuse/,$p' <<<"$output" | grep -cE '^(PASS|FAIL|WARN) ')" 0
  assert_line rc=2
}

@test "remote.sh: DOMAIN is checked by the host's rules, ACCESS=1 refuses SINCE; nothing is sent" {
  local stub="$BATS_TEST_TMPDIR/ssh"
  printf '#!/bin/sh\ntouch "%s/ssh-ran"\n' "$BATS_TEST_TMPDIR" >"$stub"
  chmod 755 "$stub"
  export SSH=$stub BIN=/bin/true
  HOST=app1 DOMAIN='api.example.com; id' run "$REMOTE" check
  assert_equal "$status" 2
  assert_output --partial "DOMAIN=\"api.example.com; id\" is refused: it has ';' (a host name has letters, digits, '-' and '.' only); run: make check HOST=app1 DOMAIN=api.example.com BIN=/bin/true (the name clients use; nothing was sent)"
  HOST=app1 DOMAIN='{env.HOME}.example' run "$REMOTE" check
  assert_equal "$status" 2
  HOST=app1 DOMAIN=localhost run "$REMOTE" check
  assert_equal "$status" 2
  assert_output --partial "at least two labels"
  HOST=app1 ACCESS=1 SINCE=today run "$REMOTE" logs
  assert_equal "$status" 2
  assert_output --partial "SINCE is for the service's journal; the access log takes LINES= and GREP="
  HOST=app1 ACCESS=yes run "$REMOTE" logs
  assert_equal "$status" 2
  assert_output --partial "ACCESS must be 1 (or empty)"
  [[ ! -e "$BATS_TEST_TMPDIR/ssh-ran" ]]
}

@test "make install DOMAIN=…: the front's values reach the kit literally and a hostile one is refused before ssh or a build" {
  local mark="$BATS_TEST_TMPDIR/ran" calls="$BATS_TEST_TMPDIR/calls"
  # An ssh that only notes it was called: nothing may be sent.
  printf '#!/bin/sh\necho called >>"%s"\nexit 7\n' "$calls" >"$BATS_TEST_TMPDIR/ssh"
  chmod 755 "$BATS_TEST_TMPDIR/ssh"
  run make -s -C "$MAKE_DIR" install HOST=app1 SSH="$BATS_TEST_TMPDIR/ssh" "DOMAIN=\$(shell touch $mark)x" ACME_EMAIL=ops@example.com
  assert_failure 2
  assert_output --partial "DOMAIN=\"\$(shell touch $mark)x\" is refused: it has '\$'"
  assert_output --partial "run: make install HOST=app1 DOMAIN=api.example.com ACME_EMAIL=ops@example.com (the name clients use; nothing was sent)"
  run env HOST=app1 SSH="$BATS_TEST_TMPDIR/ssh" DOMAIN=api.example.com KEY_FILE="$BATS_TEST_TMPDIR/k.pem" "$REMOTE" install
  assert_failure 2
  assert_output --partial "KEY_FILE=$BATS_TEST_TMPDIR/k.pem is given without CERT_FILE, its certificate"
  run env HOST=app1 SSH="$BATS_TEST_TMPDIR/ssh" DOMAIN=api.example.com ACME_EMAIL=ops@example.com CERT_FILE=/etc/hostname KEY_FILE=/etc/hostname "$REMOTE" install
  assert_failure 2
  assert_output --partial "ACME_* and CERT_FILE/KEY_FILE are both given"
  run env HOST=app1 SSH="$BATS_TEST_TMPDIR/ssh" DOMAIN=api.example.com CERT_FILE=/etc/hostname KEY_FILE=/etc/hostname "$REMOTE" install
  assert_failure 2
  assert_output --partial "CERT_FILE=/etc/hostname: it is not a PEM certificate"
  # A real certificate, but for another name: curl -k on the host would not tell.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=other.test \
    -addext subjectAltName=DNS:other.test,DNS:www.other.test \
    -keyout "$BATS_TEST_TMPDIR/okey.pem" -out "$BATS_TEST_TMPDIR/ocert.pem" 2>/dev/null
  run env HOST=app1 SSH="$BATS_TEST_TMPDIR/ssh" DOMAIN=api.newcomer.test CERT_FILE="$BATS_TEST_TMPDIR/ocert.pem" KEY_FILE="$BATS_TEST_TMPDIR/okey.pem" "$REMOTE" install
  assert_failure 2
  assert_output --partial "CERT_FILE=$BATS_TEST_TMPDIR/ocert.pem is a certificate for other.test, www.other.test, not for DOMAIN=api.newcomer.test: give the certificate for api.newcomer.test (its subjectAltName), or DOMAIN=other.test; run: make install HOST=app1 DOMAIN=api.newcomer.test CERT_FILE=path/to/fullchain.pem KEY_FILE=$BATS_TEST_TMPDIR/okey.pem"
  [[ ! -e "$mark" && ! -e "$calls" ]]
}

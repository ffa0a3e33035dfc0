#!/usr/bin/env bats
# End to end: the very Makefile a user runs, over real ssh/scp, against throwaway Debian hosts
# with a real systemd, sudo and PostgreSQL (tests/e2e/host.sh boots them with systemd-nspawn).
# The tests run in order and build on each other, as a user's deployments do.

load /usr/lib/bats/bats-support/load.bash
load /usr/lib/bats/bats-assert/load.bash

REPO=$(cd "$BATS_TEST_DIRNAME/.." && pwd)
HOSTSH="$REPO/tests/e2e/host.sh"
A=tribe2ea
B=tribe2eb
DB_PASSWORD=e2e-db-password-4711
TIMINGS=${TRIBIST_E2E_TIMINGS:-$REPO/target/e2e-timings.txt}

# Runs one shell command line on host $1 (pass it as one string to keep its quoting).
on() {
  local h=$1
  shift
  "$HOSTSH" ssh "$h" "cd / && $*"
}
on_host() { on "$A" "$@"; }

# make TARGET … as a user would; ssh reaches the hosts by name through host.sh's ssh_config.
deploy() {
  make -s -C "$REPO" "$@"
}
CFG=$("$HOSTSH" ssh-config)
# SSH_OPTS for user tribist with the deploy key.
as_tribist() { echo "-F $CFG -i $BATS_FILE_TMPDIR/deploy_key"; }

timed() {
  local what=$1 start rc=0
  shift
  start=$EPOCHREALTIME
  "$@" || rc=$?
  printf '%s: %.1f s\n' "$what" "$(bc <<<"$EPOCHREALTIME - $start")" | tee -a "$TIMINGS" >&3
  return "$rc"
}

release_of() { "$1" --version | sed -n 's/.*commit \([^)]*\)).*/\1/p'; }

serving() {
  on "${1:-$A}" "curl -sS --max-time 5 http://localhost:8383/health" |
    sed -n 's/.*"releaseId":"\([^"]*\)".*/\1/p'
}

# Starts load.py inside host $1's network namespace; stop it with stop_load.
start_load() {
  rm -f "$BATS_FILE_TMPDIR/stop-load"
  ip netns exec "tribist-$1" python3 "$REPO/tests/support/load.py" --concurrency 4 --max-seconds 90 \
    --stop-file "$BATS_FILE_TMPDIR/stop-load" \
    http://127.0.0.1:8383/health http://127.0.0.1:8383/livez >"$BATS_FILE_TMPDIR/load.json" \
    2>"$BATS_FILE_TMPDIR/load.err" &
  LOAD_PID=$!
  sleep 1
}

stop_load() {
  touch "$BATS_FILE_TMPDIR/stop-load"
  wait "$LOAD_PID" || echo "load.py failed: $(cat "$BATS_FILE_TMPDIR/load.err")" >&2
  cat "$BATS_FILE_TMPDIR/load.json"
}

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

# Waits (up to 20 s) until host $A's deploy lock names a holder.
wait_locked() {
  local i
  for i in $(seq 100); do
    on_host "test -s /home/tribist/api/.deploy.lock" && return 0
    sleep 0.2
  done
  return 1
}

install_db() { "$HOSTSH" db "$1" "$DB_PASSWORD"; }

setup_file() {
  "$HOSTSH" cleanup
  mkdir -p "$(dirname "$TIMINGS")"
  : >"$TIMINGS"
  make -s -C "$REPO" release
  "$REPO/tests/e2e/build-alt.sh" "$BATS_FILE_TMPDIR/server-b"
  # A "binary" that answers --version but exits at once when started.
  printf '#!/bin/sh\n[ "$1" = --version ] && { echo "server 9.9.9 (commit broken-release)"; exit 0; }\necho "cannot start" >&2\nexit 1\n' \
    >"$BATS_FILE_TMPDIR/server-bad"
  # One that starts but never becomes ready: systemd gives up after TimeoutStartSec=30s, so an
  # upgrade to it holds the deploy lock long enough to be refused or interrupted.
  printf '#!/bin/sh
[ "$1" = --version ] && { echo "server 9.9.9 (commit hanging-release)"; exit 0; }
exec sleep 600
' \
    >"$BATS_FILE_TMPDIR/server-hang"
  chmod 755 "$BATS_FILE_TMPDIR/server-bad" "$BATS_FILE_TMPDIR/server-hang"
  ssh-keygen -q -t ed25519 -N '' -C tribist-deploy -f "$BATS_FILE_TMPDIR/deploy_key"
  "$HOSTSH" up "$A"
  "$HOSTSH" up "$B"
  install_db "$A"
  install_db "$B"
}

teardown_file() {
  "$HOSTSH" down "$A"
  "$HOSTSH" down "$B"
}

@test "make install: /health is 200 on the host and PID is systemd's MainPID" {
  DATABASE_URL="postgres://tribist:$DB_PASSWORD@localhost:5432/tribist" \
    run timed "make install" deploy install HOST="root@$A" SSH_OPTS="-F $CFG" DEPLOY_KEY="$BATS_FILE_TMPDIR/deploy_key.pub"
  assert_success
  assert_output --partial "==> installed on root@$A"
  run on_host "curl -sS -o /dev/null -w '%{http_code}' http://localhost:8383/health"
  assert_output 200
  assert_equal "$(serving)" "$(release_of "$REPO/target/release/server")"
  assert_equal "$(on_host cat /home/tribist/api/PID)" "$(on_host systemctl show -p MainPID --value tribist)"
  assert_equal "$(on_host systemctl is-enabled tribist.service tribist.socket | sort -u)" enabled
  # The second host, for the rolling upgrades further down.
  DATABASE_URL="postgres://tribist:$DB_PASSWORD@localhost:5432/tribist" \
    run deploy install HOST="root@$B" SSH_OPTS="-F $CFG"
  assert_success
}

@test "the units verify cleanly and the service's exposure is at most 2.0" {
  run on_host "systemd-analyze verify /etc/systemd/system/tribist.service /etc/systemd/system/tribist.socket 2>&1"
  assert_success
  assert_output ""
  local score
  score=$(on_host "systemd-analyze security --offline=true /etc/systemd/system/tribist.service" |
    sed -n 's/.*exposure level for tribist.service: \([0-9.]*\).*/\1/p')
  echo "exposure: $score" | tee -a "$TIMINGS" >&3
  [[ -n "$score" ]] && (($(bc <<<"$score <= 2.0")))
}

@test "sudo: user tribist may run exactly systemctl start|stop|restart|status tribist" {
  run on_host "visudo -c"
  assert_success
  for verb in start stop restart status; do
    run on_host "sudo -l -U tribist /usr/bin/systemctl $verb tribist"
    assert_success
  done
  for cmd in "systemctl start sshd tribist" "systemctl start sshd" "systemctl enable tribist" \
    "systemctl restart tribist.service --now" "journalctl" "bash" "systemctl edit tribist"; do
    run on_host "sudo -l -U tribist /usr/bin/$cmd"
    assert_failure
  done
}

@test "permissions: environment file for root and the service only, binary not world-executable" {
  assert_equal "$(on_host "stat -c '%U:%G %a' /etc/tribist/env")" "root:tribist 640"
  assert_equal "$(on_host "stat -c '%U:%G %a' /home/tribist/api/server")" "tribist:tribist 750"
  assert_equal "$(on_host "stat -c '%U:%G %a' /home/tribist/bin/deploy.sh")" "root:root 755"
  run on_host "runuser -u nobody -- cat /etc/tribist/env"
  assert_failure
  # The password is in no process's argv and in no log line (the bracket keeps the pattern
  # itself from matching this command line).
  local pattern=${DB_PASSWORD/password/passwor[d]}
  run on_host "ps -eo args | grep -c -- '$pattern'"
  assert_output 0
  run on_host "journalctl --no-pager | grep -c -- '$pattern'"
  assert_output 0
}

@test "readiness: systemctl start returns once the server has said READY=1" {
  run on_host "systemctl stop tribist && systemctl start tribist && systemctl show -p StatusText --value tribist && test -s /home/tribist/api/PID && journalctl -u tribist -n 20 --no-pager | grep -c 'listening on'"
  assert_success
  assert_line --partial "serving on 127.0.0.1:8383"
}

@test "kill -9: the next connection waits in the socket's backlog and systemd's restart answers it" {
  local before after
  before=$(on_host systemctl show -p MainPID --value tribist)
  run on_host "kill -9 $before && curl -sS --max-time 20 -o /dev/null -w '%{http_code}' http://localhost:8383/livez"
  assert_success
  assert_output 200
  after=$(on_host systemctl show -p MainPID --value tribist)
  [[ "$after" != "$before" && "$after" != 0 ]]
  assert_equal "$(on_host cat /home/tribist/api/PID)" "$after"
}

@test "database faults on the host: stopped -> 503 within the timeout with a reason, back -> 200 by itself" {
  local pid
  pid=$(on_host systemctl show -p MainPID --value tribist)
  on_host "systemctl stop postgresql"
  run on_host "curl -sS --max-time 10 -w '\n%{http_code} %{time_total}' http://localhost:8383/health"
  on_host "systemctl start postgresql"
  assert_line --partial '"status":"fail"'
  assert_line --partial '"output":"postgres:'
  local code secs
  read -r code secs <<<"${lines[-1]}"
  assert_equal "$code" 503
  (($(bc <<<"$secs < 3.0"))) || fail "took $secs s (DB timeout 2 s)"
  run on_host "/home/tribist/bin/wait_for_it.sh -t 20"
  assert_success
  assert_equal "$(on_host systemctl show -p MainPID --value tribist)" "$pid"
}

@test "database rejecting the password on the host: 503 saying so, the password nowhere" {
  on_host "cp -p /etc/tribist/env /root/env.saved && sed -i 's/$DB_PASSWORD/wrong-pass-0815/' /etc/tribist/env && systemctl restart tribist"
  run on_host "curl -sS --max-time 10 -w '\n%{http_code}\n' http://localhost:8383/health; journalctl -u tribist -n 20 --no-pager"
  on_host "cp -p /root/env.saved /etc/tribist/env && systemctl restart tribist"
  assert_line 503
  assert_output --partial 'password authentication failed for user'
  refute_output --partial wrong-pass-0815
  refute_output --partial "$DB_PASSWORD"
  run on_host "/home/tribist/bin/wait_for_it.sh -t 20"
  assert_success
}

@test "make upgrade under load: the new releaseId serves and no request fails" {
  start_load "$A"
  run timed "make upgrade" deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$BATS_FILE_TMPDIR/server-b"
  local load
  load=$(stop_load)
  echo "load during upgrade: $load" | tee -a "$TIMINGS" >&3
  assert_success
  assert_output --partial "upgraded: release $(release_of "$BATS_FILE_TMPDIR/server-b") is serving"
  assert_equal "$(serving)" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
  assert_equal "$(json_field failed <<<"$load")" 0
  (($(json_field sent <<<"$load") > 50))
  assert_equal "$(on_host /home/tribist/api/server.prev --version)" "$("$REPO/target/release/server" --version)"
}

@test "a damaged upload never becomes server_new and nothing changes" {
  on_host "head -c 1000 /home/tribist/api/server >/home/tribist/api/.server_upload.partial"
  run on_host "/home/tribist/bin/deploy.sh upgrade .server_upload.partial $(sha256sum "$BATS_FILE_TMPDIR/server-b" | cut -d' ' -f1)"
  assert_failure
  assert_output --partial "checksum mismatch"
  run on_host "ls -a /home/tribist/api"
  refute_output --partial server_new
  refute_output --partial .server_upload
  assert_equal "$(serving)" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
}

@test "make rollback: the previous release serves again" {
  run deploy rollback HOST="root@$A" SSH_OPTS="-F $CFG"
  assert_success
  assert_equal "$(serving)" "$(release_of "$REPO/target/release/server")"
}

@test "make upgrade as tribist@host with the DEPLOY_KEY, through the sudoers rights only" {
  run timed "make upgrade as tribist" deploy upgrade HOST="tribist@$A" SSH_OPTS="$(as_tribist)" \
    BIN="$BATS_FILE_TMPDIR/server-b"
  assert_success
  assert_equal "$(serving)" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
}

@test "make upgrade to a binary that exits at once fails, says why, and the previous release serves" {
  run timed "failed make upgrade with rollback" deploy upgrade HOST="tribist@$A" SSH_OPTS="$(as_tribist)" \
    BIN="$BATS_FILE_TMPDIR/server-bad"
  assert_failure
  assert_output --partial "'systemctl restart tribist' failed"
  # The log excerpt shows how it died. (Its own last stderr line is not asserted: a process
  # that exits within microseconds can beat journald to it.)
  assert_output --partial "status=1/FAILURE"
  assert_output --partial "rolled back: release $(release_of "$BATS_FILE_TMPDIR/server-b") is serving again"
  assert_output --partial "make upgrade: FAILED"
  assert_equal "$(serving)" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
  assert_equal "$(on_host systemctl is-active tribist)" active
}

@test "deploy lock: a second upgrade is refused with the holder; a failed upgrade rolls back and releases it" {
  deploy upgrade HOST="tribist@$A" SSH_OPTS="$(as_tribist)" BIN="$BATS_FILE_TMPDIR/server-hang" \
    DEPLOYER=alice@laptop >"$BATS_FILE_TMPDIR/bad.out" 2>&1 &
  local bad=$!
  wait_locked
  run deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$BATS_FILE_TMPDIR/server-b" DEPLOYER=bob@desk
  assert_failure
  assert_output --partial "refused: another deployment holds the lock"
  assert_output --partial "upgrade by alice@laptop as tribist@"
  assert_output --partial "since 20"
  local start=$EPOCHREALTIME rc=0
  wait "$bad" || rc=$?
  run cat "$BATS_FILE_TMPDIR/bad.out"
  ((rc != 0))
  assert_output --partial "'systemctl restart tribist' failed"
  assert_output --partial "rolled back"
  assert_output --partial "make upgrade: FAILED"
  assert_equal "$(serving)" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
  # Released: the next deployment goes ahead.
  run deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$REPO/target/release/server"
  assert_success
}

@test "deploy lock: an interrupted upgrade (Ctrl-C) and a broken lock both roll back and release" {
  local before
  before=$(serving)
  # SIGINT, as ssh -t delivers Ctrl-C to deploy.sh on the host.
  deploy upgrade HOST="tribist@$A" SSH_OPTS="$(as_tribist)" BIN="$BATS_FILE_TMPDIR/server-hang" \
    >"$BATS_FILE_TMPDIR/int.out" 2>&1 &
  local job=$!
  wait_locked
  sleep 1
  on_host "pkill -INT -f 'deploy.sh --by .* upgrade'"
  run wait "$job"
  assert_failure
  run cat "$BATS_FILE_TMPDIR/int.out"
  assert_output --partial "interrupted"
  assert_equal "$(serving)" "$before"
  # `make unlock`: breaking the lock stops its holder, which rolls back in the same way.
  deploy upgrade HOST="tribist@$A" SSH_OPTS="$(as_tribist)" BIN="$BATS_FILE_TMPDIR/server-hang" \
    >"$BATS_FILE_TMPDIR/unlock.out" 2>&1 &
  job=$!
  wait_locked
  run deploy unlock HOST="root@$A" SSH_OPTS="-F $CFG"
  assert_success
  assert_output --partial "breaking the deploy lock held by: upgrade by"
  run wait "$job"
  assert_failure
  assert_equal "$(serving)" "$before"
  assert_equal "$(on_host systemctl is-active tribist)" active
}

@test "audit log: one line per install, upgrade and rollback with who, releases and result" {
  local a b
  a=$(release_of "$REPO/target/release/server")
  b=$(release_of "$BATS_FILE_TMPDIR/server-b")
  run on_host "cat /home/tribist/deploy-audit.log"
  assert_line --regexp "action=install by=\".* as root@.*\" from=none to=$a result=ok"
  assert_line --regexp "action=upgrade .* from=$a to=$b result=ok"
  assert_line --regexp "action=rollback .* from=$b to=$a result=ok"
  assert_line --regexp "action=upgrade by=\"alice@laptop as tribist@.*\" from=$b to=hanging-release result=failed-rolled-back"
  assert_line --regexp "action=upgrade .* result=refused"
  assert_line --partial "result=interrupted-rolled-back"
  refute_output --partial "$DB_PASSWORD"
  run on_host "journalctl -t tribist-deploy --no-pager | grep -c 'action=upgrade'"
  refute_output 0
}

@test "watchdog: a wedged server (SIGSTOP) is killed and restarted by systemd" {
  local before
  before=$(on_host systemctl show -p MainPID --value tribist)
  [[ "$before" =~ ^[1-9][0-9]*$ ]] || fail "no server running (MainPID=$before)"
  on_host "kill -STOP $before"
  run on_host "for i in \$(seq 120); do p=\$(systemctl show -p MainPID --value tribist); [ \"\$p\" != $before ] && [ \"\$p\" != 0 ] && curl -fsS -o /dev/null --max-time 2 http://localhost:8383/health && exit 0; sleep 0.5; done; exit 1"
  assert_success
  run on_host "journalctl -u tribist --no-pager | grep -c 'Watchdog timeout'"
  refute_output 0
}

@test "rolling upgrade over HOSTS stops at the first failing host, rolled back, the rest untouched" {
  local a b
  a=$(serving "$A")
  b=$(serving "$B")
  run deploy upgrade HOSTS="tribist@$A root@$B" SSH_OPTS="$(as_tribist)" BIN="$BATS_FILE_TMPDIR/server-bad"
  assert_failure
  assert_output --partial "stopped at tribist@$A (rolled back)"
  assert_output --regexp "tribist@$A +$a"
  assert_output --regexp "root@$B +$b"
  refute_output --partial "uploading $BATS_FILE_TMPDIR/server-bad to root@$B"
  assert_equal "$(serving "$A")" "$a"
  assert_equal "$(serving "$B")" "$b"
  # And a good release goes to every host, one after the other.
  run deploy upgrade HOSTS="tribist@$A root@$B" SSH_OPTS="$(as_tribist)" BIN="$BATS_FILE_TMPDIR/server-b"
  assert_success
  assert_equal "$(serving "$A")" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
  assert_equal "$(serving "$B")" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
}

@test "a second make install keeps the edited environment file" {
  on_host "echo 'TRIBIST_WORKERS=3' >>/etc/tribist/env"
  DATABASE_URL="postgres://tribist:overwritten@localhost:5432/tribist" run deploy install HOST="root@$A" SSH_OPTS="-F $CFG"
  assert_success
  assert_output --partial "keeping the existing /etc/tribist/env"
  run on_host cat /etc/tribist/env
  assert_output --partial "TRIBIST_WORKERS=3"
  assert_output --partial "$DB_PASSWORD"
  refute_output --partial overwritten
  run on_host "journalctl -u tribist --no-pager -n 20 | grep -c '3 workers'"
  refute_output 0
}

@test "make status and make logs report the service" {
  run deploy status HOST="root@$A" SSH_OPTS="-F $CFG"
  assert_success
  assert_output --partial "ActiveState=active"
  assert_output --partial '"status":"pass"'
  run deploy logs HOST="tribist@$A" SSH_OPTS="$(as_tribist)"
  assert_output --partial "listening on"
}

@test "after the host reboots, the enabled service is back and healthy" {
  "$HOSTSH" reboot "$A"
  run on_host "/home/tribist/bin/wait_for_it.sh -t 60"
  assert_success
  run on_host "systemctl is-active tribist.socket && curl -fsS -o /dev/null http://localhost:8383/health && systemctl show -p MainPID --value tribist"
  assert_success
  assert_equal "$(on_host cat /home/tribist/api/PID)" "${lines[-1]}"
}

@test "make uninstall keeps the configuration unless PURGE=1" {
  run deploy uninstall HOST="root@$A" SSH_OPTS="-F $CFG"
  assert_success
  run on_host "systemctl is-active tribist.service tribist.socket"
  assert_failure
  on_host "test -f /etc/tribist/env && test -x /home/tribist/api/server"
  run deploy uninstall HOST="root@$A" SSH_OPTS="-F $CFG" PURGE=1
  assert_success
  run on_host "test -e /etc/tribist || id tribist"
  assert_failure
}

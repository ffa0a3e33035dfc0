#!/usr/bin/env bats
# End to end: the very Makefile a user runs, over real ssh/scp, against a throwaway Debian host
# with a real systemd, sudo and PostgreSQL (tests/e2e/host.sh boots it with systemd-nspawn).
# The tests run in order and build on each other, as a user's deployments do.

load /usr/lib/bats/bats-support/load.bash
load /usr/lib/bats/bats-assert/load.bash

REPO=$(cd "$BATS_TEST_DIRNAME/.." && pwd)
HOSTSH="$REPO/tests/e2e/host.sh"
NAME=tribe2e
DB_PASSWORD=e2e-db-password-4711
CACHE=${TRIBIST_E2E_CACHE:-/var/cache/tribist-e2e}
TIMINGS=${TRIBIST_E2E_TIMINGS:-$REPO/target/e2e-timings.txt}

# Runs one shell command line on the host (pass it as one string to keep its quoting).
on_host() { "$HOSTSH" ssh "$NAME" "cd / && $*"; }

# make TARGET … against the test host, as a user would (SSH/SCP reach its namespace).
deploy() {
  make -s -C "$REPO" "$@" SSH="$("$HOSTSH" ssh-cmd "$NAME")" SCP="$("$HOSTSH" scp-cmd "$NAME")"
}

timed() {
  local what=$1 start
  shift
  start=$EPOCHREALTIME
  "$@"
  local rc=$?
  printf '%s: %.1f s\n' "$what" "$(bc <<<"$EPOCHREALTIME - $start")" | tee -a "$TIMINGS" >&3
  return "$rc"
}

release_of() { "$1" --version | sed -n 's/.*commit \([^)]*\)).*/\1/p'; }

serving() { on_host "curl -sS --max-time 5 http://localhost:8383/health" | sed -n 's/.*"releaseId":"\([^"]*\)".*/\1/p'; }

setup_file() {
  "$HOSTSH" cleanup
  mkdir -p "$(dirname "$TIMINGS")"
  : >"$TIMINGS"
  make -s -C "$REPO" release
  # A binary built from a different commit: a clone with one more (empty) commit.
  local alt="$BATS_FILE_TMPDIR/alt"
  git clone -q --shared "$REPO" "$alt"
  git -C "$alt" -c user.name=e2e -c user.email=e2e@localhost commit -q --allow-empty -m "e2e: another release"
  (cd "$alt" && CARGO_TARGET_DIR="$CACHE/target-alt" cargo build -q --release --locked)
  cp "$CACHE/target-alt/release/server" "$BATS_FILE_TMPDIR/server-b"
  # A "binary" that answers --version but exits at once when started.
  printf '#!/bin/sh\n[ "$1" = --version ] && { echo "server 9.9.9 (commit broken-release)"; exit 0; }\necho "cannot start" >&2\nexit 1\n' \
    >"$BATS_FILE_TMPDIR/server-bad"
  chmod 755 "$BATS_FILE_TMPDIR/server-bad"
  ssh-keygen -q -t ed25519 -N '' -C tribist-deploy -f "$BATS_FILE_TMPDIR/deploy_key"
  "$HOSTSH" up "$NAME"
  on_host "runuser -u postgres -- psql -q -c \"CREATE ROLE tribist LOGIN PASSWORD '$DB_PASSWORD'\" -c 'CREATE DATABASE tribist OWNER tribist'"
}

teardown_file() {
  "$HOSTSH" down "$NAME"
}

@test "make install: /health is 200 on the host and PID is systemd's MainPID" {
  DATABASE_URL="postgres://tribist:$DB_PASSWORD@localhost:5432/tribist" \
    run timed "make install" deploy install HOST=root@127.0.0.1 DEPLOY_KEY="$BATS_FILE_TMPDIR/deploy_key.pub"
  assert_success
  assert_output --partial "==> installed on root@127.0.0.1"
  run on_host "curl -sS -o /dev/null -w '%{http_code}' http://localhost:8383/health"
  assert_output 200
  assert_equal "$(serving)" "$(release_of "$REPO/target/release/server")"
  assert_equal "$(on_host cat /home/tribist/api/PID)" "$(on_host systemctl show -p MainPID --value tribist)"
  assert_equal "$(on_host systemctl is-enabled tribist)" enabled
}

@test "the unit verifies cleanly and its exposure is at most 2.0" {
  run on_host "systemd-analyze verify /etc/systemd/system/tribist.service 2>&1"
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

@test "kill -9 of the server: systemd brings it back healthy" {
  local before after
  before=$(on_host systemctl show -p MainPID --value tribist)
  on_host "kill -9 $before"
  run on_host "/home/tribist/bin/wait_for_it.sh -t 30 && systemctl show -p MainPID --value tribist"
  assert_success
  after=${lines[-1]}
  [[ "$after" != "$before" && "$after" != 0 ]]
  assert_equal "$(on_host cat /home/tribist/api/PID)" "$after"
}

@test "make upgrade: a binary from another commit serves its releaseId" {
  run timed "make upgrade" deploy upgrade HOST=root@127.0.0.1 BIN="$BATS_FILE_TMPDIR/server-b"
  assert_success
  assert_output --partial "upgraded: release $(release_of "$BATS_FILE_TMPDIR/server-b") is serving"
  assert_equal "$(serving)" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
  assert_equal "$(on_host /home/tribist/api/server.prev --version)" "$("$REPO/target/release/server" --version)"
}

@test "a damaged upload never becomes server_new and nothing changes" {
  on_host "head -c 1000 /home/tribist/api/server >/home/tribist/api/.server_upload.partial"
  run on_host "/home/tribist/bin/deploy.sh upgrade .server_upload.partial $(sha256sum "$BATS_FILE_TMPDIR/server-b" | cut -d' ' -f1)"
  assert_failure
  assert_output --partial "checksum mismatch"
  run on_host "ls /home/tribist/api"
  refute_output --partial server_new
  refute_output --partial .server_upload
  assert_equal "$(serving)" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
}

@test "make rollback: the previous release serves again" {
  run deploy rollback HOST=root@127.0.0.1
  assert_success
  assert_equal "$(serving)" "$(release_of "$REPO/target/release/server")"
}

@test "make upgrade as tribist@host with the DEPLOY_KEY, through the sudoers rights only" {
  run timed "make upgrade as tribist" deploy upgrade HOST=tribist@127.0.0.1 \
    SSH_OPTS="-i $BATS_FILE_TMPDIR/deploy_key" BIN="$BATS_FILE_TMPDIR/server-b"
  assert_success
  assert_equal "$(serving)" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
}

@test "make upgrade to a binary that exits at once fails, says why, and the previous release serves" {
  run timed "failed make upgrade with rollback" deploy upgrade HOST=tribist@127.0.0.1 \
    SSH_OPTS="-i $BATS_FILE_TMPDIR/deploy_key" BIN="$BATS_FILE_TMPDIR/server-bad"
  assert_failure
  assert_output --partial "did not become healthy"
  assert_output --partial "rolled back"
  assert_output --partial "make upgrade: FAILED"
  assert_equal "$(serving)" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
  assert_equal "$(on_host systemctl is-active tribist)" active
}

@test "a second make install keeps the edited environment file" {
  on_host "echo 'TRIBIST_WORKERS=3' >>/etc/tribist/env"
  DATABASE_URL="postgres://tribist:overwritten@localhost:5432/tribist" run deploy install HOST=root@127.0.0.1
  assert_success
  assert_output --partial "keeping the existing /etc/tribist/env"
  run on_host cat /etc/tribist/env
  assert_output --partial "TRIBIST_WORKERS=3"
  assert_output --partial "$DB_PASSWORD"
  refute_output --partial overwritten
  run on_host "journalctl -u tribist --no-pager -n 5 | grep -c '3 workers'"
  refute_output 0
}

@test "make status and make logs report the service" {
  run deploy status HOST=root@127.0.0.1
  assert_success
  assert_output --partial "ActiveState=active"
  assert_output --partial '"status":"pass"'
  run deploy logs HOST=tribist@127.0.0.1 SSH_OPTS="-i $BATS_FILE_TMPDIR/deploy_key"
  assert_output --partial "listening on"
}

@test "after the host reboots, the enabled service is back and healthy" {
  "$HOSTSH" reboot "$NAME"
  run on_host "/home/tribist/bin/wait_for_it.sh -t 60"
  assert_success
  assert_equal "$(on_host cat /home/tribist/api/PID)" "$(on_host systemctl show -p MainPID --value tribist)"
}

@test "make uninstall keeps the configuration unless PURGE=1" {
  run deploy uninstall HOST=root@127.0.0.1
  assert_success
  run on_host "systemctl is-active tribist"
  assert_failure
  on_host "test -f /etc/tribist/env && test -x /home/tribist/api/server"
  run deploy uninstall HOST=root@127.0.0.1 PURGE=1
  assert_success
  run on_host "test -e /etc/tribist || id tribist"
  assert_failure
}

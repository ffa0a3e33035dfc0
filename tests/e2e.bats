#!/usr/bin/env bats
# End to end: the very Makefile a user runs, over real ssh/scp, against throwaway Debian hosts
# with a real systemd, sudo and PostgreSQL (tests/e2e/host.sh boots them with systemd-nspawn).
# The tests run in order and build on each other, as a user's deployments do.

load /usr/lib/bats/bats-support/load.bash
load /usr/lib/bats/bats-assert/load.bash

REPO=$(cd "$BATS_TEST_DIRNAME/.." && pwd)
HOSTSH="$REPO/tests/e2e/host.sh"
# What make release builds and make install/upgrade ship by default.
RELEASE="$REPO/${RELEASE_BIN:-target/x86_64-unknown-linux-gnu/release/server}"
# TRIBIST_E2E_NAMES (with TRIBIST_E2E_RUN and TRIBIST_E2E_NETNS, see host.sh) runs a second
# suite beside this one.
A=${TRIBIST_E2E_NAMES:-tribe2e}a
B=${TRIBIST_E2E_NAMES:-tribe2e}b
# A fresh host for a newcomer's first day (the README's walk), then stop/start, status and logs.
C=${TRIBIST_E2E_NAMES:-tribe2e}c
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

# The releaseId host $1 (default A) serves, on whatever address its socket listens on.
serving() {
  on "${1:-$A}" "/home/tribist/bin/tribist-host serving"
}

# Starts load.py inside host $1's network namespace; stop it with stop_load.
start_load() {
  rm -f "$BATS_FILE_TMPDIR/stop-load"
  ip netns exec "${TRIBIST_E2E_NETNS:-tribist}-$1" python3 "$REPO/tests/support/load.py" --concurrency 4 --max-seconds 90 \
    --stop-file "$BATS_FILE_TMPDIR/stop-load" \
    http://127.0.0.1:8383/health http://127.0.0.1:8383/livez >"$BATS_FILE_TMPDIR/load.json" \
    2>"$BATS_FILE_TMPDIR/load.err" &
  LOAD_PID=$!
  sleep 1
}

# Prints load.py's JSON once it has written it (called in $(…), so it cannot `wait`).
stop_load() {
  touch "$BATS_FILE_TMPDIR/stop-load"
  local i
  for i in $(seq 100); do
    json_field sent <"$BATS_FILE_TMPDIR/load.json" >/dev/null 2>&1 && break
    sleep 0.1
  done
  json_field sent <"$BATS_FILE_TMPDIR/load.json" >/dev/null 2>&1 ||
    echo "load.py wrote no result: $(cat "$BATS_FILE_TMPDIR/load.err")" >&2
  cat "$BATS_FILE_TMPDIR/load.json"
}

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

# Waits (up to 20 s) until host $A's deploy lock names a holder (root's note or tribist's).
wait_locked() {
  local i
  for i in $(seq 100); do
    on_host "test -s /var/lib/tribist-deploy/holder || test -s /home/tribist/api/.deploy.holder" && return 0
    sleep 0.2
  done
  return 1
}

install_db() { "$HOSTSH" db "$1" "$DB_PASSWORD"; }

# Waits (up to 30 s) until the upgrade writing to file $1 passed its preflight and switches
# (tribist-host says so just before), then until systemd is handing over or starting.
wait_switching() {
  local i
  for i in $(seq 300); do
    grep -q "switching: " "$1" 2>/dev/null && break
    sleep 0.1
  done
  grep -q "switching: " "$1" || fail "the upgrade never switched; it said: $(cat "$1")"
  for i in $(seq 100); do
    [[ "$(on_host systemctl show -p ActiveState --value tribist)" =~ ^(activating|reloading)$ ]] && return 0
    sleep 0.1
  done
  fail "tribist is not switching; the upgrade said: $(cat "$1")"
}

# Runs "$@" under a pseudo-terminal, as a person at a terminal does (output has \r\n); its
# keyboard is the fifo $BATS_TEST_TMPDIR/keys (see press).
at_terminal() {
  local keys=$BATS_TEST_TMPDIR/keys rc=0
  [[ -p "$keys" ]] || mkfifo "$keys"
  exec 7<>"$keys"
  SHELL=/bin/bash script -qfec "$(printf '%q ' "$@")" /dev/null <&7 || rc=$?
  exec 7<&-
  return "$rc"
}
# Opening the fifo waits for its reader: bounded, so a command that has already ended fails the
# test instead of hanging it.
press() {
  timeout 10 bash -c 'printf "%s" "$1" >"$2"' press "$1" "$BATS_TEST_TMPDIR/keys" ||
    fail "nobody reads the keyboard any more: the command at the terminal had ended"
}

# Runs one shell command line as user tribist on host $A, with the deploy key (as an attacker
# holding it would).
as_tribist_on_host() {
  ssh -F "$CFG" -i "$BATS_FILE_TMPDIR/deploy_key" "tribist@$A" "$1"
}

# Root-owned files and directories a hostile tribist would aim at: owner, mode, size, content.
# (Debian 13's minimal image has no /etc/cron.d: ls says so, the same before and after.)
snapshot() {
  on_host 'for p in /root/canary /root/.ssh/authorized_keys /etc/shadow /etc/passwd /etc/group /etc/sudoers /etc/sudoers.d/tribist /etc/ssh/sshd_config /etc/tribist/env; do printf "%s %s " "$p" "$(stat -c "%U:%G %a %s" "$p")"; sha256sum <"$p" | cut -c1-64; done; for d in /root /etc /etc/systemd/system /var/lib /home; do printf "%s %s\n" "$d" "$(stat -c "%U:%G %a" "$d")"; done; ls -A /root /etc/cron.d 2>&1 || true'
}

setup_file() {
  "$HOSTSH" cleanup
  mkdir -p "$(dirname "$TIMINGS")"
  : >"$TIMINGS"
  make -s -C "$REPO" release
  "$REPO/tests/e2e/build-alt.sh" "$BATS_FILE_TMPDIR/server-b" "$BATS_FILE_TMPDIR/server-dirty"
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
  # Two that pass for a real release built on host A's copy of the first release (RELEASE): one
  # that hangs only when systemd starts it (what a preflight cannot see), one that answers
  # /health 503 (its database password is wrong). Their ids are RELEASE's, a kept release
  # with other bytes, so they may serve but are never kept; they are shipped while another
  # release serves (other bytes under the installed binary's id are refused).
  printf '#!/bin/sh\n[ -n "$NOTIFY_SOCKET" ] && exec sleep 600\nexec /usr/local/lib/tribist-test/server-a "$@"\n' \
    >"$BATS_FILE_TMPDIR/server-systemd-hang"
  printf '#!/bin/sh\nDATABASE_URL=postgres://tribist:wrong@localhost:5432/tribist exec /usr/local/lib/tribist-test/server-a "$@"\n' \
    >"$BATS_FILE_TMPDIR/server-503"
  # A release from before handovers: its --version lacks the line that offers one. It runs
  # the real server under its own path (exec -a), as a wrapper must for later handovers.
  printf '#!/bin/bash\nif [ "$1" = --version ]; then /usr/local/lib/tribist-test/server-a --version | head -n 1; exit 0; fi\nif [ "$1" = --describe ]; then echo "server: error: unexpected argument \\"--describe\\"" >&2; exit 2; fi\nexec -a "$0" /usr/local/lib/tribist-test/server-a "$@"\n' \
    >"$BATS_FILE_TMPDIR/server-no-handover"
  chmod 755 "$BATS_FILE_TMPDIR/server-bad" "$BATS_FILE_TMPDIR/server-hang" "$BATS_FILE_TMPDIR/server-systemd-hang" \
    "$BATS_FILE_TMPDIR/server-503" "$BATS_FILE_TMPDIR/server-no-handover"
  # A path with a space in it, as a user's may have.
  mkdir -p "$BATS_FILE_TMPDIR/my build"
  cp "$BATS_FILE_TMPDIR/server-b" "$BATS_FILE_TMPDIR/my build/server"
  ssh-keygen -q -t ed25519 -N '' -C tribist-deploy -f "$BATS_FILE_TMPDIR/deploy_key"
  (umask 077 && echo "postgres://tribist:$DB_PASSWORD@localhost:5432/tribist" >"$BATS_FILE_TMPDIR/database_url")
  # Host B's database password holds $ \ ' " # % and spaces, one of them trailing; its URL (in
  # libpq's key=value form, with ' and \ escaped) ends with a space too.
  printf '%s' "host=localhost dbname=tribist user=tribist password='p\$ \\\\ \\' \" # %x ' " >"$BATS_FILE_TMPDIR/database_url_b"
  "$HOSTSH" up "$A"
  "$HOSTSH" up "$B"
  "$HOSTSH" up "$C"
  "$HOSTSH" ssh "$A" "install -d /usr/local/lib/tribist-test && cat >/usr/local/lib/tribist-test/server && chmod 755 /usr/local/lib/tribist-test/server" \
    <"$BATS_FILE_TMPDIR/server-b"
  "$HOSTSH" ssh "$A" "cat >/usr/local/lib/tribist-test/server-a && chmod 755 /usr/local/lib/tribist-test/server-a" <"$RELEASE"
  install_db "$A"
  install_db "$B"
  install_db "$C"
  "$HOSTSH" ssh "$B" "runuser -u postgres -- psql -q -v ON_ERROR_STOP=1" <<<"ALTER ROLE tribist PASSWORD 'p\$ \\ '' \" # %x ';"
}

teardown_file() {
  "$HOSTSH" down "$A"
  "$HOSTSH" down "$B"
  "$HOSTSH" down "$C"
}

# Runs make TARGET … at a pseudo-terminal, as a person types it, on host $C as root.
on_c() { at_terminal make -s -C "$REPO" "$1" HOST="root@$C" SSH_OPTS="-F $CFG" "${@:2}"; }
as_tribist_on_c() { ssh -F "$CFG" -i "$BATS_FILE_TMPDIR/deploy_key" "tribist@$C" "$1"; }
# make exits 2 for any failure and names the kit's own status on its last line; a script that
# needs the status itself runs sbin/remote.sh with the same variables, as this does.
kit_c() { env HOST="root@$C" SSH_OPTS="-F $CFG" "${@:2}" "$REPO/sbin/remote.sh" "$1"; }

# Waits (up to 20 s) until file $1 holds text $2 (what a person waits for on the screen).
wait_for_text() {
  local i
  for i in $(seq 200); do
    grep -qF -- "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "never saw '$2'; the screen said: $(cat "$1")"
}

@test "the shipped binary is x86-64 and needs at most glibc 2.17 (objdump -T)" {
  run objdump -f "$RELEASE"
  assert_output --partial "file format elf64-x86-64"
  local highest
  highest=$(objdump -T "$RELEASE" | grep -oE 'GLIBC_[0-9]+\.[0-9]+(\.[0-9]+)?' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
  echo "highest GLIBC_ version needed: $highest" | tee -a "$TIMINGS" >&3
  [[ "$(printf '%s\n2.17\n' "$highest" | sort -V | tail -n 1)" == 2.17 ]]
}

@test "a newcomer's first day, as the README walks it: a refused install repaired by the command it names" {
  local a b url=$BATS_TEST_TMPDIR/tribist-db wrong=$BATS_TEST_TMPDIR/wrong-db start
  a=$(release_of "$RELEASE")
  b=$(release_of "$BATS_FILE_TMPDIR/server-b")
  # Before anything: not installed, said in one line with its own exit status.
  run on_c status
  assert_failure 2
  assert_output --regexp "^root@$C +not installed \(on $C: tribist is not installed"
  assert_output --partial "[Makefile:"
  assert_output --partial "status] Error 5"
  run kit_c status
  assert_failure 5
  # The URL file as the README makes it (0600), and a mistyped one left world-readable.
  (umask 077 && echo "postgres://tribist:$DB_PASSWORD@localhost:5432/tribist" >"$url")
  echo "postgres://tribist:mistyped-4711@localhost:5432/tribist" >"$wrong"
  chmod 644 "$wrong"
  run on_c check DATABASE_URL_FILE="$wrong"
  assert_failure
  assert_output --partial "DATABASE_URL_FILE=$wrong can be read by other users of this machine"
  assert_output --regexp "FAIL database: .*password authentication failed"
  # Enter at the prompt: one instruction, nothing installed.
  on_c install >"$BATS_TEST_TMPDIR/prompt.out" 2>&1 &
  local job=$! rc=0
  wait_for_text "$BATS_TEST_TMPDIR/prompt.out" "DATABASE_URL for root@$C"
  press $'\r'
  wait "$job" || rc=$?
  run cat "$BATS_TEST_TMPDIR/prompt.out"
  assert_equal "$rc" 2
  assert_output --partial "install] Error 2"
  assert_output --partial "no database URL given, and root@$C has none yet: nothing was sent. Put it in a file (chmod 600) and run: make install HOST=root@$C DATABASE_URL_FILE=path/to/database_url SSH_OPTS=-F\\ "
  run on "$C" "id tribist"
  assert_failure
  # The wrong password: refused at once (a definite answer, not the 10 s preflight), with the
  # command that fixes it, and nothing that needs undoing.
  start=$EPOCHREALTIME
  run on_c install DATABASE_URL_FILE="$wrong" DEPLOY_KEY="$BATS_FILE_TMPDIR/deploy_key.pub"
  printf 'first install refused for a wrong password: %.1f s\n' "$(bc <<<"$EPOCHREALTIME - $start")" | tee -a "$TIMINGS" >&3
  assert_failure 2
  assert_output --partial "install] Error 4"
  assert_output --partial "preflight: starting release $a (nothing serves yet"
  assert_output --partial "password authentication failed"
  assert_output --partial "cannot work with this configuration"
  refute_output --partial "within 10s"
  refute_output --partial "mistyped-4711"
  assert_output --partial "next: put the right database URL in $wrong and run: make install HOST=root@$C DATABASE_URL_FILE=$wrong"
  run on "$C" "test -e /etc/tribist/env || test -e /etc/systemd/system/tribist.service"
  assert_failure
  # An upgrade there says what is missing; make config works on a host never installed.
  run kit_c upgrade BIN="$BATS_FILE_TMPDIR/server-b"
  assert_failure 5
  assert_output --partial "next: make install HOST=root@$C DATABASE_URL_FILE=path"
  run on_c config DATABASE_URL_FILE="$wrong"
  assert_success
  assert_output --partial "saved /etc/tribist/env (DATABASE_URL); tribist is not installed here yet"
  # What the refusal said: the right URL in that file, then the command it named; it replaces
  # the URL that never served, and installs.
  cp "$url" "$wrong"
  chmod 600 "$wrong"
  run timed "first install, repaired" on_c install DATABASE_URL_FILE="$wrong" DEPLOY_KEY="$BATS_FILE_TMPDIR/deploy_key.pub"
  assert_success
  assert_output --partial "replacing the DATABASE_URL in /etc/tribist/env, which has never served"
  assert_output --partial "preflight: release $a answered /health 200"
  assert_output --partial "==> installed on root@$C"
  run on "$C" "curl -sS http://localhost:8383/health"
  assert_output --partial '"status":"pass"'
  # Nothing to roll back to yet: said so.
  run on_c rollback
  assert_failure 2
  assert_output --partial "nothing to roll back to yet: release $a is the only one installed here"
  # Upgrade, releases, rollback, status, logs, as the README has them.
  run timed "make upgrade (first day)" on_c upgrade BIN="$BATS_FILE_TMPDIR/server-b"
  assert_success
  assert_output --partial "upgraded: release $b is serving"
  run on_c releases
  assert_success
  assert_output --regexp "$b +0\.1\.0 .*\[serving\]"
  assert_output --regexp "$a +0\.1\.0 .*\[previous\]"
  at_terminal make -s -C "$REPO" rollback HOST="root@$C" SSH_OPTS="-F $CFG" >"$BATS_TEST_TMPDIR/rollback.out" 2>&1
  run cat "$BATS_TEST_TMPDIR/rollback.out"
  assert_output --partial "rolled back: release $a is serving"
  refute_output --partial "mv:"
  refute_output --partial "could not keep"
  # No stray byte (a NUL) on the way.
  run grep -c -P '\x00' "$BATS_TEST_TMPDIR/rollback.out"
  assert_output 0
  run on "$C" "ls -A /home/tribist/api/releases"
  refute_output --regexp '(^|\n)\.'
  run on_c status
  assert_success
  assert_output --regexp "^root@$C +healthy release=$a health=200 up=[0-9:-]+ listen=127\.0\.0\.1:8383"
  run on_c logs
  assert_success
  assert_output --partial "listening on"
}

@test "server.sh stop stops for tribist and root until start; make status says stopped, unhealthy, unreachable" {
  local tribist="ssh -F $CFG -i $BATS_FILE_TMPDIR/deploy_key tribist@$C"
  run $tribist /home/tribist/bin/server.sh stop
  assert_success
  refute_output --partial "can still be activated"
  # It stays down: the socket is closed too, so no request starts it again.
  run on "$C" "curl -sS -o /dev/null --max-time 2 http://localhost:8383/health; systemctl is-active tribist.socket tribist.service"
  assert_output --regexp "curl: \(7\) Failed to connect to localhost port 8383"
  assert_line inactive
  refute_line active
  run kit_c status
  assert_failure 6
  assert_output --regexp "^root@$C +stopped release="
  assert_output --partial "next: make start HOST=root@$C"
  # The command it names.
  run on_c start
  assert_success
  run on "$C" "/home/tribist/bin/wait_for_it.sh -t 30"
  assert_success
  # And from tribist's side, with the deploy key: stop, start.
  run $tribist /home/tribist/bin/server.sh stop
  assert_success
  run $tribist /home/tribist/bin/server.sh start
  assert_success
  run on "$C" "/home/tribist/bin/wait_for_it.sh -t 30"
  assert_success
  # As root the same.
  run on "$C" "/home/tribist/bin/server.sh stop && systemctl is-active tribist.socket"
  assert_output inactive
  run on "$C" "/home/tribist/bin/server.sh start && /home/tribist/bin/wait_for_it.sh -q -t 30 && echo up"
  assert_output up
  run on "$C" "/home/tribist/bin/server.sh --help"
  assert_output --partial "stays down until 'start'"
  # The database down: running but unhealthy (7), with the reason; back: healthy (0).
  on "$C" "systemctl stop postgresql"
  run kit_c status
  on "$C" "systemctl start postgresql"
  assert_failure 7
  assert_output --regexp "^root@$C +unhealthy release=.* health=503 "
  assert_output --partial "next: make logs HOST=root@$C says why"
  run on "$C" "/home/tribist/bin/wait_for_it.sh -q -t 30"
  run on_c status
  assert_success
  # A host that does not answer: 8, in the same one-line form.
  run env HOSTS="root@$C root@nohost" SSH_OPTS="-F $CFG" "$REPO/sbin/remote.sh" status
  assert_failure 8
  assert_output --regexp "root@$C +healthy release="
  assert_output --regexp "root@nohost +unreachable"
  # A binary promoted by hand (the seed's way: server_new, then a restart) shows as serving.
  run $tribist "cp /home/tribist/api/server.prev /home/tribist/api/server_new && /home/tribist/bin/server.sh restart"
  assert_success
  run on "$C" "/home/tribist/bin/wait_for_it.sh -q -t 30"
  run on_c releases
  assert_output --partial "[serving]"
}

@test "make logs follows until Ctrl-C, and takes SINCE= and GREP=; make audit prints each record once, newest last" {
  on_c logs FOLLOW=1 >"$BATS_TEST_TMPDIR/follow.out" 2>&1 &
  local job=$! rc=0
  wait_for_text "$BATS_TEST_TMPDIR/follow.out" "listening on"
  # A line written now reaches the follower.
  on "$C" "systemctl restart tribist"
  wait_for_text "$BATS_TEST_TMPDIR/follow.out" "Started tribist.service"
  press $'\x03'
  wait "$job" || rc=$?
  run cat "$BATS_TEST_TMPDIR/follow.out"
  assert_equal "$rc" 0
  refute_output --partial "Connection to"
  refute_output --partial "Error"
  run on_c logs SINCE="1 hour ago" GREP="listening on" LINES=5
  assert_success
  assert_output --partial "listening on"
  refute_output --partial "Started tribist"
  run kit_c logs SINCE='now; id'
  assert_failure 2
  # The audit: each record once (root's are in the journal too), newest last, LINES of them.
  run on_c audit LINES=1000
  assert_success
  assert_equal "$(grep -c 'action=install .*result=ok' <<<"$output")" 1
  assert_equal "$(grep -c 'action=install .*result=refused-preflight' <<<"$output")" 1
  run on_c audit LINES=2
  assert_equal "$(grep -c ' action=' <<<"$output")" 2
  assert_output --partial "action=service-start"
  # However much tribist sends to the journal, root's own last records are shown.
  run as_tribist_on_c 'for i in $(seq 60); do logger -t tribist-deploy "$(date -u +%Y-%m-%dT%H:%M:%SZ) host=x action=upgrade user=root result=ok [root'"'"'s file]"; done'
  run on_c audit LINES=5
  assert_output --regexp "Z \[root's file\] host=$C action="
  assert_output --partial "(older entries from the journal are not shown"
  refute_output --regexp "Z \[root's file\] host=x "
}

@test "make install at a terminal: /health is 200 on the host and PID is systemd's MainPID" {
  run timed "make install" at_terminal make -s -C "$REPO" install HOST="root@$A" SSH_OPTS="-F $CFG" \
    DEPLOY_KEY="$BATS_FILE_TMPDIR/deploy_key.pub" DATABASE_URL_FILE="$BATS_FILE_TMPDIR/database_url"
  assert_success
  assert_output --partial "==> installed on root@$A"
  assert_output --partial "preflight: release $(release_of "$RELEASE") answered /health 200"
  run on_host "curl -sS -o /dev/null -w '%{http_code}' http://localhost:8383/health"
  assert_output 200
  assert_equal "$(serving)" "$(release_of "$RELEASE")"
  assert_equal "$(on_host cat /run/tribist/PID)" "$(on_host systemctl show -p MainPID --value tribist)"
  assert_equal "$(on_host systemctl is-enabled tribist.service tribist.socket | sort -u)" enabled
  # The second host, for the rolling upgrades further down; its password is a hard one, and it
  # listens on another port.
  run deploy install HOST="root@$B" SSH_OPTS="-F $CFG" DATABASE_URL_FILE="$BATS_FILE_TMPDIR/database_url_b" \
    LISTEN=127.0.0.1:9000
  assert_success
}

@test "a database password with dollar, backslash, both quotes, hash, percent and spaces reaches the server byte for byte" {
  run on "$B" "curl -sS -w '\n%{http_code}' http://localhost:9000/health"
  assert_line 200
  # What systemd hands the service is exactly the file's bytes, trailing space included.
  run on "$B" "systemd-run --quiet --wait --pipe -p EnvironmentFile=/etc/tribist/env sh -c 'printf %s \"\$DATABASE_URL\"' | sha256sum"
  assert_output "$(sha256sum <"$BATS_FILE_TMPDIR/database_url_b")"
}

@test "the listen address is one setting: LISTEN= moves the socket, and the scripts, status and checks follow it" {
  run on "$B" "systemctl show -p Listen --value tribist.socket; ss -Hltn 'sport = :8383' | wc -l; /home/tribist/bin/wait_for_it.sh -t 5"
  assert_success
  assert_line "127.0.0.1:9000 (Stream)"
  assert_line 0
  assert_line --partial "http://127.0.0.1:9000/health answered 200"
  # Moved by a second install: the old port is closed, the new one serves.
  run deploy install HOST="root@$B" SSH_OPTS="-F $CFG" LISTEN=127.0.0.1:9001
  assert_success
  assert_output --partial "moving tribist from 127.0.0.1:9000 to 127.0.0.1:9001"
  run on "$B" "ss -Hltn 'sport = :9000' | wc -l; curl -sS -o /dev/null -w '%{http_code}\n' http://127.0.0.1:9001/health"
  assert_line 0
  assert_line 200
  run deploy status HOST="root@$B" SSH_OPTS="-F $CFG"
  assert_success
  assert_output --regexp "^root@$B +healthy release=.* listen=127\.0\.0\.1:9001"
  assert_output --partial "(HTTP 200)"
  # The configuration as the binary reads it names the socket's address, not the default.
  run deploy config HOST="root@$B" SSH_OPTS="-F $CFG"
  assert_line "TRIBIST_LISTEN=127.0.0.1:9001"
  # A port something else holds, and a TRIBIST_LISTEN that would contradict the socket, are
  # refused before anything changes, saying where the address is set.
  run deploy install HOST="root@$B" SSH_OPTS="-F $CFG" LISTEN=0.0.0.0:22
  assert_failure
  assert_output --regexp "FAIL listen 0\.0\.0\.0:22: port 22 is taken \(.*sshd.*\); fix: LISTEN=another address"
  assert_output --partial "nothing was installed"
  on "$B" "cp -p /etc/tribist/env /root/env.saved && echo TRIBIST_LISTEN=127.0.0.1:9002 >>/etc/tribist/env"
  run deploy install HOST="root@$B" SSH_OPTS="-F $CFG"
  on "$B" "cp -p /root/env.saved /etc/tribist/env"
  assert_failure
  assert_output --partial "sets TRIBIST_LISTEN, but the address is tribist.socket's, set by 'make install LISTEN=ADDR:PORT'"
  run on "$B" "systemctl show -p Listen --value tribist.socket"
  assert_output "127.0.0.1:9001 (Stream)"
  # A value that is no address never leaves this machine.
  run deploy install HOST="root@$B" SSH_OPTS="-F $CFG" LISTEN='localhost:80; id'
  assert_failure
  assert_output --partial "is not an address such as 127.0.0.1:8383"
}

@test "a binary the host cannot run is refused before it is uploaded, naming both" {
  local arm new
  arm="$BATS_FILE_TMPDIR/server-aarch64"
  new="$BATS_FILE_TMPDIR/server-glibc-2.99"
  # ELF headers only: an aarch64 one, and an x86-64 one that needs a glibc from the future.
  { printf '\177ELF\2\1\1\0\0\0\0\0\0\0\0\0\2\0\267\0'; head -c 200 /dev/zero; } >"$arm"
  { printf '\177ELF\2\1\1\0\0\0\0\0\0\0\0\0\2\0\076\0'; head -c 200 /dev/zero; printf 'GLIBC_2.17\0GLIBC_2.99\0'; } >"$new"
  chmod 755 "$arm" "$new"
  run deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$arm"
  assert_failure
  assert_output --partial "is built for aarch64, but root@$A is x86_64"
  refute_output --partial "uploading"
  run deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$new"
  assert_failure
  assert_output --regexp "needs glibc 2\.99, but root@$A has glibc 2\.[0-9]+"
  refute_output --partial "uploading"
  run on_host "ls -a /home/tribist/api"
  refute_output --partial .upload
  assert_equal "$(serving)" "$(release_of "$RELEASE")"
}

@test "make check: one line per check, and each failure says what to do" {
  run deploy check HOST="root@$A" SSH_OPTS="-F $CFG" DATABASE_URL_FILE="$BATS_FILE_TMPDIR/database_url"
  assert_success
  assert_line "    PASS ssh: root@$A answers"
  assert_line "    PASS privileges: root"
  assert_line --regexp "^    PASS systemd: 2[0-9]{2} \(needs 248 or newer\)$"
  assert_line --regexp "^    PASS platform: x86_64, glibc 2\.[0-9]+ \(the binary: x86_64, glibc 2\.17\)$"
  assert_line "    PASS listen 127.0.0.1:8383: tribist.socket's already"
  assert_line --regexp "^    PASS database: .*answered in"
  assert_line --partial "is ready for tribist"
  # As the deploy key's user, a port that is taken, a wrong password: each a FAIL with a fix.
  printf 'postgres://tribist:wrong-password@localhost:5432/tribist\n' >"$BATS_TEST_TMPDIR/wrong_url"
  run deploy check HOST="tribist@$A" SSH_OPTS="$(as_tribist)" LISTEN=0.0.0.0:22 DATABASE_URL_FILE="$BATS_TEST_TMPDIR/wrong_url"
  assert_failure
  assert_line --regexp "^    FAIL privileges: tribist is not root and 'sudo -n true' fails; fix: connect as root"
  assert_line --regexp "^    FAIL listen 0.0.0.0:22: port 22 is taken .*; fix: LISTEN=another address"
  assert_line --regexp "^    FAIL database: .*password authentication failed.*; fix: "
  refute_output --partial "wrong-password"
  assert_line --partial "is not ready"
  run on_host "ls /tmp | grep -c tribist-check"
  assert_output 0
}

@test "the units verify cleanly and the service's exposure is at most 1.5" {
  run on_host "systemd-analyze verify /etc/systemd/system/tribist.service /etc/systemd/system/tribist.socket 2>&1"
  assert_success
  assert_output ""
  local score
  score=$(on_host "systemd-analyze security --offline=true /etc/systemd/system/tribist.service" |
    sed -n 's/.*exposure level for tribist.service: \([0-9.]*\).*/\1/p')
  echo "exposure: $score" | tee -a "$TIMINGS" >&3
  [[ -n "$score" ]] && (($(bc <<<"$score <= 1.5")))
}

@test "sudo: user tribist may run exactly systemctl start|stop|restart|reload|status tribist, and start|stop with the socket" {
  run on_host "visudo -c"
  assert_success
  for cmd in "start tribist" "stop tribist" "restart tribist" "reload tribist" "status tribist" \
    "start tribist.socket tribist.service" "stop tribist.socket tribist.service"; do
    run on_host "sudo -l -U tribist /usr/bin/systemctl $cmd"
    assert_success
  done
  for cmd in "systemctl start sshd tribist" "systemctl start sshd" "systemctl enable tribist" \
    "systemctl stop tribist.socket" "systemctl start tribist.socket sshd.service" \
    "systemctl restart tribist.service --now" "journalctl" "bash" "systemctl edit tribist"; do
    run on_host "sudo -l -U tribist /usr/bin/$cmd"
    assert_failure
  done
}

@test "who owns what: the ownership table (docs/deploying.md), and the running server cannot write what runs next" {
  run on_host "stat -c '%n %U:%G %a' /home/tribist /home/tribist/bin /home/tribist/bin/tribist-host /home/tribist/.ssh /home/tribist/.ssh/authorized_keys /home/tribist/api /home/tribist/api/server /run/tribist /var/lib/tribist-deploy /var/lib/tribist-deploy/bin /var/lib/tribist-deploy/bin/server /var/lib/tribist-deploy/lock /var/lib/tribist-deploy/audit.log /etc/tribist /etc/tribist/env"
  assert_output "/home/tribist root:tribist 750
/home/tribist/bin root:root 755
/home/tribist/bin/tribist-host root:root 755
/home/tribist/.ssh root:root 755
/home/tribist/.ssh/authorized_keys root:root 644
/home/tribist/api tribist:tribist 750
/home/tribist/api/server tribist:tribist 750
/run/tribist tribistd:tribistd 750
/var/lib/tribist-deploy root:root 755
/var/lib/tribist-deploy/bin root:root 755
/var/lib/tribist-deploy/bin/server root:root 755
/var/lib/tribist-deploy/lock root:root 644
/var/lib/tribist-deploy/audit.log root:root 600
/etc/tribist root:tribist 750
/etc/tribist/env root:tribist 640"
  # The server runs root's copy, as a user of its own, and cannot replace what runs next: in its
  # own mount namespace root's copy is read-only and /home is hidden.
  local pid
  pid=$(on_host systemctl show -p MainPID --value tribist)
  assert_equal "$(on_host ps -o user= -p "$pid")" tribistd
  assert_equal "$(on_host readlink /proc/"$pid"/exe)" /var/lib/tribist-deploy/bin/server
  run on_host "nsenter -t $pid -m setpriv --reuid=tribistd --regid=tribistd --clear-groups touch /var/lib/tribist-deploy/bin/x"
  assert_failure
  assert_output --partial "Read-only file system"
  run on_host "nsenter -t $pid -m setpriv --reuid=tribistd --regid=tribistd --clear-groups ls /home/tribist"
  assert_failure
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
  run on_host "systemctl stop tribist && systemctl start tribist && systemctl show -p StatusText --value tribist && test -s /run/tribist/PID && journalctl -u tribist -n 20 --no-pager | grep -c 'listening on'"
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
  assert_equal "$(on_host cat /run/tribist/PID)" "$after"
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
  assert_output --partial "switching: the serving process hands over to"
  assert_output --partial "upgraded: release $(release_of "$BATS_FILE_TMPDIR/server-b") is serving"
  assert_equal "$(serving)" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
  assert_equal "$(json_field failed <<<"$load")" 0
  (($(json_field sent <<<"$load") > 50))
  assert_equal "$(on_host /home/tribist/api/server.prev --version)" "$("$RELEASE" --version)"
}

@test "a damaged upload never becomes server_new and nothing changes" {
  run on_host "head -c 1000 /home/tribist/api/server | /home/tribist/bin/tribist-host receive $(sha256sum "$BATS_FILE_TMPDIR/server-b" | cut -d' ' -f1)"
  assert_failure 1
  assert_output --partial "checksum mismatch"
  run on_host "ls -a /home/tribist/api"
  refute_output --partial server_new
  refute_output --partial .upload
  assert_equal "$(serving)" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
}

@test "make rollback at a terminal: the previous release serves again" {
  run at_terminal make -s -C "$REPO" rollback HOST="root@$A" SSH_OPTS="-F $CFG"
  assert_success
  assert_equal "$(serving)" "$(release_of "$RELEASE")"
}

@test "make upgrade as tribist@host with the DEPLOY_KEY, through the sudoers rights only" {
  run timed "make upgrade as tribist" at_terminal make -s -C "$REPO" upgrade HOST="tribist@$A" \
    SSH_OPTS="$(as_tribist)" BIN="$BATS_FILE_TMPDIR/server-b"
  assert_success
  assert_equal "$(serving)" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
}

@test "handover: only root may ask; a successor that is never ready is stopped while the old process serves on" {
  local pid before
  pid=$(on_host systemctl show -p MainPID --value tribist)
  before=$(serving)
  # The upgrades so far handed over: systemd never restarted the service for them.
  run on_host "journalctl -u tribist --no-pager | grep -c 'Reloaded tribist.service'"
  refute_output 0
  # The deploy user cannot signal the service at all (it runs as tribistd).
  run as_tribist_on_host "kill -USR2 $pid"
  assert_failure
  assert_output --partial "Operation not permitted"
  # A process with the service's own uid can; its SIGUSR2 is ignored all the same: a handover is
  # root's, audited. So is one forged with rt_sigqueueinfo(2) to claim it comes from root
  # (uid 0, pid 1).
  on_host "setpriv --reuid=tribistd --regid=tribistd --clear-groups kill -USR2 $pid"
  on_host "setpriv --reuid=tribistd --regid=tribistd --clear-groups perl -e 'my \$i = pack(\"iiiiii\", 12, 0, -1, 0, 1, 0) . (\"\\0\" x 104); syscall(129, \$ARGV[0] + 0, 12, \$i) == 0 or die \"rt_sigqueueinfo: \$!\"' $pid"
  run on_host "for i in \$(seq 50); do journalctl -u tribist --no-pager | grep -q 'ignoring SIGUSR2 from pid 1 (uid 0, si_code -1)' && exit 0; sleep 0.1; done; journalctl -u tribist -n 5 --no-pager; exit 1"
  assert_success
  run on_host "journalctl -u tribist --no-pager | grep -c 'ignoring SIGUSR2 from pid'"
  assert_output 2
  assert_equal "$(on_host systemctl show -p MainPID --value tribist)" "$pid"
  # A release that passes its preflight but never gets ready under systemd: the handover gives
  # up after 10 s, and the process that served all along still does.
  run timed "upgrade whose handover fails" deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" \
    BIN="$BATS_FILE_TMPDIR/server-systemd-hang"
  assert_failure
  assert_output --partial "handover attempt"
  assert_output --partial "was not ready within 10s"
  assert_output --partial "release $before still serves: nothing to switch back"
  assert_output --partial "was rolled back: release $before is serving again"
  assert_equal "$(on_host systemctl show -p MainPID --value tribist)" "$pid"
  assert_equal "$(serving)" "$before"
  run on_host "pgrep -c -f 'sleep 600'"
  assert_output 0
  run on_host "tail -n 3 /var/lib/tribist-deploy/audit.log"
  assert_output --partial "action=service-handover user=systemd from_pid=$pid result=failed"
  # A release that predates handovers (its --version does not offer one) gets a restart.
  run deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$BATS_FILE_TMPDIR/server-no-handover"
  assert_success
  assert_output --partial "switching: restarting tribist (the release to switch to predates handovers)"
  # And from it, a release that does take over by handover again.
  run deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$BATS_FILE_TMPDIR/server-b"
  assert_success
  assert_output --partial "switching: the serving process hands over"
  assert_equal "$(serving)" "$before"
}

@test "Ctrl-C during make rollback whose handover fails: the files are put back, nothing changed, audited so" {
  local before pid
  deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$BATS_FILE_TMPDIR/server-b" >/dev/null
  before=$(serving)
  pid=$(on_host systemctl show -p MainPID --value tribist)
  # The rollback target: a release that passes its preflight but is never ready under systemd.
  as_tribist_on_host "cat >/home/tribist/api/.prev.x && chmod 755 /home/tribist/api/.prev.x && mv -f /home/tribist/api/.prev.x /home/tribist/api/server.prev" \
    <"$BATS_FILE_TMPDIR/server-systemd-hang"
  at_terminal make -s -C "$REPO" rollback HOST="root@$A" SSH_OPTS="-F $CFG" >"$BATS_TEST_TMPDIR/rb.out" 2>&1 &
  local job=$! rc=0
  wait_switching "$BATS_TEST_TMPDIR/rb.out"
  press $'\x03'
  wait "$job" || rc=$?
  ((rc != 0))
  run cat "$BATS_TEST_TMPDIR/rb.out"
  assert_output --partial "nothing changed: release $before still serves"
  assert_equal "$(serving)" "$before"
  assert_equal "$(on_host systemctl show -p MainPID --value tribist)" "$pid"
  # api/ is as it was: the hanging binary is the rollback target again, not the installed one.
  assert_equal "$(on_host "sha256sum </home/tribist/api/server.prev" | cut -c1-64)" "$(sha256sum <"$BATS_FILE_TMPDIR/server-systemd-hang" | cut -c1-64)"
  assert_equal "$(on_host "sha256sum </home/tribist/api/server" | cut -c1-64)" "$(sha256sum <"$BATS_FILE_TMPDIR/server-b" | cut -c1-64)"
  run on_host "grep 'action=rollback' /var/lib/tribist-deploy/audit.log | tail -n 1"
  assert_output --partial "result=interrupted-nothing-changed"
  on_host "cp /home/tribist/api/server /home/tribist/api/.prev.x && chown tribist: /home/tribist/api/.prev.x && mv -f /home/tribist/api/.prev.x /home/tribist/api/server.prev"
}

@test "Ctrl-C while an upgrade that handed over waits for health: the rollback by handover works and is audited as such" {
  local before old target=$BATS_FILE_TMPDIR/server-b
  before=$(serving)
  # The release that does not serve now.
  [[ "$before" != "$(release_of "$target")" ]] || target=$RELEASE
  old=$(on_host systemctl show -p MainPID --value tribist)
  # The database down: the new release takes over (no preflight) and then answers 503, so the
  # upgrade waits for its health; Ctrl-C there rolls back by a handover once the database is
  # back.
  on_host "systemctl stop postgresql"
  at_terminal make -s -C "$REPO" upgrade HOST="root@$A" SSH_OPTS="-F $CFG" PREFLIGHT=0 \
    BIN="$target" >"$BATS_TEST_TMPDIR/up.out" 2>&1 &
  local job=$! rc=0 i
  for i in $(seq 300); do
    [[ "$(on_host systemctl show -p MainPID --value tribist)" != "$old" ]] && break
    sleep 0.1
  done
  [[ "$(on_host systemctl show -p MainPID --value tribist)" != "$old" ]] || {
    on_host "systemctl start postgresql"
    fail "the upgrade never handed over: $(cat "$BATS_TEST_TMPDIR/up.out")"
  }
  sleep 1
  press $'\x03'
  on_host "systemctl start postgresql"
  wait "$job" || rc=$?
  ((rc != 0))
  run cat "$BATS_TEST_TMPDIR/up.out"
  assert_output --partial "switching: the serving process hands over"
  assert_output --partial "rolled back: release $before is serving again"
  assert_equal "$(serving)" "$before"
  run on_host "grep 'action=upgrade' /var/lib/tribist-deploy/audit.log | tail -n 1"
  assert_output --partial "result=interrupted-rolled-back"
  deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$BATS_FILE_TMPDIR/server-b" >/dev/null
}

@test "preflight: a release that exits, hangs or answers 503 is refused before it gets any traffic" {
  local pid b
  pid=$(on_host systemctl show -p MainPID --value tribist)
  b=$(release_of "$BATS_FILE_TMPDIR/server-b")
  run timed "upgrade refused by the preflight (exits)" deploy upgrade HOST="tribist@$A" SSH_OPTS="$(as_tribist)" \
    BIN="$BATS_FILE_TMPDIR/server-bad"
  assert_failure
  assert_output --partial "release broken-release exited (status 1) before answering /health 200"
  assert_output --partial "cannot start"
  assert_output --partial "refused: release broken-release failed its preflight (above); nothing changed, release $b still serves"
  assert_output --partial "make upgrade: FAILED"
  run timed "upgrade refused by the preflight (hangs, PREFLIGHT=3)" deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" \
    BIN="$BATS_FILE_TMPDIR/server-hang" PREFLIGHT=3
  assert_failure
  assert_output --partial "release hanging-release did not answer /health 200 within 3s"
  # A wrong password is a definite failure: refused at once, not after PREFLIGHT seconds.
  run timed "upgrade refused by the preflight (the database refuses it)" deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" \
    BIN="$BATS_FILE_TMPDIR/server-503"
  assert_failure
  assert_output --partial "cannot work with this configuration: the database refuses it"
  assert_output --partial "password authentication failed"
  refute_output --partial "within 10s"
  assert_output --partial "next: make config HOST=root@$A with what the message above names corrected: SET=NAME=VALUE or UNSET=NAME for a setting, DATABASE_URL_FILE="
  # Never switched: the same process serves the same release, nothing was left behind.
  assert_equal "$(on_host systemctl show -p MainPID --value tribist)" "$pid"
  assert_equal "$(serving)" "$b"
  run on_host "ls -a /home/tribist/api; ls /tmp | grep -c tribist-preflight"
  refute_output --partial .upload
  assert_line 0
  run on_host "grep -c 'result=refused-preflight' /var/lib/tribist-deploy/audit.log"
  assert_output 2
}

@test "deploy lock: a second upgrade is refused with the holder; a refused upgrade releases it" {
  deploy upgrade HOST="tribist@$A" SSH_OPTS="$(as_tribist)" BIN="$BATS_FILE_TMPDIR/server-hang" \
    DEPLOYER=alice@laptop >"$BATS_FILE_TMPDIR/bad.out" 2>&1 &
  local bad=$!
  wait_locked || fail "no lock taken; the upgrade said: $(cat "$BATS_FILE_TMPDIR/bad.out")"
  run deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$BATS_FILE_TMPDIR/server-b" DEPLOYER=bob@desk
  assert_failure
  assert_output --partial "refused: another deployment holds the lock"
  assert_output --partial "next: wait for it to finish, or if it is stuck break it: make unlock HOST=root@$A"
  assert_output --partial "upgrade by alice@laptop as tribist@"
  assert_output --partial "since 20"
  local start=$EPOCHREALTIME rc=0
  wait "$bad" || rc=$?
  run cat "$BATS_FILE_TMPDIR/bad.out"
  ((rc != 0))
  assert_output --partial "release hanging-release did not answer /health 200 within 10s"
  assert_output --partial "make upgrade: FAILED"
  assert_equal "$(serving)" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
  # Released: the next deployment goes ahead (to the release that serves: it says so).
  run deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$BATS_FILE_TMPDIR/server-b"
  assert_success
  assert_output --partial "is already installed and serving (the same bytes): nothing changed"
}

@test "deploy lock: Ctrl-C at the terminal and a broken lock both roll back and release" {
  local before
  before=$(serving)
  # Ctrl-C typed at the terminal: ssh -t carries it to tribist-host on the host.
  at_terminal make -s -C "$REPO" upgrade HOST="tribist@$A" SSH_OPTS="$(as_tribist)" \
    BIN="$BATS_FILE_TMPDIR/server-systemd-hang" >"$BATS_FILE_TMPDIR/int.out" 2>&1 &
  local job=$!
  wait_switching "$BATS_FILE_TMPDIR/int.out"
  press $'\x03'
  local rc=0
  wait "$job" || rc=$?
  ((rc != 0))
  run cat "$BATS_FILE_TMPDIR/int.out"
  assert_output --partial "interrupted"
  assert_output --partial "rolled back: release $before is serving again"
  assert_equal "$(serving)" "$before"
  # `make unlock`: breaking the lock stops its holder, which rolls back in the same way.
  deploy upgrade HOST="tribist@$A" SSH_OPTS="$(as_tribist)" BIN="$BATS_FILE_TMPDIR/server-systemd-hang" \
    >"$BATS_FILE_TMPDIR/unlock.out" 2>&1 &
  job=$!
  wait_switching "$BATS_FILE_TMPDIR/unlock.out"
  run deploy unlock HOST="root@$A" SSH_OPTS="-F $CFG"
  assert_success
  assert_output --partial "sent SIGTERM to the deploy lock's holder: upgrade by"
  refute_output --partial "SIGKILL"
  rc=0
  wait "$job" || rc=$?
  ((rc != 0))
  assert_equal "$(serving)" "$before"
  assert_equal "$(on_host systemctl is-active tribist)" active
}

@test "make audit: root's record and the journal's, by kernel-given uid, with who, releases and result" {
  local a b
  a=$(release_of "$RELEASE")
  b=$(release_of "$BATS_FILE_TMPDIR/server-b")
  run deploy audit HOST="root@$A" SSH_OPTS="-F $CFG" LINES=100000
  assert_success
  assert_line --regexp "action=install user=root from=[^ ]+ by=\"[^\"]*\" release_from=none release_to=$a result=ok"
  assert_line --regexp "action=upgrade user=root .* release_from=$a release_to=$b result=ok"
  assert_line --regexp "action=rollback user=root .* release_from=$b release_to=$a result=ok"
  assert_line --partial "[journal: sent by tribist, _UID="
  assert_line --regexp "action=upgrade user=tribist .* by=\"alice@laptop\" release_from=$b release_to=hanging-release result=refused-preflight"
  assert_line --partial "result=interrupted-rolled-back"
  # Every start and handover is in root's record too, with the binary's digest, whoever asked.
  assert_line --regexp "action=service-start user=systemd promoted=yes source=(api|deploy) server_sha256=[0-9a-f]{64}"
  assert_line --regexp "action=service-start user=systemd promoted=no source=api server_sha256=[0-9a-f]{64}"
  assert_line --regexp "action=service-handover user=systemd from_pid=[0-9]+ promoted=yes source=(api|deploy) server_sha256=[0-9a-f]{64}"
  assert_line --regexp "action=service-handover user=systemd from_pid=[0-9]+ promoted=no source=api server_sha256=[0-9a-f]{64}"
  assert_line --regexp "action=service-handover user=systemd from_pid=[0-9]+ to_pid=[0-9]+ result=ok"
  refute_output --partial "$DB_PASSWORD"
  # tribist cannot read root's record, and the audit needs root.
  run as_tribist_on_host "cat /var/lib/tribist-deploy/audit.log"
  assert_failure
  run deploy audit HOST="tribist@$A" SSH_OPTS="$(as_tribist)"
  assert_failure
  assert_output --partial "must run as root"
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
  assert_output --partial "stopped at tribist@$A (it serves its previous release)"
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
  # And host B, on its own port, rolls back (a handover there too).
  run deploy rollback HOST="root@$B" SSH_OPTS="-F $CFG"
  assert_success
  assert_output --partial "switching: the serving process hands over"
  assert_equal "$(serving "$B")" "$b"
}

@test "fleets: ENV= names the hosts in a file, PARALLEL=2 upgrades them together, make status ENV= is a line each" {
  local r
  r=$(release_of "$RELEASE")
  mkdir -p "$BATS_TEST_TMPDIR/deploy"
  printf '# the e2e fleet\ntribist@%s\nroot@%s   # on port 9001\n' "$A" "$B" >"$BATS_TEST_TMPDIR/deploy/e2e.hosts"
  TRIBIST_DEPLOY_DIR="$BATS_TEST_TMPDIR/deploy" run deploy upgrade ENV=e2e SSH_OPTS="$(as_tribist)" PARALLEL=2 BIN="$RELEASE"
  assert_success
  assert_line "==> rolling upgrade: tribist@$A root@$B"
  assert_line "[tribist@$A] ==> upgrade of tribist@$A done"
  assert_line "[root@$B] ==> upgrade of root@$B done"
  assert_equal "$(serving "$A")" "$r"
  assert_equal "$(serving "$B")" "$r"
  TRIBIST_DEPLOY_DIR="$BATS_TEST_TMPDIR/deploy" run deploy status ENV=e2e SSH_OPTS="$(as_tribist)"
  assert_success
  assert_line --regexp "^tribist@$A +healthy release=$r health=200 up=[0-9:-]+ listen=127\.0\.0\.1:8383$"
  assert_line --regexp "^root@$B +healthy release=$r health=200 up=[0-9:-]+ listen=127\.0\.0\.1:9001$"
}

@test "releases: the host keeps them by releaseId, make rollback TO= goes to any, KEEP prunes" {
  local a b
  a=$(release_of "$RELEASE")
  b=$(release_of "$BATS_FILE_TMPDIR/server-b")
  run deploy releases HOST="tribist@$A" SSH_OPTS="$(as_tribist)"
  assert_success
  assert_line --regexp "^$a +0\.1\.0 +20[0-9-]+T[0-9:]+Z .*\[serving\]$"
  assert_line --regexp "^$b +0\.1\.0 +20[0-9-]+T[0-9:]+Z .*\[previous\]$"
  # Back to any kept release by a prefix of its id, through an upgrade's checks.
  run deploy rollback HOST="root@$A" SSH_OPTS="-F $CFG" TO="${b:0:10}"
  assert_success
  assert_output --partial "preflight: release $b answered /health 200"
  assert_output --partial "rolled back: release $b is serving"
  assert_equal "$(serving)" "$b"
  run deploy rollback HOST="root@$A" SSH_OPTS="-F $CFG" TO=0000nope
  assert_failure
  assert_output --partial "no kept release starts with '0000nope'"
  run deploy rollback HOST="root@$A" SSH_OPTS="-F $CFG" TO='x;id'
  assert_failure 2
  # KEEP=1: only the serving and the previous release stay.
  run deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$RELEASE" KEEP=1
  assert_success
  run on_host "ls /home/tribist/api/releases | grep -vc meta"
  assert_output 2
}

@test "a release is its bytes: the same bytes change nothing, other bytes under a known id are refused, uncommitted changes get their own id" {
  local a b d
  a=$(release_of "$RELEASE")
  b=$(release_of "$BATS_FILE_TMPDIR/server-b")
  run deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$RELEASE"
  assert_success
  assert_output --partial "release $a is already installed and serving (the same bytes): nothing changed"
  refute_output --partial "switching"
  # Other bytes that claim the serving release's id (a build at the same commit elsewhere).
  printf '#!/bin/sh\necho "server 0.1.0 (commit %s)"\n' "$a" >"$BATS_TEST_TMPDIR/same-id"
  chmod 755 "$BATS_TEST_TMPDIR/same-id"
  run deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$BATS_TEST_TMPDIR/same-id"
  assert_failure
  assert_output --partial "the installed binary is release $a with other bytes"
  assert_output --partial "two different binaries are never one release"
  assert_equal "$(on_host "sha256sum </home/tribist/api/releases/$a | cut -c1-64")" "$(sha256sum <"$RELEASE" | cut -c1-64)"
  # A build of uncommitted changes at the other release's commit: an id of its own, said.
  d=$(release_of "$BATS_FILE_TMPDIR/server-dirty")
  [[ "$d" =~ ^$b-dirty-[0-9a-f]{12}$ ]] || fail "the dirty build's id is '$d'"
  run deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$BATS_FILE_TMPDIR/server-dirty"
  assert_success
  assert_output --partial "is built from uncommitted changes: it ships as release $d"
  assert_output --partial "upgraded: release $d is serving"
  run deploy releases HOST="root@$A" SSH_OPTS="-F $CFG"
  assert_line --regexp "^$d .*\[serving\]$"
  assert_line --regexp "^$a .*\[previous\]$"
  # The whole id of the clean release picks it, though the dirty one's id begins with it.
  run deploy rollback HOST="root@$A" SSH_OPTS="-F $CFG" TO="$b"
  assert_success
  assert_output --partial "rolled back: release $b is serving"
  run deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$RELEASE"
  assert_success
  assert_equal "$(serving)" "$a"
}

@test "hostile deployer values are data: quotes, \$(), backticks, ; and spaces work literally, newlines are refused" {
  local mark=/tmp/tI d
  rm -f "$mark"-*
  on_host "rm -f $mark-*"
  d="o'brien \`touch $mark-backtick\` \$(touch $mark-dollar); touch $mark-semicolon; \"q\" \\ \$HOME"
  # BIN with a space in its path, SSH_OPTS with quotes.
  run deploy upgrade HOST="root@$A" SSH_OPTS="-F '$CFG' -o 'ConnectTimeout=5'" \
    BIN="$BATS_FILE_TMPDIR/my build/server" DEPLOYER="$d"
  assert_success
  run deploy audit HOST="root@$A" SSH_OPTS="-F $CFG"
  assert_output --partial "by=\"o'brien \`touch $mark-backtick\` \$(touch $mark-dollar); touch $mark-semicolon; \\\"q\\\" \\\\ \$HOME\""
  run deploy logs HOST="root@$A" SSH_OPTS="-F $CFG" LINES=5
  assert_success
  ((${#lines[@]} >= 4 && ${#lines[@]} <= 6))
  # Refused with exit 2, before anything is sent.
  run deploy logs HOST="root@$A" SSH_OPTS="-F $CFG" LINES="5; touch $mark-lines"
  assert_failure 2
  run deploy rollback HOST="root@$A" SSH_OPTS="-F $CFG" DEPLOYER=$'mallory\nresult=ok'
  assert_failure 2
  run deploy status HOST="root@$A;touch $mark-host" SSH_OPTS="-F $CFG"
  assert_failure 2
  run deploy upgrade HOSTS="root@$A \$(touch $mark-hosts)" SSH_OPTS="-F $CFG"
  assert_failure 2
  printf 'command="touch %s-key" %s\n' "$mark" "$(cat "$BATS_FILE_TMPDIR/deploy_key.pub")" >"$BATS_TEST_TMPDIR/with options.pub"
  run deploy install HOST="root@$A" SSH_OPTS="-F $CFG" DEPLOY_KEY="$BATS_TEST_TMPDIR/with options.pub"
  assert_failure 2
  assert_output --partial "not a public key file"
  run deploy install HOST="root@$A" SSH_OPTS="-F $CFG" "DATABASE_URL=postgres://u:pa\$word@h/d"
  assert_failure 2
  # Nothing ran, here or there.
  run ls "$mark"-*
  assert_failure
  run on_host "ls $mark-*"
  assert_failure
  assert_equal "$(serving)" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
}

@test "a sudo user installs, upgrades, rolls back and is audited as itself" {
  on_host "useradd -m -s /bin/bash alice && echo 'alice ALL=(ALL) NOPASSWD: ALL' >/etc/sudoers.d/alice && install -d -o alice -m 700 /home/alice/.ssh && install -o alice -m 600 /root/.ssh/authorized_keys /home/alice/.ssh/"
  run at_terminal make -s -C "$REPO" install HOST="alice@$A" SSH_OPTS="-F $CFG" DEPLOYER=alice@desk
  assert_success
  assert_output --partial "==> installed on alice@$A"
  run deploy upgrade HOST="alice@$A" SSH_OPTS="-F $CFG" BIN="$BATS_FILE_TMPDIR/server-b"
  assert_success
  assert_equal "$(serving)" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
  run deploy rollback HOST="alice@$A" SSH_OPTS="-F $CFG"
  assert_success
  assert_equal "$(serving)" "$(release_of "$RELEASE")"
  run on_host "cat /var/lib/tribist-deploy/audit.log"
  assert_line --regexp "action=install user=alice\(sudo\) .* by=\"alice@desk\" .* result=ok"
  assert_line --regexp "action=rollback user=alice\(sudo\) .* result=ok"
  # A user with neither root nor sudo is told so.
  on_host "useradd -m -s /bin/bash bob && install -d -o bob -m 700 /home/bob/.ssh && install -o bob -m 600 /root/.ssh/authorized_keys /home/bob/.ssh/"
  run deploy status HOST="bob@$A" SSH_OPTS="-F $CFG"
  assert_failure
  assert_output --partial "has no password-less sudo"
}

@test "a second make install keeps the edited environment file" {
  on_host "echo 'TRIBIST_WORKERS=3' >>/etc/tribist/env"
  echo "postgres://tribist:overwritten@localhost:5432/tribist" >"$BATS_TEST_TMPDIR/url"
  run deploy install HOST="root@$A" SSH_OPTS="-F $CFG" DATABASE_URL_FILE="$BATS_TEST_TMPDIR/url"
  assert_success
  assert_output --partial "keeping the existing /etc/tribist/env, which serves: the DATABASE_URL given was not used"
  run on_host cat /etc/tribist/env
  assert_output --partial "TRIBIST_WORKERS=3"
  assert_output --partial "$DB_PASSWORD"
  refute_output --partial overwritten
  run on_host "journalctl -u tribist --no-pager -n 20 | grep -c '3 workers'"
  refute_output 0
}

@test "make config shows the configuration masked, changes it safely, refuses a bad one and audits names only" {
  run deploy config HOST="tribist@$A" SSH_OPTS="$(as_tribist)"
  assert_success
  assert_line "DATABASE_URL=postgres://tribist:***@localhost:5432/tribist"
  assert_line "TRIBIST_WORKERS=3"
  assert_line "TRIBIST_DB_TIMEOUT=2s (default)"
  refute_output --partial "$DB_PASSWORD"
  # A change: checked, applied by a restart, in effect.
  run deploy config HOST="root@$A" SSH_OPTS="-F $CFG" SET="TRIBIST_WORKERS=6 TRIBIST_DB_TIMEOUT=3s" UNSET=TRIBIST_LOG_LEVEL
  assert_success
  assert_output --partial "configuration OK: 6 workers"
  assert_output --partial "configuration changed (TRIBIST_WORKERS TRIBIST_DB_TIMEOUT TRIBIST_LOG_LEVEL)"
  run on_host "systemctl show -p StatusText --value tribist"
  assert_output --partial "with 6 workers"
  # Bad values and a database that refuses the new password: refused before anything changes.
  local pid before
  pid=$(on_host systemctl show -p MainPID --value tribist)
  before=$(on_host "sha256sum </etc/tribist/env")
  run deploy config HOST="root@$A" SSH_OPTS="-F $CFG" SET="TRIBIST_WORKERS=0"
  assert_failure
  assert_output --partial 'refused: TRIBIST_WORKERS: "0" is not a whole number from 1 to 256; nothing changed'
  printf 'postgres://tribist:not-the-password@localhost:5432/tribist\n' >"$BATS_TEST_TMPDIR/wrong_url"
  run deploy config HOST="root@$A" SSH_OPTS="-F $CFG" DATABASE_URL_FILE="$BATS_TEST_TMPDIR/wrong_url"
  assert_failure
  assert_output --partial "password authentication failed"
  assert_output --partial "nothing changed"
  assert_output --partial "next: make config HOST=root@$A with what the message above names corrected: SET=NAME=VALUE or UNSET=NAME for a setting, DATABASE_URL_FILE="
  refute_output --partial "not-the-password"
  assert_equal "$(on_host "sha256sum </etc/tribist/env")" "$before"
  assert_equal "$(on_host systemctl show -p MainPID --value tribist)" "$pid"
  # Refused on this side: the address, a password on the command line, an unknown name.
  run deploy config HOST="root@$A" SSH_OPTS="-F $CFG" SET="TRIBIST_LISTEN=127.0.0.1:1"
  assert_failure
  assert_output --partial "LISTEN=ADDR:PORT sets it"
  run deploy config HOST="root@$A" SSH_OPTS="-F $CFG" SET="PGPASSWORD=x"
  assert_failure
  assert_output --partial "DATABASE_URL_FILE=path"
  run deploy config HOST="root@$A" SSH_OPTS="-F $CFG" SET='X=$(id)'
  assert_failure
  assert_output --partial "is not a setting tribist reads"
  # The audit names what changed, never a value.
  run on_host "grep 'action=config' /var/lib/tribist-deploy/audit.log"
  assert_line --regexp "changed=TRIBIST_WORKERS,TRIBIST_DB_TIMEOUT,TRIBIST_LOG_LEVEL result=ok$"
  assert_line --regexp "changed=DATABASE_URL result=refused-check$"
  refute_output --partial "not-the-password"
  # Back to 3 workers, as the next tests expect.
  run deploy config HOST="root@$A" SSH_OPTS="-F $CFG" SET="TRIBIST_WORKERS=3"
  assert_success
}

@test "Ctrl-C during make config at a terminal: the previous configuration is back, audited so, no URL left behind" {
  local before
  before=$(on_host "sha256sum </etc/tribist/env")
  # The URL travels on a connection of its own; the change runs at the terminal, so Ctrl-C
  # reaches the host while it waits for the restarted server.
  at_terminal make -s -C "$REPO" config HOST="root@$A" SSH_OPTS="-F $CFG" SET=TRIBIST_WORKERS=5 \
    DATABASE_URL_FILE="$BATS_FILE_TMPDIR/database_url" >"$BATS_TEST_TMPDIR/cfg.out" 2>&1 &
  local job=$! rc=0 i
  for i in $(seq 300); do
    grep -q "applying (" "$BATS_TEST_TMPDIR/cfg.out" && break
    sleep 0.1
  done
  press $'\x03'
  wait "$job" || rc=$?
  ((rc != 0))
  run cat "$BATS_TEST_TMPDIR/cfg.out"
  assert_output --partial "the configuration change was interrupted; putting the previous one back"
  assert_equal "$(on_host "sha256sum </etc/tribist/env")" "$before"
  run on_host "grep 'action=config' /var/lib/tribist-deploy/audit.log | tail -n 1"
  assert_output --partial "result=interrupted-restored"
  run on_host "ls /var/lib/tribist-deploy | grep -c '^url\.'"
  assert_output 0
  run on_host "/home/tribist/bin/wait_for_it.sh -q -t 30"
  assert_success
}

@test "TLS to the host's PostgreSQL: encrypted by default, verify-ca against its certificate, verify-full refuses a wrong name" {
  # Debian's PostgreSQL has ssl = on with its snakeoil certificate; the default sslmode=prefer
  # encrypts, inside the unit's sandbox, with no libssl in the binary.
  run on_host "curl -sS http://localhost:8383/health"
  assert_output --partial '"encrypted":true'
  local cert=/etc/ssl/certs/ssl-cert-snakeoil.pem
  printf 'postgres://tribist:%s@localhost:5432/tribist?sslmode=verify-ca&sslrootcert=%s\n' "$DB_PASSWORD" "$cert" \
    >"$BATS_TEST_TMPDIR/verify_ca"
  run deploy config HOST="root@$A" SSH_OPTS="-F $CFG" DATABASE_URL_FILE="$BATS_TEST_TMPDIR/verify_ca"
  assert_success
  assert_output --partial "(encrypted, sslmode=verify-ca sslrootcert=$cert)"
  run on_host "curl -sS -w '\n%{http_code}' http://localhost:8383/health"
  assert_line 200
  assert_output --partial '"encrypted":true'
  # The certificate names the machine it was made on, not localhost: verify-full refuses it
  # before anything changes, and says why.
  local before
  before=$(on_host "sha256sum </etc/tribist/env")
  printf 'postgres://tribist:%s@localhost:5432/tribist?sslmode=verify-full&sslrootcert=%s\n' "$DB_PASSWORD" "$cert" \
    >"$BATS_TEST_TMPDIR/verify_full"
  run deploy config HOST="root@$A" SSH_OPTS="-F $CFG" DATABASE_URL_FILE="$BATS_TEST_TMPDIR/verify_full"
  assert_failure
  assert_output --partial "not valid for name"
  assert_output --partial "nothing changed"
  refute_output --partial "$DB_PASSWORD"
  assert_equal "$(on_host "sha256sum </etc/tribist/env")" "$before"
  # Back to the URL the next tests expect.
  run deploy config HOST="root@$A" SSH_OPTS="-F $CFG" DATABASE_URL_FILE="$BATS_FILE_TMPDIR/database_url"
  assert_success
}

@test "a hostile tribist: symlinks, a replaced bin/, a forged lock note and a lying binary change nothing of root's" {
  local canary=CANARY-$RANDOM$RANDOM before after rootpid
  on_host "printf '%s\n' $canary >/root/canary && chmod 600 /root/canary && rm -f /tmp/planted-ran-as-* /tmp/hostile-*"
  before=$(snapshot)
  # 1. In the layout install makes, tribist cannot touch anything root uses.
  for cmd in "ln -s /root/canary /home/tribist/deploy-audit.log" "mv /home/tribist/bin /home/tribist/bin.x" \
    "ln -sf /root/canary /home/tribist/.ssh/authorized_keys" "echo x >>/home/tribist/bin/tribist-host" \
    "ln -sf /root/canary /var/lib/tribist-deploy/holder" "echo x >>/var/lib/tribist-deploy/lock" \
    "echo x >>/var/lib/tribist-deploy/audit.log" "mv /home/tribist/api /home/tribist/api.x" \
    "echo x >>/etc/tribist/env" "echo x >/home/tribist/x"; do
    run as_tribist_on_host "$cmd"
    assert_failure
  done
  # 2. What it can write, it poisons: its own api/ and /run/tribist, and a binary that lies.
  as_tribist_on_host "ln -sf /root/canary /run/tribist/PID; ln -s /root/canary /home/tribist/api/.deploy.lock; ln -s /root/canary /home/tribist/api/PID; ln -s /root/canary /home/tribist/api/.deploy.holder"
  cat >"$BATS_TEST_TMPDIR/server-liar" <<'LIAR'
#!/bin/sh
touch /tmp/planted-ran-as-$(id -u)
ls -l /proc/$$/fd >/tmp/hostile-fds-$(id -u) 2>&1
awk '{print $7}' /proc/$$/stat >/tmp/hostile-tty-$(id -u)
printf 'server 6.6.6 (commit evil\n* * * * * root touch /root/pwned\n\033]0;owned\007\033[2J)\n'
LIAR
  chmod 755 "$BATS_TEST_TMPDIR/server-liar"
  run at_terminal make -s -C "$REPO" upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$BATS_TEST_TMPDIR/server-liar"
  assert_failure
  assert_output --partial "nothing changed"
  refute_output --partial "* * *"
  refute_output --partial $'\033'
  # It ran, as tribist only, with no terminal and no descriptor of root's.
  run on_host "cat /tmp/hostile-tty-$(on_host id -u tribist); cat /tmp/hostile-fds-*"
  assert_line 0
  # No descriptor of root's (the lock, its note, the audit); the script's own file is open
  # (root's copy of the upload, /var/lib/tribist-deploy/bin/next, which is what runs).
  refute_output --regexp 'tribist-deploy/(lock|holder|audit)'
  refute_output --partial /dev/pts
  # make status does not follow the PID symlink; make unlock signals only real holders, never
  # the root process tribist's note names.
  run deploy status HOST="root@$A" SSH_OPTS="-F $CFG"
  refute_output --partial "$canary"
  on_host "{ nohup sleep 1000 </dev/null >/dev/null 2>&1 & } ; echo \$! >/root/sleep.pid"
  rootpid=$(on_host cat /root/sleep.pid)
  # Its holder ignores SIGTERM (SIG_IGN is inherited by flock and sleep).
  as_tribist_on_host "rm -f /home/tribist/api/.deploy.holder; printf 'upgrade by root (pid $rootpid) since now\n' >/home/tribist/api/.deploy.holder; nohup sh -c 'trap \"\" TERM; exec flock /var/lib/tribist-deploy/lock sleep 300' </dev/null >/dev/null 2>&1 &"
  run deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$RELEASE"
  assert_failure
  assert_output --partial "refused: another deployment holds the lock"
  assert_output --partial "(as user tribist wrote it)"
  run deploy unlock HOST="root@$A" SSH_OPTS="-F $CFG"
  assert_success
  assert_output --regexp "pid [0-9]+ still held the lock [0-9]+ s after SIGTERM: sent SIGKILL"
  assert_output --partial "had to be killed (SIGKILL)"
  on_host "kill -0 $rootpid && kill $rootpid && rm /root/sleep.pid"
  run on_host "ls -a /home/tribist/api"
  refute_output --partial .upload.
  # 3. A host with the layout before this one (home owned by tribist), attacked: bin/ replaced
  # with planted scripts, symlinks for .ssh/authorized_keys, the old audit log and api/.
  on_host "chown tribist:tribist /home/tribist"
  as_tribist_on_host "cd /home/tribist && mv bin bin.orig && mkdir bin && for f in deploy.sh tribist-host server.sh wait_for_it.sh; do printf '#!/bin/sh\ntouch /tmp/planted-ran-as-\$(id -u)\n' >bin/\$f; chmod 755 bin/\$f; done && mv .ssh .ssh.orig && mkdir .ssh && ln -s /root/canary .ssh/authorized_keys && ln -s /root/canary deploy-audit.log && mv api api.orig && ln -s /etc api"
  # Root refuses to run anything from that home directory until install has fixed it.
  run deploy upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$RELEASE"
  assert_failure
  assert_output --partial "is not root's alone"
  run deploy status HOST="root@$A" SSH_OPTS="-F $CFG"
  assert_failure
  # Re-install with the deploy key: the layout is rebuilt, the planted paths moved aside.
  run at_terminal make -s -C "$REPO" install HOST="root@$A" SSH_OPTS="-F $CFG" DEPLOY_KEY="$BATS_FILE_TMPDIR/deploy_key.pub"
  assert_success
  assert_output --partial "moved aside /home/tribist/bin"
  assert_output --partial "moved aside /home/tribist/api"
  # Every other root operation, with tribist's deploy key working again.
  run deploy upgrade HOST="tribist@$A" SSH_OPTS="$(as_tribist)" BIN="$BATS_FILE_TMPDIR/server-b"
  assert_success
  run at_terminal make -s -C "$REPO" upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$RELEASE"
  assert_success
  run deploy rollback HOST="root@$A" SSH_OPTS="-F $CFG"
  assert_success
  deploy status HOST="root@$A" SSH_OPTS="-F $CFG" >/dev/null
  deploy logs HOST="root@$A" SSH_OPTS="-F $CFG" >/dev/null
  deploy unlock HOST="root@$A" SSH_OPTS="-F $CFG" >/dev/null
  deploy audit HOST="root@$A" SSH_OPTS="-F $CFG" >"$BATS_TEST_TMPDIR/audit"
  deploy uninstall HOST="root@$A" SSH_OPTS="-F $CFG" >/dev/null
  run deploy install HOST="root@$A" SSH_OPTS="-F $CFG" DEPLOY_KEY="$BATS_FILE_TMPDIR/deploy_key.pub"
  assert_success
  # Nothing of root's changed, no planted code ran as root, the audit holds no injected line.
  after=$(snapshot)
  assert_equal "$after" "$before"
  run on_host "ls /tmp/planted-ran-as-0 /root/pwned"
  assert_failure
  run grep -c '^\* \* \*' "$BATS_TEST_TMPDIR/audit"
  assert_output 0
  assert_equal "$(on_host "stat -c '%U:%G %a' /etc /home/tribist")" "root:root 755
root:tribist 750"
  assert_equal "$(serving)" "$(release_of "$RELEASE")"
}

@test "what runs is what root's audit names, with tribist swapping api/ under root's upgrade; the service is out of tribist's reach" {
  local pid running audited shipped
  # The service runs as tribistd: whoever holds the deploy key cannot signal it.
  pid=$(on_host systemctl show -p MainPID --value tribist)
  run as_tribist_on_host "kill -0 $pid"
  assert_failure
  assert_output --partial "Operation not permitted"
  # While root upgrades, tribist renames another working binary (the serving one) over every
  # upload and server_new it sees, as fast as it can, for up to 60 s.
  as_tribist_on_host "cp /home/tribist/api/server /home/tribist/api/.fake"
  on_host "cat >/tmp/swapper.sh" <<'SWAP'
end=$(($(date +%s) + 60))
while [ "$(date +%s)" -lt "$end" ]; do
  for f in /home/tribist/api/.upload.* /home/tribist/api/server_new /home/tribist/api/server; do
    case $f in *.x) continue ;; esac
    [ -f "$f" ] && cp /home/tribist/api/.fake "$f.x" 2>/dev/null && mv -f "$f.x" "$f" 2>/dev/null
  done
done
SWAP
  as_tribist_on_host "setsid bash /tmp/swapper.sh </dev/null >/dev/null 2>&1 &"
  run make -s -C "$REPO" upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$BATS_FILE_TMPDIR/server-b"
  on_host "pkill -u tribist -f swapper.sh; rm -f /tmp/swapper.sh /home/tribist/api/.fake /home/tribist/api/*.x /home/tribist/api/.upload.*.x"
  # Whatever the upgrade said, the process serving runs root's copy and the audit names it.
  pid=$(on_host systemctl show -p MainPID --value tribist)
  assert_equal "$(on_host readlink /proc/"$pid"/exe)" /var/lib/tribist-deploy/bin/server
  running=$(on_host "sha256sum </proc/$pid/exe" | cut -c1-64)
  audited=$(on_host "grep -o 'server_sha256=[0-9a-f]*' /var/lib/tribist-deploy/audit.log | tail -n 1" | cut -d= -f2)
  assert_equal "$running" "$audited"
  shipped=$(sha256sum <"$BATS_FILE_TMPDIR/server-b" | cut -c1-64)
  if [[ "$(on_host 'tail -n 1 /var/lib/tribist-deploy/audit.log')" == *"action=upgrade"*"result=ok"* ]]; then
    assert_equal "$running" "$shipped"
  fi
  # The release shipped, once nobody interferes.
  run make -s -C "$REPO" upgrade HOST="root@$A" SSH_OPTS="-F $CFG" BIN="$BATS_FILE_TMPDIR/server-b"
  assert_success
  pid=$(on_host systemctl show -p MainPID --value tribist)
  assert_equal "$(on_host "sha256sum </proc/$pid/exe" | cut -c1-64)" "$shipped"
}

@test "make status and make logs report the service" {
  run deploy status HOST="root@$A" SSH_OPTS="-F $CFG"
  assert_success
  assert_line --regexp "^root@$A +healthy release="
  assert_output --partial "  service: active (running)"
  assert_output --partial '"status":"pass"'
  # tribist sees systemctl status's view: the unit and the server's own last lines.
  run deploy logs HOST="tribist@$A" SSH_OPTS="$(as_tribist)"
  assert_output --partial "tribist.service - tribist API server"
  assert_output --regexp "server\[[0-9]+\]: \[INFO\]"
  run deploy logs HOST="root@$A" SSH_OPTS="-F $CFG" GREP="listening on"
  assert_output --partial "listening on"
}

@test "after the host reboots, the enabled service is back and healthy" {
  "$HOSTSH" reboot "$A"
  run on_host "/home/tribist/bin/wait_for_it.sh -t 60"
  assert_success
  run on_host "systemctl is-active tribist.socket && curl -fsS -o /dev/null http://localhost:8383/health && systemctl show -p MainPID --value tribist"
  assert_success
  assert_equal "$(on_host cat /run/tribist/PID)" "${lines[-1]}"
}

@test "make uninstall keeps the configuration unless PURGE=1" {
  run deploy uninstall HOST="root@$A" SSH_OPTS="-F $CFG"
  assert_success
  run on_host "systemctl is-active tribist.service tribist.socket"
  assert_failure
  on_host "test -f /etc/tribist/env && test -x /home/tribist/api/server"
  # PURGE=1 without a terminal and without YES=1: refused, nothing sent; at a terminal,
  # anything but "yes" keeps everything.
  run deploy uninstall HOST="root@$A" SSH_OPTS="-F $CFG" PURGE=1
  assert_failure 2
  assert_output --partial "make uninstall HOST=root@$A PURGE=1 YES=1"
  at_terminal make -s -C "$REPO" uninstall HOST="root@$A" SSH_OPTS="-F $CFG" PURGE=1 >"$BATS_TEST_TMPDIR/purge.out" 2>&1 &
  local job=$! rc=0
  wait_for_text "$BATS_TEST_TMPDIR/purge.out" "Type yes to delete them:"
  press $'no\r'
  wait "$job" || rc=$?
  assert_equal "$rc" 2
  on_host "test -f /etc/tribist/env && id tribist"
  # Moved to another port first: PURGE forgets that too, so a plain install serves on 8383.
  run deploy install HOST="root@$A" SSH_OPTS="-F $CFG" LISTEN=127.0.0.1:9005
  assert_success
  run deploy uninstall HOST="root@$A" SSH_OPTS="-F $CFG" PURGE=1 YES=1
  assert_success
  run on_host "test -e /etc/tribist || id tribist || test -e /etc/systemd/system/tribist.socket.d || test -e /etc/systemd/system/tribist.service.d"
  assert_failure
  run deploy install HOST="root@$A" SSH_OPTS="-F $CFG" DATABASE_URL_FILE="$BATS_FILE_TMPDIR/database_url"
  assert_success
  run on_host "curl -sS -o /dev/null -w '%{http_code}' http://127.0.0.1:8383/health"
  assert_output 200
}

@test "a host the bash kit set up (the service as tribist) moves to the host program with make install" {
  local old=$BATS_TEST_TMPDIR/kit pid
  # The last kit in bash alone (f347aaa: before tribist-host and tribistd), shipping this
  # release's binary: its scripts and units, its remote.sh.
  git -C "$REPO" cat-file -e 'f347aaa^{commit}' 2>/dev/null || skip "commit f347aaa (the bash kit) is not in this clone"
  mkdir -p "$old"
  git -C "$REPO" archive f347aaa | tar -x -C "$old"
  deploy uninstall HOST="root@$C" SSH_OPTS="-F $CFG" PURGE=1 YES=1 >/dev/null
  run env HOST="root@$C" SSH_OPTS="-F $CFG" BIN="$RELEASE" DATABASE_URL_FILE="$BATS_FILE_TMPDIR/database_url" \
    DEPLOY_KEY="$BATS_FILE_TMPDIR/deploy_key.pub" "$old/sbin/remote.sh" install
  assert_success
  pid=$(on "$C" systemctl show -p MainPID --value tribist)
  assert_equal "$(on "$C" ps -o user= -p "$pid")" tribist
  on "$C" "test -x /home/tribist/bin/releases.sh && ! test -e /home/tribist/bin/tribist-host && ! id tribistd"
  # This kit's install, with nothing but the host: the service moves to its own user and to
  # root's verified copy, the layout is the table's, the old script is gone, the key stays.
  run timed "make install over the bash kit" deploy install HOST="root@$C" SSH_OPTS="-F $CFG"
  assert_success
  assert_output --partial "created user tribistd"
  refute_output --partial "moved aside"
  pid=$(on "$C" systemctl show -p MainPID --value tribist)
  assert_equal "$(on "$C" ps -o user= -p "$pid")" tribistd
  assert_equal "$(on "$C" readlink /proc/"$pid"/exe)" /var/lib/tribist-deploy/bin/server
  run on "$C" "/home/tribist/bin/tribist-host layout"
  assert_success
  run on "$C" "test -e /home/tribist/bin/releases.sh"
  assert_failure
  run deploy upgrade HOST="tribist@$C" SSH_OPTS="$(as_tribist)" BIN="$BATS_FILE_TMPDIR/server-b"
  assert_success
  assert_equal "$(serving "$C")" "$(release_of "$BATS_FILE_TMPDIR/server-b")"
  run deploy config HOST="root@$C" SSH_OPTS="-F $CFG" SET=TRIBIST_WORKERS=4
  assert_success
  assert_output --partial "configuration OK: 4 workers"
  run on "$C" "grep -c ' action=install .* result=ok$' /var/lib/tribist-deploy/audit.log"
  assert_output 2
}

#!/usr/bin/env bats
# The developer's machine: `make run`'s local PostgreSQL (tests/support/run.sh, pg.sh) when its
# port is taken, and the end-to-end host image's PostgreSQL port (tests/e2e/host.sh prepare).

load /usr/lib/bats/bats-support/load.bash
load /usr/lib/bats/bats-assert/load.bash

REPO="$BATS_TEST_DIRNAME/.."
RUN_SH="$REPO/tests/support/run.sh"
PG_SH="$REPO/tests/support/pg.sh"
HOST_SH="$REPO/tests/e2e/host.sh"

setup() {
  BIN=${TRIBIST_TEST_BIN:-$REPO/target/debug/server}
  # make run's working directory, as a checkout's .dev. Inside bats' temporary directory,
  # which user postgres cannot enter: as root, run.sh must put the cluster elsewhere.
  DEV="$BATS_TEST_TMPDIR/dev"
  RUN_PID="" HOLDER_PID=""
}

teardown() {
  stop_run
  [[ -n "$HOLDER_PID" ]] && kill "$HOLDER_PID" 2>/dev/null
  if [[ -e "$DEV/pg" ]]; then
    "$PG_SH" stop "$DEV/pg" 2>/dev/null || true
    [[ -L "$DEV/pg" ]] && rm -rf "$(readlink "$DEV/pg")"
  fi
  true
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Holds 127.0.0.1:PORT with a plain listener (as another checkout's PostgreSQL would); when
# something already holds it, that will do.
hold_port() {
  coproc HOLDER {
    exec python3 -c '
import socket, sys, time
s = socket.socket()
# As PostgreSQL does: a connection to the port in TIME-WAIT does not hold it.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen()
    print("held", flush=True)
except OSError:
    print("taken already", flush=True)
time.sleep(600)' "$1"
  }
  HOLDER_PID=$HOLDER_PID
  local said
  read -r said <&"${HOLDER[0]}"
  [[ "$said" == held || "$said" == "taken already" ]] || fail "cannot hold port $1: $said"
}

release_port() {
  kill "$HOLDER_PID"
  wait "$HOLDER_PID" 2>/dev/null || true
  HOLDER_PID=""
}

# Starts run.sh (make run's recipe) in the background with the environment given, on a free
# LISTEN port; its output goes to $DEV.out. Sets RUN_PID and LISTEN_PORT.
start_run() {
  [[ -x "$BIN" ]] || fail "no server binary at $BIN; build it: cargo build"
  LISTEN_PORT=$(free_port)
  mkdir -p "$DEV"
  env "$@" BIN="$BIN" DEV_DIR="$DEV" LISTEN="127.0.0.1:$LISTEN_PORT" "$RUN_SH" >"$DEV.out" 2>&1 &
  RUN_PID=$!
}

stop_run() {
  [[ -n "$RUN_PID" ]] || return 0
  kill "$RUN_PID" 2>/dev/null || true
  wait "$RUN_PID" 2>/dev/null || true
  RUN_PID=""
}

# Waits (at most 60 s) until /health answers 200; fails with run.sh's output otherwise.
wait_healthy() {
  local deadline=$((SECONDS + 60)) code=000
  while ((SECONDS < deadline)); do
    code=$(curl -s -o "$DEV.health" -w '%{http_code}' --max-time 5 "http://127.0.0.1:$LISTEN_PORT/health") || code=000
    [[ "$code" == 200 ]] && return 0
    kill -0 "$RUN_PID" 2>/dev/null || break
    sleep 0.2
  done
  fail "no 200 from /health (last: $code $(cat "$DEV.health" 2>/dev/null)); run.sh said: $(cat "$DEV.out")"
}

# The port run.sh said it uses.
said_port() {
  sed -n 's/^using the local PostgreSQL in .* on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$DEV.out"
}

# The port the cluster in $DEV/pg really listens on (postmaster.pid's fourth line).
cluster_port() { sed -n 4p "$DEV/pg/data/postmaster.pid"; }

@test "make help says how to choose make run's PostgreSQL port" {
  run make -s -C "$REPO" help
  assert_success
  assert_line --regexp '^  make run .*DEV_PG_PORT=PORT'
}

@test "make run: leaves DEV_PG_PORT empty unless given, so run.sh picks a free port" {
  run make -s -n -C "$REPO" run
  assert_success
  assert_output --regexp 'DEV_PG_PORT= tests/support/run.sh'
  run make -s -n -C "$REPO" run DEV_PG_PORT=54341
  assert_output --regexp 'DEV_PG_PORT=54341 tests/support/run.sh'
}

@test "run.sh: with 54329 taken, serves /health 200 on a free port and prints the port it uses" {
  hold_port 54329
  start_run DEV_PG_PORT=
  wait_healthy
  local port
  port=$(said_port)
  [[ -n "$port" ]] || fail "no port printed: $(cat "$DEV.out")"
  [[ "$port" != 54329 ]] || fail "used 54329, which was held; run.sh said: $(cat "$DEV.out")"
  assert_equal "$(cluster_port)" "$port"
  run cat "$DEV.out"
  assert_output --regexp "taken on 127\.0\.0\.1: 54329.*; using port $port"
  assert_output --partial "make run DEV_PG_PORT=PORT"
}

@test "run.sh: DEV_PG_PORT is honoured every time, also moving a cluster made on another port" {
  start_run DEV_PG_PORT=
  wait_healthy
  local first second
  first=$(said_port)
  stop_run
  second=$(free_port)
  [[ "$second" != "$first" ]] || second=$(free_port)
  # The cluster of the first run is still running (make run leaves it): moved, not kept.
  start_run DEV_PG_PORT="$second"
  wait_healthy
  assert_equal "$(said_port)" "$second"
  assert_equal "$(cluster_port)" "$second"
  stop_run
  # Stopped, and started again on yet another port.
  "$PG_SH" stop "$DEV/pg"
  local third
  third=$(free_port)
  start_run DEV_PG_PORT="$third"
  wait_healthy
  assert_equal "$(said_port)" "$third"
  assert_equal "$(cluster_port)" "$third"
}

@test "run.sh: a DEV_PG_PORT that is taken is refused with the fix; the fix, and a later run once it is free, serve" {
  local port fix
  port=$(free_port)
  hold_port "$port"
  start_run DEV_PG_PORT="$port"
  wait "$RUN_PID" && fail "run.sh succeeded on a taken port: $(cat "$DEV.out")"
  RUN_PID=""
  run cat "$DEV.out"
  assert_output --partial "port $port on 127.0.0.1 is taken (by python3, pid $HOLDER_PID)"
  assert_output --regexp "DEV_PG_PORT=$port is taken; fix: make run DEV_PG_PORT=[0-9]+"
  refute_output --partial "did not start"
  fix=$(sed -n 's/.*fix: make run DEV_PG_PORT=\([0-9]*\).*/\1/p' "$DEV.out")
  # The command it names works.
  start_run DEV_PG_PORT="$fix"
  wait_healthy
  assert_equal "$(cluster_port)" "$fix"
  stop_run
  # And once the port is free, the port given first works too: the cluster that the failed
  # start left (made, never started) gets its role and database now.
  release_port
  start_run DEV_PG_PORT="$port"
  wait_healthy
  assert_equal "$(cluster_port)" "$port"
}

@test "run.sh: a running cluster is not stopped for a DEV_PG_PORT that is taken" {
  start_run DEV_PG_PORT=
  wait_healthy
  stop_run
  local first taken
  first=$(cluster_port)
  taken=$(free_port)
  hold_port "$taken"
  start_run DEV_PG_PORT="$taken"
  wait "$RUN_PID" && fail "run.sh succeeded on a taken port: $(cat "$DEV.out")"
  RUN_PID=""
  run cat "$DEV.out"
  assert_output --regexp "DEV_PG_PORT=$taken is taken; fix: make run DEV_PG_PORT=[0-9]+$"
  # Still running where it was.
  assert_equal "$(cluster_port)" "$first"
  run env PGPASSWORD=tribist-test-pw psql -X -h 127.0.0.1 -p "$first" -U tribist -tAc 'SELECT 1'
  assert_output 1
}

@test "run.sh: a cluster whose role and database are missing gets them again" {
  start_run DEV_PG_PORT=
  wait_healthy
  stop_run
  local port
  port=$(cluster_port)
  runuser -u postgres -- psql -X -q -h "$(readlink -f "$DEV/pg")" -p "$port" -U postgres -d postgres \
    -c 'DROP DATABASE tribist' -c 'DROP ROLE tribist'
  start_run DEV_PG_PORT=
  wait_healthy
  assert_equal "$(said_port)" "$port"
}

@test "run.sh: as root in a directory user postgres cannot enter, the cluster lives in /var/tmp" {
  [[ $(id -u) -eq 0 ]] || skip "only root runs the cluster as another user"
  start_run DEV_PG_PORT=
  wait_healthy
  assert [ -L "$DEV/pg" ]
  run readlink "$DEV/pg"
  assert_output --regexp '^/var/tmp/tribist-dev-[0-9]+$'
  run cat "$DEV.out"
  assert_output --partial "user postgres cannot enter"
}

# A root file system shaped like host.sh's cached image, as an earlier run on a machine with
# its own PostgreSQL on 5432 left it: the cluster on 5433.
fake_image() {
  local cache=$1 prepared=$2 root
  root="$cache/rootfs-bookworm"
  mkdir -p "$root/etc/postgresql/15/main" "$root/etc/pam.d" "$root/etc/systemd/system"
  printf "data_directory = '/var/lib/postgresql/15/main'\nport = 5433\t\t\t\t# (change requires restart)\nmax_connections = 100\n" \
    >"$root/etc/postgresql/15/main/postgresql.conf"
  printf 'session    required     pam_loginuid.so\n' >"$root/etc/pam.d/sshd"
  # The front door's packages, as dpkg lists them once installed.
  mkdir -p "$root/var/lib/dpkg/info"
  touch "$root/var/lib/dpkg/info/"{caddy,pebble,libnss3-tools,media-types}.list
  touch "$root/.debootstrap-done"
  [[ -z "$prepared" ]] || touch "$root/.tribist-base-$(sed -n 's/^readonly BASE_VERSION=//p' "$HOST_SH")"
}

@test "host.sh prepare: a cached image whose PostgreSQL took 5433 is repaired to 5432, at once" {
  local cache="$BATS_TEST_TMPDIR/cache" conf
  conf="$cache/rootfs-bookworm/etc/postgresql/15/main/postgresql.conf"
  fake_image "$cache" prepared
  run env TRIBIST_E2E_CACHE="$cache" "$HOST_SH" prepare
  assert_success
  assert_output --partial "port = 5433"
  assert_output --partial "setting port = 5432"
  run grep -c '^port' "$conf"
  assert_output 1
  run grep '^port' "$conf"
  assert_output --regexp '^port = 5432[[:space:]]+# \(change requires restart\)$'
  run grep -c . "$conf"
  assert_output 3
  # Once repaired, prepare has nothing to do and says nothing.
  run env TRIBIST_E2E_CACHE="$cache" "$HOST_SH" prepare
  assert_success
  assert_output ""
}

@test "host.sh prepare: a newly built image's PostgreSQL listens on 5432 whatever this machine runs" {
  local cache="$BATS_TEST_TMPDIR/cache" root
  root="$cache/rootfs-bookworm"
  # As debootstrap leaves it (the build itself is skipped: .debootstrap-done).
  fake_image "$cache" ""
  run env TRIBIST_E2E_CACHE="$cache" "$HOST_SH" prepare
  assert_success
  run grep '^port' "$root/etc/postgresql/15/main/postgresql.conf"
  assert_output --regexp '^port = 5432[[:space:]]'
  run grep pam_loginuid "$root/etc/pam.d/sshd"
  assert_output --partial optional
  assert [ -f "$root/root/.ssh/authorized_keys" ]
}

@test "host.sh prepare: an image without a PostgreSQL cluster is refused with the command that rebuilds it" {
  local cache="$BATS_TEST_TMPDIR/cache"
  fake_image "$cache" prepared
  rm -r "$cache/rootfs-bookworm/etc/postgresql"
  run env TRIBIST_E2E_CACHE="$cache" "$HOST_SH" prepare
  assert_failure
  assert_output --partial "no PostgreSQL cluster in $cache/rootfs-bookworm/etc/postgresql"
  assert_output --partial "rm -rf $cache/rootfs-bookworm && "
}

@test "host.sh prepare: a cached image without caddy and pebble gets them in its chroot, or says how to rebuild it" {
  local cache="$BATS_TEST_TMPDIR/cache" root
  root="$cache/rootfs-bookworm"
  fake_image "$cache" prepared
  run env TRIBIST_E2E_CACHE="$cache" "$HOST_SH" prepare
  assert_success
  # Installed, but enabled as the package leaves it: disabled at once, nothing installed.
  mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
  ln -s /lib/systemd/system/caddy.service "$root/etc/systemd/system/multi-user.target.wants/caddy.service"
  run env TRIBIST_E2E_CACHE="$cache" "$HOST_SH" prepare
  assert_success
  assert_output ""
  assert [ ! -e "$root/etc/systemd/system/multi-user.target.wants/caddy.service" ]
  # Missing: installed with apt in the chroot; this fake image has no apt, so prepare fails
  # naming its log and the command that rebuilds the image.
  rm "$root/var/lib/dpkg/info/"{caddy,pebble}.list
  run env TRIBIST_E2E_CACHE="$cache" "$HOST_SH" prepare
  assert_failure
  assert_output --partial "installing caddy pebble in $root"
  assert_output --partial "could not install caddy pebble in $root (see $cache/packages.log)"
  assert_output --partial "rm -rf $root && "
}

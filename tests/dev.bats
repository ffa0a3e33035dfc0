#!/usr/bin/env bats
# The developer's machine: the end-to-end host image's PostgreSQL port (tests/e2e/host.sh prepare).

load /usr/lib/bats/bats-support/load.bash
load /usr/lib/bats/bats-assert/load.bash

REPO="$BATS_TEST_DIRNAME/.."
HOST_SH="$REPO/tests/e2e/host.sh"

# A root file system shaped like host.sh's cached image, as an earlier run on a machine with
# its own PostgreSQL on 5432 left it: the cluster on 5433.
fake_image() {
  local cache=$1 prepared=$2 root
  root="$cache/rootfs-bookworm"
  mkdir -p "$root/etc/postgresql/15/main" "$root/etc/pam.d" "$root/etc/systemd/system"
  printf "data_directory = '/var/lib/postgresql/15/main'\nport = 5433\t\t\t\t# (change requires restart)\nmax_connections = 100\n" \
    >"$root/etc/postgresql/15/main/postgresql.conf"
  printf 'session    required     pam_loginuid.so\n' >"$root/etc/pam.d/sshd"
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

#!/usr/bin/env bash
# Throwaway Debian hosts with a real systemd, for the end-to-end tests and `make demo`.
#
# Each host is a copy of a cached debootstrap root file system booted with systemd-nspawn in a
# network namespace of its own (`tribist-NAME`) that has only a loopback interface. The
# developer side reaches its sshd through `ip netns exec tribist-NAME nc 127.0.0.1 22` as an
# ssh ProxyCommand (see `ssh-config`), so `ssh -F CONFIG NAME` works like for any server and
# no traffic ever leaves this machine.
set -euo pipefail

readonly CACHE=${TRIBIST_E2E_CACHE:-/var/cache/tribist-e2e}
readonly RUN=${TRIBIST_E2E_RUN:-/var/tmp/tribist-e2e}
# The network namespaces' prefix: another prefix (and RUN) lets a second suite run beside this
# one, neither touching the other's hosts.
readonly NETNS_PREFIX=${TRIBIST_E2E_NETNS:-tribist}
# TRIBIST_E2E_SUITE=trixie boots Debian 13 hosts instead (a root file system cached per suite).
readonly SUITE=${TRIBIST_E2E_SUITE:-bookworm}
# debootstrap's own default mirror unless TRIBIST_E2E_MIRROR names another.
readonly MIRROR=${TRIBIST_E2E_MIRROR:-}
readonly PACKAGES=systemd,systemd-sysv,dbus,openssh-server,sudo,curl,postgresql,procps,iproute2
# The front door's (tests/e2e-front.bats): Caddy (and what it depends on) and pebble, the ACME
# test CA, since the hosts have no network. caddy.service stays disabled in the image: the
# tests that want it start it. An image cached before these were added gets them (prepare).
readonly FRONT_PACKAGES=(caddy pebble libnss3-tools media-types)
# Bump when the preparation below changes, so cached copies are rebuilt.
readonly BASE_VERSION=2

usage() {
  cat <<'USAGE'
usage: host.sh prepare         build the cached root file system if missing (~2 min, once);
                               every time, make its PostgreSQL listen on 5432 (a cached
                               image whose cluster took another port is repaired) and
                               install caddy and pebble in it if missing (caddy disabled)
       host.sh up NAME         boot host NAME; prints nothing, returns once its sshd answers
       host.sh down NAME       power it off and delete it (also its network namespace)
       host.sh reboot NAME     power it off and boot the same file system again
       host.sh ssh NAME CMD…   run CMD as root on host NAME
       host.sh db NAME PASS    create PostgreSQL role and database tribist (password PASS) on NAME
       host.sh ssh-config      print the path of an ssh_config that reaches every host by
                               its NAME (for make: SSH_OPTS="-F PATH" HOST=root@NAME)
       host.sh cleanup         delete every host left by an interrupted run
       host.sh --help

TRIBIST_E2E_CACHE (default /var/cache/tribist-e2e) holds the root file system and the ssh key;
TRIBIST_E2E_RUN (default /var/tmp/tribist-e2e) the running hosts; TRIBIST_E2E_SUITE (bookworm)
the Debian release. Needs root, debootstrap,
systemd-container, iproute2 and netcat-openbsd.
USAGE
}

die() {
  echo "host.sh: $*" >&2
  exit 1
}

log() { echo "host.sh: $*" >&2; }

base() { echo "$CACHE/rootfs-$SUITE"; }

# The hosts' PostgreSQL port. pg_createcluster, run by debootstrap in a chroot that shares
# this machine's network, takes the first free port from 5432: 5433 when this machine runs
# its own PostgreSQL.
readonly HOST_PG_PORT=5432

# The postgresql.conf of each cluster in root file system DIR.
pg_confs() { compgen -G "$1/etc/postgresql/*/*/postgresql.conf" || true; }

# True when every cluster in DIR listens on HOST_PG_PORT (and there is one).
pg_port_ok() {
  local conf found=""
  while IFS= read -r conf; do
    [[ -n "$conf" ]] || continue
    found=1
    grep -Eq "^[[:space:]]*port[[:space:]]*=[[:space:]]*$HOST_PG_PORT([^0-9]|$)" "$conf" || return 1
  done < <(pg_confs "$1")
  [[ -n "$found" ]]
}

# Makes every cluster in root file system DIR listen on HOST_PG_PORT, whatever port
# pg_createcluster chose (also repairs an image cached by an earlier run).
pin_pg_port() {
  local dir=$1 conf confs
  confs=$(pg_confs "$dir")
  [[ -n "$confs" ]] || die "no PostgreSQL cluster in $dir/etc/postgresql; rebuild the image: rm -rf $dir && $0 prepare"
  while IFS= read -r conf; do
    if grep -Eq "^[[:space:]]*port[[:space:]]*=[[:space:]]*$HOST_PG_PORT([^0-9]|$)" "$conf"; then
      continue
    fi
    log "${conf#"$dir"}: $(grep -E '^[[:space:]]*port[[:space:]]*=' "$conf" | head -n 1 || echo 'no port line'); setting port = $HOST_PG_PORT"
    if grep -Eq '^[[:space:]]*port[[:space:]]*=' "$conf"; then
      sed -i -E "s/^[[:space:]]*port[[:space:]]*=[[:space:]]*[0-9]+/port = $HOST_PG_PORT/" "$conf"
    else
      echo "port = $HOST_PG_PORT" >>"$conf"
    fi
  done <<<"$confs"
}

# True when root file system DIR has every one of FRONT_PACKAGES installed (dpkg's file
# list of each) and caddy.service is not enabled.
packages_ok() {
  local p
  for p in "${FRONT_PACKAGES[@]}"; do
    [[ -f "$1/var/lib/dpkg/info/$p.list" ]] || compgen -G "$1/var/lib/dpkg/info/$p:*.list" >/dev/null || return 1
  done
  [[ ! -e "$1/etc/systemd/system/multi-user.target.wants/caddy.service" ]]
}

# Installs FRONT_PACKAGES in root file system DIR (apt in a chroot, over this machine's
# network, as debootstrap did) and disables caddy.service there. The downloaded packages stay
# in the image's apt cache, so a host can install caddy again without a network.
install_packages() {
  local dir=$1 log=$CACHE/packages.log p missing=()
  for p in "${FRONT_PACKAGES[@]}"; do
    [[ -f "$dir/var/lib/dpkg/info/$p.list" ]] || compgen -G "$dir/var/lib/dpkg/info/$p:*.list" >/dev/null || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]} in $dir (the front door's tests need them; once, about a minute)"
    {
      chroot "$dir" apt-get update &&
        chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${FRONT_PACKAGES[@]}"
    } >"$log" 2>&1 ||
      die "could not install ${missing[*]} in $dir (see $log); or rebuild the image: rm -rf $dir && $0 prepare"
  fi
  rm -f "$dir/etc/systemd/system/multi-user.target.wants/caddy.service"
}

prepare() {
  local dir marker
  dir=$(base)
  marker="$dir/.tribist-base-$BASE_VERSION"
  [[ -f "$marker" ]] && pg_port_ok "$dir" && packages_ok "$dir" && return 0
  [[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, systemd-nspawn, ip netns)"
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock 9
  if [[ ! -f "$marker" ]]; then
    prepare_base "$dir"
    touch "$marker"
  fi
  pin_pg_port "$dir"
  install_packages "$dir"
}

# debootstrap (unless done) and the settings a container needs, in root file system DIR.
prepare_base() {
  local dir=$1
  if [[ ! -f "$dir/.debootstrap-done" ]]; then
    log "building the $SUITE root file system in $dir (about 2 minutes, cached afterwards)"
    rm -rf "$dir.tmp"
    local mirror=()
    [[ -n "$MIRROR" ]] && mirror=("$MIRROR")
    debootstrap --variant=minbase --include="$PACKAGES,$(IFS=,; echo "${FRONT_PACKAGES[*]}")" "$SUITE" "$dir.tmp" "${mirror[@]}" \
      >"$CACHE/debootstrap.log" 2>&1 || die "debootstrap failed; see $CACHE/debootstrap.log"
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    touch "$dir/.debootstrap-done"
  fi
  # sshd's pam_loginuid cannot write the login uid inside a container.
  sed -i 's/^session\s\+required\s\+pam_loginuid.so/session optional pam_loginuid.so/' "$dir/etc/pam.d/sshd"
  # A console getty is useless here and slows shutdown.
  ln -sf /dev/null "$dir/etc/systemd/system/console-getty.service"
  ln -sf /dev/null "$dir/etc/systemd/system/getty@.service"
  [[ -f "$CACHE/id_ed25519" ]] || ssh-keygen -q -t ed25519 -N '' -C tribist-e2e -f "$CACHE/id_ed25519"
  install -d -m 700 "$dir/root/.ssh"
  install -m 600 "$CACHE/id_ed25519.pub" "$dir/root/.ssh/authorized_keys"
  : >"$dir/etc/machine-id"
}

netns() { echo "$NETNS_PREFIX-$1"; }

check_name() {
  [[ "${1:-}" =~ ^[a-z][a-z0-9]{0,11}$ ]] || die "host name must be 1-12 lowercase letters/digits, got '${1:-}'"
}

# Writes (if needed) and prints the ssh_config that reaches each host by name.
ssh_config() {
  local cfg="$RUN/ssh_config" tmp
  mkdir -p "$RUN"
  # A file of its own per call: tests call this from parallel processes.
  tmp=$(mktemp "$cfg.XXXXXX")
  cat >"$tmp" <<CONFIG
# Written by tests/e2e/host.sh: host NAME is the sshd in network namespace tribist-NAME.
Host *
  User root
  IdentityFile $CACHE/id_ed25519
  ProxyCommand ip netns exec $NETNS_PREFIX-%h nc 127.0.0.1 22
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  ConnectTimeout 5
  BatchMode yes
CONFIG
  chmod 644 "$tmp"
  mv -f "$tmp" "$cfg"
  echo "$cfg"
}

boot() {
  local name=$1 dir="$RUN/$1"
  ip netns list | grep -qx "$(netns "$name")\( .*\)\?" || {
    ip netns add "$(netns "$name")"
    ip -n "$(netns "$name")" link set lo up
  }
  setsid systemd-nspawn -D "$dir/root" -b --network-namespace-path="/run/netns/$(netns "$name")" \
    --register=no --keep-unit -M "$name" --console=passive \
    </dev/null >>"$dir/console.log" 2>&1 &
  echo $! >"$dir/nspawn.pid"
  local deadline=$((SECONDS + 90)) cfg
  cfg=$(ssh_config)
  until ssh -F "$cfg" "$name" true 2>/dev/null; do
    kill -0 "$(cat "$dir/nspawn.pid")" 2>/dev/null || die "host $name did not boot; see $dir/console.log"
    ((SECONDS < deadline)) || die "host $name: no ssh after 90 s; see $dir/console.log"
    sleep 0.5
  done
}

up() {
  local name=$1 dir="$RUN/$1"
  check_name "$name"
  prepare
  [[ -e "$dir" ]] && down "$name"
  mkdir -p "$dir"
  cp -a --reflink=auto "$(base)" "$dir/root"
  echo "$name" >"$dir/root/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost\n' "$name" >"$dir/root/etc/hosts"
  boot "$name"
}

poweroff() {
  local name=$1 dir="$RUN/$1" pid
  [[ -f "$dir/nspawn.pid" ]] || return 0
  pid=$(cat "$dir/nspawn.pid")
  if kill -0 "$pid" 2>/dev/null; then
    # SIGTERM makes nspawn ask the container's systemd to power off.
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/nspawn.pid"
}

down() {
  local name=$1
  check_name "$name"
  poweroff "$name"
  ip netns del "$(netns "$name")" 2>/dev/null || true
  rm -rf "${RUN:?}/$name"
}

reboot_host() {
  check_name "$1"
  poweroff "$1"
  boot "$1"
}

cleanup() {
  local d
  for d in "$RUN"/*/; do
    [[ -d "$d" ]] || continue
    down "$(basename "$d")"
  done
  # Namespaces whose directory is already gone.
  ip netns list | awk '{print $1}' | grep "^$NETNS_PREFIX-" | while read -r ns; do ip netns del "$ns"; done || true
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    -h | --help) usage ;;
    prepare) prepare ;;
    up) [[ $# -eq 1 ]] || die "usage: host.sh up NAME"; up "$1" ;;
    down) [[ $# -eq 1 ]] || die "usage: host.sh down NAME"; down "$1" ;;
    reboot) [[ $# -eq 1 ]] || die "usage: host.sh reboot NAME"; reboot_host "$1" ;;
    ssh)
      [[ $# -ge 2 ]] || die "usage: host.sh ssh NAME CMD..."
      local name=$1
      shift
      ssh -F "$(ssh_config)" "$name" "$@"
      ;;
    ssh-config) ssh_config ;;
    db)
      [[ $# -eq 2 ]] || die "usage: host.sh db NAME PASSWORD"
      ssh -F "$(ssh_config)" "$1" "cd / && runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -c \"CREATE ROLE tribist LOGIN PASSWORD '$2'\" -c 'CREATE DATABASE tribist OWNER tribist'"
      ;;
    cleanup) cleanup ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"

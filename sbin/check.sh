#!/usr/bin/env bash
# `make check HOST=…` (and the start of `make install`): what a host must offer before tribist
# is installed or upgraded there, checked on the host itself. remote.sh sends this script on
# ssh's standard input (`bash -s`), so it needs nothing installed; it changes nothing.
#
# One line per check: `PASS name: what was found` or `FAIL name: what was found; fix: what to
# do`. Exit 0 only if every check passed, 1 otherwise, 2 on misuse.
set -euo pipefail
export LC_ALL=C

readonly PROG=check.sh
readonly UNIT=tribist
# systemctl show --timestamp= (tribist-host status) is the newest thing the kit uses: systemd 248.
readonly SYSTEMD_MIN=248
# What the kit runs beyond systemd and the base system (tribist-host install checks the same).
readonly COMMANDS=(curl sudo logger ss pkill pgrep)

usage() {
  cat <<USAGE
usage: $PROG LISTEN MACHINE GLIBC
  LISTEN   the address tribist is to listen on (IPv4:PORT or [IPv6]:PORT)
  MACHINE  the binary's machine (x86_64, aarch64, …; "any" for a script)
  GLIBC    the highest glibc version the binary needs ("none" if it needs none)
Checks: privileges (root, or sudo without a password), systemd (running, version
>= $SYSTEMD_MIN), commands the kit uses, machine and glibc, the listen address (free, or
tribist's own). Prints one PASS/FAIL line each; exit 0 only if all pass.
USAGE
}

FAILED=0
pass() { printf 'PASS %s\n' "$*"; }
fail() {
  printf 'FAIL %s\n' "$*"
  FAILED=1
}

# Whether version $1 <= version $2 (dotted numbers).
version_le() {
  [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" == "$1" ]]
}

check_privileges() {
  if [[ $(id -u) -eq 0 ]]; then
    pass "privileges: root"
  elif sudo -n true 2>/dev/null; then
    pass "privileges: $(id -un), with sudo and no password"
  else
    fail "privileges: $(id -un) is not root and 'sudo -n true' fails; fix: connect as root (HOST=root@…) or give $(id -un) password-less sudo"
  fi
}

check_systemd() {
  local version
  if [[ ! -d /run/systemd/system ]]; then
    fail "systemd: not running as the init system (no /run/systemd/system); fix: tribist needs a host booted with systemd"
    return
  fi
  version=$(systemctl --version 2>/dev/null | sed -n '1s/^systemd \([0-9]*\).*/\1/p')
  if [[ -z "$version" ]]; then
    fail "systemd: 'systemctl --version' says no version; fix: install systemd $SYSTEMD_MIN or newer"
  elif ((version < SYSTEMD_MIN)); then
    fail "systemd: $version, the units and scripts need $SYSTEMD_MIN or newer; fix: a newer distribution release (Debian 12, Ubuntu 22.04, RHEL 9 have it)"
  else
    pass "systemd: $version (needs $SYSTEMD_MIN or newer)"
  fi
}

check_commands() {
  local missing=() c
  for c in "${COMMANDS[@]}"; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
  done
  if ((${#missing[@]} == 0)); then
    pass "commands: ${COMMANDS[*]}"
  else
    fail "commands: missing ${missing[*]}; fix (Debian/Ubuntu): apt-get install curl sudo bsdutils iproute2 procps"
  fi
}

check_platform() {
  local machine=$1 glibc=$2 host_machine host_glibc
  host_machine=$(uname -m)
  host_glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | sed -n 's/^glibc \([0-9.]*\)$/\1/p') || host_glibc=""
  if [[ "$machine" != any && "$machine" != "$host_machine" ]]; then
    fail "platform: the host is $host_machine, the binary is built for $machine; fix: build for $host_machine"
  elif [[ "$glibc" != none && -z "$host_glibc" ]]; then
    fail "platform: the binary needs glibc $glibc, the host has none (musl?); fix: a glibc distribution, or a static build"
  elif [[ "$glibc" != none ]] && ! version_le "$glibc" "$host_glibc"; then
    fail "platform: the binary needs glibc $glibc, the host has $host_glibc; fix: ship the portable build (make release: glibc 2.17)"
  else
    pass "platform: $host_machine, glibc ${host_glibc:-none} (the binary: $machine, glibc $glibc)"
  fi
}

# Whether the listeners in $1 (ss -ltnp) all belong to tribist: pid 1 (its socket) or the
# service's main process.
only_ours() {
  local pids pid main
  main=$(systemctl show -p MainPID --value "$UNIT" 2>/dev/null) || main=0
  pids=$(grep -oE 'pid=[0-9]+' <<<"$1" | cut -d= -f2 | sort -u)
  [[ -n "$pids" ]] || return 1
  for pid in $pids; do
    [[ "$pid" == 1 || "$pid" == "$main" ]] || return 1
  done
}

check_listen() {
  local listen=$1 port ours users
  port=${listen##*:}
  ours=$(systemctl show -p Listen --value "$UNIT.socket" 2>/dev/null | head -n 1) || ours=""
  if [[ "${ours%% *}" == "$listen" ]] && systemctl is-active --quiet "$UNIT.socket" 2>/dev/null; then
    pass "listen $listen: tribist.socket's already"
    return
  fi
  if ! command -v ss >/dev/null; then
    fail "listen $listen: cannot tell (no ss); fix: apt-get install iproute2"
    return
  fi
  users=$(ss -Hltnp "sport = :$port" 2>/dev/null | head -n 2 | tr -s ' ' | tr '\n' ' ') || users=""
  if [[ -n "$users" ]] && only_ours "$users"; then
    pass "listen $listen: port $port is tribist's own (it moves there)"
  elif [[ -n "$users" ]]; then
    fail "listen $listen: port $port is taken (${users% }); fix: LISTEN=another address, or stop what holds it"
  else
    pass "listen $listen: free"
  fi
}

main() {
  case "${1:-}" in
    -h | --help) usage; return 0 ;;
  esac
  [[ $# -eq 3 ]] || { usage >&2; exit 2; }
  check_privileges
  check_systemd
  check_commands
  check_platform "$2" "$3"
  check_listen "$1"
  return "$FAILED"
}

main "$@"

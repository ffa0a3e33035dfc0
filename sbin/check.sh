#!/usr/bin/env bash
# `make check HOST=…` (and the start of `make install`): what a host must offer before tribist
# is installed or upgraded there, checked on the host itself. remote.sh sends this script on
# ssh's standard input (`bash -s`), so it needs nothing installed; it changes nothing.
#
# One line per check: `PASS name: what was found`, `FAIL name: what was found; fix: what to
# do`, or `WARN name: …` (worth knowing, not a failure). Exit 0 only if no check failed, 1
# otherwise, 2 on misuse. With DOMAIN (make check|install DOMAIN=…), also what the HTTPS front
# door needs (docs/front-door.md): ports 80 and 443, DOMAIN resolving here, the caddy package.
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
usage: $PROG LISTEN MACHINE GLIBC [DOMAIN]
  LISTEN   the address tribist is to listen on (IPv4:PORT or [IPv6]:PORT)
  MACHINE  the binary's machine (x86_64, aarch64, …; "any" for a script)
  GLIBC    the highest glibc version the binary needs ("none" if it needs none)
  DOMAIN   the HTTPS front door's name (checked by the deployer: letters, digits, '-', '.')
Checks: privileges (root, or sudo without a password), systemd (running, version
>= $SYSTEMD_MIN), commands the kit uses, machine and glibc, the listen address (free, or
tribist's own); with DOMAIN, ports 80 and 443 (free or Caddy's), DOMAIN resolving to an
address of this host (WARN if not: behind NAT or a load balancer that is normal), the caddy
package (installed or installable). Prints one PASS/FAIL/WARN line each; exit 0 only if
nothing failed.
USAGE
}

FAILED=0
pass() { printf 'PASS %s\n' "$*"; }
warn() { printf 'WARN %s\n' "$*"; }
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

# Runs "$@" as root: directly, or through password-less sudo (ss shows every socket's
# process only to root).
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  else
    sudo -n "$@"
  fi
}

# The systemd service process $1 runs in (from /proc/PID/cgroup), or nothing.
unit_of() {
  sed -n 's#^.*/\([^/]*\.service\)$#\1#p' "/proc/$1/cgroup" 2>/dev/null | tail -n 1
}

# Port $1 (80 or 443) must be free or Caddy's: the front door listens there.
check_front_port() {
  local port=$1 out users name pid unit others=()
  if ! command -v ss >/dev/null; then
    fail "port $port: cannot tell (no ss); fix: apt-get install iproute2"
    return
  fi
  out=$(as_root ss -Hltnp "sport = :$port" 2>/dev/null) || out=$(ss -Hltn "sport = :$port" 2>/dev/null) || out=""
  if [[ -z "$out" ]]; then
    pass "port $port: free (for the front door)"
    return
  fi
  users=$(grep -oE '\("[^"]{1,64}",pid=[0-9]+' <<<"$out" | sed -E 's/^\("(.*)",pid=/\1 /' | sort -u) || users=""
  if [[ -z "$users" && $(id -u) -ne 0 ]] && ! sudo -n true 2>/dev/null; then
    fail "port $port: taken (by whom: connect as root to see); fix: stop what listens on $port, the front door needs it"
    return
  elif [[ -z "$users" ]]; then
    fail "port $port: taken by a process this host cannot see (another container sharing its network?); fix: stop what listens on $port there, the front door needs it"
    return
  fi
  while read -r name pid; do
    [[ "$name" == caddy ]] || others+=("$name $pid")
  done <<<"$users"
  if ((${#others[@]} == 0)); then
    pass "port $port: caddy's (the front door)"
    return
  fi
  read -r name pid <<<"${others[0]}"
  if [[ "$pid" == 1 ]]; then
    # systemd itself: a socket unit listens there.
    unit=$(systemctl list-sockets --no-legend --all 2>/dev/null | awk -v p=":$port" '$1 ~ p "$" { print $2; exit }') || unit=""
    fail "port $port: taken by systemd's ${unit:-socket unit (systemctl list-sockets names it)}; fix: systemctl disable --now ${unit:-UNIT.socket} (the front door needs ports 80 and 443)"
    return
  fi
  unit=$(unit_of "$pid")
  if [[ -n "$unit" ]]; then
    fail "port $port: taken by $name (pid $pid, $unit); fix: systemctl disable --now $unit (the front door needs ports 80 and 443)"
  else
    fail "port $port: taken by $name (pid $pid, outside systemd); fix: stop it (kill $pid), the front door needs ports 80 and 443"
  fi
}

# DOMAIN $1 must resolve here; to one of this host's addresses, or a WARN (NAT, a load balancer).
check_domain() {
  local domain=$1 resolved mine a
  resolved=$(getent ahosts "$domain" 2>/dev/null | awk '{print $1}' | sort -u | head -n 8) || resolved=""
  if [[ -z "$resolved" ]]; then
    fail "domain $domain: does not resolve on this host (getent ahosts $domain); fix: an A or AAAA record for $domain pointing at this host (or at its load balancer), or DOMAIN=the name clients use"
    return
  fi
  mine=$(ip -o addr show 2>/dev/null | awk '{print $4}' | cut -d/ -f1) || mine=""
  for a in $resolved; do
    if grep -qxF -- "$a" <<<"$mine"; then
      pass "domain $domain: resolves to $a, an address of this host"
      return
    fi
  done
  warn "domain $domain: resolves to $(tr '\n' ' ' <<<"$resolved" | sed 's/ $//'), not an address of this host (normal behind NAT or a load balancer); the certificate authority must reach this host on ports 80 and 443 through it"
}

# The caddy package: installed (2.6 or newer), or installable from apt's lists.
check_caddy() {
  local status version candidate
  if ! command -v dpkg-query >/dev/null; then
    warn "caddy: no dpkg-query (not Debian or Ubuntu?); the front door installs Caddy from Debian's or Ubuntu's packages"
    return
  fi
  status=$(dpkg-query -W -f='${Status}\n${Version}\n' caddy 2>/dev/null) || status=""
  if [[ "$(head -n 1 <<<"$status")" == "install ok installed" ]]; then
    version=$(sed -n 2p <<<"$status")
    if version_le 2.6 "$(sed -E 's/^[0-9]+://; s/[-+~].*$//' <<<"$version")"; then
      pass "caddy: $version installed"
    else
      warn "caddy: $version installed, the front door needs 2.6 or newer; fix: apt-get update && apt-get install -y caddy"
    fi
    return
  fi
  candidate=$(apt-cache policy caddy 2>/dev/null | sed -n 's/^ *Candidate: //p' | head -n 1) || candidate=""
  if [[ -n "$candidate" && "$candidate" != "(none)" ]]; then
    pass "caddy: not installed; apt can install $candidate (make install DOMAIN=… does)"
  else
    warn "caddy: not installed, and apt knows no candidate (apt-cache policy caddy); fix: apt-get update && apt-get install -y caddy"
  fi
}

main() {
  case "${1:-}" in
    -h | --help) usage; return 0 ;;
  esac
  [[ $# -eq 3 || $# -eq 4 ]] || { usage >&2; exit 2; }
  [[ $# -eq 3 || "$4" =~ ^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$ ]] || { usage >&2; exit 2; }
  check_privileges
  check_systemd
  check_commands
  check_platform "$2" "$3"
  check_listen "$1"
  if [[ $# -eq 4 ]]; then
    check_front_port 80
    check_front_port 443
    check_domain "$4"
    check_caddy
  fi
  return "$FAILED"
}

main "$@"

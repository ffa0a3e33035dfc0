#!/usr/bin/env bash
# The developer's side of every deployment target: `make install|upgrade|rollback|status|logs|
# audit|unlock|uninstall` each call this script, which talks to the host over ssh.
#
# Every value from the deployer's side (HOST, HOSTS, SSH_OPTS, BIN, DEPLOYER, LINES,
# DATABASE_URL_FILE, DEPLOY_KEY, TO) is data, never code: it is checked here and refused with
# exit 2 when it cannot be carried literally, files travel as files (a tar stream or a binary
# on ssh's stdin), and the one command line that ssh must hand to the remote login shell is
# built from constants and words quoted one by one, so that shell rebuilds exactly this argv.
# No captured ssh call allocates a terminal (so its output has no \r); the long-running ones
# do when this runs at a terminal, so Ctrl-C reaches deploy.sh on the host, which rolls back.
set -euo pipefail
export LC_ALL=C

readonly PROG=remote.sh
readonly REMOTE_BIN_DIR=/home/tribist/bin
readonly REMOTE_DEPLOY=$REMOTE_BIN_DIR/deploy.sh
readonly EXIT_USAGE=2
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
readonly RELEASE_BIN=${RELEASE_BIN:-target/x86_64-unknown-linux-gnu/release/server}
readonly RELEASE_HOST_BIN=${RELEASE_HOST_BIN:-target/x86_64-unknown-linux-gnu/release/tribist-host}

usage() {
  cat <<USAGE
usage: $PROG COMMAND       (normally through make: make COMMAND HOST=…)

  install     first install or re-install on HOST (root, or a user with sudo)
  upgrade     ship BIN to HOST, or to each of HOSTS (or ENV's) in turn, PARALLEL at a time;
              rolls back a host that fails, and stops there
  rollback    put the previous release back on HOST (TO=ID-prefix: any kept release)
  releases    the releases HOST keeps (KEEP, default 5), which serves, which is previous
  status      one line per host (HOST, HOSTS or ENV): healthy, stopped, unhealthy, not
              installed or unreachable; details under it for one host
  start       start the service and its socket on HOST (server.sh start)
  stop        stop the service and its socket on HOST, until start or a deploy of other bytes
  logs        the service's last LINES log lines on HOST
  audit       every deployment recorded on HOST (root or sudo)
  unlock      break a stuck deploy lock on HOST (its holder rolls back)
  uninstall   remove the service from HOST (PURGE=1: also configuration and user tribist)
  config      the configuration on HOST (passwords masked); with SET="NAME=VALUE …",
              UNSET="NAME …" or DATABASE_URL_FILE=, change it: checked by the binary and a
              preflight, applied by a restart, taken back if the server is not healthy
  check       can HOST take tribist? ssh, root or sudo, systemd, commands, machine and
              glibc against BIN, the listen address; with DATABASE_URL_FILE, the database
              answers from there (install runs these checks first, but the database's)

Settings, from the environment (make passes its variables through unchanged):
  HOST               ssh destination: [user@]host, letters, digits and . _ - @ : [ ] %
  HOSTS              several destinations, separated by spaces (upgrade, status)
  ENV                upgrade, status: the hosts listed in deploy/ENV.hosts (one ssh
                     destination per line, # comments), instead of HOST/HOSTS; the
                     directory is \$TRIBIST_DEPLOY_DIR if set
  PARALLEL           upgrade of several hosts: how many at a time (default 1); a failure
                     stops the run before the next batch starts
  SSH_OPTS           options for ssh, split as a shell would (' " and \ quote) but with
                     nothing expanded; ~/ at the start of a word is your home; every word
                     is an option or its argument. Better: a Host entry in ~/.ssh/config,
                     which scp and rsync follow too
  BIN                the binary to ship (default: $RELEASE_BIN, built first)
  DEPLOYER           who deploys, for the lock and the audit (default: you@this-machine);
                     any printable text up to 100 characters, carried literally
  DATABASE_URL_FILE  install: a file holding the database URL (one final newline ignored);
                     at a terminal without it, install asks for the URL without echoing it
  DEPLOY_KEY         install: a public key file to authorise for user tribist
  LISTEN             install: the address tribist.socket listens on, IPv4:PORT or
                     [IPv6]:PORT (default: as set before, else 127.0.0.1:8383); a port
                     something else uses on the host is refused
  LINES              logs: how many lines (default 100); audit: how many records (default 50)
  FOLLOW             logs: 1 follows the log as it is written, until Ctrl-C (root or sudo)
  SINCE              logs: from when, as journalctl --since reads it ('1 hour ago', today,
                     '2026-12-01 10:00'; root or sudo)
  GREP               logs: only lines matching this pattern (journalctl --grep; root or sudo)
  PREFLIGHT          upgrade, rollback: seconds the new release has to answer /health 200
                     beside the serving one before anything switches (default 10; 0 skips
                     it, e.g. to roll back while the database is down)
  PURGE              uninstall: 1 also removes the configuration, the audit log, user tribist
                     and its home (the releases); asks first at a terminal
  YES                uninstall PURGE=1: 1 answers its question (for scripts; without a
                     terminal PURGE=1 is refused unless YES=1)
  SET, UNSET         config: "TRIBIST_WORKERS=8 TRIBIST_DB_TIMEOUT=3s", "TRIBIST_LOG_LEVEL"
  TO                 rollback: the release to go back to (a prefix of its id is enough)
  KEEP               upgrade, rollback: how many releases the host keeps (1-99,
                     default 5); the serving and the previous one are always kept
  TRIBIST_SSH_SHARE  yes (default): one ssh connection per host for the whole run (ssh's
                     ControlMaster, in a private directory, ended with the run); no: one
                     connection per step

Exit codes: 0 done, 1 failed on the host (the messages say why), 2 a value was refused
(nothing was sent), 3 another deployment holds the host's lock, 4 the configuration cannot
work (the database refuses it, or the binary a setting: waiting will not help), 5 tribist is
not installed on the host. Every failure ends with the one command to run next.
status: 0 healthy on its installed release, 5 not installed, 6 stopped, 7 running but not
healthy (or not on its installed release), 8 unreachable; with several hosts, the highest.
USAGE
}

say() { printf '==> %s\n' "$*"; }
warn() { echo "$PROG: $*" >&2; }
die() {
  warn "$*"
  exit 1
}
refuse() {
  warn "$*"
  exit "$EXIT_USAGE"
}

# After deploy.sh on host $2 ended with status $1 (deploy.sh --help lists them): the one
# command that gets the host further, with the host's name in it.
next_step() {
  local rc=$1 host=$2
  case "$rc" in
    3) warn "next: wait for it to finish, or if it is stuck break it: make unlock HOST=$host" ;;
    4)
      # install's host side knows whether it kept a configuration that served, and says
      # which command changes it.
      [[ "$COMMAND" == install ]] ||
        warn "next: make config HOST=$host with what the message above names corrected: SET=NAME=VALUE or UNSET=NAME for a setting, DATABASE_URL_FILE=$(url_file_label) for the database URL"
      ;;
    5) warn "next: make install HOST=$host DATABASE_URL_FILE=path (a file with the database URL)" ;;
    255) warn "next: make check HOST=$host (ssh could not reach it or was cut off; check HOST, SSH_OPTS and ~/.ssh/config)" ;;
  esac
}

# Shows a refused value without letting it act on the terminal.
shown() { printf '%q' "$1"; }

# One word for a POSIX shell (sh, dash, bash, zsh): inside single quotes nothing is special.
quote() {
  local q="'\\''"
  printf "'%s'" "${1//\'/$q}"
}

check_host() {
  local name=$1 h=$2
  [[ -n "$h" ]] || refuse "set $name, the ssh destination: make ${COMMAND} $name=root@app1"
  local ok='^[]A-Za-z0-9_.@:%[-]+$'
  [[ "$h" != -* && "$h" =~ $ok ]] ||
    refuse "$name=$(shown "$h") is not an ssh destination ([user@]host: letters, digits and . _ - @ : [ ] % only)"
}

# SSH_OPTS as words, split the way a shell would but with nothing expanded and no command
# run (xargs's rules: blanks separate, ' and " group, \ escapes); a leading ~/ is $HOME/.
# Every word must be an option or the argument of the option before it, so no stray word can
# become the destination or the remote command.
readonly SSH_ARG_OPTS=BbcDEeFIiJLlmOoPpQRSWw
SSH_ARGS=()
parse_ssh_opts() {
  local opts=${SSH_OPTS:-} word words expect_arg=""
  SSH_ARGS=()
  [[ -n "$opts" ]] || return 0
  [[ "$opts" != *[[:cntrl:]]* ]] || refuse "SSH_OPTS holds a newline or control character: $(shown "$opts")"
  words=$(printf '%s' "$opts" | xargs -r printf '%s\n' 2>/dev/null) ||
    refuse "SSH_OPTS=$(shown "$opts") does not split into words (an unmatched quote?)"
  while IFS= read -r word; do
    if [[ -n "$expect_arg" ]]; then
      expect_arg=""
    elif [[ "$word" == -?* ]]; then
      # -i KEY takes the next word; -iKEY and flags such as -4 or -vv do not.
      [[ ${#word} -eq 2 && "$SSH_ARG_OPTS" == *"${word:1:1}"* ]] && expect_arg=1
    else
      refuse "SSH_OPTS=$(shown "$opts"): $(shown "$word") is neither an option nor an option's argument"
    fi
    [[ "$word" == \~/* ]] && word=$HOME/${word#"~/"}
    SSH_ARGS+=("$word")
  done <<<"$words"
  [[ -z "$expect_arg" ]] || refuse "SSH_OPTS=$(shown "$opts") ends with an option that needs an argument"
}

# One ssh connection per host for the whole run (the upload, then the activation), as
# Capistrano and Kamal keep theirs: on a busy machine a second handshake costs as much as the
# rest of an upgrade. The control sockets live in a directory of this run's own; the masters
# are stopped when it ends (and end by themselves 60 s after their last session otherwise).
# Options in SSH_OPTS come first, so a user's own ControlMaster/ControlPath win.
CONTROL_DIR=""
STAGE=""
# A local temporary copy of the database URL, removed however the run ends.
SECRET_FILE=""
share_connections() {
  [[ "${TRIBIST_SSH_SHARE:-yes}" == yes ]] || return 0
  CONTROL_DIR=$(mktemp -d /tmp/tribist-ssh.XXXXXX 2>/dev/null) || return 0
  SSH_ARGS+=(-o ControlMaster=auto -o "ControlPath=$CONTROL_DIR/%C" -o ControlPersist=60)
}

# Ends this run's shared connections and the temporary files; the EXIT trap.
cleanup() {
  local sock
  if [[ -n "$CONTROL_DIR" ]]; then
    for sock in "$CONTROL_DIR"/*; do
      if [[ -S "$sock" ]]; then "${SSH:-ssh}" -o "ControlPath=$sock" -O exit tribist-remote >/dev/null 2>&1 || true; fi
    done
    rm -rf "$CONTROL_DIR"
  fi
  if [[ -n "$STAGE" ]]; then rm -rf "$STAGE"; fi
  if [[ -n "$SECRET_FILE" ]]; then rm -f "$SECRET_FILE"; fi
}

# deploy.sh's options for upgrade and rollback, checked once: sets PREFLIGHT_ARGS.
PREFLIGHT_ARGS=()
set_preflight_args() {
  local p=${PREFLIGHT:-} k=${KEEP:-}
  PREFLIGHT_ARGS=()
  if [[ -n "$p" ]]; then
    [[ "$p" =~ ^(0|[1-9][0-9]{0,2})$ ]] || refuse "PREFLIGHT must be a whole number of seconds from 0 (skip) to 999, got $(shown "$p")"
    PREFLIGHT_ARGS=(--preflight "$p")
  fi
  if [[ -n "$k" ]]; then
    [[ "$k" =~ ^[1-9][0-9]?$ ]] || refuse "KEEP must be a number of releases from 1 to 99, got $(shown "$k")"
    PREFLIGHT_ARGS+=(--keep "$k")
  fi
}

deployer() {
  local d=${DEPLOYER:-}
  [[ -n "$d" ]] || d="$(id -un)@$(hostname)"
  [[ "$d" != *[[:cntrl:]]* && ${#d} -le 100 ]] ||
    refuse "DEPLOYER must be printable text of at most 100 characters (no newline): $(shown "$d")"
  printf '%s' "$d"
}

# The remote command: run "$@" on the host as the login user if that is root or tribist,
# else through `sudo -n` (so a sudo user needs no terminal for a password). As root, a script
# in /home/tribist/bin runs only if it, bin/ and the home directory are root's alone: on a
# host with an older layout (home directory owned by tribist) or one tampered with, root
# refuses instead of running what tribist may have put there. Only constants and quoted words.
# shellcheck disable=SC2016 # expanded by the remote shell, on purpose
readonly GUARD='if [ ! -e "$1" ] && [ "${1#/home/tribist/bin/}" != "$1" ]; then
  echo "on $(hostname): tribist is not installed (no $1): make install" >&2
  exit 5
fi
if [ "$(id -u)" -eq 0 ]; then
  case "$1" in /home/tribist/bin/*)
    for p in /home/tribist /home/tribist/bin "$1"; do
      if [ -z "$(find "$p" -maxdepth 0 -user root ! -perm /022 2>/dev/null)" ]; then
        echo "on $(hostname): $p is not root'"'"'s alone (a layout from before tribist 0.2, or tampered with): not running it as root; make install fixes the layout" >&2
        exit 1
      fi
    done ;;
  esac
fi
exec "$@"'
# shellcheck disable=SC2016 # expanded by the remote shell, on purpose
readonly WRAPPER='guard=$1
shift
if [ "$(id -u)" -eq 0 ] || [ "$(id -un)" = tribist ]; then exec sh -c "$guard" tribist-guard "$@"; fi
if ! sudo -n true 2>/dev/null; then
  echo "on $(hostname), $(id -un) is neither root nor tribist and has no password-less sudo: use HOST=root@…, a user with sudo, or tribist@… for upgrades" >&2
  exit 1
fi
exec sudo -n -- sh -c "$guard" tribist-guard "$@"'

remote_line() {
  local line word
  line="sh -c $(quote "$WRAPPER") tribist-remote $(quote "$GUARD")"
  for word in "$@"; do line+=" $(quote "$word")"; done
  printf '%s' "$line"
}

# ssh_to HOST TTY ARG…: runs ARG… on HOST through the wrapper. TTY: -T (captured or fed on
# stdin), or -t when at a terminal (Ctrl-C reaches the host).
ssh_to() {
  local host=$1 tty=$2
  shift 2
  if [[ "$tty" == -t && ! -t 0 ]]; then tty=-T; fi
  "${SSH:-ssh}" "${SSH_ARGS[@]}" "$tty" -- "$host" "$(remote_line "$@")"
}

# shellcheck source=tools/elf.sh
source "$REPO/tools/elf.sh"

# Refuses (exit 2) a binary that host $1 cannot run, before anything is uploaded: its ELF
# machine must be the host's (uname -m) and the glibc it needs at most the host's (getconf),
# one short command on the connection the upload then uses. A script (a wrapper) is not
# checked.
check_platform() {
  local host=$1 bin=$2 machine needed out host_machine host_glibc
  machine=$(elf_machine "$bin")
  [[ "$machine" == not-elf ]] && return 0
  needed=$(glibc_needed "$bin")
  out=$(ssh_to "$host" -T sh -c 'uname -m; getconf GNU_LIBC_VERSION 2>/dev/null || echo none') ||
    die "cannot ask $host for its machine and C library (the ssh messages above say why); nothing was sent"
  host_machine=$(sed -n '1p' <<<"$out" | tr -cd 'A-Za-z0-9_.-')
  host_glibc=$(sed -n '2s/^glibc \([0-9.]*\)$/\1/p' <<<"$out")
  [[ -n "$host_machine" ]] || die "$host did not say what machine it is (uname -m answered nothing); nothing was sent"
  if [[ "$machine" != "$host_machine" ]]; then
    refuse "BIN=$(shown "$bin") is built for $machine, but $host is $host_machine: build for $host_machine, then ship that; nothing was sent"
  fi
  if [[ -n "$needed" && -z "$host_glibc" ]]; then
    refuse "BIN=$(shown "$bin") needs glibc $needed, but $host has no glibc (getconf GNU_LIBC_VERSION: $(shown "$(sed -n 2p <<<"$out")")); nothing was sent"
  fi
  if [[ -n "$needed" ]] && ! version_le "$needed" "$host_glibc"; then
    refuse "BIN=$(shown "$bin") needs glibc $needed, but $host has glibc $host_glibc: ship the portable build (make release: glibc 2.17 or newer) or build on a system as old as the host; nothing was sent"
  fi
}

# The host program install puts on the host: the release build's (made by make release with
# the server; built now if missing, whatever BIN is).
host_program() {
  if [[ ! -x "$REPO/$RELEASE_HOST_BIN" ]]; then
    say "building $RELEASE_HOST_BIN, the host program (make release)" >&2
    "$REPO/tools/release.sh" >/dev/null || die "the release build failed (above)"
  fi
  printf '%s' "$REPO/$RELEASE_HOST_BIN"
}

ship_bin() {
  local bin=${BIN:-}
  if [[ -z "$bin" || "$bin" == "$RELEASE_BIN" ]]; then
    bin=$RELEASE_BIN
    say "building $bin (make release)" >&2
    "$REPO/tools/release.sh" >/dev/null || die "the release build failed (above)"
    bin=$REPO/$RELEASE_BIN
  fi
  [[ -f "$bin" && -x "$bin" ]] || refuse "BIN=$(shown "$bin") is not an executable file"
  warn_uncommitted "$bin"
  printf '%s' "$bin"
}

# A build of uncommitted changes carries a release id of its own (<commit>-dirty-<hash>, by
# build.rs): said before it ships, so nobody takes it for the commit's release. Read from the
# file's bytes (the id is a string in it): nothing of BIN runs here.
warn_uncommitted() {
  local id
  id=$(LC_ALL=C grep -aoE '[0-9a-f]{40}-dirty-([0-9a-f]{12}|unknown)' -- "$1" 2>/dev/null | head -n 1) || id=""
  if [[ -n "$id" ]]; then
    warn "WARNING: $(shown "$1") is built from uncommitted changes: it ships as release $id, a release of its own (commit them to ship a release named by its commit)"
  fi
}

# The database URL for install: from DATABASE_URL_FILE, or asked at a terminal, never from a
# command line. Written to $1 when given.
database_url() {
  local out=$1 url=""
  if [[ "${DATABASE_URL_ORIGIN:-}" == "command line" ]]; then
    refuse "DATABASE_URL on make's command line puts the password in 'ps' and your shell history (and make eats \$): put it in a file and pass DATABASE_URL_FILE=path; if it held a real password, change that password"
  fi
  if [[ -n "${DATABASE_URL_FILE:-}" ]]; then
    [[ -f "$DATABASE_URL_FILE" && -r "$DATABASE_URL_FILE" ]] ||
      refuse "DATABASE_URL_FILE=$(shown "$DATABASE_URL_FILE") is not a readable file"
    local mode
    mode=$(stat -L -c %a -- "$DATABASE_URL_FILE" 2>/dev/null) || mode=600
    [[ "$mode" =~ ^[0-7]{3,4}$ ]] || mode=600
    if (((8#$mode & 8#077) != 0)); then
      warn "warning: DATABASE_URL_FILE=$(shown "$DATABASE_URL_FILE") can be read by other users of this machine (a password in it?): chmod 600 $(shown "$DATABASE_URL_FILE")"
    fi
    url=$(cat -- "$DATABASE_URL_FILE"; printf x)
    url=${url%x}
    url=${url%$'\n'}
    [[ -n "$url" ]] || refuse "DATABASE_URL_FILE=$(shown "$DATABASE_URL_FILE") is empty"
  elif [[ -t 0 && -r /dev/tty ]] && ! ssh_to "$HOST_NOW" -T test -e /etc/tribist/env; then
    # At a terminal, for a host without a configuration yet.
    IFS= read -r -s -p "DATABASE_URL for $HOST_NOW (postgres://USER:PASSWORD@HOST:5432/DB; not echoed): " url </dev/tty || true
    echo >&2
    [[ -n "$url" ]] || refuse "no database URL given, and $HOST_NOW has none yet: nothing was sent. Put it in a file (chmod 600) and run: make $COMMAND HOST=$HOST_NOW DATABASE_URL_FILE=path"
  fi
  [[ -n "$url" ]] || return 0
  [[ "$url" != *[[:cntrl:]]* ]] || refuse "the database URL holds a newline or control character: systemd's environment file cannot carry it"
  printf '%s' "$url" | iconv -f UTF-8 -t UTF-8 >/dev/null 2>&1 || refuse "the database URL is not UTF-8: systemd's environment file cannot carry it"
  (umask 077 && printf '%s' "$url" >"$out")
}

deploy_key() {
  local out=$1 key=${DEPLOY_KEY:-}
  [[ -n "$key" ]] || return 0
  [[ "$key" == \~/* ]] && key=$HOME/${key#"~/"}
  [[ -f "$key" && -r "$key" ]] || refuse "DEPLOY_KEY=$(shown "$key") is not a readable file"
  if grep -q -- 'PRIVATE KEY' "$key"; then refuse "DEPLOY_KEY=$(shown "$key") is a private key: give the .pub file"; fi
  grep -Eqv -- '^((ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/]+=*( [[:print:]]*)?|#.*|)$' "$key" &&
    refuse "DEPLOY_KEY=$(shown "$key") is not a public key file (lines 'ssh-ed25519 AAAA… comment', no options)"
  cp -- "$key" "$out"
}

# --- commands ---------------------------------------------------------------------------------

# The host checks (sbin/check.sh, sent on ssh's stdin: nothing needs to be installed) for
# binary $2 and the address LISTEN names (default: what the host has, else 127.0.0.1:8383),
# printed indented. With $3 = database, also whether the database in DATABASE_URL_FILE
# answers from the host: the binary itself, copied to a private temporary directory there,
# runs `server --check-config` on an environment file holding the URL, then both are removed.
# Returns 1 if any check failed.
host_checks() {
  local host=$1 bin=$2 db=${3:-} listen machine glibc rc=0 url dir
  listen=$(listen_setting)
  if [[ -z "$listen" ]]; then
    listen=$(ssh_to "$host" -T sh -c 'systemctl show -p Listen --value tribist.socket 2>/dev/null | head -n 1') || {
      rc=$?
      echo "    FAIL ssh: $host does not answer (exit $rc; the ssh messages above say why); fix: check HOST, SSH_OPTS and ~/.ssh/config"
      return 1
    }
    listen=${listen%% *}
    [[ "$listen" =~ ^[][0-9A-Fa-f.:]+:[0-9]+$ ]] || listen=127.0.0.1:8383
  fi
  echo "    PASS ssh: $host answers"
  machine=$(elf_machine "$bin")
  [[ "$machine" == not-elf ]] && machine=any
  glibc=$(glibc_needed "$bin")
  ssh_to "$host" -T bash -s -- "$listen" "$machine" "${glibc:-none}" <"$REPO/sbin/check.sh" |
    tr -cd '\11\12\40-\176' | sed 's/^/    /' || rc=1
  [[ "$db" == database ]] || return "$rc"
  if [[ -z "${DATABASE_URL_FILE:-}" ]]; then
    echo "    SKIP database: no DATABASE_URL_FILE given"
    return "$rc"
  fi
  url=$(mktemp)
  SECRET_FILE=$url
  database_url "$url"
  # shellcheck disable=SC2016 # expanded on the host, on purpose
  dir=$(ssh_to "$host" -T sh -c 'umask 077 && d=$(mktemp -d /tmp/tribist-check.XXXXXX) && cat >"$d/server" && chmod 700 "$d/server" && echo "$d"' <"$bin") || dir=""
  if [[ ! "$dir" =~ ^/tmp/tribist-check\.[A-Za-z0-9]{6}$ ]]; then
    rm -f "$url"
    echo "    FAIL database: could not copy the binary to $host to ask from there; fix: free space in /tmp there"
    return 1
  fi
  local answer
  # shellcheck disable=SC2016 # expanded on the host, on purpose
  if answer=$(env_line DATABASE_URL "$(cat "$url")" | ssh_to "$host" -T sh -c 'cat >"$1/env"; env -i PATH=/usr/bin:/bin TRIBIST_LISTEN="$2" "$1/server" --check-config "$1/env" 2>&1; rc=$?; rm -rf "$1"; exit $rc' sh "$dir" "$listen"); then
    echo "    PASS database: $(printf '%s' "$answer" | tr -cd '\40-\176' | sed 's/^configuration OK: //')"
  else
    echo "    FAIL database: $(printf '%s' "$answer" | tr -cd '\40-\176' | sed 's/^server: error: //'); fix: the URL in DATABASE_URL_FILE, the database's pg_hba.conf, or a firewall between them"
    rc=1
  fi
  rm -f "$url"
  return "$rc"
}

# DATABASE_URL_FILE as typed, for the host's next-command lines (a file name, never its
# content); "path" when it cannot be shown as it is.
url_file_label() {
  local f=${DATABASE_URL_FILE:-}
  if [[ -n "$f" && "$f" =~ ^[A-Za-z0-9_./~+-]{1,300}$ ]]; then printf '%s' "$f"; else printf path; fi
}

# systemd's EnvironmentFile= reads "…" with \ " $ ` escaped back to exactly these bytes (as
# deploy.sh writes /etc/tribist/env).
env_line() {
  local name=$1 v=$2
  v=${v//\\/\\\\}
  v=${v//\"/\\\"}
  v=${v//\$/\\\$}
  v=${v//\`/\\\`}
  printf '%s="%s"\n' "$name" "$v"
}

# The settings make config may set or unset (deploy.sh's config_name_ok says the same):
# never the address (LISTEN=) or a password (DATABASE_URL_FILE=).
setting_name_ok() {
  [[ "$1" =~ ^(TRIBIST_(WORKERS|DB_TIMEOUT|SHUTDOWN_TIMEOUT|KEEPALIVE_MAX|IDLE_TIMEOUT|MAX_HEADER_BYTES|LOG_LEVEL)|PG(HOST|PORT|USER|DATABASE|SSLMODE|SSLROOTCERT))$ ]]
}

# make config HOST=… [SET="NAME=VALUE …"] [UNSET="NAME …"] [DATABASE_URL_FILE=…]: without a
# change, prints the configuration (passwords masked); with one, deploy.sh checks, applies
# and, if need be, takes it back. Names and values are checked here first; the database URL
# travels on ssh's standard input, never on a command line.
cmd_config() {
  local host=${HOST:-} by args=() word words name tmp stash rc=0
  check_host HOST "$host"
  HOST_NOW=$host
  if [[ -z "${SET:-}${UNSET:-}${DATABASE_URL_FILE:-}" ]]; then
    ssh_to "$host" -T "$REMOTE_DEPLOY" config
    return
  fi
  by=$(deployer)
  [[ "${SET:-}${UNSET:-}" != *[[:cntrl:]]* ]] || refuse "SET or UNSET holds a newline or control character"
  read -r -a words <<<"${SET:-}"
  for word in "${words[@]}"; do
    name=${word%%=*}
    [[ "$word" == *=* ]] || refuse "SET: $(shown "$word") is not NAME=VALUE"
    case "$name" in
      TRIBIST_LISTEN) refuse "SET: the address is not an environment setting: make install HOST=$host LISTEN=ADDR:PORT sets it (tribist.socket)" ;;
      DATABASE_URL | PGPASSWORD) refuse "SET: a password never goes on a command line (ps, shell history): put the URL in a file and pass DATABASE_URL_FILE=path" ;;
    esac
    setting_name_ok "$name" ||
      refuse "SET: $(shown "$name") is not a setting tribist reads (make config HOST=$host lists them)"
    args+=(--set "$word")
  done
  read -r -a words <<<"${UNSET:-}"
  for word in "${words[@]}"; do
    setting_name_ok "$word" ||
      refuse "UNSET: $(shown "$word") is not a setting that can be unset (make config HOST=$host lists them)"
    args+=(--unset "$word")
  done
  if [[ -n "${DATABASE_URL_FILE:-}" ]]; then
    tmp=$(mktemp)
    SECRET_FILE=$tmp
    database_url "$tmp"
    # The URL goes first, on its own connection's stdin, so that the change itself can run
    # at a terminal, where Ctrl-C reaches the host and puts the previous configuration back.
    stash=$(ssh_to "$host" -T "$REMOTE_DEPLOY" config-stash <"$tmp") || {
      rc=$?
      warn "make config: could not send the database URL to $host (exit $rc); nothing changed"
      next_step "$rc" "$host"
      exit "$rc"
    }
    [[ "$stash" =~ ^url\.[A-Za-z0-9]{6,16}$ ]] || die "$host answered an unexpected stash name: $(shown "$stash"); nothing changed"
    args+=(--database-url-stash "$stash")
  fi
  say "changing the configuration on $host"
  ssh_to "$host" -t "$REMOTE_DEPLOY" --by "$by" --target "$host" "${PREFLIGHT_ARGS[@]}" config "${args[@]}" || rc=$?
  if ((rc != 0)); then
    warn "make config: failed on $host (exit $rc); the messages above say why (nothing changed unless they say so)"
    next_step "$rc" "$host"
    exit "$rc"
  fi
  say "configuration of $host done"
}

cmd_check() {
  local host=${HOST:-} bin
  check_host HOST "$host"
  HOST_NOW=$host
  listen_setting >/dev/null
  bin=$(ship_bin)
  say "checking $host for $(shown "$bin")"
  if host_checks "$host" "$bin" database; then
    say "$host is ready for tribist"
  else
    warn "make check: $host is not ready; next: do what each FAIL line above says after 'fix:', then make check HOST=$host again"
    exit 1
  fi
}

# LISTEN (install): IPv4:PORT or [IPv6]:PORT, checked here before anything is sent.
listen_setting() {
  local l=${LISTEN:-}
  [[ -z "$l" ]] && return 0
  if ! [[ "$l" =~ ^(([0-9]{1,3}\.){3}[0-9]{1,3}|\[[0-9A-Fa-f:.]{2,45}\]):([0-9]{1,5})$ ]] ||
    ((10#${BASH_REMATCH[3]} < 1 || 10#${BASH_REMATCH[3]} > 65535)); then
    refuse "LISTEN=$(shown "$l") is not an address such as 127.0.0.1:8383, 0.0.0.0:80 or [::1]:8383"
  fi
  printf '%s' "$l"
}

cmd_install() {
  local host=${HOST:-} bin by stage dir rc=0 f listen
  check_host HOST "$host"
  HOST_NOW=$host
  by=$(deployer)
  listen=$(listen_setting)
  bin=$(ship_bin)
  stage=$(mktemp -d)
  STAGE=$stage
  for f in etc/tribist.service etc/tribist.socket etc/tribist.sudoers etc/tribist.env.example \
    sbin/server.sh sbin/wait_for_it.sh sbin/deploy.sh; do
    cp "$REPO/$f" "$stage/"
  done
  cp -- "$bin" "$stage/server"
  cp -- "$(host_program)" "$stage/tribist-host"
  database_url "$stage/database_url"
  deploy_key "$stage/deploy_key.pub"
  say "checking $host"
  host_checks "$host" "$bin" ||
    die "make install: $host is not ready (the FAIL lines above say what to do); nothing was installed"
  say "uploading to $host"
  # shellcheck disable=SC2016 # expanded on the host, on purpose
  dir=$(tar -C "$stage" -cf - . | "${SSH:-ssh}" "${SSH_ARGS[@]}" -T -- "$host" \
    "$(remote_line sh -c 'umask 077 && d=$(mktemp -d /tmp/tribist-install.XXXXXX) && tar -xf - -C "$d" --no-same-owner && echo "$d"')") ||
    die "could not upload to $host (exit $?); the ssh messages above say why"
  [[ "$dir" =~ ^/tmp/tribist-install\.[A-Za-z0-9]{6}$ ]] || die "the host answered an unexpected upload directory: $(shown "$dir")"
  say "installing on $host"
  # shellcheck disable=SC2016 # expanded on the host, on purpose
  ssh_to "$host" -t sh -c 'd=$1 by=$2 listen=$3 target=$4 file=$5; if [ -n "$listen" ]; then set -- --listen "$listen"; else set --; fi
bash "$d/deploy.sh" --by "$by" --target "$target" --url-file "$file" "$@" install "$d"; rc=$?; rm -rf "$d"; exit $rc' sh "$dir" "$by" "$listen" "$host" "$(url_file_label)" || rc=$?
  if ((rc != 0)); then
    # For 4 the host named the command (it knows whether it kept a configuration that served).
    ((rc == 4)) || warn "make install: failed on $host (exit $rc); the messages above say why"
    next_step "$rc" "$host"
    exit "$rc"
  fi
  say "installed on $host"
}

upgrade_host() {
  local host=$1 bin=$2 by=$3 sum upload rc=0
  check_platform "$host" "$bin"
  say "uploading $bin to $host"
  sum=$(sha256sum <"$bin" | cut -d' ' -f1)
  upload=$(ssh_to "$host" -T "$REMOTE_DEPLOY" receive "$sum" <"$bin") || {
    rc=$?
    warn "make upgrade: the upload to $host failed (exit $rc); nothing changed there"
    next_step "$rc" "$host"
    return "$rc"
  }
  [[ "$upload" =~ ^\.upload\.[A-Za-z0-9]{6,16}$ ]] || die "the host answered an unexpected upload name: $(shown "$upload")"
  say "activating on $host"
  ssh_to "$host" -t "$REMOTE_DEPLOY" --by "$by" --target "$host" "${PREFLIGHT_ARGS[@]}" upgrade "$upload" || rc=$?
  if ((rc != 0)); then
    warn "make upgrade: FAILED on $host (exit $rc); see the messages above"
    next_step "$rc" "$host"
    return "$rc"
  fi
  say "upgrade of $host done"
}

# The hosts to act on: HOST, HOSTS, or the file of environment ENV (deploy/ENV.hosts: one ssh
# destination per line, # starts a comment), each checked. Sets TARGETS; TARGETS_MANY is set
# when they came from HOSTS or ENV (a fleet, even of one).
TARGETS=()
TARGETS_MANY=""
targets() {
  local env=${DEPLOY_ENV:-} file line extra n=0 h
  TARGETS=()
  TARGETS_MANY=""
  if [[ -n "$env" ]]; then
    [[ -z "${HOST:-}${HOSTS:-}" ]] || refuse "ENV=$(shown "$env") and HOST/HOSTS both name hosts: give one of them"
    [[ "$env" =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$ ]] || refuse "ENV=$(shown "$env") is not an environment name (letters, digits, _ and -)"
    file=${TRIBIST_DEPLOY_DIR:-$REPO/deploy}/$env.hosts
    [[ -f "$file" ]] || refuse "ENV=$env: there is no $(shown "$file") (one ssh destination per line, # comments)"
    while IFS= read -r line || [[ -n "$line" ]]; do
      n=$((n + 1))
      line=${line%%#*}
      read -r line extra <<<"$line" || true
      [[ -z "$line" ]] && continue
      [[ -z "$extra" ]] || refuse "deploy/$env.hosts line $n: one ssh destination per line, got $(shown "$line $extra")"
      check_host "deploy/$env.hosts line $n" "$line"
      TARGETS+=("$line")
    done <"$file"
    ((${#TARGETS[@]} > 0)) || refuse "deploy/$env.hosts names no host"
    TARGETS_MANY=1
  elif [[ -n "${HOSTS:-}" ]]; then
    read -r -a TARGETS <<<"${HOSTS//$'\n'/ }"
    ((${#TARGETS[@]} > 0)) || refuse "HOSTS is empty: name the ssh destinations, e.g. HOSTS=\"app1 app2\""
    for h in "${TARGETS[@]}"; do check_host HOSTS "$h"; done
    TARGETS_MANY=1
  else
    check_host HOST "${HOST:-}"
    TARGETS=("$HOST")
  fi
}

# PARALLEL (upgrade): how many hosts at a time, 1 to 99.
parallel() {
  local p=${PARALLEL:-1}
  [[ "$p" =~ ^[1-9][0-9]?$ ]] || refuse "PARALLEL must be a whole number from 1 to 99, got $(shown "$p")"
  printf '%s' "$p"
}

# One host's upgrade in the background, its lines prefixed with the host; its status is
# written to $4.
upgrade_in_background() {
  local host=$1 bin=$2 by=$3 status=$4
  (
    rc=0
    upgrade_host "$host" "$bin" "$by" </dev/null 2>&1 | sed -u "s|^|[$host] |" || rc=$?
    echo "$rc" >"$status"
  ) &
}

cmd_upgrade() {
  local bin by h failed="" rc=0 r width i j batch dir
  targets
  width=$(parallel)
  by=$(deployer)
  set_preflight_args
  bin=$(ship_bin)
  if [[ -z "$TARGETS_MANY" ]]; then
    upgrade_host "${TARGETS[0]}" "$bin" "$by"
    return
  fi
  dir=$(mktemp -d)
  STAGE=$dir
  for ((i = 0; i < ${#TARGETS[@]}; i += width)); do
    batch=("${TARGETS[@]:i:width}")
    say "rolling upgrade: ${batch[*]}"
    if ((width == 1)); then
      upgrade_host "${batch[0]}" "$bin" "$by" || { rc=$?; failed=${batch[0]}; break; }
      continue
    fi
    for ((j = 0; j < ${#batch[@]}; j++)); do
      upgrade_in_background "${batch[j]}" "$bin" "$by" "$dir/$((i + j))"
    done
    wait
    for ((j = 0; j < ${#batch[@]}; j++)); do
      r=$(cat "$dir/$((i + j))" 2>/dev/null || echo 1)
      if [[ "$r" != 0 ]]; then
        rc=$r
        failed="${failed:+$failed }${batch[j]}"
      fi
    done
    [[ -z "$failed" ]] || break
  done
  echo "==> releases now serving:"
  for h in "${TARGETS[@]}"; do
    r=$(ssh_to "$h" -T "$REMOTE_DEPLOY" serving 2>/dev/null | tr -cd 'A-Za-z0-9._+-' | head -c 64) || true
    printf '    %-24s %s\n' "$h" "${r:-unreachable or not healthy}"
  done
  if [[ -n "$failed" ]]; then
    warn "make upgrade: stopped at $failed (it serves its previous release); hosts after it were not touched"
    return "$rc"
  fi
}

# make status: one line per host (with HOST, details under it), and an exit status saying
# whether every host is healthy on its installed release (see usage); the highest wins.
readonly STATUS_UNREACHABLE=8
STATUS_ERR=""
cmd_status() {
  local h out err rc worst=0 verb=summary
  STATUS_ERR=$(mktemp)
  SECRET_FILE=$STATUS_ERR
  targets
  [[ -n "$TARGETS_MANY" ]] || verb=status
  for h in "${TARGETS[@]}"; do
    rc=0
    # The state from standard output only: an sshd banner or a sudo warning is not it.
    out=$(ssh_to "$h" -T "$REMOTE_DEPLOY" "$verb" 2>"$STATUS_ERR") || rc=$?
    out=$(printf '%s' "$out" | tr -cd '\12\40-\176' | head -c 4000)
    err=$(tr -cd '\12\40-\176' <"$STATUS_ERR" | sed '/^$/d' | tail -n 1 | head -c 200)
    case "$rc" in
      0 | 6 | 7) ;;
      5) [[ -n "$out" ]] || out="not installed (${err:-no answer})" ;;
      255) out="unreachable (ssh: ${err:-no answer}); make check HOST=$h says why"; rc=$STATUS_UNREACHABLE ;;
      *) out="unknown (the host answered exit $rc: ${err:-nothing}); make install HOST=$h updates it"; rc=$STATUS_UNREACHABLE ;;
    esac
    printf '%-24s %s\n' "$h" "$(sed -n 1p <<<"$out")"
    if [[ -z "$TARGETS_MANY" ]]; then
      sed -n '2,$p' <<<"$out"
      status_next "$rc" "$h"
    fi
    ((rc > worst)) && worst=$rc
  done
  return "$worst"
}

# The one command that gets a host in status $1 further.
status_next() {
  local rc=$1 host=$2
  case "$rc" in
    5) echo "next: make install HOST=$host DATABASE_URL_FILE=path (a file with the database URL)" ;;
    6) echo "next: make start HOST=$host" ;;
    7) echo "next: make logs HOST=$host says why" ;;
    8) echo "next: make check HOST=$host says why it cannot be reached" ;;
  esac
}

# make start|stop HOST=…: deploy.sh start|stop on the host (under the deploy lock, audited;
# as root, a sudo user or tribist, whose sudo rights allow exactly these), so a stopped
# service stays down until started again.
cmd_start_stop() {
  local host by rc=0
  host=$(one_host)
  by=$(deployer)
  ssh_to "$host" -T "$REMOTE_DEPLOY" --by "$by" --target "$host" "$COMMAND" || rc=$?
  if ((rc != 0)); then
    warn "make $COMMAND: failed on $host (exit $rc); the messages above say why"
    next_step "$rc" "$host"
    exit "$rc"
  fi
}

one_host() {
  check_host HOST "${HOST:-}"
  printf '%s' "$HOST"
}

cmd_rollback() {
  local host by to=${TO:-} args=()
  host=$(one_host)
  by=$(deployer)
  set_preflight_args
  if [[ -n "$to" ]]; then
    [[ "$to" =~ ^[A-Za-z0-9._+-]{1,64}$ ]] || refuse "TO=$(shown "$to") is not a release id or a prefix of one (make releases HOST=$host lists them)"
    args=(--to "$to")
  fi
  say "rolling back $host${to:+ to release $to…}"
  local rc=0
  ssh_to "$host" -t "$REMOTE_DEPLOY" --by "$by" --target "$host" "${PREFLIGHT_ARGS[@]}" rollback "${args[@]}" || rc=$?
  if ((rc != 0)); then
    next_step "$rc" "$host"
    exit "$rc"
  fi
}

# make logs [LINES=] [SINCE=] [GREP=] [FOLLOW=1]: checked here, checked again on the host,
# and passed to journalctl as words. FOLLOW runs at a terminal where there is one, so Ctrl-C
# reaches the host and ends it cleanly.
cmd_logs() {
  local host lines=${LINES:-100} since=${SINCE:-} grep=${GREP:-} rc=0
  host=$(one_host)
  [[ "$lines" =~ ^[1-9][0-9]{0,5}$ ]] || refuse "LINES must be a whole number from 1 to 999999, got $(shown "$lines")"
  if [[ -n "$since" ]]; then
    [[ "$since" =~ ^[A-Za-z0-9\ :.+-]{1,40}$ && "$since" != -* ]] ||
      refuse "SINCE must be a time journalctl understands ('1 hour ago', today, '2026-12-01 10:00'), got $(shown "$since")"
  fi
  if [[ -n "$grep" ]]; then
    [[ ${#grep} -le 200 && "$grep" != *[[:cntrl:]]* && "$grep" != - ]] || refuse "GREP must be a pattern of at most 200 printable characters, got $(shown "$grep")"
  fi
  case "${FOLLOW:-}" in
    "" | 0)
      if [[ -z "$since$grep" ]]; then
        ssh_to "$host" -T "$REMOTE_DEPLOY" logs "$lines"
      else
        ssh_to "$host" -T "$REMOTE_DEPLOY" logs "$lines" "${since:--}" "${grep:--}"
      fi
      ;;
    1)
      ssh_to "$host" -t "$REMOTE_DEPLOY" follow "${since:--}" "${grep:--}" "${LINES:-20}" || rc=$?
      # Ctrl-C reaches the host, which ends following with status 0 (130 if it came first).
      ((rc == 0 || rc == 130)) || exit "$rc"
      ;;
    *) refuse "FOLLOW must be 1 (or empty), got $(shown "$FOLLOW")" ;;
  esac
}

cmd_uninstall() {
  local host by purge=()
  host=$(one_host)
  by=$(deployer)
  case "${PURGE:-}" in
    "" | 0) ;;
    1) purge=(--purge) ;;
    *) refuse "PURGE must be 1 (or empty), got $(shown "$PURGE")" ;;
  esac
  if ((${#purge[@]} > 0)); then confirm_purge "$host"; fi
  say "uninstalling from $host"
  ssh_to "$host" -t "$REMOTE_DEPLOY" --by "$by" uninstall "${purge[@]}"
}

# PURGE=1 deletes what cannot be had back: asked at a terminal; YES=1 answers for a script;
# neither: refused, nothing sent.
confirm_purge() {
  local host=$1 answer=""
  case "${YES:-}" in
    1) return 0 ;;
    "" | 0) ;;
    *) refuse "YES must be 1 (or empty), got $(shown "$YES")" ;;
  esac
  if [[ ! -t 0 || ! -r /dev/tty ]]; then
    refuse "PURGE=1 deletes on $host the configuration (the database URL), the audit log, user tribist and /home/tribist with every kept release; without a terminal to ask, say so with YES=1: make uninstall HOST=$host PURGE=1 YES=1 (nothing was sent)"
  fi
  echo "make uninstall PURGE=1 deletes on $host, for good:" >&2
  echo "  /etc/tribist (the configuration, with the database URL), /var/lib/tribist-deploy (the audit log)," >&2
  echo "  user tribist and /home/tribist (every kept release, the deploy key), and the address drop-ins." >&2
  IFS= read -r -p "Type yes to delete them: " answer </dev/tty || true
  [[ "$answer" == yes ]] || refuse "not confirmed: nothing was sent (plain make uninstall HOST=$host keeps them)"
}

cmd_unlock() {
  local host by
  host=$(one_host)
  by=$(deployer)
  say "breaking the deploy lock on $host"
  ssh_to "$host" -T "$REMOTE_DEPLOY" --by "$by" --target "$host" unlock || {
    local rc=$?
    next_step "$rc" "$host"
    exit "$rc"
  }
}

main() {
  COMMAND=${1:-}
  case "$COMMAND" in
    -h | --help) usage; return 0 ;;
    install | upgrade | rollback | status | logs | audit | unlock | uninstall | check | config | releases | start | stop) ;;
    *) warn "unknown command '$(shown "$COMMAND")'"; usage >&2; exit "$EXIT_USAGE" ;;
  esac
  [[ $# -eq 1 ]] || refuse "$COMMAND takes no arguments; settings come from the environment (see --help)"
  parse_ssh_opts
  trap cleanup EXIT
  share_connections
  case "$COMMAND" in
    install) cmd_install ;;
    check) cmd_check ;;
    config) set_preflight_args; cmd_config ;;
    upgrade) cmd_upgrade ;;
    rollback) cmd_rollback ;;
    status) cmd_status ;;
    start | stop) cmd_start_stop ;;
    audit)
      local host lines=${LINES:-50}
      host=$(one_host)
      [[ "$lines" =~ ^[1-9][0-9]{0,5}$ ]] || refuse "LINES must be a whole number from 1 to 999999, got $(shown "$lines")"
      ssh_to "$host" -T "$REMOTE_DEPLOY" audit "$lines"
      ;;
    releases)
      local host
      host=$(one_host)
      ssh_to "$host" -T "$REMOTE_DEPLOY" releases
      ;;
    logs) cmd_logs ;;
    unlock) cmd_unlock ;;
    uninstall) cmd_uninstall ;;
  esac
}

# Sourced by the tests for its functions; run, it does its job.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi

#!/usr/bin/env bash
# Host side of `make install`, `upgrade`, `rollback`, `status`, `logs`, `unlock`, `audit` and
# `uninstall`: everything that must happen on the server, in one place, run over ssh.
#
# Installed as /home/tribist/bin/deploy.sh (root-owned). `install`, `uninstall` and `audit`
# need root; the rest also works as user tribist (the deploy-key holder), who may only run
# `systemctl start|stop|restart|reload|status tribist` through sudo.
#
# THE RULE: no step that runs as root reads, writes, creates, truncates, appends to, chowns,
# chmods or executes a path that user tribist can create, rename or replace.
#
# It holds by construction (docs/deploying.md, "Who owns what on the host"): /home/tribist, bin/, .ssh/
# and the scripts are root's; tribist owns only api/ (binaries, uploads) and the service's
# runtime directory /run/tribist (PID). Whatever has to happen in those is done as tribist:
# `as_tribist` runs `tribist-host releases` through setpriv with no capabilities, a clean
# environment, no terminal (a new session), stdin from /dev/null and no descriptor of root's
# but a pipe, whose output is bounded and stripped of control characters.
# The deploy lock, the holder note root writes and root's audit record live in
# /var/lib/tribist-deploy (root's). Nothing the deployer sends is ever evaluated: arguments
# arrive as words, --by is checked, releases and notes are printed only after sanitising.
set -euo pipefail
export LC_ALL=C

readonly PROG=deploy.sh
readonly UNIT=tribist
readonly USER_NAME=tribist
# The service runs as a system user of its own, never as the deploy user: the holder of the
# deploy key cannot signal, trace or read the server, and a compromised server cannot signal
# the kit's steps (which run as tribist) or tribist's logins.
readonly SERVICE_USER=tribistd
readonly HOME_DIR=/home/tribist
readonly API_DIR=$HOME_DIR/api
readonly BIN_DIR=$HOME_DIR/bin
readonly SSH_DIR=$HOME_DIR/.ssh
readonly CONF_DIR=/etc/tribist
readonly ENV_FILE=$CONF_DIR/env
readonly STATE_DIR=/var/lib/tribist-deploy
readonly LOCK_FILE=$STATE_DIR/lock
readonly HOLDER_FILE=$STATE_DIR/holder
readonly AUDIT_LOG=$STATE_DIR/audit.log
# What the unit runs (ExecStart=): root's copy of the binary, made by the start and reload
# steps from bytes user tribist handed over through a pipe and hashed by root, so what runs is
# exactly what root's audit names, whatever tribist does to api/ afterwards. `next` is the copy
# root's own deployment took of its upload right after the lock: the start step installs it
# instead of api/server when it promotes.
readonly VERIFIED_DIR=$STATE_DIR/bin
readonly VERIFIED=$VERIFIED_DIR/server
readonly VERIFIED_NEXT=$VERIFIED_DIR/next
readonly MAX_BINARY=$((512 * 1024 * 1024))
readonly TRIBIST_NOTE=$API_DIR/.deploy.holder
readonly UNIT_FILE=/etc/systemd/system/$UNIT.service
readonly SOCKET_FILE=/etc/systemd/system/$UNIT.socket
# The one place the listen address is set (install --listen): tribist.socket's drop-in, with
# the server's own fallback (TRIBIST_LISTEN, for a start without the socket) beside it in the
# service's drop-in, both written from the same value. Everything reads it back from systemd.
readonly SOCKET_DROPIN=/etc/systemd/system/$UNIT.socket.d/listen.conf
readonly SERVICE_DROPIN=/etc/systemd/system/$UNIT.service.d/listen.conf
readonly DEFAULT_LISTEN=127.0.0.1:8383
readonly SUDOERS_FILE=/etc/sudoers.d/$UNIT
readonly SCRIPTS=(server.sh wait_for_it.sh deploy.sh)
# The host program (root-owned, installed with the scripts): `releases` is every binary state
# and rename in api/, run as tribist.
readonly HOST_PROGRAM=$BIN_DIR/tribist-host
readonly EXIT_USAGE=2
readonly EXIT_LOCKED=3
# The configuration cannot work (the database refuses it, or the binary refuses a setting):
# remote.sh names the make config / make install command that fixes it.
readonly EXIT_CONFIGURATION=4
# tribist is not installed here (no unit, or no binary): make install.
readonly EXIT_NOT_INSTALLED=5
# status and summary: installed but not running; running but not healthy on its release.
readonly EXIT_STOPPED=6
readonly EXIT_UNHEALTHY=7
# Written (root's) once $ENV_FILE has served a healthy start: until then a re-install with a
# DATABASE_URL replaces the one in it, since it was never "the configuration to keep".
readonly ENV_OK=$STATE_DIR/env-served
WAIT=${TRIBIST_WAIT:-30}
# Seconds the new binary has to answer /health beside the serving one (--preflight).
PREFLIGHT=10
BY=unknown
ACTION=""
# What an interrupt must undo: set while a new binary is being switched in.
SWITCHING=""
# Set while a plain rollback has swapped server and server.prev (see interrupted_rollback).
ROLLBACK_SWAPPED=""
FROM_RELEASE=""
TO_RELEASE=""
# An upload to remove if the lock is refused.
UPLOAD=""
# install --listen ADDR:PORT.
LISTEN=""
# --target: the host as the deployer names it, and --url-file the file the deployer gave the
# database URL in (a name only, never its content), for the one next command a refusal prints.
TARGET=""
URL_FILE=""
# How many releases api/releases keeps (--keep).
KEEP=5
# More for the audit line (config: the names changed, never values).
AUDIT_EXTRA=""
# config: the new environment file while it is being checked (removed if the run ends).
CONFIG_NEW=""
# config: set while the new file is in place but not yet proven (an interrupt restores).
CONFIG_SWITCHING=""

usage() {
  cat <<USAGE
usage: $PROG [--by WHO] [--preflight SECONDS] [--listen ADDR:PORT] [--keep N] COMMAND
       $PROG install BUNDLE_DIR      (root) install or update everything from BUNDLE_DIR
       $PROG receive SHA256          read a binary from stdin into $API_DIR (as tribist),
                                     check its SHA-256, print the upload's name
       $PROG upgrade UPLOAD          make UPLOAD server_new, switch to it (a handover, or a
                                     restart), wait for the new release; roll back on failure
       $PROG rollback                put server.prev back, switch, wait
       $PROG rollback --to PREFIX    switch to the kept release whose id starts with PREFIX,
                                     as an upgrade does (preflight, health, revert)
       $PROG releases                the kept releases (the last --keep N, default 5), which
                                     serves and which is the previous one
       $PROG status                  unit state, pid, releases and /health
       $PROG serving                 the releaseId /health reports now
       $PROG summary                 one line: state, release, health, age, address
       $PROG logs [LINES [SINCE [GREP]]] the service's last LINES (default 100) log lines,
                                     from SINCE (journalctl --since; - for any), matching
                                     GREP (journalctl --grep; - for any)
       $PROG follow [SINCE [GREP]]   (root) the log as it is written, until Ctrl-C
       $PROG audit [LINES]           (root) the last LINES (default 50) deployments recorded
                                     on this host, each once, newest last
       $PROG unlock                  break the deploy lock on purpose (stops its holder)
       $PROG start|stop              the service and its socket, under the lock, audited
       $PROG config                  every setting as the installed binary reads $ENV_FILE
                                     (passwords masked)
       $PROG config [--set NAME=VALUE]... [--unset NAME]... [--database-url-stdin]
                                     (root) change the configuration: checked by the binary
                                     (server --check-config) and a preflight, applied by a
                                     restart, taken back if the server is not healthy then
       $PROG on-start                (root) the unit's pre-start step: promote server_new
                                     (as tribist) and record the start in root's audit
       $PROG on-reload               (root) the unit's reload step: promote server_new, record
                                     it, have the serving process hand over to it, and wait
       $PROG uninstall [--purge]     (root) stop and remove the service; --purge also
                                     removes $CONF_DIR, $STATE_DIR, the address drop-ins,
                                     user $USER_NAME and $HOME_DIR
       $PROG --help

--listen ADDR:PORT (install) sets the address tribist.socket listens on (default: the one set
before, else $DEFAULT_LISTEN) in $SOCKET_DROPIN, the one place it is set;
the scripts, status and health checks read it back from systemd. A port something else uses
is refused, and so is TRIBIST_LISTEN in $ENV_FILE (exit 2, nothing changed).

--by WHO says who deploys (printable text, at most 100 characters); it is recorded as the
deployer's claim, beside the identity the host itself knows (root, the sudo user, tribist).

install, upgrade and rollback first run the binary they are about to switch to beside the
serving one (as tribist, with $ENV_FILE, on a free loopback port, in a scratch
directory) and go ahead only once its /health answers 200 with the expected releaseId,
within --preflight SECONDS (default $PREFLIGHT; 0 skips it, e.g. to roll back while the
database is down): a release that exits, hangs or answers otherwise never gets traffic
(result refused-preflight). The health check after the switch, and the automatic
rollback, stay for what a preflight cannot see.

The switch is a handover when it can be (systemctl reload): the serving process starts the
new binary beside itself on the same socket and stops accepting only once it serves, so no
client waits; a new binary that fails there never served, and the old process goes on. It is
a restart when the service is down, the serving binary predates handovers, the unit file is
older, or $ENV_FILE changed since the service started (a handover keeps the environment).

install, upgrade, rollback and uninstall take the host's deploy lock ($LOCK_FILE): a
second one is refused (exit $EXIT_LOCKED), naming the holder; the lock goes with its holder's
process, whether it succeeds, fails or is interrupted (Ctrl-C rolls back a half-done upgrade).
Root's deployments are recorded in $AUDIT_LOG (root's alone) and in the journal; tribist's
in the journal, under the sender's uid as the kernel reports it (tag tribist-deploy).

TRIBIST_WAIT sets how long to wait for /health (default 30 s).
Exit codes: 0 done, 1 failed (the message says why and what state the host is in), 2 misuse,
$EXIT_LOCKED another deployment holds the lock, $EXIT_CONFIGURATION the configuration cannot work (the database
refuses it, or the binary refuses a setting; waiting will not help), $EXIT_NOT_INSTALLED tribist is not installed here.
status and summary: 0 healthy on the installed release, $EXIT_NOT_INSTALLED not installed, $EXIT_STOPPED stopped, $EXIT_UNHEALTHY running but
not healthy (or serving another release than the installed one).
USAGE
}

say() { echo "$PROG: $*"; }
warn() { echo "$PROG: $*" >&2; }
die() {
  warn "$*"
  exit 1
}
usage_error() {
  warn "$*"
  echo "try: $PROG --help" >&2
  exit "$EXIT_USAGE"
}

is_root() { [[ $(id -u) -eq 0 ]]; }
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# Text from elsewhere (tribist, a binary, the deployer), made safe to print and to log: no
# control characters, at most $2 bytes.
# Printable ASCII only: no control character, and no byte of a UTF-8 sequence either (C1
# controls such as CSI and OSC arrive as UTF-8 and terminals obey them).
clean() { printf '%s' "$1" | tr -cd '\040-\176' | head -c "${2:-200}"; }
readonly PRINTABLE='\n\040-\176'
printable() { tr -cd "$PRINTABLE"; }

# Runs "$@" as user tribist with nothing of root's (see the header): stdin from FILE (or
# /dev/null), stdout and stderr through pipes that keep printable ASCII and newlines only.
# Bounded in time ($TRIBIST_TIMEOUT seconds, default 15), the readers included: whatever
# tribist's process does (hang, fork a child that keeps the pipe open, stop itself), root
# waits no longer than that.
TRIBIST_TIMEOUT=15
as_tribist() { as_tribist_from /dev/null "$@"; }
as_tribist_from() {
  local input=$1 t=$TRIBIST_TIMEOUT
  shift
  [[ ! -t 0 || "$input" != /dev/stdin ]] || die "refusing to hand a terminal to user $USER_NAME"
  if is_root; then
    timeout -k 5 "$t" setsid -w setpriv --reuid="$USER_NAME" --regid="$USER_NAME" --init-groups \
      --no-new-privs --inh-caps=-all --bounding-set=-all --reset-env -- "$@" <"$input" 8<&- 9<&- \
      2> >(timeout -k 1 "$((t + 1))" tr -cd "$PRINTABLE" >&2) | timeout -k 1 "$((t + 1))" tr -cd "$PRINTABLE"
  else
    "$@" <"$input" 8<&- 9<&-
  fi
}

releases() { as_tribist "$HOST_PROGRAM" releases "$@"; }

# The commit a binary in api/ reports, or nothing (exit 1).
release_of() {
  local out
  out=$(releases version "$1" 2>/dev/null | head -c 100) || return 1
  [[ "$out" =~ ^[A-Za-z0-9._+-]{1,64}$ ]] || return 1
  echo "$out"
}

# Who acts, as far as the host knows: root, the sudo user behind root, or tribist.
actor() {
  if is_root && [[ -n "${SUDO_USER:-}" ]]; then
    echo "$(clean "$SUDO_USER" 32)(sudo)"
  else
    id -un
  fi
}

from_addr() {
  local from=${SSH_CLIENT:-}
  from=${from%% *}
  clean "${from:-local}" 64
}

# A value for key="..." in an audit line.
quoted() {
  local v
  v=$(clean "$1" 120)
  v=${v//\\/\\\\}
  printf '"%s"' "${v//\"/\\\"}"
}

# One line per install, upgrade, rollback, uninstall: to the journal (whose _UID field the
# sender cannot choose) and, when root acts, to root's own audit file.
audit() {
  local result=$1 line
  line="$(now) host=$(hostname) action=$ACTION user=$(actor) from=$(from_addr) by=$(quoted "$BY") release_from=${FROM_RELEASE:-none} release_to=${TO_RELEASE:-none}${AUDIT_EXTRA:+ $AUDIT_EXTRA} result=$result"
  if is_root; then
    { echo "$line" >>"$AUDIT_LOG"; } 2>/dev/null || warn "cannot append to $AUDIT_LOG"
  fi
  logger -t tribist-deploy -- "$line" 2>/dev/null || true
}

holder_text() { printf '%s by %s as %s@%s (pid %s) since %s' "$ACTION" "$(clean "$BY" 100)" "$(actor)" "$(from_addr)" "$$" "$(now)"; }

# Who holds the lock, for a refusal: root's note (root's file) or tribist's (read as tribist).
holder_note() {
  local note=""
  [[ -r "$HOLDER_FILE" ]] && note=$(clean "$(head -c 400 "$HOLDER_FILE")" 300)
  if [[ -z "$note" ]]; then
    note=$(as_tribist head -c 400 -- "$TRIBIST_NOTE" 2>/dev/null || true)
    note=$(clean "$note" 300)
    [[ -z "$note" ]] || note="$note (as user tribist wrote it)"
  fi
  echo "${note:-unknown holder}"
}

# Takes the host's deploy lock for ACTION, or exits $EXIT_LOCKED naming the holder. The lock
# file is root's and only read: flock(2) needs no write access, so tribist can take it too.
lock() {
  ACTION=$1
  [[ -f "$LOCK_FILE" ]] || die "$LOCK_FILE is missing: is tribist installed? (make install)"
  exec 8<"$LOCK_FILE" || die "cannot open the deploy lock $LOCK_FILE"
  if ! flock -n 8; then
    if [[ -n "$UPLOAD" ]]; then releases discard "$UPLOAD" || true; fi
    warn "refused: another deployment holds the lock on $(hostname): $(holder_note)"
    warn "wait for it to finish, or if it is stuck break the lock on purpose (make unlock)"
    exit "$EXIT_LOCKED"
  fi
  if is_root; then
    # Fail-closed: root's record of what changes needs room; without it nothing changes.
    local avail
    avail=$(df -Pk "$STATE_DIR" 2>/dev/null | awk 'NR == 2 { print $4 }')
    if [[ "$avail" =~ ^[0-9]+$ ]] && ((avail < 1024)) || ! { holder_text >"$HOLDER_FILE"; } 2>/dev/null; then
      if [[ -n "$UPLOAD" ]]; then releases discard "$UPLOAD" || true; fi
      warn "refused: root cannot write its audit record in $STATE_DIR (${avail:-?} KiB free; disk full?): free space there, then run the same command again; nothing changed"
      exit 1
    fi
  else
    (umask 027 && holder_text >"$TRIBIST_NOTE") || true
  fi
  # PIPE too: a client that went away (ssh -T, no terminal to hang up) is an interrupt.
  trap on_interrupt INT TERM HUP PIPE
  trap unlock_on_exit EXIT
}

unlock_on_exit() {
  if [[ -n "$CONFIG_NEW" ]]; then rm -f "$CONFIG_NEW"; fi
  if is_root; then
    { : >"$HOLDER_FILE"; } 2>/dev/null || true
    # A copy no start step took is not to be taken by a later one.
    rm -f "$VERIFIED_NEXT" 2>/dev/null || true
  else
    rm -f "$TRIBIST_NOTE" 2>/dev/null || true
  fi
}

# Ctrl-C (SIGINT through ssh -t), SIGTERM (make unlock) or a lost session: never leave a
# half-switched binary behind. The lock is released when this process exits.
on_interrupt() {
  trap '' INT TERM HUP PIPE
  # The client may be gone: a failed write must not end the clean-up.
  set +e
  warn "interrupted"
  if is_root; then
    pkill -TERM -u "$USER_NAME" -f "tribist-host releases preflight" 2>/dev/null || true
  else
    pkill -TERM -u "$(id -u)" -f "tribist-host releases preflight" 2>/dev/null || true
  fi
  if [[ -n "$UPLOAD" ]]; then releases discard "$UPLOAD" || true; fi
  if [[ -n "$CONFIG_SWITCHING" ]]; then
    warn "the configuration change was interrupted; putting the previous one back"
    cp -p "$CONF_DIR/env.prev" "$ENV_FILE"
    if restart_and_wait "${FROM_RELEASE/none/}"; then audit interrupted-restored; else audit interrupted-restore-failed; fi
    exit 130
  fi
  if [[ -n "$ROLLBACK_SWAPPED" ]]; then
    interrupted_rollback
    exit 130
  fi
  if [[ -n "$SWITCHING" ]]; then
    warn "the upgrade to ${TO_RELEASE:-?} was interrupted; restoring ${FROM_RELEASE:-the previous release}"
    # A handover under way goes on in systemd: let it end (within its bound) before any file
    # moves, so that the renames never race the unit's own.
    wait_handover_end
    if revert_upgrade; then
      audit "interrupted-rolled-back"
      warn "rolled back: release ${FROM_RELEASE:-?} is serving again"
    else
      audit "interrupted-rollback-failed"
    fi
  else
    audit "interrupted"
  fi
  exit 130
}

# The processes that have the lock file open, as the kernel says (/proc/PID/fd), never as a
# note says: so unlock can only ever signal a deployment (or one of tribist's own processes).
lock_holders() {
  local dir pid
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    [[ "$pid" != "$$" && "$pid" != "$BASHPID" ]] && holds_lock "$pid" && echo "$pid"
  done
}

# True if process $1 has the lock file open now (as the kernel says).
holds_lock() {
  local fd
  for fd in /proc/"$1"/fd/*; do
    [[ "$(readlink "$fd" 2>/dev/null)" == "$LOCK_FILE" ]] && return 0
  done
  return 1
}

cmd_unlock() {
  local note pids=() pid signalled=()
  [[ -f "$LOCK_FILE" ]] || { say "no deploy lock on this host"; return 0; }
  if flock -n "$LOCK_FILE" true 8<&-; then
    say "the deploy lock is free"
    return 0
  fi
  # The note first (it may take until as_tribist's time bound), the holders after: a holder
  # found is signalled at once, after checking again that it still has the lock open.
  note=$(holder_note)
  mapfile -t pids < <(lock_holders)
  for pid in "${pids[@]}"; do
    if holds_lock "$pid" && kill -TERM "$pid" 2>/dev/null; then signalled+=("$pid"); fi
  done
  if ((${#signalled[@]} == 0)); then
    die "the lock is held by a process $(id -un) cannot see or signal (a root deployment?); break it as root: make unlock HOST=root@…"
  fi
  warn "sent SIGTERM to the deploy lock's holder: $note [pid ${signalled[*]}]"
  # A deployment (deploy.sh) gets 40 s to roll back what it started; anything else holding
  # the lock 5 s: then SIGKILL, said as it happens.
  local start=$SECONDS killed=()
  until flock -n "$LOCK_FILE" true 8<&-; do
    if ((SECONDS - start >= 5)); then
      for pid in $(lock_holders); do
        if is_deployment "$pid" && ((SECONDS - start < 40)); then continue; fi
        if holds_lock "$pid" && kill -KILL "$pid" 2>/dev/null; then
          killed+=("$pid")
          warn "pid $pid still held the lock $((SECONDS - start)) s after SIGTERM: sent SIGKILL"
        fi
      done
    fi
    ((SECONDS - start < 45)) || die "pid $(lock_holders | tr '\n' ' ')still holds the lock 45 s after SIGTERM and SIGKILL; see: ps -o pid,user,cmd -p PID"
    sleep 0.2
  done
  if ((${#killed[@]} > 0)); then
    say "lock released: pid ${killed[*]} had to be killed (SIGKILL), so what it had started was not rolled back by it; make status shows what serves"
  else
    say "lock released (its holder rolled back what it had started)"
  fi
}

# Whether process $1 is a deployment (deploy.sh), which rolls back on SIGTERM and is given the
# time to; its command line is only read, bounded.
is_deployment() {
  head -c 4096 "/proc/$1/cmdline" 2>/dev/null | tr '\0' ' ' | grep -q 'deploy\.sh'
}

need_root() { is_root || die "'$1' must run as root (or through sudo): HOST=root@… or a user with sudo"; }

# systemctl VERB tribist: directly as root, else through the sudoers drop-in. In the
# background, so that an interrupt's trap runs at once rather than after a start that may
# take TimeoutStartSec (a later restart replaces a start job left pending).
sctl() {
  if is_root; then
    systemctl "$1" "$UNIT" 8<&- &
  else
    sudo -n systemctl "$1" "$UNIT" 8<&- &
  fi
  wait $!
}

# IPv4:port or [IPv6]:port, port 1-65535.
valid_listen() {
  [[ "$1" =~ ^(([0-9]{1,3}\.){3}[0-9]{1,3}|\[[0-9A-Fa-f:.]{2,45}\]):([0-9]{1,5})$ ]] &&
    ((10#${BASH_REMATCH[3]} >= 1 && 10#${BASH_REMATCH[3]} <= 65535))
}

# The address tribist.socket listens on, as systemd reports it (else the default).
listen_address() {
  local listen
  listen=$(systemctl show -p Listen --value "$UNIT.socket" 8<&- 2>/dev/null | head -n 1)
  listen=${listen%% *}
  if valid_listen "$listen"; then echo "$listen"; else echo "$DEFAULT_LISTEN"; fi
}

# The /health URL on the socket's address (a wildcard address is reached on loopback).
health_url() {
  local listen
  listen=$(listen_address)
  listen=${listen/0.0.0.0/127.0.0.1}
  listen=${listen/\[::\]/[::1]}
  echo "http://$listen/health"
}

# The releaseId in a /health body on stdin, or nothing.
release_in() { sed -n 's/.*"releaseId":"\([A-Za-z0-9._+-]*\)".*/\1/p' | head -n 1; }

# The releaseId /health reports now, or nothing.
serving_release() { curl -sS --max-time 5 "$(health_url)" 2>/dev/null | release_in; }

# /health asked once: HEALTH_CODE (000 when nothing answered) and HEALTH_BODY (the body, or
# curl's error), at most 20000 bytes.
HEALTH_CODE=000
HEALTH_BODY=""
HEALTH_FETCHED=""
fetch_health() {
  local out
  HEALTH_FETCHED=1
  out=$(curl -sS --max-time 5 -w '\n%{http_code}' "$(health_url)" 2>&1 | head -c 20000) || true
  HEALTH_CODE=${out##*$'\n'}
  [[ "$HEALTH_CODE" =~ ^[0-9]{3}$ ]] || HEALTH_CODE=000
  HEALTH_BODY=${out%$'\n'*}
}

# `systemctl status`, as tribist may run it (sudo), printable ASCII only and bounded: systemd
# 252 prints the service's STATUS= text unescaped.
status_view() { sudo -n systemctl status "$UNIT" 2>&1 | printable | head -c 20000 || true; }

# Last lines of the service's log: the whole journal as root, `systemctl status` otherwise.
# A server that just died may still have its last words in flight to journald: let it settle.
recent_log() {
  sleep 1
  if is_root; then
    journalctl -u "$UNIT" -n 25 --no-pager 2>&1 || true
  else
    status_view
  fi
}

# Why the next switch cannot be a handover (empty when it can): see can_hand_over.
NO_HANDOVER=""

# The serving process's StatusText starts with fixed tokens (src/handover.rs `Status`):
# `handover=STATE`, then ` attempt=N` but for off and stopping, then `; ` and words for
# people. systemd takes STATUS= from the main process only (NotifyAccess=main), so this
# reads no file of tribist's. handover_tokens TEXT sets HANDOVER_STATE (ready, started,
# failed, off, stopping; empty for a server that predates the tokens) and HANDOVER_ATTEMPT
# (the number of its last attempt, empty without one).
readonly HANDOVER_TOKENS='^handover=([a-z]+)( attempt=([0-9]{1,9}))?(;|$)'
HANDOVER_STATE=""
HANDOVER_ATTEMPT=""
handover_tokens() {
  HANDOVER_STATE=""
  HANDOVER_ATTEMPT=""
  if [[ "$1" =~ $HANDOVER_TOKENS ]]; then
    HANDOVER_STATE=${BASH_REMATCH[1]}
    HANDOVER_ATTEMPT=${BASH_REMATCH[3]}
  fi
}

# Whether the serving process, whose StatusText is $1, can hand over now: its tokens say
# ready (or failed: it serves on and takes the next attempt); a server that predates them
# says "SIGUSR2 hands over" in its words.
serving_hands_over() {
  handover_tokens "$1"
  case "$HANDOVER_STATE" in
    ready | failed) return 0 ;;
    "") [[ "$1" == *"SIGUSR2 hands over"* ]] ;;
    *) return 1 ;;
  esac
}

# Whether StatusText $1 says that the attempt asked for after StatusText $2 (the one before
# the signal) failed: its tokens say failed with a higher attempt number; a server that
# predates them says "handover attempt … failed" in words that changed.
handover_failed() {
  local before=""
  handover_tokens "$2"
  before=${HANDOVER_ATTEMPT:-0}
  handover_tokens "$1"
  if [[ -n "$HANDOVER_STATE" ]]; then
    [[ "$HANDOVER_STATE" == failed && -n "$HANDOVER_ATTEMPT" ]] && ((10#$HANDOVER_ATTEMPT > 10#$before))
  else
    [[ "$1" == *"handover attempt"*failed* && "$1" != "$2" ]]
  fi
}

# Whether the serving process can hand over to binary $1 of api/ (what the switch runs; by
# systemctl reload, handled by on-reload): the unit has the reload step, the service is up,
# its server says it hands over, the new binary says it can take over, the configuration is
# the one systemd started the service with (a handover keeps the environment; when that
# cannot be told, it is taken as changed), and, as tribist, sudo allows the reload.
# Otherwise sets NO_HANDOVER.
can_hand_over() {
  local name=$1 props can state status since env_mtime started
  NO_HANDOVER=""
  props=$(systemctl show --timestamp=us "$UNIT" -p CanReload -p ActiveState -p StatusText -p InactiveExitTimestamp 8<&- 2>/dev/null) || true
  can=$(sed -n 's/^CanReload=//p' <<<"$props")
  state=$(sed -n 's/^ActiveState=//p' <<<"$props")
  status=$(sed -n 's/^StatusText=//p' <<<"$props")
  since=$(sed -n 's/^InactiveExitTimestamp=//p' <<<"$props")
  if [[ "$state" != active ]]; then
    NO_HANDOVER="$UNIT is ${state:-unknown}, not active"
  elif [[ "$can" != yes ]]; then
    NO_HANDOVER="the installed unit has no reload step (make install updates it)"
  elif ! serving_hands_over "$status"; then
    if [[ -n "$HANDOVER_STATE" ]]; then
      NO_HANDOVER="the serving process cannot hand over now (handover=$HANDOVER_STATE)"
    else
      NO_HANDOVER="the serving binary predates handovers"
    fi
  elif ! releases hands-over "$name"; then
    NO_HANDOVER="the release to switch to predates handovers"
  elif [[ -z "$since" ]] || ! env_mtime=$(stat -c %.6Y "$ENV_FILE" 2>/dev/null) ||
    ! started=$(date -d "$since" +%s%6N 2>/dev/null) || ((${env_mtime/./} >= started)); then
    NO_HANDOVER="$ENV_FILE changed since $UNIT started (or that cannot be told)"
  elif ! is_root && ! sudo -n -l /usr/bin/systemctl reload "$UNIT" >/dev/null 2>&1; then
    NO_HANDOVER="sudo does not allow tribist 'systemctl reload $UNIT' (make install updates it)"
  fi
  [[ -z "$NO_HANDOVER" ]]
}

# Switches the service to binary $2 of api/ (server, or server_new, which systemd's steps
# promote) and waits for a healthy server that reports release $1 (any release when empty):
# a handover when it can be, else a restart. On failure prints why and returns 1.
switch_and_wait() {
  local want=$1 name=$2
  if can_hand_over "$name"; then
    say "switching: the serving process hands over to ${want:-the new binary} (systemctl reload) and drains once it serves"
    if ! sctl reload; then
      warn "the handover failed; the process that was serving goes on serving. Its last log lines:"
      recent_log | sed 's/^/    /' >&2
      return 1
    fi
    # Explicit: a bare `return` in a trap handler's call returns the status of the command the
    # signal interrupted, so a rollback that worked would be audited as failed.
    wait_healthy "$want" && return 0
    return 1
  fi
  say "switching: restarting $UNIT ($NO_HANDOVER) and waiting up to ${WAIT}s"
  restart_and_wait "$want"
}

# Restarts through systemd (which promotes server_new) and waits for a healthy server that
# reports release $1 (any release when empty). On failure prints why and returns 1.
restart_and_wait() {
  sctl restart || {
    warn "'systemctl restart $UNIT' failed: the server did not start or did not report ready; its last log lines:"
    recent_log | sed 's/^/    /' >&2
    return 1
  }
  wait_healthy "$1"
}

# Waits for /health 200 reporting release $1 (any when empty).
wait_healthy() {
  local want=$1 got rc=0
  # In the background, so a signal's trap runs at once instead of after the wait.
  "$BIN_DIR/wait_for_it.sh" -q -t "$WAIT" "$(health_url)" 8<&- &
  wait $! || rc=$?
  if ((rc != 0)); then
    "$BIN_DIR/wait_for_it.sh" -t 0 "$(health_url)" 2>&1 | sed -n 's/^wait_for_it.sh: last/health, last/p' >&2 || true
    warn "the server did not become healthy within ${WAIT}s; its last log lines:"
    recent_log | sed 's/^/    /' >&2
    return 1
  fi
  # Right after a handover the old process may still answer one last request: look again,
  # for up to 5 s, before calling it the wrong release.
  if [[ -n "$want" ]]; then
    local end=$((SECONDS + 5))
    while got=$(serving_release) && [[ "$got" != "$want" ]] && ((SECONDS < end)); do
      sleep 0.2
    done
    if [[ "$got" != "$want" ]]; then
      warn "healthy, but serving release '${got:-unknown}' instead of '$want'"
      return 1
    fi
  fi
}

# --- install --------------------------------------------------------------------------------

# A path root is about to use in the home directory must be exactly what install made: a real
# directory or file (never a symlink) of the expected owner. Anything else — left by an older
# layout in which tribist owned the home directory — is moved, not opened, into a root-only
# quarantine directory, and the operator is told.
QUARANTINE=""
quarantine() {
  local path=$1
  if [[ -z "$QUARANTINE" ]]; then
    # A name nobody can guess, made with O_EXCL semantics (mkdir never follows a symlink
    # planted in advance); the home directory is root's by now.
    QUARANTINE=$(mktemp -d "$HOME_DIR/.quarantine-$(date -u +%Y%m%d)-XXXXXXXX")
  fi
  mv -f -T -- "$path" "$QUARANTINE/$(basename "$path")"
  warn "moved aside $path (not the root-owned directory install expects): now in $QUARANTINE; inspect it, then delete it"
}

# expect PATH TYPE OWNER: keeps PATH if it is a TYPE (d or f, not a symlink) owned by OWNER and
# writable by its owner alone; otherwise moves it to the quarantine.
expect() {
  local path=$1 type=$2 owner=$3 st
  [[ -e "$path" || -L "$path" ]] || return 0
  st=$(stat -c '%F|%U|%A' -- "$path")
  case "$type" in
    d) [[ "$st" == "directory|$owner|"?????-??-? ]] && return 0 ;;
    f) [[ "$st" == "regular file|$owner|"?????-??-? || "$st" == "regular empty file|$owner|"?????-??-? ]] && return 0 ;;
  esac
  quarantine "$path"
}

# Public keys (one per line, no options) from a file, checked; prints them.
valid_keys() {
  local line n=0
  while IFS= read -r line || [[ -n "$line" ]]; do
    [[ -z "$line" || "$line" == \#* ]] && continue
    [[ "$line" =~ ^(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+)\ [A-Za-z0-9+/]+=*(\ [[:print:]]*)?$ ]] || return 1
    echo "$line"
    n=$((n + 1))
  done
  ((n > 0))
}

# The layout of the ownership table in docs/deploying.md; see `expect` for what an older one leaves.
make_layout() {
  local old_keys=""
  if ! id "$USER_NAME" >/dev/null 2>&1; then
    useradd --system --user-group --home-dir "$HOME_DIR" --no-create-home --shell /bin/bash "$USER_NAME"
    say "created user $USER_NAME"
  fi
  # No password, but not locked either: key-only ssh logins (DEPLOY_KEY) must work.
  usermod -p '*' "$USER_NAME"
  # /home is root's, so /home/tribist itself cannot be swapped; once it is root's too, tribist
  # can no longer create, rename or remove anything directly in it.
  if [[ -L "$HOME_DIR" || (-e "$HOME_DIR" && ! -d "$HOME_DIR") ]]; then
    die "$HOME_DIR is not a directory; move it away and run make install again"
  fi
  if [[ -d "$HOME_DIR" && "$(stat -c %U "$HOME_DIR")" == "$USER_NAME" && -d "$SSH_DIR" && ! -L "$SSH_DIR" ]]; then
    # An older layout: tribist's own authorized_keys. Keep the keys (read as tribist: they
    # only ever granted what tribist has), so a re-install does not lock the deploy key out.
    old_keys=$(as_tribist head -c 65536 -- "$SSH_DIR/authorized_keys" 2>/dev/null | valid_keys 2>/dev/null || true)
  fi
  install -d -o root -g "$USER_NAME" -m 0750 "$HOME_DIR"
  chown root:"$USER_NAME" "$HOME_DIR"
  chmod 0750 "$HOME_DIR"
  expect "$BIN_DIR" d root
  expect "$SSH_DIR" d root
  expect "$API_DIR" d "$USER_NAME"
  expect "$HOME_DIR/deploy-audit.log" none root
  install -d -o root -g root -m 0755 "$BIN_DIR" "$SSH_DIR"
  install -d -o "$USER_NAME" -g "$USER_NAME" -m 0750 "$API_DIR"
  expect "$SSH_DIR/authorized_keys" f root
  if [[ -n "$old_keys" && ! -e "$SSH_DIR/authorized_keys" ]]; then
    install -o root -g root -m 0644 /dev/null "$SSH_DIR/.authorized_keys.tmp"
    echo "$old_keys" >"$SSH_DIR/.authorized_keys.tmp"
    mv -f "$SSH_DIR/.authorized_keys.tmp" "$SSH_DIR/authorized_keys"
    say "kept tribist's authorised keys in the now root-owned $SSH_DIR/authorized_keys"
  fi
  install -d -o root -g root -m 0755 "$STATE_DIR"
  expect "$VERIFIED_DIR" d root
  install -d -o root -g root -m 0755 "$VERIFIED_DIR"
  if ! id "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
    say "created user $SERVICE_USER (the service runs as it)"
  fi
  [[ -f "$LOCK_FILE" && ! -L "$LOCK_FILE" ]] || install -o root -g root -m 0644 /dev/null "$LOCK_FILE"
  [[ -f "$AUDIT_LOG" && ! -L "$AUDIT_LOG" ]] || install -o root -g root -m 0600 /dev/null "$AUDIT_LOG"
  install -d -o root -g "$USER_NAME" -m 0750 "$CONF_DIR"
}

# systemd's EnvironmentFile= reads "…" with \ " $ ` escaped back to exactly these bytes.
env_line() {
  local name=$1 v=$2
  v=${v//\\/\\\\}
  v=${v//\"/\\\"}
  v=${v//\$/\\\$}
  v=${v//\`/\\\`}
  printf '%s="%s"\n' "$name" "$v"
}

# A value systemd can carry: UTF-8 without control characters.
representable() {
  [[ "$1" != *[[:cntrl:]]* ]] && printf '%s' "$1" | iconv -f UTF-8 -t UTF-8 >/dev/null 2>&1
}

# Whether $ENV_FILE has served a healthy start (install or config recorded it; an older
# install that serves healthy now counts too, and is recorded).
env_served() {
  [[ -f "$ENV_OK" ]] && return 0
  # An install from before the record: root's audit says whether anything ever served.
  if [[ -f "$ENV_FILE" && -s "$AUDIT_LOG" ]] &&
    grep -Eq ' action=(install|upgrade|rollback|config) user=[^ ]+ .* result=ok$' "$AUDIT_LOG"; then
    mark_env_served
    return 0
  fi
  if [[ -f "$ENV_FILE" ]] && systemctl is-active --quiet "$UNIT" 8<&- &&
    [[ "$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$(health_url)" 2>/dev/null)" == 200 ]]; then
    mark_env_served
    return 0
  fi
  return 1
}
mark_env_served() { install -o root -g root -m 0644 /dev/null "$ENV_OK" 2>/dev/null || true; }

# A new environment file beside $ENV_FILE (root's, readable by the service's group), for a
# preflight before it replaces the real one: sets CONFIG_NEW to its path, which the exit trap
# removes unless it was put in place. $1: a file to start from.
env_candidate() {
  local from=$1
  CONFIG_NEW=$(mktemp "$CONF_DIR/.env.XXXXXX")
  chown root:"$USER_NAME" "$CONFIG_NEW"
  chmod 0640 "$CONFIG_NEW"
  if [[ -n "$from" ]]; then cat "$from" >"$CONFIG_NEW"; fi
}

# The environment file install is to run with: sets ENV_USE to its path (ENV_FILE itself when
# kept, else a candidate that replaces it once the preflight passed). A URL given replaces
# the DATABASE_URL of a file that never served; one that served is kept (make config changes
# it). No URL and no file was refused by cmd_install before anything was made.
ENV_USE=""
choose_env() {
  local bundle=$1 url
  if [[ ! -f "$bundle/database_url" ]]; then
    ENV_USE=$ENV_FILE
    env_served || say "using the existing $ENV_FILE, which has not served yet"
    return 0
  fi
  url=$(cat "$bundle/database_url")
  representable "$url" || die "DATABASE_URL holds a control character or is not UTF-8: systemd cannot pass it on; nothing written"
  if [[ -f "$ENV_FILE" ]] && env_served; then
    say "keeping the existing $ENV_FILE, which serves: the DATABASE_URL given was not used (make config DATABASE_URL_FILE=… changes it, checked)"
    ENV_USE=$ENV_FILE
    return 0
  fi
  if [[ -f "$ENV_FILE" ]]; then
    env_candidate "$ENV_FILE"
    ENV_USE=$CONFIG_NEW
    sed -i -E '/^[[:space:]]*(export[[:space:]]+)?DATABASE_URL[[:space:]]*=/d' "$ENV_USE"
    say "replacing the DATABASE_URL in $ENV_FILE, which has never served, with the one given (once the preflight passes)"
  else
    env_candidate ""
    ENV_USE=$CONFIG_NEW
    echo "# Written by make install. \`server --help\` lists every setting." >"$ENV_USE"
  fi
  env_line DATABASE_URL "$url" >>"$ENV_USE"
}

# Puts the environment file the preflight passed with in place (a no-op when it is kept);
# whatever was there before, the secret is readable by root and the service only.
install_env() {
  if [[ "$ENV_USE" != "$ENV_FILE" ]]; then
    if [[ -f "$ENV_FILE" ]]; then cp -p "$ENV_FILE" "$CONF_DIR/env.prev"; fi
    mv -f "$ENV_USE" "$ENV_FILE"
    CONFIG_NEW=""
    say "wrote $ENV_FILE with the DATABASE_URL given"
  fi
  chown root:"$USER_NAME" "$ENV_FILE"
  chmod 0640 "$ENV_FILE"
}

authorise_key() {
  local bundle=$1 keys tmp=$SSH_DIR/.authorized_keys.tmp
  [[ -f "$bundle/deploy_key.pub" ]] || return 0
  keys=$(valid_keys <"$bundle/deploy_key.pub") || die "DEPLOY_KEY is not a public key file (one key per line, no options)"
  install -o root -g root -m 0644 /dev/null "$tmp"
  if [[ -f "$SSH_DIR/authorized_keys" ]]; then cat "$SSH_DIR/authorized_keys" >"$tmp"; fi
  while IFS= read -r key; do
    grep -qxF -- "$key" "$tmp" || echo "$key" >>"$tmp"
  done <<<"$keys"
  mv -f "$tmp" "$SSH_DIR/authorized_keys"
  say "authorised the deploy key for $USER_NAME"
}

# The address install is to set: --listen, else the one set before, else the default.
wanted_listen() {
  local set=""
  if [[ -n "$LISTEN" ]]; then
    echo "$LISTEN"
    return 0
  fi
  [[ -f "$SOCKET_DROPIN" && ! -L "$SOCKET_DROPIN" ]] &&
    set=$(sed -n 's/^ListenStream=\(..*\)$/\1/p' "$SOCKET_DROPIN" | tail -n 1)
  if valid_listen "$set"; then echo "$set"; else echo "$DEFAULT_LISTEN"; fi
}

# Refuses (exit 2, before anything changes) an address that something else already uses,
# and a TRIBIST_LISTEN in the environment file, which would contradict the socket's.
check_listen() {
  local listen=$1 port users
  if [[ -f "$ENV_FILE" ]] && grep -q '^[[:space:]]*\(export[[:space:]]\+\)\?TRIBIST_LISTEN=' "$ENV_FILE"; then
    warn "$ENV_FILE sets TRIBIST_LISTEN, but the address is tribist.socket's, set by 'make install LISTEN=ADDR:PORT' ($SOCKET_DROPIN): remove that line, then install again (nothing changed)"
    exit "$EXIT_USAGE"
  fi
  [[ "$listen" == "$(listen_address)" ]] && systemctl is-active --quiet "$UNIT.socket" && return 0
  port=${listen##*:}
  if command -v ss >/dev/null; then
    users=$(ss -Hltnp "sport = :$port" 2>/dev/null | head -n 3)
    if [[ -n "$users" ]] && ! only_ours "$users"; then
      warn "port $port is taken on this host (ss -ltnp: $(printable <<<"$users" | head -c 300)); choose another LISTEN= or stop what uses it (nothing changed)"
      exit "$EXIT_USAGE"
    fi
  fi
}

# Whether the listeners `ss -ltnp` shows in $1 all belong to tribist: systemd's (pid 1, its
# socket) or the service's main process (a server that bound the port itself).
only_ours() {
  local pids pid main
  main=$(systemctl show -p MainPID --value "$UNIT" 8<&- 2>/dev/null) || main=0
  pids=$(grep -oE 'pid=[0-9]+' <<<"$1" | cut -d= -f2 | sort -u)
  [[ -n "$pids" ]] || return 1
  for pid in $pids; do
    [[ "$pid" == 1 || "$pid" == "$main" ]] || return 1
  done
}

# Writes the address into tribist.socket's drop-in and the server's fallback into the
# service's, both root's; prints "changed" when the socket's address is to change.
write_listen() {
  local listen=$1 dir
  for dir in "${SOCKET_DROPIN%/*}" "${SERVICE_DROPIN%/*}"; do
    install -d -o root -g root -m 0755 "$dir"
  done
  printf '# Written by make install (LISTEN=%s); the one place the address is set.\n[Socket]\nListenStream=\nListenStream=%s\n' \
    "$listen" "$listen" >"$SOCKET_DROPIN.tmp"
  printf '# Written by make install with %s: where the server listens if started without the socket.\n[Service]\nEnvironment=TRIBIST_LISTEN=%s\n' \
    "${SOCKET_DROPIN##*/}" "$listen" >"$SERVICE_DROPIN.tmp"
  chmod 0644 "$SOCKET_DROPIN.tmp" "$SERVICE_DROPIN.tmp"
  mv -f "$SOCKET_DROPIN.tmp" "$SOCKET_DROPIN"
  mv -f "$SERVICE_DROPIN.tmp" "$SERVICE_DROPIN"
}

cmd_install() {
  local bundle=$1 upload sum f listen ident
  need_root install
  [[ -d /run/systemd/system ]] || die "systemd is not running on this host; tribist needs it"
  for f in server tribist-host tribist.service tribist.socket tribist.sudoers tribist.env.example "${SCRIPTS[@]}"; do
    [[ -f "$bundle/$f" ]] || die "the upload is incomplete: $bundle/$f is missing; run make install again"
  done
  if [[ ! -f "$bundle/database_url" && ! -f "$ENV_FILE" ]]; then
    warn "no DATABASE_URL given and there is no $ENV_FILE yet: nothing installed; give the URL in a file (DATABASE_URL_FILE=path)"
    exit "$EXIT_CONFIGURATION"
  fi
  listen=$(wanted_listen)
  check_listen "$listen"
  for f in curl sudo setpriv setsid flock logger iconv; do
    command -v "$f" >/dev/null || die "$f is missing on this host: install it (Debian: apt-get install curl sudo util-linux bsdutils libc-bin)"
  done
  make_layout
  for f in tribist-host "${SCRIPTS[@]}"; do
    install -o root -g root -m 0755 "$bundle/$f" "$BIN_DIR/.$f.tmp"
    mv -f "$BIN_DIR/.$f.tmp" "$BIN_DIR/$f"
  done
  "$BIN_DIR/tribist-host" help >/dev/null 2>&1 ||
    die "the host program $BIN_DIR/tribist-host does not run on this host; run make install again with a build from make release"
  lock install
  FROM_RELEASE=$(release_of server || echo none)
  sum=$(sha256sum "$bundle/server" | cut -d' ' -f1)
  upload=$(TRIBIST_TIMEOUT=120 as_tribist_from "$bundle/server" "$HOST_PROGRAM" releases receive "$sum" | head -c 100) ||
    die "could not store the binary in $API_DIR (as tribist); nothing installed"
  TO_RELEASE=$(release_of "$upload") || {
    releases discard "$upload" || true
    audit refused-does-not-run
    die "the binary to install does not run on this host ('server --version' failed); nothing installed"
  }
  install -o root -g root -m 0644 "$bundle/tribist.env.example" "$CONF_DIR/env.example"
  choose_env "$bundle"
  # Install is the repair path: the binary given replaces whatever claims its id (say so);
  # the very bytes installed already are not staged again, so server.prev stays the
  # previous release.
  local check_name=$upload
  if ! ident=$(releases identity "$upload" "$TO_RELEASE"); then ident=new; fi
  case "$ident" in
    installed) check_name=server ;;
    conflict* | kept-other*)
      warn "warning: $(clean "${ident#*: }" 200) (built elsewhere, from uncommitted changes, or tampered with): installing the binary given"
      ;;
  esac

  visudo -c -q -f "$bundle/tribist.sudoers" || die "the sudoers drop-in does not parse; nothing installed for sudo"
  install -o root -g root -m 0440 "$bundle/tribist.sudoers" "$SUDOERS_FILE"
  authorise_key "$bundle"

  # The same preflight as an upgrade's: the binary, with the configuration now in place,
  # must answer /health 200 beside whatever serves before anything (re)starts.
  UPLOAD=$upload
  local rc=0
  preflight "$check_name" "$TO_RELEASE" "$ENV_USE" || rc=$?
  if ((rc != 0)); then
    releases discard "$upload" || true
    audit refused-preflight
    if ((rc == EXIT_CONFIGURATION)); then
      warn "refused: release $TO_RELEASE cannot work with this configuration (above): nothing was (re)started, $([[ -f "$ENV_FILE" ]] && echo "$ENV_FILE is as it was" || echo "no $ENV_FILE was written")"
      if [[ "$ENV_USE" == "$ENV_FILE" ]] && env_served; then
        warn "next: $ENV_FILE has served and is kept by install; change it: make config HOST=${TARGET:-…} DATABASE_URL_FILE=${URL_FILE:-path} (or SET=NAME=VALUE for the setting named above)"
      else
        warn "next: put the right database URL in ${URL_FILE:-a file (chmod 600)} and run: make install HOST=${TARGET:-…} DATABASE_URL_FILE=${URL_FILE:-path} (make check HOST=${TARGET:-…} DATABASE_URL_FILE=${URL_FILE:-path} tries it first)"
      fi
      exit "$EXIT_CONFIGURATION"
    fi
    die "refused: release $TO_RELEASE failed its preflight (above), so the service was not (re)started and $ENV_FILE is as it was"
  fi
  UPLOAD=""
  install_env

  # The binary becomes server_new; the restart below promotes it (first install included).
  if [[ "$check_name" == server ]]; then
    releases discard "$upload" || true
    say "release $TO_RELEASE is installed already (the same bytes); the files and units are updated"
  else
    stage_verified "$upload"
  fi

  # The address the socket has now, before the new units are read (then it reads the new one).
  local was
  was=$(listen_address)
  install -o root -g root -m 0644 "$bundle/tribist.service" "$UNIT_FILE"
  install -o root -g root -m 0644 "$bundle/tribist.socket" "$SOCKET_FILE"
  write_listen "$listen"
  # Read at once, so no systemctl call below warns that the files changed on disk.
  systemctl daemon-reload
  if systemctl is-active --quiet "$UNIT.socket" && [[ "$was" != "$listen" ]]; then
    # A new address: the socket is made anew, and the server holding the old one goes.
    say "moving $UNIT from $was to $listen"
    systemctl stop "$UNIT.service" "$UNIT.socket"
  fi
  systemctl enable --quiet "$UNIT.socket" "$UNIT.service"
  if ! systemctl is-active --quiet "$UNIT.socket"; then
    # A server that bound the port itself must let go of it before the socket takes it.
    systemctl stop "$UNIT.service"
    systemctl start "$UNIT.socket" || die "cannot start $UNIT.socket on $listen (is the port taken?); see: journalctl -u $UNIT.socket"
  fi
  say "starting $UNIT and waiting up to ${WAIT}s for $(health_url)"
  if ! restart_and_wait "$TO_RELEASE"; then
    audit failed
    die "installed, but $UNIT is not healthy (see above) although its preflight passed; once the cause above is fixed, run make install again"
  fi
  releases commit
  mark_env_served
  audit ok
  keep_release "$TO_RELEASE"
  say "installed: $UNIT is healthy, release $(serving_release)"
}

# --- upgrade and rollback -------------------------------------------------------------------

cmd_receive() {
  local sum=$1
  [[ "$sum" =~ ^[0-9a-f]{64}$ ]] || usage_error "'$sum' is not a SHA-256 (64 hex digits)"
  [[ -d "$API_DIR" ]] || die "$API_DIR does not exist: is tribist installed? (make install)"
  local rc=0
  TRIBIST_TIMEOUT=900 as_tribist_from /dev/stdin "$HOST_PROGRAM" releases receive "$sum" || rc=$?
  # `tribist-host releases`'s 3 is a checksum mismatch, not deploy.sh's 3 (the lock).
  ((rc == 0)) || exit 1
}

cmd_upgrade() {
  local upload=$1
  [[ "$upload" =~ ^\.upload\.[A-Za-z0-9]{6,16}$ ]] || usage_error "'$upload' is not an upload name (deploy.sh receive prints it)"
  UPLOAD=$upload
  lock upgrade
  switch_to_upload "$upload" upgraded
}

# rollback --to PREFIX: the kept release whose id starts with PREFIX, through the same
# preflight, switch, health check and revert as an upgrade.
cmd_rollback_to() {
  local prefix=$1 upload
  [[ "$prefix" =~ ^[A-Za-z0-9._+-]{1,64}$ ]] || usage_error "'$(clean "$prefix" 70)' is not a release id or a prefix of one"
  lock rollback
  upload=$(releases restage "$prefix") || {
    audit refused-no-such-release
    die "cannot roll back to '$prefix' (above); nothing changed. 'make releases' lists what is kept"
  }
  UPLOAD=$upload
  switch_to_upload "$upload" "rolled back"
}

# Keeps the serving binary as releases/ID (and prunes to KEEP): what `make releases` lists
# and `make rollback TO=` goes back to. A failure here changes nothing that serves.
keep_release() {
  releases keep "$1" "$KEEP" "$(clean "$BY" 80) ($(actor))" | sed "s/^/$PROG: /" ||
    warn "could not keep release $1 in $API_DIR/releases (above); it serves all the same"
}

# Refuses (exit $EXIT_NOT_INSTALLED) to switch on a host where install never finished: no unit or
# no binary (a first install that was refused leaves neither).
need_installed() {
  if [[ ! -f "$UNIT_FILE" ]] || ! as_tribist test -f "$API_DIR/server"; then
    if [[ -n "$UPLOAD" ]]; then releases discard "$UPLOAD" || true; fi
    audit refused-not-installed
    warn "tribist is not installed on $(hostname) ($([[ -f "$UNIT_FILE" ]] && echo "no $API_DIR/server" || echo "no $UNIT_FILE")): a first install has not finished; nothing changed"
    exit "$EXIT_NOT_INSTALLED"
  fi
}

# Everything of an upgrade after the lock: preflight, stage, switch, health, commit or revert.
switch_to_upload() {
  local upload=$1 done_word=$2 new old ident rc=0
  need_installed
  FROM_RELEASE=$(release_of server || echo none)
  if ! new=$(release_of "$upload"); then
    releases discard "$upload" || true
    TO_RELEASE=invalid
    audit refused-does-not-run
    die "the new binary does not run on this host, or its --version is not 'server VERSION (commit ID)'; nothing changed"
  fi
  old=$FROM_RELEASE
  TO_RELEASE=$new
  # A release is its bytes: the same bytes again change nothing; other bytes under an id the
  # host knows are refused, so releases/ never holds two binaries under one name.
  ident=$(releases identity "$upload" "$new") || ident=new
  case "$ident" in
    installed)
      releases discard "$upload" || true
      UPLOAD=""
      if [[ "$(serving_release)" == "$new" ]]; then
        audit unchanged
        say "release $new is already installed and serving (the same bytes): nothing changed"
        return 0
      fi
      audit refused-installed-not-serving
      die "release $new is already installed (the same bytes) but does not serve now; nothing changed. If it was stopped: make start HOST=${TARGET:-…}; else make status HOST=${TARGET:-…} says why"
      ;;
    conflict*)
      releases discard "$upload" || true
      UPLOAD=""
      audit refused-same-id-other-bytes
      die "refused: $(clean "${ident#conflict: }" 200) (built elsewhere, from uncommitted changes, or tampered with), and two different binaries are never one release; nothing changed. To replace it with this binary anyway: make install HOST=${TARGET:-…} BIN=path"
      ;;
    kept-other*)
      warn "warning: $(clean "${ident#kept-other: }" 200): this binary may serve, but it is not kept under that id (the bytes kept first stay)"
      ;;
  esac
  preflight "$upload" "$new" || rc=$?
  if ((rc != 0)); then
    releases discard "$upload" || true
    audit refused-preflight
    if ((rc == EXIT_CONFIGURATION)); then
      warn "refused: release $new cannot work with the configuration in $ENV_FILE (above); nothing changed, release $old still serves"
      exit "$EXIT_CONFIGURATION"
    fi
    die "refused: release $new failed its preflight (above); nothing changed, release $old still serves"
  fi
  SWITCHING=1
  UPLOAD=""
  stage_verified "$upload"
  say "upgrading $old -> $new"
  if switch_and_wait "$new" server_new; then
    SWITCHING=""
    releases commit
    audit ok
    keep_release "$new"
    say "$done_word: release $new is serving"
    return 0
  fi
  warn "upgrade to $new failed; rolling back to $old"
  if revert_upgrade; then
    SWITCHING=""
    audit failed-rolled-back
    die "upgrade to $new failed and was rolled back: release $old is serving again"
  fi
  SWITCHING=""
  audit failed-rollback-failed
  die "upgrade to $new failed AND the rollback to $old failed: $UNIT is down; see 'journalctl -u $UNIT'"
}

# Runs `tribist-host releases preflight` in the background (so an interrupt's trap runs at
# once) and prints what it says, indented. Returns its status.
preflight() {
  local rc=0 env_file=${3:-$ENV_FILE} where="nothing serves yet"
  systemctl is-active --quiet "$UNIT" 8<&- && where="beside the serving one"
  say "preflight: starting release $2 ($where; up to ${PREFLIGHT}s)"
  if ((PREFLIGHT == 0)); then
    warn "preflight skipped (PREFLIGHT=0): release $2 is checked only after the switch"
    return 0
  fi
  TRIBIST_TIMEOUT=$((PREFLIGHT + 10)) as_tribist "$HOST_PROGRAM" releases preflight "$1" "$2" "$PREFLIGHT" "$env_file" 2>&1 | sed 's/^/    /' &
  wait $! || rc=$?
  return "$rc"
}

# Waits (up to 30 s) for a handover under way in systemd to end, so that no rename races the
# unit's own.
wait_handover_end() {
  local i
  for ((i = 0; i < 150; i++)); do
    [[ "$(systemctl show -p ActiveState --value "$UNIT" 8<&- 2>/dev/null)" == reloading ]] || return 0
    ((i == 0)) && warn "waiting for the handover under way to end first (up to 30 s)"
    sleep 0.2
  done
  return 0
}

# A plain `make rollback` interrupted after its swap: whatever serves now decides. The
# rollback's release serving and healthy: it is done (audited as such). The release from
# before still serving (a handover that failed or never started): the files are swapped back,
# nothing changed. Neither: swapped back and restarted.
interrupted_rollback() {
  local serving
  wait_handover_end
  serving=$(serving_release || true)
  if [[ -n "$serving" && "$serving" == "$TO_RELEASE" ]]; then
    audit interrupted-done
    warn "the rollback had finished: release $TO_RELEASE is serving"
    return 0
  fi
  releases swap || true
  if [[ -n "$serving" && "$serving" == "$FROM_RELEASE" ]]; then
    audit interrupted-nothing-changed
    warn "nothing changed: release $FROM_RELEASE still serves, and server.prev is $TO_RELEASE again"
    return 0
  fi
  if restart_and_wait "${FROM_RELEASE/none/}"; then
    audit interrupted-rolled-back
    warn "put back: release $FROM_RELEASE is serving again"
  else
    audit interrupted-rollback-failed
    warn "release $FROM_RELEASE did not come back; see: make logs HOST=${TARGET:-…}"
  fi
}

# Undoes a staged or promoted upgrade (everything back as it was) and switches back, unless
# the release from before still serves (a failed handover leaves it serving).
revert_upgrade() {
  local from=${FROM_RELEASE/none/}
  releases revert | sed "s/^/$PROG: /" || return 1
  if [[ -n "$from" && "$(systemctl show -p ActiveState --value "$UNIT" 8<&- 2>/dev/null)" == active &&
    "$(serving_release)" == "$from" ]]; then
    say "release $from still serves: nothing to switch back"
    return 0
  fi
  switch_and_wait "$from" server
}

cmd_rollback() {
  local prev rc=0
  lock rollback
  need_installed
  FROM_RELEASE=$(release_of server || echo none)
  if ! as_tribist test -e "$API_DIR/server.prev"; then
    audit refused-no-previous
    die "nothing to roll back to yet: release $FROM_RELEASE is the only one installed here (make releases lists the kept ones; make rollback TO=ID goes to one of them)"
  fi
  prev=$(release_of server.prev) || {
    audit refused-no-previous
    die "the previous binary (server.prev) does not run here ('--version' failed); nothing changed (make releases lists the kept ones; make rollback TO=ID goes to one of them)"
  }
  TO_RELEASE=$prev
  preflight server.prev "$prev" || rc=$?
  if ((rc != 0)); then
    audit refused-preflight
    if ((rc == EXIT_CONFIGURATION)); then
      warn "refused: release $prev (server.prev) cannot work with the configuration in $ENV_FILE (above); nothing changed"
      exit "$EXIT_CONFIGURATION"
    fi
    die "refused: release $prev (server.prev) failed its preflight (above); nothing changed"
  fi
  say "rolling back to $prev"
  releases swap || die "could not swap server and server.prev; nothing changed"
  ROLLBACK_SWAPPED=1
  if ! switch_and_wait "$prev" server; then
    if [[ "$(systemctl show -p ActiveState --value "$UNIT" 8<&- 2>/dev/null)" == active &&
      "$(serving_release)" == "$FROM_RELEASE" ]]; then
      # A failed handover: the release from before still serves; so do its files again.
      releases swap || true
      ROLLBACK_SWAPPED=""
      audit failed-nothing-changed
      die "rollback to $prev failed (see above); release $FROM_RELEASE still serves, nothing changed"
    fi
    ROLLBACK_SWAPPED=""
    audit failed
    die "rollback to $prev failed: see the log lines above"
  fi
  ROLLBACK_SWAPPED=""
  audit ok
  keep_release "$prev"
  say "rolled back: release $prev is serving"
  say "(make rollback again swaps back to $FROM_RELEASE, the release just left; make rollback TO=ID goes to any kept release: make releases lists them)"
}

# --- configuration ----------------------------------------------------------------------------

# The variables config --set/--unset may touch: the server's own settings and libpq's. A
# password arrives only through --database-url-stdin, the address only through install
# --listen.
config_name_ok() {
  [[ "$1" =~ ^(TRIBIST_(WORKERS|DB_TIMEOUT|SHUTDOWN_TIMEOUT|KEEPALIVE_MAX|IDLE_TIMEOUT|MAX_HEADER_BYTES|LOG_LEVEL)|PG(HOST|PORT|USER|DATABASE|SSLMODE|SSLROOTCERT))$ ]]
}

# Every setting as the serving binary reads $ENV_FILE, passwords masked (root or tribist).
cmd_config_show() {
  [[ -r "$ENV_FILE" ]] || die "cannot read $ENV_FILE: is tribist installed here (make install)?"
  if ! as_tribist test -x "$API_DIR/server"; then
    echo "# $ENV_FILE (no binary is installed to read it: make install; passwords masked)"
    sed -E 's#^([[:space:]]*(export[[:space:]]+)?(DATABASE_URL|PGPASSWORD)[[:space:]]*=).*#\1(masked)#' "$ENV_FILE" | printable
    return 0
  fi
  echo "# $ENV_FILE as the installed binary reads it (server --print-config; passwords masked)"
  # With the socket's address, which is where the service listens (not the env file's concern).
  as_tribist env TRIBIST_LISTEN="$(listen_address)" "$API_DIR/server" --print-config "$ENV_FILE" ||
    die "'server --print-config' failed (above)"
  echo "# the address: $(listen_address) (tribist.socket; make install LISTEN=ADDR:PORT changes it)"
}

# config --set NAME=VALUE… --unset NAME… [--database-url-stdin] (root): writes the new
# environment file beside the current one, has the serving binary check it (every variable,
# and the database answering: server --check-config), runs the preflight with it, then puts it
# in place and restarts (a handover would keep the old environment); if the server is not
# healthy then, the previous file goes back and the service restarts again. The audit names
# what changed, never a value.
# make config with DATABASE_URL_FILE: the URL travels first, on its own connection's stdin,
# into a root-only file here, so that the change itself runs at a terminal (ssh -t), where
# Ctrl-C and a lost connection reach it and put the previous configuration back. Prints the
# stash's name; a stash never taken is removed by the next one after 10 minutes.
readonly STASH_RE='^url\.[A-Za-z0-9]{6,16}$'
cmd_config_stash() {
  local f
  need_root "config (DATABASE_URL_FILE=)"
  [[ -d "$STATE_DIR" && ! -L "$STATE_DIR" ]] || {
    warn "tribist was never installed here (no $STATE_DIR): make install, with DATABASE_URL_FILE=, writes the first configuration"
    exit "$EXIT_NOT_INSTALLED"
  }
  find "$STATE_DIR" -maxdepth 1 -type f -name 'url.*' -mmin +10 -delete 2>/dev/null || true
  f=$(umask 077 && mktemp "$STATE_DIR/url.XXXXXXXX")
  head -c 65537 >"$f"
  if (($(stat -c %s "$f") > 65536)); then
    rm -f "$f"
    die "the database URL is longer than 64 KiB; nothing changed"
  fi
  echo "${f##*/}"
}

# The URL in stash NAME, which is removed at once.
take_stash() {
  local name=$1 url
  [[ "$name" =~ $STASH_RE && -f "$STATE_DIR/$name" && ! -L "$STATE_DIR/$name" ]] ||
    usage_error "--database-url-stash: no stash '$(clean "$name" 40)' (make config sends it)"
  url=$(cat -- "$STATE_DIR/$name"; printf x)
  rm -f -- "$STATE_DIR/$name"
  printf '%s' "${url%x}"
}

cmd_config_change() {
  local sets=() unsets=() names=() url="" have_url="" new out arg name
  need_root "config (SET=, UNSET=, DATABASE_URL_FILE=)"
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --set)
        arg=${2:-}
        name=${arg%%=*}
        { [[ "$arg" == *=* ]] && config_name_ok "$name"; } ||
          usage_error "--set needs NAME=VALUE with NAME one of TRIBIST_WORKERS TRIBIST_DB_TIMEOUT TRIBIST_SHUTDOWN_TIMEOUT TRIBIST_KEEPALIVE_MAX TRIBIST_IDLE_TIMEOUT TRIBIST_MAX_HEADER_BYTES TRIBIST_LOG_LEVEL PGHOST PGPORT PGUSER PGDATABASE PGSSLMODE PGSSLROOTCERT, got '$(clean "$arg" 60)'"
        representable "${arg#*=}" || usage_error "the value of $name holds a control character or is not UTF-8"
        sets+=("$arg")
        names+=("$name")
        shift 2
        ;;
      --unset)
        config_name_ok "${2:-}" || usage_error "--unset needs a setting's name, got '$(clean "${2:-}" 60)'"
        unsets+=("$2")
        names+=("$2")
        shift 2
        ;;
      --database-url-stdin | --database-url-stash)
        if [[ "$1" == --database-url-stash ]]; then
          url=$(take_stash "${2:-}")
          shift
        else
          url=$(head -c 65536; printf x)
          url=${url%x}
        fi
        url=${url%$'\n'}
        [[ -n "$url" ]] || usage_error "--database-url-stdin: standard input is empty"
        representable "$url" || die "DATABASE_URL holds a control character or is not UTF-8: systemd cannot pass it on; nothing changed"
        have_url=1
        names+=(DATABASE_URL)
        shift
        ;;
      *) usage_error "config: unknown argument '$(clean "$1" 40)'" ;;
    esac
  done
  ((${#names[@]} > 0)) || usage_error "config: nothing to change"
  [[ ! -L "$ENV_FILE" ]] || die "$ENV_FILE is a symbolic link; replace it with a file (or make install) first"
  [[ -d "$CONF_DIR" && -f "$LOCK_FILE" ]] || {
    warn "tribist was never installed here (no $CONF_DIR): make install, with DATABASE_URL_FILE=, writes the first configuration"
    exit "$EXIT_NOT_INSTALLED"
  }
  lock config
  AUDIT_EXTRA="changed=$(IFS=,; echo "${names[*]}")"
  # The restart would promote it: a configuration change must not also change the binary.
  if [[ -e "$API_DIR/server_new" ]]; then
    audit refused-binary-staged
    die "$API_DIR/server_new is staged, and the restart would promote it: finish it first (systemctl restart $UNIT, or make upgrade) or remove it; nothing changed"
  fi
  env_candidate "$([[ -f "$ENV_FILE" ]] && echo "$ENV_FILE")"
  new=$CONFIG_NEW
  for name in "${names[@]}"; do
    sed -i -E "/^[[:space:]]*(export[[:space:]]+)?${name}[[:space:]]*=/d" "$new"
  done
  for arg in "${sets[@]}"; do env_line "${arg%%=*}" "${arg#*=}" >>"$new"; done
  if [[ -n "$have_url" ]]; then env_line DATABASE_URL "$url" >>"$new"; fi
  if [[ -f "$ENV_FILE" ]] && cmp -s "$new" "$ENV_FILE"; then
    rm -f "$new"
    audit unchanged
    say "nothing changes: $ENV_FILE already says so"
    return 0
  fi
  # A host whose first install never finished (no unit, or a binary that does not run): the
  # file is all there is to change; make install checks it with its preflight, then starts.
  if [[ ! -f "$UNIT_FILE" ]]; then
    FROM_RELEASE=none
    if [[ -f "$ENV_FILE" ]]; then cp -p "$ENV_FILE" "$CONF_DIR/env.prev"; fi
    mv -f "$new" "$ENV_FILE"
    CONFIG_NEW=""
    rm -f "$ENV_OK"
    audit saved-not-installed
    say "saved $ENV_FILE (${names[*]}); tribist is not installed here yet (no unit, or no binary that runs), so nothing checked or started it: make install runs it through a preflight with this configuration"
    return 0
  fi
  FROM_RELEASE=$(release_of server) || {
    audit refused-does-not-run
    die "the installed binary does not run ('server --version' failed), so nothing can check the new configuration; nothing changed (make upgrade ships one that runs)"
  }
  TO_RELEASE=$FROM_RELEASE
  say "checking the new configuration with the installed binary (server --check-config)"
  local rc=0
  # Root's verified copy of what runs (a host from before it: the installed file).
  local check_bin=$API_DIR/server
  [[ -f "$VERIFIED" && ! -L "$VERIFIED" ]] && check_bin=$VERIFIED
  out=$(as_tribist env TRIBIST_LISTEN="$(listen_address)" "$check_bin" --check-config "$new" 2>&1) || rc=$?
  if ((rc != 0)); then
    audit refused-check
    warn "refused: $(printf '%s' "$out" | head -c 600 | sed 's/^server: error: //'); nothing changed"
    # The binary's own exit codes (server --help): 2 a setting refused, 4 the database
    # refuses the configuration; anything else may pass by itself (the database is down).
    ((rc == 2 || rc == 4)) && exit "$EXIT_CONFIGURATION"
    exit 1
  fi
  say "    $out"
  rc=0
  preflight server "$FROM_RELEASE" "$new" || rc=$?
  if ((rc != 0)); then
    audit refused-preflight
    warn "refused: release $FROM_RELEASE does not serve with the new configuration (above); nothing changed"
    ((rc == EXIT_CONFIGURATION)) && exit "$EXIT_CONFIGURATION"
    exit 1
  fi
  cp -p "$ENV_FILE" "$CONF_DIR/env.prev"
  CONFIG_SWITCHING=1
  mv -f "$new" "$ENV_FILE"
  CONFIG_NEW=""
  say "applying (${names[*]}): restarting $UNIT, since a handover keeps the environment, and waiting up to ${WAIT}s"
  if restart_and_wait "$FROM_RELEASE"; then
    CONFIG_SWITCHING=""
    mark_env_served
    audit ok
    say "configuration changed (${names[*]}); the previous file is $CONF_DIR/env.prev"
    return 0
  fi
  warn "not healthy with the new configuration; putting the previous one back"
  cp -p "$CONF_DIR/env.prev" "$ENV_FILE"
  CONFIG_SWITCHING=""
  if restart_and_wait "$FROM_RELEASE"; then
    audit failed-restored
    die "the new configuration failed after the restart and was taken back: the previous one serves again"
  fi
  audit failed-restore-failed
  die "the new configuration failed AND the previous one does not serve either: $UNIT is down; see 'journalctl -u $UNIT'"
}

# --- start and stop -------------------------------------------------------------------------

# start|stop (make start|stop): the service and its socket together, under the deploy lock
# and audited like any change to what serves; start waits for /health.
cmd_service() {
  local verb=$1
  lock "$verb"
  need_installed
  FROM_RELEASE=$(release_of server || echo none)
  TO_RELEASE=$FROM_RELEASE
  if is_root; then
    systemctl "$verb" "$UNIT.socket" "$UNIT.service" 8<&- || { audit failed; die "'systemctl $verb $UNIT.socket $UNIT.service' failed (above)"; }
  else
    sudo -n systemctl "$verb" "$UNIT.socket" "$UNIT.service" 8<&- ||
      { audit failed; die "'sudo systemctl $verb $UNIT.socket $UNIT.service' failed (above); make install updates the sudoers drop-in"; }
  fi
  if [[ "$verb" == start ]]; then
    if ! wait_healthy ""; then
      audit failed
      die "started, but not healthy within ${WAIT}s (above)"
    fi
    audit ok
    say "started: $UNIT is healthy, release $(serving_release)"
  else
    audit ok
    say "stopped $UNIT and its socket: it stays down until make start HOST=${TARGET:-…} (or a deploy of other bytes)"
  fi
}

# --- reports ----------------------------------------------------------------------------------

# The host's state in one line, and its exit code: healthy on the installed release (0), not
# installed ($EXIT_NOT_INSTALLED), stopped ($EXIT_STOPPED), running but not healthy on its release ($EXIT_UNHEALTHY).
# A stopped service is not asked /health: with its socket listening, that would start it.
SUMMARY=""
summarise() {
  local state sock pid code body serving installed age listen why
  listen=$(listen_address)
  if [[ ! -f "$UNIT_FILE" ]]; then
    SUMMARY="not installed (no $UNIT_FILE; make install)"
    return "$EXIT_NOT_INSTALLED"
  fi
  installed=$(release_of server) || installed=none
  state=$(systemctl show -p ActiveState --value "$UNIT" 8<&- 2>/dev/null) || state=unknown
  sock=$(systemctl show -p ActiveState --value "$UNIT.socket" 8<&- 2>/dev/null) || sock=unknown
  # Stopped: inactive, or failed with nothing restarting it (Restart=always never gives up,
  # so a failed service was stopped, and that stop was not clean: a handed-over process,
  # not systemd's child, can end in SIGKILL).
  if [[ "$state" == inactive || ("$state" == failed && "$sock" != active) ]]; then
    SUMMARY="stopped release=$installed service=$state socket=${sock:-unknown} listen=$listen"
    return "$EXIT_STOPPED"
  fi
  if [[ "$state" != active && "$state" != reloading ]]; then
    # Starting, restarting after a crash (activating), stopping: not healthy.
    SUMMARY="unhealthy release=$installed service=${state:-unknown} listen=$listen: the service is ${state:-in an unknown state}"
    return "$EXIT_UNHEALTHY"
  fi
  pid=$(systemctl show -p MainPID --value "$UNIT" 8<&- 2>/dev/null) || pid=0
  age=$(ps -o etime= -p "$pid" 2>/dev/null | tr -d ' ') || age=""
  fetch_health
  code=$HEALTH_CODE
  body=$HEALTH_BODY
  serving=$(release_in <<<"$body" | head -c 64)
  if [[ "$code" == 200 && "$serving" == "$installed" ]]; then
    SUMMARY="healthy release=$installed health=200 up=${age:--} listen=$listen"
    return 0
  fi
  why=$(sed -n 's/.*"output":"\([^"]*\)".*/\1/p' <<<"$body" | head -n 1)
  [[ "$code" != 200 ]] || why="serving release ${serving:-unknown}, not the installed $installed"
  [[ "$code" != 000 ]] || why="/health does not answer on $listen"
  SUMMARY="unhealthy release=$installed health=$code up=${age:--} listen=$listen: $(clean "$why" 200)"
  return "$EXIT_UNHEALTHY"
}

# One line (summary's), then the details a person looks at next.
cmd_status() {
  local rc=0 props prev
  summarise || rc=$?
  echo "$SUMMARY"
  ((rc != EXIT_NOT_INSTALLED)) || return "$rc"
  props=$(systemctl show "$UNIT" -p ActiveState -p SubState -p MainPID -p NRestarts -p ExecMainStartTimestamp 8<&- 2>/dev/null) || props=""
  echo "  service: $(sed -n 's/^ActiveState=//p' <<<"$props") ($(sed -n 's/^SubState=//p' <<<"$props")), pid $(sed -n 's/^MainPID=//p' <<<"$props"), started $(sed -n 's/^ExecMainStartTimestamp=//p' <<<"$props" | sed 's/^$/-/'), restarts $(sed -n 's/^NRestarts=//p' <<<"$props")"
  echo "  socket: $(systemctl show -p ActiveState --value "$UNIT.socket" 8<&- 2>/dev/null), $(listen_address) (make install LISTEN=ADDR:PORT changes it)"
  prev=$(release_of server.prev) || prev="none (nothing to roll back to yet)"
  echo "  installed release: $(release_of server || echo none); previous: $prev"
  if ((rc != EXIT_STOPPED)); then
    # The answer summarise judged, not a second one that may differ from it.
    [[ -n "$HEALTH_FETCHED" ]] || fetch_health
    echo "  health: $(printf '%s (HTTP %s)' "$HEALTH_BODY" "$HEALTH_CODE" | printable | head -c 600)"
  fi
  return "$rc"
}

cmd_summary() {
  local rc=0
  summarise || rc=$?
  echo "$SUMMARY"
  return "$rc"
}

# logs LINES SINCE GREP ("-" for none): journalctl's own options, as root; as tribist only
# `systemctl status` is allowed.
cmd_logs() {
  local lines=${1:-100} since=${2:--} grep=${3:--}
  [[ "$lines" =~ ^[1-9][0-9]{0,5}$ ]] || usage_error "LINES must be a whole number from 1 to 999999, got '$(clean "$lines" 40)'"
  log_filters "$since" "$grep"
  if is_root; then
    # With a window or a pattern, the newest LINES of what matches (journalctl's own -n
    # would take them from the start of the window); bounded either way.
    if ((${#LOG_FILTERS[@]} > 0)); then
      journalctl -u "$UNIT" --no-pager "${LOG_FILTERS[@]}" | printable | tail -n "$lines"
    else
      journalctl -u "$UNIT" -n "$lines" --no-pager | printable
    fi
  else
    say "as $(id -un) only 'systemctl status' is allowed (its last lines); all $lines lines, SINCE and GREP need root"
    status_view
  fi
}

# journalctl options for SINCE and GREP, each checked (journalctl parses them itself; neither
# can become an option).
LOG_FILTERS=()
log_filters() {
  local since=$1 grep=$2
  LOG_FILTERS=()
  if [[ "$since" != - ]]; then
    [[ "$since" =~ ^[A-Za-z0-9\ :.+-]{1,40}$ && "$since" != -* ]] ||
      usage_error "SINCE must be a time journalctl understands (e.g. '1 hour ago', today, 2026-12-01 10:00), got '$(clean "$since" 60)'"
    LOG_FILTERS+=("--since=$since")
  fi
  if [[ "$grep" != - ]]; then
    [[ -n "$grep" && ${#grep} -le 200 && "$grep" != *[[:cntrl:]]* ]] || usage_error "GREP must be 1-200 printable characters"
    LOG_FILTERS+=("--grep=$grep")
  fi
}

# follow SINCE GREP [LINES]: the last LINES (default 20), then the log as it is written, until
# Ctrl-C (which ends it cleanly, exit 0).
cmd_follow() {
  local lines=${3:-20}
  need_root "logs with FOLLOW=1"
  [[ "$lines" =~ ^[1-9][0-9]{0,5}$ ]] || usage_error "LINES must be a whole number from 1 to 999999"
  log_filters "${1:--}" "${2:--}"
  # Ctrl-C (through ssh -t) or a lost session: journalctl and its filter end with this
  # process group, and following ends as it should, with status 0.
  trap 'trap "" INT TERM HUP PIPE; kill -TERM 0 2>/dev/null; exit 0' INT TERM HUP PIPE
  journalctl -u "$UNIT" -n "$lines" -f --no-pager "${LOG_FILTERS[@]}" | stdbuf -oL tr -cd "$PRINTABLE" &
  wait $! || true
}

# The last LINES records of root's own file (only root can write it) and, apart, the last
# LINES the journal holds from other users (tribist's deployments, marked with the uid the
# kernel gave the entry, which the sender cannot choose), merged by time, newest last. Root's
# records are in the journal too; those are not repeated. Each line's source follows its time,
# where the text of an entry can never be; and however much tribist sends, root's last LINES
# are shown.
cmd_audit() {
  local lines=${1:-50} others
  need_root audit
  [[ "$lines" =~ ^[1-9][0-9]{0,5}$ ]] || usage_error "LINES must be a whole number from 1 to 999999, got '$(clean "$lines" 40)'"
  others=$(journal_records | tail -n "$((lines + 1))")
  {
    if [[ -s "$AUDIT_LOG" ]]; then tail -n "$lines" "$AUDIT_LOG" | sed -E "s/^([^ ]+) /\1 [root's file] /"; fi
    printf '%s\n' "$others" | tail -n "$lines" | sed '/^$/d'
  } | printable | sort -s -k1,1
  if (($(printf '%s\n' "$others" | sed '/^$/d' | wc -l) > lines)); then
    echo "(older entries from the journal are not shown: LINES=$((lines * 10)) shows more)"
  fi
}

# Deployment records other users sent to the journal (tag tribist-deploy), oldest first, each
# led by the journal's own time and the sender's uid; a message's continuation lines dropped.
journal_records() {
  local uid name
  for uid in $(journalctl -t tribist-deploy -F _UID 2>/dev/null | sort -n); do
    [[ "$uid" =~ ^[0-9]+$ && "$uid" != 0 ]] || continue
    name=$(id -nu "$uid" 2>/dev/null | tr -cd 'A-Za-z0-9._-' | head -c 32)
    journalctl -t tribist-deploy "_UID=$uid" --utc -o short-iso --no-pager -q 2>/dev/null |
      sed -nE "s/^([0-9]{4}-[0-9][0-9]-[0-9][0-9]T[^ ]+) [^ ]+ [^ :]+: /\1 [journal: sent by ${name:-uid $uid}, _UID=$uid] /p"
  done | sort -s -k1,1
}

# The unit's pre-start step, as root outside the sandbox (`ExecStartPre=+`): promotes
# server_new (as tribist, through `tribist-host releases`) and records every start in root's
# audit file, whoever asked for it — tribist's own `sudo systemctl restart` included — with the
# SHA-256 of the binary about to run (computed as tribist, in the same call). tribist can flood
# the journal, never this.
cmd_on_start() {
  need_root on-start
  ACTION=service-start
  promote_and_digest
  prepare_verified
  commit_verified "$(now) host=$(hostname) action=service-start user=systemd promoted=$PROMOTED source=$SOURCE server_sha256=$DIGEST"
}

# For the unit's steps: promotes server_new (as tribist: api/ is tribist's). Sets PROMOTED
# (yes/no).
PROMOTED=no
DIGEST=unknown
SOURCE=api
promote_and_digest() {
  local out
  out=$(releases promote) || die "could not promote server_new: ${out:-see the lines above}"
  PROMOTED=no
  if [[ "$out" == *promoted* ]]; then
    PROMOTED=yes
    say "$out"
  fi
}

# Copies binary NAME of api/ into root's $VERIFIED_DIR as DEST and prints its SHA-256. Root
# never opens tribist's path: tribist reads the file (setpriv, as in as_tribist) into a pipe,
# and root writes what arrives into a file of its own, bounded, then hashes that file. So
# DEST is exactly the bytes root hashed, whatever tribist changes in api/ afterwards.
verify_copy() {
  local name=$1 dest=$2 tmp sum
  tmp=$(mktemp "$VERIFIED_DIR/.copy.XXXXXX") || return 1
  if ! timeout -k 5 120 setsid -w setpriv --reuid="$USER_NAME" --regid="$USER_NAME" --init-groups \
    --no-new-privs --inh-caps=-all --bounding-set=-all --reset-env -- cat -- "$API_DIR/$name" </dev/null 2>/dev/null 8<&- 9<&- |
    head -c "$MAX_BINARY" >"$tmp" || [[ ! -s "$tmp" ]] || (($(stat -c %s "$tmp") >= MAX_BINARY)); then
    rm -f "$tmp"
    warn "cannot copy $API_DIR/$name (as $USER_NAME): missing, unreadable, empty or larger than $MAX_BINARY bytes"
    return 1
  fi
  sum=$(sha256sum <"$tmp" | cut -c1-64)
  chmod 0755 "$tmp"
  mv -f "$tmp" "$dest"
  echo "$sum"
}

# The copy this start or reload installs as $VERIFIED: root's own deployment's copy when this
# step promoted its upload, else a fresh copy of api/server (tribist's own upgrade, the seed's
# `server_new` plus restart, or a plain restart). Leaves it as $VERIFIED_DIR/.start; sets
# DIGEST and SOURCE.
prepare_verified() {
  if [[ "$PROMOTED" == yes && -f "$VERIFIED_NEXT" && ! -L "$VERIFIED_NEXT" ]]; then
    mv -f "$VERIFIED_NEXT" "$VERIFIED_DIR/.start"
    SOURCE=deploy
    DIGEST=$(sha256sum <"$VERIFIED_DIR/.start" | cut -c1-64)
    return 0
  fi
  # An upload's copy whose promotion never came (an interrupted deployment) is not this one.
  rm -f "$VERIFIED_NEXT"
  SOURCE=api
  DIGEST=$(verify_copy server "$VERIFIED_DIR/.start") || die "no binary to start: $API_DIR/server could not be copied (above); make install HOST=… puts one there"
}

# Fail-closed: the audit record first, then the copy becomes what runs. If root cannot append
# the record, what runs does not change: the copy that served before starts again (said in
# the journal), or, with none, the start fails.
commit_verified() {
  local line=$1
  if { echo "$line" >>"$AUDIT_LOG"; } 2>/dev/null; then
    mv -f "$VERIFIED_DIR/.start" "$VERIFIED"
    return 0
  fi
  rm -f "$VERIFIED_DIR/.start"
  [[ -f "$VERIFIED" ]] || die "cannot append to $AUDIT_LOG (disk full?) and no binary was ever verified: not starting; free space in $STATE_DIR, then: systemctl restart $UNIT"
  warn "cannot append to $AUDIT_LOG (disk full?): starting the binary that served before ($VERIFIED), not the new one; free space in $STATE_DIR, then: systemctl restart $UNIT"
  return 0
}

# Stages upload NAME as server_new (as tribist) and, when root deploys, takes root's copy of it
# first ($VERIFIED_NEXT): the start or reload step that promotes it runs that copy, not
# whatever api/ holds by then.
stage_verified() {
  if is_root; then
    verify_copy "$1" "$VERIFIED_NEXT" >/dev/null || die "could not take root's copy of the upload (above); nothing changed"
  fi
  releases stage "$1"
}

# The unit's reload step (`ExecReload=+`), as root outside the sandbox: promotes server_new as
# on-start does, records the handover in root's audit file with the binary's SHA-256, asks the
# serving process (systemd's MAINPID) to hand over (SIGUSR2, sent by systemd, so from root:
# the server takes it from no one else) and waits until its successor is systemd's main
# process, or the server reports the attempt failed (it then goes on serving). So
# `systemctl reload tribist` returns once the new binary serves, and fails when it does not.
cmd_on_reload() {
  local main=${MAINPID:-} before props pid status cgroup owner end
  need_root on-reload
  ACTION=service-handover
  [[ "$main" =~ ^[1-9][0-9]*$ ]] || die "no MAINPID: this runs as $UNIT's reload step (systemctl reload $UNIT)"
  before=$(systemctl show -p StatusText --value "$UNIT" 8<&- 2>/dev/null) || before=""
  serving_hands_over "$before" ||
    die "the serving process (pid $main) cannot hand over (${HANDOVER_STATE:+handover=$HANDOVER_STATE; }it predates handovers, or is not serving yet): use 'systemctl restart $UNIT'"
  promote_and_digest
  prepare_verified
  # Fail-closed: no record, no handover (the serving process goes on serving).
  if ! { echo "$(now) host=$(hostname) action=service-handover user=systemd from_pid=$main promoted=$PROMOTED source=$SOURCE server_sha256=$DIGEST" >>"$AUDIT_LOG"; } 2>/dev/null; then
    rm -f "$VERIFIED_DIR/.start"
    die "cannot append to $AUDIT_LOG (disk full?): no handover; pid $main goes on serving. Free space in $STATE_DIR, then: systemctl reload $UNIT"
  fi
  mv -f "$VERIFIED_DIR/.start" "$VERIFIED"
  systemctl kill --kill-who=main --signal=SIGUSR2 "$UNIT" 8<&- || die "could not signal pid $main"
  # The server gives a successor 10 s; this waits a little longer, within TimeoutStartSec=.
  end=$((SECONDS + 14))
  while ((SECONDS < end)); do
    props=$(systemctl show -p MainPID -p StatusText "$UNIT" 8<&- 2>/dev/null) || props=""
    pid=$(sed -n 's/^MainPID=//p' <<<"$props")
    status=$(sed -n 's/^StatusText=//p' <<<"$props")
    if [[ "$pid" =~ ^[1-9][0-9]*$ && "$pid" != "$main" ]]; then
      # Only the serving process can name its successor (NotifyAccess=main); still, it must
      # be a process of this service running as tribist (never root's, such as this step's
      # own) before this says so. Its parent proves nothing: the old process may be gone.
      cgroup=$(cat "/proc/$pid/cgroup" 2>/dev/null) || cgroup=""
      owner=$(stat -c %U "/proc/$pid" 2>/dev/null) || owner=""
      if ! grep -Eq "^(0::|[0-9]+:name=systemd:)/(.*/)?$UNIT\.service\$" <<<"$cgroup" || [[ "$owner" != "$SERVICE_USER" ]]; then
        handover_audit "from_pid=$main to_pid=$pid result=suspicious owner=${owner:-gone}"
        die "systemd's main process is now pid $pid, which is not a process of $UNIT running as $SERVICE_USER (owner ${owner:-gone}, cgroup $(clean "${cgroup:-gone}" 100)); check 'systemctl status $UNIT'"
      fi
      handover_audit "from_pid=$main to_pid=$pid result=ok"
      say "handed over: pid $pid serves; pid $main drains"
      return 0
    fi
    if handover_failed "$status" "$before"; then
      handover_audit "from_pid=$main result=failed"
      # The reason, in the server's words after the tokens.
      status=${status#handover=*; }
      [[ "$status" != *"handover attempt"* ]] || status="handover attempt${status##*handover attempt}"
      die "$(clean "$status" 400); pid $main goes on serving"
    fi
    if [[ "$pid" != "$main" ]]; then
      handover_audit "from_pid=$main result=failed"
      die "pid $main ended during the handover; systemd restarts $UNIT"
    fi
    sleep 0.05
  done
  handover_audit "from_pid=$main result=timeout"
  die "no handover within 14 s; pid $main goes on serving"
}

# One line of root's audit file for on-reload.
handover_audit() {
  { echo "$(now) host=$(hostname) action=service-handover user=systemd $1" >>"$AUDIT_LOG"; } 2>/dev/null ||
    warn "cannot append to $AUDIT_LOG"
}

cmd_uninstall() {
  local purge=${1:-}
  need_root uninstall
  [[ -f "$LOCK_FILE" ]] && lock uninstall
  FROM_RELEASE=$(release_of server 2>/dev/null || echo none)
  systemctl disable --now --quiet "$UNIT.socket" "$UNIT.service" 2>/dev/null || true
  rm -f "$UNIT_FILE" "$SOCKET_FILE" "$SUDOERS_FILE"
  [[ -n "$ACTION" ]] && audit ok
  systemctl daemon-reload
  systemctl reset-failed "$UNIT" 2>/dev/null || true
  if [[ "$purge" == --purge ]]; then
    if id "$USER_NAME" >/dev/null 2>&1; then
      # No tribist process may be left to race the removal of its files: no new login
      # (account expired, keys gone), then every process of the user killed.
      usermod --expiredate 1 "$USER_NAME" 2>/dev/null || true
      rm -f "$SSH_DIR/authorized_keys"
      local _
      for _ in $(seq 50); do
        pkill -KILL -u "$USER_NAME" 2>/dev/null || break
        sleep 0.1
      done
      if pgrep -u "$USER_NAME" >/dev/null; then
        die "processes of user $USER_NAME survive being killed; nothing of theirs was removed; try again: make uninstall PURGE=1"
      fi
      userdel -r "$USER_NAME" 2>/dev/null || true
      id "$USER_NAME" >/dev/null 2>&1 && die "userdel $USER_NAME failed; remove the user by hand (userdel -r $USER_NAME)"
    fi
    rm -rf --one-file-system "$HOME_DIR" "$CONF_DIR" "$STATE_DIR"
    # The service's user owns nothing left (its runtime directory went with the service).
    if id "$SERVICE_USER" >/dev/null 2>&1; then
      userdel "$SERVICE_USER" 2>/dev/null || warn "userdel $SERVICE_USER failed; remove the user by hand (userdel $SERVICE_USER)"
    fi
    # The address (install LISTEN=) is configuration too: a later install starts from the default.
    local dropin
    for dropin in "$SOCKET_DROPIN" "$SERVICE_DROPIN"; do
      rm -f "$dropin"
      rmdir "${dropin%/*}" 2>/dev/null || true
    done
    systemctl daemon-reload
    say "removed the service, its configuration and address, $STATE_DIR, users $USER_NAME and $SERVICE_USER and $HOME_DIR"
  else
    say "removed the service; kept $ENV_FILE, the address ($(wanted_listen)), $HOME_DIR and $AUDIT_LOG (uninstall --purge removes them)"
  fi
}

# The commands the host program (tribist-host, beside this script) runs now, with the very
# same arguments: issue 18 moves them out of bash one by one.
readonly PORTED=(install uninstall config config-stash status summary serving releases logs follow audit unlock receive upgrade rollback start stop on-start on-reload)

main() {
  cd /
  local all=("$@")
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --by)
        [[ $# -ge 2 ]] || usage_error "--by needs a value"
        [[ "$2" != *[[:cntrl:]]* && ${#2} -le 100 && -n "$2" ]] ||
          usage_error "--by must be 1-100 printable characters (no newline or control character)"
        BY=$2
        shift 2
        ;;
      --preflight)
        [[ "${2:-}" =~ ^(0|[1-9][0-9]{0,2})$ ]] || usage_error "--preflight needs a whole number of seconds, 0 (skip) to 999"
        PREFLIGHT=$2
        shift 2
        ;;
      --keep)
        [[ "${2:-}" =~ ^[1-9][0-9]?$ ]] || usage_error "--keep needs a number of releases, 1 to 99"
        KEEP=$2
        shift 2
        ;;
      --target)
        [[ "${2:-}" =~ ^[]A-Za-z0-9_.@:%[-]{1,255}$ && "${2:-}" != -* ]] || usage_error "--target needs an ssh destination"
        TARGET=$2
        shift 2
        ;;
      --url-file)
        [[ "${2:-}" =~ ^[[:print:]]{1,300}$ && "${2:-}" != *[![:ascii:]]* ]] || usage_error "--url-file needs a file name (printable ASCII)"
        URL_FILE=$2
        shift 2
        ;;
      --listen)
        valid_listen "${2:-}" || usage_error "--listen needs IPv4:PORT or [IPv6]:PORT (port 1-65535), got '$(clean "${2:-}" 60)'"
        LISTEN=$2
        shift 2
        ;;
      *) break ;;
    esac
  done
  local cmd=${1:-}
  if ((${#PORTED[@]} > 0)) && [[ " ${PORTED[*]} " == *" $cmd "* ]]; then
    exec "${BASH_SOURCE[0]%/*}/tribist-host" "${all[@]}"
  fi
  [[ $# -gt 0 ]] && shift
  case "$cmd $#" in
    "-h "* | "--help "*) usage ;;
    "install 1") cmd_install "$1" ;;
    "receive 1") cmd_receive "$1" ;;
    "upgrade 1") cmd_upgrade "$1" ;;
    "rollback 0") cmd_rollback ;;
    "rollback 2")
      [[ "$1" == --to ]] || usage_error "rollback takes only --to PREFIX"
      cmd_rollback_to "$2"
      ;;
    "releases 0") releases list ;;
    "unlock 0") cmd_unlock ;;
    "start 0") cmd_service start ;;
    "stop 0") cmd_service stop ;;
    "status 0") cmd_status ;;
    "serving 0") serving_release ;;
    "summary 0") cmd_summary ;;
    "logs 0") cmd_logs ;;
    "logs 1") cmd_logs "$1" ;;
    "logs 3") cmd_logs "$1" "$2" "$3" ;;
    "follow 2") cmd_follow "$1" "$2" ;;
    "follow 3") cmd_follow "$1" "$2" "$3" ;;
    "audit 0") cmd_audit ;;
    "audit 1") cmd_audit "$1" ;;
    "on-start 0") cmd_on_start ;;
    "on-reload 0") cmd_on_reload ;;
    "config 0") cmd_config_show ;;
    "config-stash 0") cmd_config_stash ;;
    "config "*) cmd_config_change "$@" ;;
    "uninstall 0") cmd_uninstall ;;
    "uninstall 1")
      [[ "$1" == --purge ]] || usage_error "uninstall takes only --purge"
      cmd_uninstall --purge
      ;;
    *) usage_error "unknown command or wrong arguments: '$(clean "$cmd" 40)'" ;;
  esac
}

main "$@"

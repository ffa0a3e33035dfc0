#!/usr/bin/env bash
# Host side of `make install`, `make upgrade`, `make rollback`, `make status` and
# `make uninstall`: everything that must happen on the server, in one place, run over ssh.
#
# Installed as /home/tribist/bin/deploy.sh (root-owned). `install` and `uninstall` need root;
# `upgrade`, `rollback` and `status` also work as user tribist, through the sudoers drop-in.
set -euo pipefail

readonly PROG=deploy.sh
readonly UNIT=tribist
readonly USER_NAME=tribist
readonly HOME_DIR=/home/tribist
readonly API_DIR=$HOME_DIR/api
readonly BIN_DIR=$HOME_DIR/bin
readonly CONF_DIR=/etc/tribist
readonly ENV_FILE=$CONF_DIR/env
readonly UNIT_FILE=/etc/systemd/system/$UNIT.service
readonly SOCKET_FILE=/etc/systemd/system/$UNIT.socket
readonly SUDOERS_FILE=/etc/sudoers.d/$UNIT
readonly LOCK_FILE=$API_DIR/.deploy.lock
readonly AUDIT_LOG=$HOME_DIR/deploy-audit.log
readonly EXIT_LOCKED=3
WAIT=${TRIBIST_WAIT:-30}
BY=unknown
ACTION=""
# What an interrupt must undo: set while a new binary is being switched in.
SWITCHING=""
FROM_RELEASE=""
TO_RELEASE=""

usage() {
  cat <<USAGE
usage: $PROG [--by WHO] COMMAND
       $PROG install BUNDLE_DIR          (root) install or update everything from BUNDLE_DIR
       $PROG upgrade FILE SHA256         verify FILE (uploaded to $API_DIR), make it
                                         server_new, restart, wait; roll back on failure
       $PROG rollback                    put server.prev back, restart, wait
       $PROG status                      unit state, pid, release and /health
       $PROG uninstall [--purge]         (root) stop and remove the service; --purge also
                                         removes $CONF_DIR and user $USER_NAME with its home
       $PROG unlock                      break the deploy lock on purpose (stops its holder)
       $PROG --help

install, upgrade, rollback and uninstall take the host's deploy lock ($LOCK_FILE): a second
one is refused, naming the holder and since when; the lock goes with its holder's process,
whether it succeeds, fails or is interrupted (Ctrl-C rolls back a half-done upgrade). Each
of them appends one line to $AUDIT_LOG and to the journal (tag tribist-deploy):
time, who (--by, and the ssh user and address), from which release to which, result.

TRIBIST_WAIT sets how long to wait for /health (default 30 s).
Exit codes: 0 done, 1 failed (the message says why and what state the host is in), 2 misuse,
$EXIT_LOCKED another deployment holds the lock.
USAGE
}

say() { echo "$PROG: $*"; }
warn() { echo "$PROG: $*" >&2; }
die() {
  warn "$*"
  exit 1
}

is_root() { [[ $(id -u) -eq 0 ]]; }

# Who runs this: --by from the developer's machine, the ssh account and its address.
who() {
  local from=${SSH_CLIENT%% *}
  echo "${BY} as $(id -un)@${from:-local}"
}

# One line per install, upgrade, rollback: to the audit file and to the journal.
audit() {
  local result=$1 line
  line="$(date -u +%Y-%m-%dT%H:%M:%SZ) host=$(hostname) action=$ACTION by=\"$(who)\" from=${FROM_RELEASE:-none} to=${TO_RELEASE:-none} result=$result"
  if [[ -d "$HOME_DIR" ]]; then
    { echo "$line" >>"$AUDIT_LOG"; } 2>/dev/null || warn "cannot append to $AUDIT_LOG"
  fi
  logger -t tribist-deploy -- "$line" 2>/dev/null || true
}

# Takes the host's deploy lock for ACTION, or exits $EXIT_LOCKED naming the holder.
lock() {
  ACTION=$1
  [[ -d "$API_DIR" ]] || die "$API_DIR does not exist: is tribist installed? (make install)"
  if [[ ! -e "$LOCK_FILE" ]]; then
    (umask 007 && : >>"$LOCK_FILE")
    is_root && chown "$USER_NAME:$USER_NAME" "$LOCK_FILE"
  fi
  exec 8<>"$LOCK_FILE" || die "cannot open the deploy lock $LOCK_FILE"
  if ! flock -n 8; then
    local holder
    holder=$(head -n 1 "$LOCK_FILE" 2>/dev/null)
    warn "refused: another deployment holds the lock on $(hostname): ${holder:-unknown holder}"
    warn "wait for it to finish, or if it is stuck break the lock on purpose: make unlock HOST=…"
    exit "$EXIT_LOCKED"
  fi
  # Holder line, for whoever is refused; the lock itself goes with this process.
  printf '%s (pid %s) since %s\n' "$ACTION by $(who)" "$$" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$LOCK_FILE"
  trap on_interrupt INT TERM HUP
  trap unlock_on_exit EXIT
}

unlock_on_exit() {
  : >"$LOCK_FILE" 2>/dev/null || true
}

# Ctrl-C (SIGINT through ssh -t), SIGTERM or a lost session: never leave a half-switched
# binary behind. The lock is released when this process exits.
on_interrupt() {
  trap '' INT TERM HUP
  warn "interrupted"
  if [[ -n "$SWITCHING" ]]; then
    warn "the upgrade to ${TO_RELEASE:-?} was interrupted; restoring ${FROM_RELEASE:-the previous release}"
    if roll_back "$FROM_RELEASE"; then
      audit "interrupted-rolled-back"
    else
      audit "interrupted-rollback-failed"
    fi
  else
    audit "interrupted"
  fi
  exit 130
}

cmd_unlock() {
  local holder pid
  [[ -e "$LOCK_FILE" ]] || { say "no deploy lock on this host"; return 0; }
  holder=$(head -n 1 "$LOCK_FILE" 2>/dev/null)
  if flock -n "$LOCK_FILE" true; then
    say "the deploy lock is free${holder:+ (stale note: $holder)}"
    : >"$LOCK_FILE"
    return 0
  fi
  pid=$(sed -n 's/.*(pid \([0-9]*\)).*/\1/p' <<<"$holder")
  [[ -n "$pid" ]] || die "the lock is held but its holder is unknown; find it with: fuser $LOCK_FILE"
  warn "breaking the deploy lock held by: $holder"
  kill -TERM "$pid" 2>/dev/null || die "cannot signal pid $pid (try as root)"
  local deadline=$((SECONDS + 40))
  until flock -n "$LOCK_FILE" true; do
    ((SECONDS < deadline)) || die "pid $pid still holds the lock after 40 s"
    sleep 0.2
  done
  say "lock released (its holder rolled back what it had started)"
}

need_root() { is_root || die "'$1' must run as root (or through sudo)"; }

# systemctl VERB tribist: directly as root, else through the sudoers drop-in. In the
# background, so that an interrupt's trap runs at once rather than after a start that may
# take TimeoutStartSec (a later restart replaces a start job left pending).
sctl() {
  if is_root; then
    systemctl "$1" "$UNIT" &
  else
    sudo -n systemctl "$1" "$UNIT" &
  fi
  wait $!
}

# The /health URL, following TRIBIST_LISTEN in the environment file when it is readable.
health_url() {
  local listen=""
  if [[ -r "$ENV_FILE" ]]; then
    listen=$(sed -n 's/^[[:space:]]*TRIBIST_LISTEN=//p' "$ENV_FILE" | tail -n 1 | tr -d "\"' ")
  fi
  listen=${listen:-127.0.0.1:8383}
  listen=${listen/0.0.0.0/127.0.0.1}
  listen=${listen/\[::\]/[::1]}
  echo "http://$listen/health"
}

# The commit a binary reports with --version (run as the service user).
release_of() {
  local bin=$1 out
  if is_root; then
    out=$(timeout 10 runuser -u "$USER_NAME" -- "$bin" --version 2>&1) || return 1
  else
    out=$(timeout 10 "$bin" --version 2>&1) || return 1
  fi
  out=${out##*commit }
  echo "${out%)*}"
}

# The releaseId /health reports now, or nothing.
serving_release() {
  curl -sS --max-time 5 "$(health_url)" 2>/dev/null |
    sed -n 's/.*"releaseId":"\([^"]*\)".*/\1/p'
}

# Last lines of the service's log: the whole journal as root, `systemctl status` otherwise.
# A server that just died may still have its last words in flight to journald: let it settle.
recent_log() {
  sleep 1
  if is_root; then
    journalctl -u "$UNIT" -n 25 --no-pager 2>&1 || true
  else
    sudo -n systemctl status "$UNIT" 2>&1 || true
  fi
}

# Restarts through systemd (which promotes server_new) and waits for a healthy server that
# reports release $1 (any release when empty). On failure prints why and returns 1.
restart_and_wait() {
  local want=$1 got rc=0
  sctl restart || {
    warn "'systemctl restart $UNIT' failed: the server did not start or did not report ready; its last log lines:"
    recent_log | sed 's/^/    /' >&2
    return 1
  }
  # In the background, so a signal's trap runs at once instead of after the wait.
  "$BIN_DIR/wait_for_it.sh" -q -t "$WAIT" "$(health_url)" &
  wait $! || rc=$?
  if ((rc != 0)); then
    "$BIN_DIR/wait_for_it.sh" -t 0 "$(health_url)" 2>&1 | sed -n 's/^wait_for_it.sh: last/health, last/p' >&2 || true
    warn "the server did not become healthy within ${WAIT}s; its last log lines:"
    recent_log | sed 's/^/    /' >&2
    return 1
  fi
  if [[ -n "$want" ]]; then
    got=$(serving_release)
    if [[ "$got" != "$want" ]]; then
      warn "healthy, but serving release '${got:-unknown}' instead of '$want'"
      return 1
    fi
  fi
}

cmd_install() {
  local bundle=$1
  need_root install
  [[ -d /run/systemd/system ]] || die "systemd is not running on this host; tribist needs it"
  for f in server tribist.service tribist.socket tribist.sudoers tribist.env.example server.sh wait_for_it.sh deploy.sh; do
    [[ -f "$bundle/$f" ]] || die "the upload is incomplete: $bundle/$f is missing; run make install again"
  done
  command -v curl >/dev/null || die "curl is missing on this host: apt-get install curl"
  command -v sudo >/dev/null || die "sudo is missing on this host: apt-get install sudo"

  if ! id "$USER_NAME" >/dev/null 2>&1; then
    useradd --system --user-group --home-dir "$HOME_DIR" --create-home --shell /bin/bash "$USER_NAME"
    say "created user $USER_NAME"
  fi
  # No password, but not locked either: key-only ssh logins (DEPLOY_KEY) must work.
  usermod -p '*' "$USER_NAME"
  install -d -o "$USER_NAME" -g "$USER_NAME" -m 0750 "$HOME_DIR" "$API_DIR"
  install -d -o root -g root -m 0755 "$BIN_DIR"
  install -d -o root -g "$USER_NAME" -m 0750 "$CONF_DIR"
  lock install
  FROM_RELEASE=$(release_of "$API_DIR/server" 2>/dev/null || echo none)
  install -o "$USER_NAME" -g "$USER_NAME" -m 0750 "$bundle/server" "$API_DIR/.server_new.tmp"
  TO_RELEASE=$(release_of "$API_DIR/.server_new.tmp" 2>/dev/null) || {
    rm -f "$API_DIR/.server_new.tmp"
    audit refused-does-not-run
    die "the binary to install does not run on this host ('server --version' failed); nothing installed"
  }
  [[ -e "$AUDIT_LOG" ]] || install -o "$USER_NAME" -g "$USER_NAME" -m 0640 /dev/null "$AUDIT_LOG"
  for f in server.sh wait_for_it.sh deploy.sh; do
    install -o root -g root -m 0755 "$bundle/$f" "$BIN_DIR/.$f.tmp"
    mv -f "$BIN_DIR/.$f.tmp" "$BIN_DIR/$f"
  done
  install -o root -g root -m 0644 "$bundle/tribist.env.example" "$CONF_DIR/env.example"

  if [[ -e "$ENV_FILE" ]]; then
    say "keeping the existing $ENV_FILE"
  elif [[ -f "$bundle/env" ]]; then
    install -o root -g "$USER_NAME" -m 0640 "$bundle/env" "$ENV_FILE"
    say "wrote $ENV_FILE from DATABASE_URL"
  else
    install -o root -g "$USER_NAME" -m 0640 "$bundle/tribist.env.example" "$ENV_FILE"
    warn "no DATABASE_URL given: wrote the example $ENV_FILE; edit it, then: systemctl restart $UNIT"
  fi
  # Whatever was there before, the secret is readable by root and the service only.
  chown root:"$USER_NAME" "$ENV_FILE"
  chmod 0640 "$ENV_FILE"

  visudo -c -q -f "$bundle/tribist.sudoers" || die "the sudoers drop-in does not parse; nothing installed for sudo"
  install -o root -g root -m 0440 "$bundle/tribist.sudoers" "$SUDOERS_FILE"

  if [[ -f "$bundle/deploy_key.pub" ]]; then
    install -d -o "$USER_NAME" -g "$USER_NAME" -m 0700 "$HOME_DIR/.ssh"
    touch "$HOME_DIR/.ssh/authorized_keys"
    grep -qxF "$(cat "$bundle/deploy_key.pub")" "$HOME_DIR/.ssh/authorized_keys" ||
      cat "$bundle/deploy_key.pub" >>"$HOME_DIR/.ssh/authorized_keys"
    chown "$USER_NAME:$USER_NAME" "$HOME_DIR/.ssh/authorized_keys"
    chmod 0600 "$HOME_DIR/.ssh/authorized_keys"
    say "authorised the deploy key for $USER_NAME"
  fi

  # The binary becomes server_new; the restart below promotes it (first install included).
  mv -f "$API_DIR/.server_new.tmp" "$API_DIR/server_new"

  install -o root -g root -m 0644 "$bundle/tribist.service" "$UNIT_FILE"
  install -o root -g root -m 0644 "$bundle/tribist.socket" "$SOCKET_FILE"
  systemctl daemon-reload
  systemctl enable --quiet "$UNIT.socket" "$UNIT.service"
  if ! systemctl is-active --quiet "$UNIT.socket"; then
    # A server that bound the port itself must let go of it before the socket takes it.
    systemctl stop "$UNIT.service"
    systemctl start "$UNIT.socket" || die "cannot start $UNIT.socket (is port 8383 taken?); see: journalctl -u $UNIT.socket"
  fi
  say "starting $UNIT and waiting up to ${WAIT}s for $(health_url)"
  SWITCHING=""
  if ! restart_and_wait "$TO_RELEASE"; then
    audit failed
    die "installed, but $UNIT is not healthy (see above); fix $ENV_FILE or the database, then: systemctl restart $UNIT"
  fi
  audit ok
  say "installed: $UNIT is healthy, release $(serving_release)"
}

cmd_upgrade() {
  local upload=$1 sum=$2 new old
  lock upgrade
  [[ "$upload" == */* ]] || upload="$API_DIR/$upload"
  [[ "$(dirname "$upload")" == "$API_DIR" && -f "$upload" ]] || die "no uploaded file $upload"
  FROM_RELEASE=$(release_of "$API_DIR/server" 2>/dev/null || echo none)
  if [[ "$(sha256sum "$upload" | cut -d' ' -f1)" != "$sum" ]]; then
    rm -f "$upload"
    audit refused-checksum
    die "checksum mismatch: the upload is damaged or incomplete; nothing changed, run make upgrade again"
  fi
  is_root && chown "$USER_NAME:$USER_NAME" "$upload"
  chmod 0750 "$upload"
  if ! new=$(release_of "$upload"); then
    rm -f "$upload"
    audit refused-does-not-run
    die "the new binary does not run on this host ('server --version' failed); nothing changed"
  fi
  old=$FROM_RELEASE
  TO_RELEASE=$new
  # The promotion turns server.prev into the current binary; keep the one before, so that a
  # failed upgrade puts everything back as it was.
  rm -f "$API_DIR/.server.prev.keep"
  [[ -e "$API_DIR/server.prev" ]] && ln -f "$API_DIR/server.prev" "$API_DIR/.server.prev.keep"
  SWITCHING=1
  # rename(2) in the same directory: a partial upload can never become server_new.
  mv -f "$upload" "$API_DIR/server_new"
  say "upgrading $old -> $new: restarting $UNIT and waiting up to ${WAIT}s"
  if restart_and_wait "$new"; then
    SWITCHING=""
    rm -f "$API_DIR/.server.prev.keep"
    audit ok
    say "upgraded: release $new is serving"
    return 0
  fi
  warn "upgrade to $new failed; rolling back to $old"
  if roll_back "$old"; then
    SWITCHING=""
    audit failed-rolled-back
    die "upgrade to $new failed and was rolled back: release $old is serving again"
  fi
  SWITCHING=""
  audit failed-rollback-failed
  die "upgrade to $new failed AND the rollback to $old failed: $UNIT is down; see 'journalctl -u $UNIT'"
}

# Puts server.prev back as server (atomically) and restarts; keeps the failed binary.
roll_back() {
  local want=$1 api=$API_DIR
  rm -f "$api/server_new"
  if [[ -n "$want" && "$(release_of "$api/server" 2>/dev/null)" == "$want" ]]; then
    # Interrupted before the promotion: the previous binary is still in place.
    restart_and_wait "$want"
    return
  fi
  [[ -e "$api/server.prev" ]] || {
    warn "there is no server.prev to roll back to"
    return 1
  }
  # Each step is a rename or a hard link: `server` exists at every instant.
  ln -f "$api/server" "$api/.server.rolled-back"
  mv -f "$api/server.prev" "$api/server"
  if [[ -n "$SWITCHING" ]]; then
    # Undoing an upgrade: the release before it becomes the rollback target again, as if
    # the upgrade never happened; the failed binary is kept as server.failed for a post-mortem.
    if [[ -e "$api/.server.prev.keep" ]]; then
      mv -f "$api/.server.prev.keep" "$api/server.prev"
    fi
    mv -f "$api/.server.rolled-back" "$api/server.failed"
  else
    # A manual rollback: the two releases swap, so a second rollback undoes the first.
    mv -f "$api/.server.rolled-back" "$api/server.prev"
  fi
  restart_and_wait "$want"
}

cmd_rollback() {
  local prev
  lock rollback
  FROM_RELEASE=$(release_of "$API_DIR/server" 2>/dev/null || echo none)
  [[ -e "$API_DIR/server.prev" ]] || {
    audit refused-no-previous
    die "there is no $API_DIR/server.prev to roll back to (already rolled back?)"
  }
  prev=$(release_of "$API_DIR/server.prev") || die "server.prev does not run ('--version' failed); not rolling back"
  TO_RELEASE=$prev
  say "rolling back to $prev"
  if ! roll_back "$prev"; then
    audit failed
    die "rollback to $prev failed: see the log lines above"
  fi
  audit ok
  say "rolled back: release $prev is serving"
}

cmd_status() {
  local rc=0
  systemctl show "$UNIT" -p ActiveState -p SubState -p MainPID -p NRestarts -p ExecMainStartTimestamp || true
  if [[ -r "$API_DIR/PID" ]]; then echo "PID file: $(cat "$API_DIR/PID")"; fi
  echo "installed release: $(release_of "$API_DIR/server" 2>/dev/null || echo unknown)"
  [[ -e "$API_DIR/server.prev" ]] && echo "rollback target: $(release_of "$API_DIR/server.prev" 2>/dev/null || echo unknown)"
  echo "health: $(curl -sS --max-time 5 -w ' (HTTP %{http_code})' "$(health_url)" 2>&1)" || rc=1
  return "$rc"
}

cmd_uninstall() {
  local purge=${1:-}
  need_root uninstall
  [[ -d "$API_DIR" ]] && lock uninstall
  FROM_RELEASE=$(release_of "$API_DIR/server" 2>/dev/null || echo none)
  systemctl disable --now --quiet "$UNIT.socket" "$UNIT.service" 2>/dev/null || true
  rm -f "$UNIT_FILE" "$SOCKET_FILE" "$SUDOERS_FILE"
  [[ -n "$ACTION" ]] && audit ok
  systemctl daemon-reload
  systemctl reset-failed "$UNIT" 2>/dev/null || true
  if [[ "$purge" == --purge ]]; then
    rm -rf "$CONF_DIR"
    userdel -r "$USER_NAME" 2>/dev/null || rm -rf "$HOME_DIR"
    say "removed the service, its configuration, user $USER_NAME and $HOME_DIR"
  else
    say "removed the service; kept $ENV_FILE and $HOME_DIR (uninstall --purge removes them)"
  fi
}

main() {
  if [[ "${1:-}" == --by ]]; then
    [[ $# -ge 2 ]] || { usage >&2; exit 2; }
    BY=$2
    shift 2
  fi
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    -h | --help) usage ;;
    install) [[ $# -eq 1 ]] || { usage >&2; exit 2; }; cmd_install "$1" ;;
    upgrade) [[ $# -eq 2 ]] || { usage >&2; exit 2; }; cmd_upgrade "$1" "$2" ;;
    rollback) [[ $# -eq 0 ]] || { usage >&2; exit 2; }; cmd_rollback ;;
    unlock) [[ $# -eq 0 ]] || { usage >&2; exit 2; }; cmd_unlock ;;
    status) [[ $# -eq 0 ]] || { usage >&2; exit 2; }; cmd_status ;;
    uninstall)
      [[ $# -eq 0 || "$*" == --purge ]] || { usage >&2; exit 2; }
      cmd_uninstall "${1:-}"
      ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"

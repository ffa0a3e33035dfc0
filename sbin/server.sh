#!/usr/bin/env bash
# Starts, stops and restarts the tribist service, promoting a newly uploaded binary first.
#
# Installed as /home/tribist/bin/server.sh. `start` and `restart` move
# /home/tribist/api/server_new over /home/tribist/api/server (the replaced binary is kept as
# server.prev), then ask systemd. The unit runs `server.sh promote` before every start too, so
# a plain `systemctl restart tribist` promotes as well.
set -euo pipefail

readonly PROG=server.sh
readonly UNIT=tribist
readonly API_DIR=${TRIBIST_API_DIR:-/home/tribist/api}

usage() {
  cat <<USAGE
usage: $PROG start|stop|restart|status|promote

  start    promote $API_DIR/server_new if present, then systemctl start $UNIT
  restart  promote $API_DIR/server_new if present, then systemctl restart $UNIT
  stop     systemctl stop $UNIT
  status   systemctl status $UNIT
  promote  only the move: server -> server.prev, server_new -> server (each step atomic)

Runs systemctl through sudo unless root. Exit codes: 0 done, 1 the step failed (the message
says which), 2 misuse.
USAGE
}

die() {
  echo "$PROG: $*" >&2
  exit 1
}

# systemctl VERB tribist, through sudo unless root. Returns systemctl's exit code.
systemctl_() {
  local verb=$1
  if [[ $(id -u) -eq 0 ]]; then
    systemctl "$verb" "$UNIT"
  else
    sudo -n systemctl "$verb" "$UNIT"
  fi
}

# Runs a state-changing verb; on failure says what to look at.
change() {
  local verb=$1 rc=0
  systemctl_ "$verb" || rc=$?
  ((rc == 0)) && return 0
  die "'systemctl $verb $UNIT' failed (exit $rc); see 'journalctl -u $UNIT -n 50'" \
    "$([[ $(id -u) -ne 0 ]] && echo "(as $(id -un): is /etc/sudoers.d/tribist installed?)")"
}

promote() {
  local new="$API_DIR/server_new" cur="$API_DIR/server" prev="$API_DIR/server.prev" had_prev=""
  [[ -e "$new" ]] || return 0
  [[ -f "$new" && -x "$new" ]] || die "$new is not an executable file; fix or remove it"
  if [[ -e "$cur" ]]; then
    # A hard link keeps the running binary as server.prev while `server` stays in place.
    ln -f "$cur" "$prev" || die "cannot keep $cur as $prev"
    had_prev=1
  fi
  # rename(2): `server` is the old or the new binary at every instant, never missing.
  mv -f "$new" "$cur" || die "cannot move $new to $cur"
  echo "$PROG: promoted server_new to server${had_prev:+ (previous binary kept as server.prev)}"
}

main() {
  [[ $# -eq 1 ]] || { usage >&2; exit 2; }
  case "$1" in
    -h | --help) usage ;;
    start) promote; change start ;;
    restart) promote; change restart ;;
    stop) change stop ;;
    status) systemctl_ status ;; # exit code as systemctl's: 3 when not running
    promote) promote ;;
    *) echo "$PROG: unknown command '$1'" >&2; usage >&2; exit 2 ;;
  esac
}

main "$@"

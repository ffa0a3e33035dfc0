#!/usr/bin/env bash
# Starts, stops and restarts the tribist service; every start promotes a newly uploaded binary.
#
# Installed as /home/tribist/bin/server.sh (root-owned). The unit runs
# `tribist-host releases promote` (as user tribist) before every start: it moves
# /home/tribist/api/server_new over /home/tribist/api/server and keeps the replaced binary as
# server.prev. So tribist can `scp` a binary to api/server_new and `server.sh restart` (or
# `sudo systemctl restart tribist`) to run it, as the original design has it; `server.sh
# reload` does the same with no gap for clients (the serving process hands over to it).
set -euo pipefail

readonly PROG=server.sh
readonly UNIT=tribist
readonly API_DIR=${TRIBIST_API_DIR:-/home/tribist/api}
readonly HOST_PROGRAM=${TRIBIST_HOST_PROGRAM:-/home/tribist/bin/tribist-host}

usage() {
  cat <<USAGE
usage: $PROG start|stop|restart|reload|status|promote

  start    systemctl start $UNIT.socket $UNIT.service: the socket listens again and the
           server starts (first promoting $API_DIR/server_new if present)
  restart  systemctl restart $UNIT (the same)
  reload   systemctl reload $UNIT: promotes server_new too, then the serving process starts
           it on the same socket and drains once it serves (no client waits); if it fails,
           the old process goes on serving and this exits 1 (the binary that failed is
           then $API_DIR/server: put server.prev back before the next restart)
  stop     systemctl stop $UNIT.socket $UNIT.service: the server stops and so does its
           socket, so no request starts it again; it stays down until 'start' (or a deploy:
           make upgrade, make install) starts it, and starts at boot as usual
  status   systemctl status $UNIT
  promote  only the move, as user tribist: server -> server.prev, server_new -> server
           (each step atomic; $HOST_PROGRAM releases promote)

Runs systemctl through sudo unless root. Exit codes: 0 done, 1 the step failed (the message
says which), 2 misuse.
USAGE
}

die() {
  echo "$PROG: $*" >&2
  exit 1
}

# systemctl VERB and the units it acts on, through sudo unless root (the sudoers drop-in
# allows exactly these command lines). Returns systemctl's exit code.
systemctl_() {
  local verb=$1 units=("$UNIT")
  # The socket too: a stopped service with a listening socket starts at the next request.
  [[ "$verb" == start || "$verb" == stop ]] && units=("$UNIT.socket" "$UNIT.service")
  if [[ $(id -u) -eq 0 ]]; then
    systemctl "$verb" "${units[@]}"
  else
    sudo -n systemctl "$verb" "${units[@]}"
  fi
}

# Runs a state-changing verb; on failure says what to look at.
change() {
  local verb=$1 rc=0
  systemctl_ "$verb" || rc=$?
  ((rc == 0)) && return 0
  local what=$UNIT
  [[ "$verb" == start || "$verb" == stop ]] && what="$UNIT.socket $UNIT.service"
  die "'systemctl $verb $what' failed (exit $rc); see 'journalctl -u $UNIT -n 50'" \
    "$([[ $(id -u) -ne 0 ]] && echo "(as $(id -un): is /etc/sudoers.d/tribist installed?)")"
}

promote() {
  [[ $(id -u) -ne 0 ]] || die "promote runs as user tribist, never as root (api/ is tribist's); as root: systemctl restart $UNIT"
  exec "$HOST_PROGRAM" releases promote
}

main() {
  [[ $# -eq 1 ]] || { usage >&2; exit 2; }
  case "$1" in
    -h | --help) usage ;;
    start) change start ;;
    restart) change restart ;;
    reload) change reload ;;
    stop) change stop ;;
    status) systemctl_ status ;; # exit code as systemctl's: 3 when not running
    promote) promote ;;
    *) echo "$PROG: unknown command '$1'" >&2; usage >&2; exit 2 ;;
  esac
}

main "$@"

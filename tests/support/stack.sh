# shellcheck shell=bash
# Sourced by the benchmark and test scripts: a throwaway PostgreSQL cluster and the server in
# front of it, in one work directory, on free loopback ports.
#
#   stack_up WORK BIN [VAR=value...]   start both; sets STACK_URL, STACK_PORT, STACK_PID
#   stack_down WORK                    stop both and remove WORK
#   free_port                          print a free TCP port on 127.0.0.1
#   rss_kb PID                         print a process's resident memory in kB

STACK_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Outputs of stack_up, read by the scripts that source this file.
# shellcheck disable=SC2034
STACK_URL="" STACK_PORT="" STACK_PID=""

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

stack_up() {
  local work=$1 bin=$2
  shift 2
  [[ -x "$bin" ]] || { echo "no server binary at $bin (cargo build)" >&2; return 1; }
  bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
  mkdir -p "$work/run"
  chmod 755 "$work"
  STACK_URL=$("$STACK_LIB_DIR/pg.sh" start "$work/pg" "$(free_port)") || return 1
  (cd "$work/run" && exec env DATABASE_URL="$STACK_URL" TRIBIST_LISTEN=127.0.0.1:0 "$@" \
    "$bin" 2>"$work/server.log") &
  local _
  for _ in $(seq 200); do grep -q 'listening on' "$work/server.log" 2>/dev/null && break; sleep 0.05; done
  STACK_PORT=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$work/server.log")
  [[ -n "$STACK_PORT" ]] || { echo "the server did not start: $(cat "$work/server.log")" >&2; return 1; }
  # shellcheck disable=SC2034 # read by the caller
  STACK_PID=$(cat "$work/run/PID")
}

stack_down() {
  local work=$1
  [[ -s "$work/run/PID" ]] && kill "$(cat "$work/run/PID")" 2>/dev/null
  [[ -d "$work/pg" ]] && "$STACK_LIB_DIR/pg.sh" stop "$work/pg" 2>/dev/null
  rm -rf "$work"
}

#!/usr/bin/env bash
# `make bench-upgrade`: what clients see while `make upgrade` runs, with and without socket
# activation. Boots a throwaway systemd host (tests/e2e/host.sh), installs tribist with this
# Makefile, then upgrades back and forth between two releases under a steady load on /health
# and /livez (tests/support/load.py, new connection per request, inside the host's own network
# namespace). Prints requests sent, failed (refused, reset, 5xx, timed out) and max latency.
set -euo pipefail

readonly NAME=tribbench
readonly DB_PASSWORD=bench-db-password

usage() {
  cat <<'USAGE'
usage: bench-upgrade.sh [--help]
Environment: UPGRADES (upgrades per mode, default 4), CONCURRENCY (load threads, default 4).
Needs root (systemd-nspawn, ip netns). Cleans up its host even when interrupted.
USAGE
}

say() { printf '==> %s\n' "$*"; }

main() {
  case "${1:-}" in
    -h | --help) usage; return 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
  esac
  [[ $(id -u) -eq 0 ]] || { echo "bench-upgrade.sh: needs root" >&2; exit 1; }
  local repo hostsh cfg work
  repo=$(cd "$(dirname "$0")/../.." && pwd)
  hostsh="$repo/tests/e2e/host.sh"
  work=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now
  trap "'$hostsh' down $NAME >/dev/null 2>&1 || true; rm -rf '$work'" EXIT
  say "building both releases"
  make -s -C "$repo" release
  cp "$repo/target/release/server" "$work/server-a"
  "$repo/tests/e2e/build-alt.sh" "$work/server-b"
  say "booting a throwaway systemd host ($NAME)"
  "$hostsh" up "$NAME"
  cfg=$("$hostsh" ssh-config)
  "$hostsh" db "$NAME" "$DB_PASSWORD"
  (umask 077 && echo "postgres://tribist:$DB_PASSWORD@localhost/tribist" >"$work/database_url")
  make -s -C "$repo" install HOST="root@$NAME" SSH_OPTS="-F $cfg" BIN="$work/server-a" \
    DATABASE_URL_FILE="$work/database_url" >/dev/null

  local results=()
  for mode in socket-activation self-bound; do
    if [[ $mode == self-bound ]]; then
      say "switching the host to a server that binds the port itself (tribist.socket removed)"
      "$hostsh" ssh "$NAME" "systemctl disable --now --quiet tribist.socket && systemctl stop tribist.service && mv /etc/systemd/system/tribist.socket /root/ && systemctl daemon-reload && systemctl start tribist.service"
    fi
    rm -f "$work/stop"
    ip netns exec "tribist-$NAME" python3 "$repo/tests/support/load.py" \
      --concurrency "${CONCURRENCY:-4}" --max-seconds 300 --stop-file "$work/stop" \
      http://127.0.0.1:8383/health http://127.0.0.1:8383/livez >"$work/$mode.json" &
    local load=$! i bin
    sleep 2
    for i in $(seq "${UPGRADES:-4}"); do
      bin="$work/server-b"
      ((i % 2 == 0)) && bin="$work/server-a"
      say "$mode: make upgrade $i/${UPGRADES:-4} under load"
      make -s -C "$repo" upgrade HOST="root@$NAME" SSH_OPTS="-F $cfg" BIN="$bin" >/dev/null
      sleep 1
    done
    touch "$work/stop"
    wait "$load"
    results+=("$mode $(cat "$work/$mode.json")")
  done

  echo
  printf '%-18s %8s %7s %9s %8s  %s\n' mode sent failed "max ms" "p99 ms" "failures"
  local line
  for line in "${results[@]}"; do
    python3 -c '
import json, sys
mode, data = sys.argv[1].split(" ", 1)
d = json.loads(data)
print("%-18s %8d %7d %9.1f %8.1f  %s" % (mode, d["sent"], d["failed"], d["max_ms"], d["p99_ms"], d["failures"] or "-"))
' "$line"
  done
  echo "target with socket activation: 0 failed, max latency < 1000 ms"
}

main "$@"

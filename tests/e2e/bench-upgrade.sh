#!/usr/bin/env bash
# `make bench-upgrade`: what a user's clients see while `make upgrade` runs. Boots a throwaway
# systemd host (tests/e2e/host.sh), installs tribist with this Makefile, then, under two kinds
# of clients at once, runs one upgrade per scenario: a good release, and four bad ones (exits
# at start, never becomes ready, answers /health 503 — all refused by the preflight — and one
# that passes its preflight but never gets ready under systemd, so its handover fails). The
# clients run inside the host's own network namespace: wrk with its default keep-alive
# connections (as a reverse proxy's pool), tests/support/load.py with a new connection per
# request (as a health probe), and one paced client (a request every 5 ms) whose latencies
# are not the saturated machine's. Prints per
# scenario and client: requests, failed (socket errors, refused, reset, timed out), non-2xx,
# max latency, and how long `make upgrade` took.
set -euo pipefail

readonly NAME=tribbench
readonly DB_PASSWORD=bench-db-password

usage() {
  cat <<'USAGE'
usage: bench-upgrade.sh [--help]
Environment: CONNECTIONS (wrk keep-alive connections, default 8), CONCURRENCY (load.py
threads, default 4), PREFLIGHT (seconds, default 10). Needs root (systemd-nspawn, ip netns)
and wrk. Cleans up its host even when interrupted.
USAGE
}

say() { printf '==> %s\n' "$*" >&2; }

# Writes the bad releases into $1: exits at start, never ready, answers 503, and one that
# passes the preflight but hangs under systemd, so only its handover can fail (the last two
# wrap the real binary the host keeps at /usr/local/lib/tribist-bench/server).
bad_releases() {
  local dir=$1
  # shellcheck disable=SC2016 # $1 belongs to the generated scripts
  printf '#!/bin/sh\n[ "$1" = --version ] && { echo "server 0.0.0 (commit exits-at-start)"; exit 0; }\necho "panic: cannot start" >&2\nexit 1\n' >"$dir/exits"
  # shellcheck disable=SC2016
  printf '#!/bin/sh\n[ "$1" = --version ] && { echo "server 0.0.0 (commit never-ready)"; exit 0; }\nexec sleep 600\n' >"$dir/never-ready"
  printf '#!/bin/sh\nDATABASE_URL=postgres://tribist:wrong@localhost:5432/tribist exec /usr/local/lib/tribist-bench/server "$@"\n' >"$dir/answers-503"
  # shellcheck disable=SC2016
  printf '#!/bin/sh\n[ -n "$NOTIFY_SOCKET" ] && exec sleep 600\nexec /usr/local/lib/tribist-bench/server "$@"\n' >"$dir/handover-fails"
  chmod 755 "$dir/exits" "$dir/never-ready" "$dir/answers-503" "$dir/handover-fails"
}

# wrk's summary -> "requests failed non2xx max_ms"
wrk_figures() {
  awk '
    /requests in/ { req = $1 }
    /Socket errors:/ { gsub(",", ""); failed = $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { non2xx = $5 }
    $1 == "Latency" { max = $4 }
    END {
      ms = max
      if (max ~ /us$/) { sub("us", "", ms); ms = ms / 1000 }
      else if (max ~ /ms$/) { sub("ms", "", ms) }
      else if (max ~ /s$/) { sub("s", "", ms); ms = ms * 1000 }
      printf "%d %d %d %.1f\n", req, failed, non2xx, ms
    }' "$1"
}

# load.py's JSON -> "requests failed non2xx max_ms" (its 5xx are counted as non-2xx here).
load_figures() {
  python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
non2xx = sum(v for k, v in d["failures"].items() if k.startswith("http-"))
print(d["sent"], d["failed"] - non2xx, non2xx, d["max_ms"])
' "$1"
}

main() {
  case "${1:-}" in
    -h | --help) usage; return 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
  esac
  [[ $(id -u) -eq 0 ]] || { echo "bench-upgrade.sh: needs root" >&2; exit 1; }
  command -v wrk >/dev/null || { echo "bench-upgrade.sh: wrk is missing: apt-get install wrk (make deps)" >&2; exit 1; }
  local repo hostsh cfg work
  repo=$(cd "$(dirname "$0")/../.." && pwd)
  hostsh="$repo/tests/e2e/host.sh"
  work=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now
  trap "pkill -INT -f 'wrk .*tribist-bench' 2>/dev/null || true; '$hostsh' down $NAME >/dev/null 2>&1 || true; rm -rf '$work'" EXIT
  say "building both releases"
  make -s -C "$repo" release
  cp "$repo/${RELEASE_BIN:-target/x86_64-unknown-linux-gnu/release/server}" "$work/server-a"
  "$repo/tests/e2e/build-alt.sh" "$work/server-b"
  bad_releases "$work"
  say "booting a throwaway systemd host ($NAME)"
  "$hostsh" up "$NAME"
  cfg=$("$hostsh" ssh-config)
  "$hostsh" db "$NAME" "$DB_PASSWORD"
  "$hostsh" ssh "$NAME" "install -d /usr/local/lib/tribist-bench && cat >/usr/local/lib/tribist-bench/server && chmod 755 /usr/local/lib/tribist-bench/server" <"$work/server-b"
  (umask 077 && echo "postgres://tribist:$DB_PASSWORD@localhost/tribist" >"$work/database_url")
  make -s -C "$repo" install HOST="root@$NAME" SSH_OPTS="-F $cfg" BIN="$work/server-a" \
    DATABASE_URL_FILE="$work/database_url" >/dev/null

  local rows=() scenario bin start took rc
  for scenario in good exits never-ready answers-503 handover-fails; do
    case "$scenario" in
      good) bin=$work/server-b ;;
      *) bin=$work/$scenario ;;
    esac
    rm -f "$work/stop"
    ip netns exec "tribist-$NAME" wrk -t2 -c "${CONNECTIONS:-8}" -d 120s -H 'X-Bench: tribist-bench' \
      http://127.0.0.1:8383/health >"$work/wrk.out" 2>&1 &
    local wrk=$!
    ip netns exec "tribist-$NAME" python3 "$repo/tests/support/load.py" --concurrency "${CONCURRENCY:-4}" \
      --max-seconds 120 --stop-file "$work/stop" http://127.0.0.1:8383/health >"$work/load.json" &
    local load=$!
    # A paced client (one request every 5 ms, new connection each): the machine is not
    # saturated by it, so its latencies show what the switch itself costs.
    ip netns exec "tribist-$NAME" python3 "$repo/tests/support/load.py" --concurrency 1 --interval 0.005 \
      --max-seconds 120 --stop-file "$work/stop" http://127.0.0.1:8383/health >"$work/paced.json" &
    local paced=$!
    sleep 1
    say "$scenario: make upgrade under load"
    start=$EPOCHREALTIME
    rc=0
    make -s -C "$repo" upgrade HOST="root@$NAME" SSH_OPTS="-F $cfg" BIN="$bin" PREFLIGHT="${PREFLIGHT:-10}" \
      >"$work/upgrade.out" 2>&1 || rc=$?
    took=$(bc <<<"$EPOCHREALTIME - $start")
    sleep 1
    kill -INT "$wrk"
    touch "$work/stop"
    wait "$wrk" || true
    wait "$load" || true
    wait "$paced" || true
    rows+=("$scenario keep-alive $(wrk_figures "$work/wrk.out") $took $rc")
    rows+=("$scenario new-connection $(load_figures "$work/load.json") $took $rc")
    rows+=("$scenario paced-5ms $(load_figures "$work/paced.json") $took $rc")
  done

  echo
  printf '%-12s %-15s %9s %7s %8s %9s %11s  %s\n' scenario clients requests failed non-2xx "max ms" "upgrade s" "make upgrade"
  local row s c req failed non2xx max t code
  for row in "${rows[@]}"; do
    read -r s c req failed non2xx max t code <<<"$row"
    printf '%-12s %-15s %9d %7d %8d %9.1f %11.1f  %s\n' "$s" "$c" "$req" "$failed" "$non2xx" "$max" "$t" \
      "$([[ $code == 0 ]] && echo upgraded || echo "not upgraded (make exit $code)")"
  done
  echo "goal: 0 failed and 0 non-2xx in every row; a bad release refused within the preflight bound"
}

main "$@"

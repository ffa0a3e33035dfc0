#!/usr/bin/env bash
# What clients of the HTTPS front door (issue 19) see while the deployer changes the service
# behind it: `make upgrade` with a good release and with each bad one (exits at start, never
# ready, answers 503, hangs only under systemd so its handover fails), `make config SET=…`
# (a restart: a handover keeps the environment) and `make rollback`, one after another with
# the Makefile a user runs. During each operation four clients run inside the host's network
# namespace: wrk with keep-alive connections and tests/support/load.py with a new connection
# per request, each against https://DOMAIN (the front, pebble's root trusted) and against
# http://127.0.0.1:8383 (the service directly, for comparison). Prints a table per phase and
# writes it as TSV for tests/e2e-front.bats, which asserts 0 failed and 0 non-2xx through the
# front. `make bench-front-upgrade` runs it on a throwaway host of its own (bench); the e2e
# test runs `front-upgrades.sh run` on its own host.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
readonly REPO
readonly HOSTSH=$REPO/tests/e2e/host.sh
readonly FRONTSH=$REPO/tests/e2e/front-host.sh
# Where the bad releases that wrap the installed one find it on the host.
readonly WRAPPED=/usr/local/lib/tribist-front-upgrades/server-a
# Each client's pace: wrk waits DELAY_MS after each answer on each of its CONNECTIONS;
# load.py's CONCURRENCY workers wait INTERVAL seconds between requests. The machine is not
# saturated by them, so a make command takes as long as it would for a user.
CONNECTIONS=${CONNECTIONS:-4}
DELAY_MS=${DELAY_MS:-5}
CONCURRENCY=${CONCURRENCY:-2}
INTERVAL=${INTERVAL:-0.01}
PREFLIGHT=${PREFLIGHT:-5}

usage() {
  cat <<'USAGE'
usage: front-upgrades.sh [bench]                 boot a throwaway host (host.sh, front-host.sh),
                                                 apply the front, run the phases, print the table
       front-upgrades.sh run NAME DOMAIN WORK [--control]
                                                 the phases on host NAME, where tribist was
                                                 installed from this tree's release build and the
                                                 front for DOMAIN is applied; WORK holds
                                                 pebble-root.pem (front-host.sh up) and receives
                                                 the releases, the clients' output and
                                                 front-upgrades.tsv
  --control (bench: always) adds a last phase, `systemctl reload caddy` under the same clients:
  what a front reloaded during an upgrade would look like to them.
Environment: CONNECTIONS (wrk keep-alive connections per target, 4), DELAY_MS (wrk's pause
after each answer, 5), CONCURRENCY (load.py workers per target, 2), INTERVAL (their pause,
0.01 s), PREFLIGHT (make upgrade's, 5 s). Needs root (ip netns, unshare), wrk, python3.
USAGE
}

die() {
  echo "front-upgrades.sh: $*" >&2
  exit 1
}

say() { printf '==> %s\n' "$*" >&2; }

on() { "$HOSTSH" ssh "$1" "cd / && $2"; }

release_of() { "$1" --version | sed -n 's/.*commit \([^)]*\)).*/\1/p'; }

# The release host $1 serves.
serving() { on "$1" "/home/tribist/bin/tribist-host serving" 2>/dev/null || echo none; }

# Writes the releases into $1: server-a (this tree's release build, what is installed),
# server-b (another commit, tests/e2e/build-alt.sh) and the bad ones, as tests/e2e.bats makes
# them. The two that pass for a real release wrap server-a under its id: they are shipped
# while server-b serves (other bytes under the serving release's id are refused).
releases() {
  local dir=$1
  cp "$REPO/${RELEASE_BIN:-target/x86_64-unknown-linux-gnu/release/server}" "$dir/server-a"
  if [[ ! -x "$dir/server-b" || "$(release_of "$dir/server-b")" == "$(release_of "$dir/server-a")" ]]; then
    say "building another release (tests/e2e/build-alt.sh)"
    "$REPO/tests/e2e/build-alt.sh" "$dir/server-b"
  fi
  # shellcheck disable=SC2016 # $1 belongs to the generated scripts
  printf '#!/bin/sh\n[ "$1" = --version ] && { echo "server 9.9.9 (commit exits-at-start)"; exit 0; }\necho "cannot start" >&2\nexit 1\n' >"$dir/exits"
  # shellcheck disable=SC2016
  printf '#!/bin/sh\n[ "$1" = --version ] && { echo "server 9.9.9 (commit never-ready)"; exit 0; }\nexec sleep 600\n' >"$dir/never-ready"
  printf '#!/bin/sh\nDATABASE_URL=postgres://tribist:wrong@localhost:5432/tribist exec %s "$@"\n' "$WRAPPED" >"$dir/answers-503"
  # shellcheck disable=SC2016
  printf '#!/bin/sh\n[ -n "$NOTIFY_SOCKET" ] && exec sleep 600\nexec %s "$@"\n' "$WRAPPED" >"$dir/handover-fails"
  chmod 755 "$dir/exits" "$dir/never-ready" "$dir/answers-503" "$dir/handover-fails"
}

# wrk's script: a pause after each answer (its first argument, ms), non-2xx counted over all
# threads, and one line of figures at the end (also after SIGINT).
wrk_lua() {
  cat >"$1" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) pause = tonumber(args[1] or "0"); non2xx = 0 end
function delay() return pause end
function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("non2xx") end
  local e = summary.errors
  io.write(string.format("FIGURES %d %d %d %.1f %.1f %.1f\n", summary.requests,
    e.connect + e.read + e.write + e.timeout, n,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
LUA
}

# Sets NS: the words that run a command in host $1's network namespace, where the file
# $HOSTS_FILE is /etc/hosts (DOMAIN resolves to the front there, as for a client of the host).
# An array, not a function: a client started with "${NS[@]}" … & is its own process (wrk
# gets the SIGINT that makes it print its figures).
ns_words() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  NS=(ip netns exec "${TRIBIST_E2E_NETNS:-tribist}-$1" unshare -m bash -c 'mount --bind "$0" /etc/hosts && exec "$@"'
    "$HOSTS_FILE")
}

# Starts the four clients against host $1 (front https://$2, service direct); their output
# goes to $3/{front,direct}-{wrk,load}.out. Sets CLIENT_PIDS.
start_clients() {
  local name=$1 domain=$2 out=$3 target url
  rm -f "$out/stop"
  CLIENT_PIDS=()
  for target in front direct; do
    url=http://127.0.0.1:8383/health
    [[ $target == front ]] && url=https://$domain/health
    "${NS[@]}" wrk -t1 -c "$CONNECTIONS" -d 400s --timeout 10s -s "$out/pace.lua" "$url" -- "$DELAY_MS" \
      >"$out/$target-wrk.out" 2>&1 &
    CLIENT_PIDS+=($!)
    "${NS[@]}" python3 "$REPO/tests/support/load.py" --non2xx --cafile "$out/pebble-root.pem" \
      --concurrency "$CONCURRENCY" --interval "$INTERVAL" --max-seconds 400 --stop-file "$out/stop" \
      "$url" >"$out/$target-load.out" 2>&1 &
    CLIENT_PIDS+=($!)
  done
}

# Stops them (wrk on SIGINT prints its figures; load.py on the stop file) and waits.
stop_clients() {
  local out=$1 pid
  touch "$out/stop"
  kill -INT "${CLIENT_PIDS[0]}" "${CLIENT_PIDS[2]}" 2>/dev/null || true
  for pid in "${CLIENT_PIDS[@]}"; do wait "$pid" || true; done
}

# "requests failed non2xx p50 p99 max" of one client's output file.
figures() {
  case $1 in
    *-wrk.out)
      awk '$1 == "FIGURES" { print $2, $3, $4, $5, $6, $7; found = 1 }
           END { if (!found) print "0 -1 -1 0 0 0" }' "$1"
      ;;
    *)
      python3 -c '
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    print("0 -1 -1 0 0 0")
    sys.exit(0)
non2xx = sum(v for k, v in d["failures"].items() if k.startswith("http-"))
print(d["sent"], d["failed"] - non2xx, non2xx, d["p50_ms"], d["p99_ms"], d["max_ms"])
' "$1"
      ;;
  esac
}

# One phase: the clients, one second, the command ("$@"), one second, the figures. Appends
# to $TSV: phase, what make said, then one row per client.
phase() {
  local name=$1 domain=$2 out=$3 what=$4 expect=$5
  shift 5
  local start took rc=0 outcome target kind
  start_clients "$name" "$domain" "$out"
  sleep 1
  say "$what: $*"
  start=$EPOCHREALTIME
  timeout 300 "$@" >"$out/$what.make.out" 2>&1 || rc=$?
  took=$(bc <<<"$EPOCHREALTIME - $start")
  sleep 1
  stop_clients "$out"
  outcome="exit $rc, serving $(serving "$name")"
  if { [[ $expect == ok ]] && ((rc != 0)); } || { [[ $expect == refused ]] && ((rc == 0)); }; then
    outcome="UNEXPECTED $outcome"
    say "$what: expected $expect; it said: $(tail -n 5 "$out/$what.make.out")"
  fi
  for target in front direct; do
    for kind in wrk load; do
      printf '%s\t%s\t%s\t%.1f\t%s\t%s\n' "$what" "$outcome" "$target-$kind" "$took" \
        "$(figures "$out/$target-$kind.out" | tr ' ' '\t')" "$expect" >>"$TSV"
    done
  done
}

# "pid P, reloads N": caddy's main pid on host $1 and how many new configurations it loaded
# (Caddy's "load complete": a reload by systemctl or by caddy reload, which logs none in
# systemd's journal lines).
caddy_state() {
  on "$1" "echo \"pid \$(systemctl show -p MainPID --value caddy), reloads \$(journalctl -u caddy -o cat --no-pager | grep -c '\"msg\":\"load complete\"' || true)\""
}

table() {
  local tsv=$1
  printf '%-14s %-16s %6s %9s %7s %8s %8s %8s %8s  %s\n' phase client "make s" requests failed non-2xx \
    "p50 ms" "p99 ms" "max ms" "make"
  local what outcome client took req failed non2xx p50 p99 max expect
  while IFS=$'\t' read -r what outcome client took req failed non2xx p50 p99 max expect; do
    client=${client/-wrk/ keep-alive}
    client=${client/-load/ new-conn}
    printf '%-14s %-16s %6.1f %9d %7d %8d %8.1f %8.1f %8.1f  %s (%s)\n' "$what" "$client" "$took" "$req" \
      "$failed" "$non2xx" "$p50" "$p99" "$max" "$outcome" "$expect"
  done <"$tsv"
  echo "goal: 0 failed and 0 non-2xx in every front row; each bad release refused (a non-zero exit)"
}

run() {
  local name=$1 domain=$2 work=$3 control=${4:-}
  [[ $(id -u) -eq 0 ]] || die "needs root (ip netns, unshare)"
  local c
  for c in wrk python3 bc; do command -v "$c" >/dev/null || die "$c is missing: make deps"; done
  [[ -s "$work/pebble-root.pem" ]] || die "$work/pebble-root.pem is missing (front-host.sh up writes it)"
  local cfg out=$work/front-upgrades
  cfg=$("$HOSTSH" ssh-config)
  mkdir -p "$out"
  cp "$work/pebble-root.pem" "$out/pebble-root.pem"
  HOSTS_FILE=$out/hosts
  printf '127.0.0.1 localhost\n127.0.0.1 %s\n' "$domain" >"$HOSTS_FILE"
  TSV=$work/front-upgrades.tsv
  : >"$TSV"
  wrk_lua "$out/pace.lua"
  releases "$work"
  "$HOSTSH" ssh "$name" "install -d ${WRAPPED%/*} && cat >$WRAPPED.tmp && chmod 755 $WRAPPED.tmp && mv -f $WRAPPED.tmp $WRAPPED" \
    <"$work/server-a"
  # The host serves this tree's release (what make install put there, or a rollback to it).
  [[ "$(serving "$name")" == "$(release_of "$work/server-a")" ]] ||
    die "host $name serves $(serving "$name"), not this tree's release $(release_of "$work/server-a")"
  ns_words "$name"
  "${NS[@]}" curl -sSf --cacert "$work/pebble-root.pem" -o /dev/null "https://$domain/health" ||
    die "https://$domain/health does not answer through the front; caddy on $name: $(on "$name" \
      "systemctl show -p ActiveState -p Result -p ExecMainStatus caddy | paste -sd ' '; journalctl -u caddy -n 5 -o cat --no-pager | cut -c1-200")"
  local caddy_before caddy_after
  caddy_before=$(caddy_state "$name")
  local mk=(make -s -C "$REPO")
  local at=(HOST="root@$name" SSH_OPTS="-F $cfg")
  phase "$name" "$domain" "$out" upgrade-good ok "${mk[@]}" upgrade "${at[@]}" BIN="$work/server-b"
  local bad
  for bad in exits never-ready answers-503 handover-fails; do
    phase "$name" "$domain" "$out" "$bad" refused "${mk[@]}" upgrade "${at[@]}" BIN="$work/$bad" PREFLIGHT="$PREFLIGHT"
  done
  phase "$name" "$domain" "$out" config ok "${mk[@]}" config "${at[@]}" SET="TRIBIST_LOG_LEVEL=debug"
  phase "$name" "$domain" "$out" rollback ok "${mk[@]}" rollback "${at[@]}"
  caddy_after=$(caddy_state "$name")
  echo "caddy before: $caddy_before" >"$work/front-upgrades.caddy"
  echo "caddy after: $caddy_after" >>"$work/front-upgrades.caddy"
  if [[ $control == --control ]]; then
    phase "$name" "$domain" "$out" caddy-reload control "$HOSTSH" ssh "$name" "systemctl reload caddy"
  fi
  echo
  table "$TSV"
  echo "across the deployer's operations, $(paste -sd ';' "$work/front-upgrades.caddy" | sed 's/;/; /')"
}

bench() {
  [[ $(id -u) -eq 0 ]] || die "needs root (systemd-nspawn, ip netns)"
  local name=${TRIBIST_E2E_NAMES:-trib}fup domain=api.upgrade.test work
  # Its host apart from the e2e suites' (host.sh): their cleanup never takes it.
  export TRIBIST_E2E_RUN=${TRIBIST_E2E_RUN:-/var/tmp/tribist-e2e-front-upgrade}
  export TRIBIST_E2E_NETNS=${TRIBIST_E2E_NETNS:-tbfup}
  work=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now
  trap "'$HOSTSH' down $name >/dev/null 2>&1 || true; rm -rf '$work'" EXIT
  say "building the release"
  make -s -C "$REPO" release
  # Both releases before the host: nothing is built while the front serves.
  releases "$work"
  "$HOSTSH" prepare
  say "booting a throwaway systemd host ($name), make install, pebble"
  "$FRONTSH" up "$name" "$domain" "$work"
  say "tribist-host front apply on $name"
  on "$name" "/home/tribist/bin/tribist-host front apply $("$FRONTSH" apply-args "$domain")" >&2
  run "$name" "$domain" "$work" --control
}

main() {
  case "${1:-}" in
    -h | --help) usage ;;
    "" | bench) bench ;;
    run)
      [[ $# -eq 4 || ($# -eq 5 && $5 == --control) ]] || { usage >&2; exit 2; }
      run "$2" "$3" "$4" "${5:-}"
      ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"

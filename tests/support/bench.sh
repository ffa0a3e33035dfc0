#!/usr/bin/env bash
# `make bench`: tribist against a peer server on a mainstream async stack (bench/peer-axum:
# axum + tokio + deadpool-postgres), in one run, on the same machine and the same throwaway
# PostgreSQL cluster. wrk on /health and /livez at 16 and 64 connections, in interleaved
# rounds (tribist, peer, tribist, peer, ...); each round's req/s, p99 and reconnects, then
# per scenario and server the median req/s and p99 of the rounds, the worst round's p99,
# their spread, the errors and tribist/peer, and whether every round's p99 is within the
# bound (1.5 x the peer's in the same round, or 1.5 ms); bursts of 64 and 256 keep-alive
# connections opened at once (examples/burst.rs, one event loop), on the fresh servers and after the
# rounds: each connection's first answer; both servers' memory; the database queries each
# answers a /health with; pgbench's `SELECT 1` rate as context. Prints figures; asserts
# nothing (targets are in the README and docs/tail-latency.md).
set -euo pipefail
export LC_ALL=C

readonly PROG=bench.sh

usage() {
  cat <<'USAGE'
usage: bench.sh [--help]

Environment:
  BIN           tribist's release server binary (default target/x86_64-unknown-linux-gnu/release/server)
  WORKERS       tribist's workers (TRIBIST_WORKERS, default: the server's own, 16); its /health
                checks share one database connection (more only while checks overlap)
  POOL          the peer's database pool size and pgbench's connections (default 4)
  PEER_THREADS  the peer's tokio worker threads (default: the number of CPUs, tokio's default)
  PEER_BIN      a peer binary to use instead of building bench/peer-axum (cargo build --release
                --locked, target dir target/peer-axum)
  CONNECTIONS   wrk connection counts for /health and /livez (default "16 64")
  ROUNDS        interleaved rounds (default 3)
  DURATION      seconds per wrk run (default 10, at least 8: a p99 needs enough requests to
                see the events that happen once a second)
  BURSTS        connection counts of the bursts (default "64 256"; "" for none)
Any TRIBIST_* variable in the environment reaches tribist (e.g. TRIBIST_KEEPALIVE_MAX=1h).
Needs wrk, curl, python3, cargo and PostgreSQL with its psql and pgbench (Debian packages wrk,
curl, python3, postgresql; make deps installs them).
USAGE
}

die() {
  echo "$PROG: $*" >&2
  exit 1
}

# shellcheck source=tests/support/stack.sh
source "$(dirname "$0")/stack.sh"

WORK="" PEER_PID="" PEER_PORT=""
# Each server's port, and the burst sizes (BURSTS).
declare -A ports=()
BURST_SIZES=() BURST_BIN=""
# "PATH@CONNECTIONS" of each wrk scenario, in the order they run.
SCENARIOS=()

# On exit, whatever happened: the peer, tribist and the cluster stopped, the work directory gone.
cleanup() {
  if [[ -n "$PEER_PID" ]] && alive "$PEER_PID"; then kill -KILL "$PEER_PID" 2>/dev/null || true; fi
  if [[ -n "$WORK" ]]; then stack_down "$WORK" || true; fi
}

alive() { [[ -e "/proc/$1" ]] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }

# Builds the peer, or takes PEER_BIN; prints the binary's path.
peer_binary() {
  local repo=$1
  if [[ -n "${PEER_BIN:-}" ]]; then
    [[ -x "$PEER_BIN" ]] || die "PEER_BIN=$PEER_BIN is not an executable"
    echo "$(cd "$(dirname "$PEER_BIN")" && pwd)/$(basename "$PEER_BIN")"
    return
  fi
  command -v "${CARGO:-cargo}" >/dev/null || die "cargo is missing: it builds bench/peer-axum"
  echo "building the peer: cargo build --release --locked --manifest-path bench/peer-axum/Cargo.toml" >&2
  CARGO_TARGET_DIR="$repo/target/peer-axum" "${CARGO:-cargo}" build --release --locked -q \
    --manifest-path "$repo/bench/peer-axum/Cargo.toml" >&2 || die "cannot build bench/peer-axum (above)"
  echo "$repo/target/peer-axum/release/peer-axum"
}

# psql as the stack cluster's superuser, over its socket (pg.sh: initdb -U postgres, local
# trust, socket in the cluster's directory, run by user postgres when we are root).
pg_admin() {
  local dir=$WORK/pg
  local -a cmd=(psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$(cat "$dir/port")" -U postgres -d postgres "$@")
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "${cmd[@]}"
  else
    "${cmd[@]}"
  fi
}

# Starts the peer on database URL; sets PEER_PID and PEER_PORT.
start_peer() {
  local bin=$1 url=$2 pool=$3 threads=$4
  (cd "$WORK" && exec env DATABASE_URL="$url" LISTEN=127.0.0.1:0 POOL="$pool" \
    WORKERS="$threads" "$bin" 2>"$WORK/peer.log") &
  PEER_PID=$!
  local _
  for _ in $(seq 200); do grep -q 'listening on' "$WORK/peer.log" 2>/dev/null && break; sleep 0.05; done
  PEER_PORT=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$WORK/peer.log")
  [[ -n "$PEER_PORT" ]] || die "the peer did not start: $(cat "$WORK/peer.log")"
}

# SIGTERM, then up to 15 s for the process to end (SIGKILL after that).
stop_server() {
  local pid=$1 name=$2 _
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 150); do alive "$pid" || return 0; sleep 0.1; done
  echo "$name (pid $pid) still running 15 s after SIGTERM; killed" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

# "TRIBIST PEER": committed transactions of databases tribist and peer so far. Each simple
# query (an empty one too) and each Sync of the extended protocol is one. A backend publishes
# its counts at most once a second, or 10 s after it went idle, or when it ends: the final
# reading is taken once both servers have closed their connections.
xact() {
  pg_admin -A -t -c "SELECT string_agg(xact_commit::text, ' ' ORDER BY datname = 'peer')
    FROM pg_stat_database WHERE datname IN ('tribist', 'peer')"
}

# Waits (up to 10 s) until no backend serves databases tribist or peer any more.
backends_gone() {
  local _ n
  for _ in $(seq 100); do
    n=$(pg_admin -A -t -c "SELECT count(*) FROM pg_stat_activity WHERE datname IN ('tribist', 'peer')")
    [[ "$n" == 0 ]] && return 0
    sleep 0.1
  done
  echo "$PROG: $n database backends still open; the query counts may be short" >&2
}

# "A Q" from a server log's `health: A answers from Q database checks`, or nothing.
health_line() {
  sed -n 's/.*health: \([0-9][0-9]*\) answers from \([0-9][0-9]*\) database checks.*/\1 \2/p' "$1" | tail -n 1
}

# The TCP connections this network namespace has accepted so far (PassiveOpens in
# /proc/net/snmp): its delta over a wrk run, less wrk's own connections, is the server's
# reconnects (other processes in the namespace accepting connections meanwhile would add to
# it; test hosts run in namespaces of their own).
passive_opens() {
  awk '$1 == "Tcp:" && !h { for (i = 1; i <= NF; i++) if ($i == "PassiveOpens") c = i; h = 1; next }
       $1 == "Tcp:" && h { print $c; exit }' /proc/net/snmp
}

# "RPS P99_MS ERRORS REQUESTS" from wrk --latency output (errors: non-2xx/3xx and socket errors).
parse_wrk() {
  awk '
    /^Requests\/sec/ { rps = $2 }
    $1 == "99%" {
      n = $2; u = $2
      sub(/[a-z]+$/, "", n); sub(/^[0-9.]+/, "", u)
      p99 = (u == "us") ? n / 1000 : (u == "ms") ? n : (u == "s") ? n * 1000 : (u == "m") ? n * 60000 : n
    }
    / requests in / { requests = $1 }
    /Socket errors/ { gsub(",", ""); errors += $4 + $6 + $8 + $10 }
    /Non-2xx/ { errors += $NF }
    END { printf "%.0f %.3f %d %d\n", rps, p99, errors, requests }
  ' "$1"
}

# One wrk run; appends "SCENARIO SERVER ROUND RPS P99 ERRORS REQUESTS RECONNECTS_PER_S" to
# results (round 0: the warm-up, not in the table).
measure() {
  local scenario=$1 server=$2 round=$3 url=$4 conns=$5 secs=$6
  local out="$WORK/wrk-${scenario//\//}-$server-$round.txt" rps p99 errors requests opens reconnects
  opens=$(passive_opens)
  wrk -t2 -c"$conns" -d"${secs}s" --latency "$url" >"$out" 2>&1 || die "wrk failed: $(cat "$out")"
  reconnects=$(awk -v a="$opens" -v b="$(passive_opens)" -v c="$conns" -v s="$secs" \
    'BEGIN { r = (b - a - c) / s; printf "%.1f\n", (r > 0) ? r : 0 }')
  read -r rps p99 errors requests < <(parse_wrk "$out")
  echo "$scenario $server $round $rps $p99 $errors $requests $reconnects" >>"$WORK/results"
  [[ "$round" == 0 ]] && return
  printf '  round %s  %-16s %-8s %7s req/s  p99 %7.2f ms  errors %s  reconnects/s %s\n' "$round" \
    "$(label "$scenario")" "$server" "$rps" "$p99" "$errors" "$reconnects"
}

# Each measured round of SCENARIO in which tribist's p99 exceeds the bound: 1.5 x the peer's
# p99 in the same round, or 1.5 ms, whichever is larger. One "round N: T ms > B ms" a line.
tail_misses() {
  awk -v s="$1" '
    $1 == s && $3 > 0 && $2 == "tribist" { t[$3] = $5 }
    $1 == s && $3 > 0 && $2 == "peer" { p[$3] = $5 }
    END {
      for (r in t) {
        b = 1.5 * p[r]; if (b < 1.5) b = 1.5
        if (t[r] > b) printf "round %s: %.2f ms > %.2f ms\n", r, t[r], b
      }
    }' "$WORK/results" | sort
}

# Builds the burst client (examples/burst.rs: cargo build --release --locked --example burst);
# prints the binary's path.
burst_binary() {
  local repo=$1
  echo "building the burst client: cargo build --release --locked --example burst" >&2
  "${CARGO:-cargo}" build --release --locked -q --manifest-path "$repo/Cargo.toml" --example burst >&2 ||
    die "cannot build examples/burst.rs (above)"
  echo "$repo/target/release/examples/burst"
}

# One burst client run against SERVER; prints its line and appends "WHEN SERVER N SLOWEST
# MEDIAN NEVER RECONNECTS_PER_S" to bursts.
burst() {
  local when=$1 server=$2 port=$3 n=$4 json
  json=$("$BURST_BIN" "127.0.0.1:$port" "$n" 3) || die "the burst client failed against $server"
  python3 -c '
import json, sys
r = json.loads(sys.argv[4])
print("%s %s %s %s %s %s %s" % (sys.argv[1], sys.argv[2], sys.argv[3], r["first_answer_slowest_ms"],
      r["first_answer_median_ms"], r["never_answered"], r["reconnects_per_s"]))' "$when" "$server" "$n" "$json" >>"$WORK/bursts"
  local slowest median never reconnects
  read -r _ _ _ slowest median never reconnects < <(tail -n 1 "$WORK/bursts")
  printf '  burst %-6s %-8s %4s connections: first answer slowest %s ms, median %s ms; never answered %s; reconnects/s %s\n' \
    "$when" "$server" "$n" "$slowest" "$median" "$never" "$reconnects"
}

bursts() {
  local when=$1 n server
  for n in "${BURST_SIZES[@]}"; do
    for server in tribist peer; do burst "$when" "$server" "${ports[$server]}" "$n"; done
  done
}

label() { printf '%s %s conn' "${1%@*}" "${1#*@}"; }

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Column COL of the measured rounds of SCENARIO and SERVER, one value a line.
column() {
  awk -v s="$1" -v v="$2" -v c="$3" '$1 == s && $2 == v && $3 > 0 { print $c }' "$WORK/results"
}

# /health answers SERVER gave wrk (warm-up included; wrk does not count the few requests in
# flight when a run ends).
health_answers() {
  awk -v v="$1" '$2 == v && $1 ~ /^\/health@/ { a += $7 } END { printf "%d\n", a }' "$WORK/results"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f\n", a / b; else print "n/a" }'; }

print_table() {
  local rounds=$1 secs=$2 scenario server rps p99 worst spread errors reconnects peer_rps name rel misses
  echo
  echo "=== $rounds rounds of $secs s per scenario and server, interleaved; medians of the rounds"
  echo "    (spread: (max - min) / median of the rounds' req/s; worst: the highest round's p99;"
  echo "    errors: non-2xx and socket errors, all rounds; reconnects/s: median of the rounds, the"
  echo "    connections accepted beyond wrk's own, so tribist's include its wake-up connections, one"
  echo "    per connection found waiting in tiny_http's pool: see the 'connections:' line below)"
  printf '%-18s %-8s %9s %8s %9s %9s %7s %12s %13s\n' scenario server "req/s" spread "p99 ms" "worst" errors reconnects/s tribist/peer
  for scenario in "${SCENARIOS[@]}"; do
    peer_rps=$(column "$scenario" peer 4 | median)
    for server in tribist peer; do
      rps=$(column "$scenario" "$server" 4 | median)
      spread=$(column "$scenario" "$server" 4 | sort -g |
        awk -v m="$rps" '{ v[NR] = $1 } END { printf("%.1f%%\n", (m > 0) ? (v[NR] - v[1]) / m * 100 : 0) }')
      p99=$(column "$scenario" "$server" 5 | median)
      worst=$(column "$scenario" "$server" 5 | sort -g | tail -n 1)
      errors=$(column "$scenario" "$server" 6 | awk '{ s += $1 } END { print s + 0 }')
      reconnects=$(column "$scenario" "$server" 8 | median)
      name="" rel=""
      if [[ "$server" == tribist ]]; then
        name=$(label "$scenario")
        rel=$(ratio "$rps" "$peer_rps")
      fi
      printf '%-18s %-8s %9.0f %8s %9.2f %9.2f %7s %12s %13s\n' "$name" "$server" "$rps" "$spread" "$p99" \
        "$worst" "$errors" "$reconnects" "$rel"
    done
  done
  echo
  echo "=== tail: tribist's p99 in every round within 1.5 x the peer's p99 of the same round, or 1.5 ms"
  echo "    (what bounds it under steady keep-alive load: the CPU; docs/tail-latency.md)"
  for scenario in "${SCENARIOS[@]}"; do
    misses=$(tail_misses "$scenario")
    if [[ -z "$misses" ]]; then
      printf '%-18s every round within the bound\n' "$(label "$scenario")"
    else
      printf '%-18s %s\n' "$(label "$scenario")" "$(paste -sd';' <<<"$misses")"
    fi
  done
}

print_bursts() {
  [[ -s "$WORK/bursts" ]] || return 0
  echo
  echo "=== bursts: N keep-alive connections opened at once (examples/burst.rs, one event loop, 3 s, /livez);"
  echo "    each connection's first answer from the start of the burst (target: <= 20 ms for tribist)"
  printf '%-7s %-8s %5s %18s %17s %15s %13s\n' when server conns "slowest first ms" "median first ms" "never answered" reconnects/s
  sort -k1,1r -k3,3n -k2,2r "$WORK/bursts" | awk '{ printf "%-7s %-8s %5s %18s %17s %15s %13s\n", $1, $2, $3, $4, $5, $6, $7 }'
  echo "    what bounds tribist's: tiny_http's accept thread starts an OS thread per connection, one"
  echo "    after the other; a connection left waiting in its pool is found and given a thread within"
  echo "    milliseconds (the 'connections:' line); docs/tail-latency.md"
}

main() {
  case "${1:-}" in
    -h | --help) usage; return 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
  esac
  local repo bin workers pool threads rounds secs peer_bin n
  repo=$(cd "$(dirname "$0")/../.." && pwd)
  bin=${BIN:-target/x86_64-unknown-linux-gnu/release/server}
  workers=${WORKERS:-16}
  pool=${POOL:-4}
  threads=${PEER_THREADS:-$(nproc)}
  rounds=${ROUNDS:-3}
  secs=${DURATION:-10}
  local -a conns
  read -ra conns <<<"${CONNECTIONS:-16 64}"
  read -ra BURST_SIZES <<<"${BURSTS-64 256}"
  [[ ${#conns[@]} -gt 0 ]] || die "CONNECTIONS is empty"
  for n in "$workers" "$pool" "$threads" "$rounds" "$secs" "${conns[@]}" "${BURST_SIZES[@]}"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] ||
      die "WORKERS, POOL, PEER_THREADS, ROUNDS, DURATION, CONNECTIONS and BURSTS take whole numbers >= 1, got '$n'"
  done
  [[ "$secs" -ge 8 ]] || die "DURATION=$secs: rounds of at least 8 s (a p99 must see what happens once a second)"
  [[ -x "$bin" ]] || die "no server binary at $bin (run: make release)"
  local tool
  for tool in wrk pgbench psql curl python3; do
    command -v "$tool" >/dev/null ||
      die "$tool is missing (make deps, or: apt-get install wrk curl python3 postgresql)"
  done
  local path
  for path in /health /livez; do
    for n in "${conns[@]}"; do SCENARIOS+=("$path@$n"); done
  done
  peer_bin=$(peer_binary "$repo")
  [[ ${#BURST_SIZES[@]} -eq 0 ]] || BURST_BIN=$(burst_binary "$repo")

  WORK=$(mktemp -d /tmp/tribist-bench.XXXXXX)
  : >"$WORK/results"
  : >"$WORK/bursts"
  trap cleanup EXIT
  stack_up "$WORK" "$bin" TRIBIST_WORKERS="$workers" || die "cannot start PostgreSQL and tribist"
  local pid=$STACK_PID port=$STACK_PORT url=$STACK_URL pg_port
  pg_port=${url##*:}
  pg_port=${pg_port%%/*}
  # The peer's own database in the same cluster, so that each server's queries are counted
  # apart (pg_stat_database counts per database).
  pg_admin -c "CREATE DATABASE peer OWNER tribist" >/dev/null || die "cannot create database peer"
  start_peer "$peer_bin" "${url%/*}/peer" "$pool" "$threads"
  local -A pids=([tribist]=$pid [peer]=$PEER_PID)
  ports=([tribist]=$port [peer]=$PEER_PORT)
  local -A rss_idle rss_open rss_after
  echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) at the start;" \
    "PostgreSQL $(pg_admin -A -t -c 'SHOW server_version') on port $pg_port"
  echo "tribist: pid $pid, $bin, $workers workers (threads; /health's checks shared, on one database connection unless they overlap), database tribist"
  echo "peer:    pid $PEER_PID, axum + tokio, $threads worker threads, a pool of $pool database connections, database peer"
  local server code size before
  for server in tribist peer; do rss_idle[$server]=$(rss_kb "${pids[$server]}"); done
  before=$(xact)
  for server in tribist peer; do
    for path in /health /livez; do
      read -r code size < <(curl -sS -o /dev/null -w '%{http_code} %{size_download}\n' \
        "http://127.0.0.1:${ports[$server]}$path")
      [[ "$code" == 200 ]] || die "$server: $path answered $code"
      echo "$server $path: 200, body $size bytes"
    done
    echo "/health@1 $server 0 0 0 0 1 0" >>"$WORK/results"
  done
  # Bursts on the fresh servers (tribist's pool has 4 idle threads: where tiny_http's queue
  # kept connections waiting).
  bursts fresh
  # Warm-up: every database connection opened, every thread started; not in the table.
  for server in tribist peer; do
    measure "/health@${conns[-1]}" "$server" 0 "http://127.0.0.1:${ports[$server]}/health" "${conns[-1]}" 2
    rss_open[$server]=$(rss_kb "${pids[$server]}")
  done

  local round scenario
  for round in $(seq "$rounds"); do
    for scenario in "${SCENARIOS[@]}"; do
      for server in tribist peer; do
        measure "$scenario" "$server" "$round" "http://127.0.0.1:${ports[$server]}${scenario%@*}" \
          "${scenario#*@}" "$secs"
      done
    done
  done
  bursts warm
  for server in tribist peer; do rss_after[$server]=$(rss_kb "${pids[$server]}"); done

  stop_server "$pid" tribist
  stop_server "$PEER_PID" peer
  backends_gone
  local after
  after=$(xact)
  local -A own queries
  own[tribist]=$(health_line "$WORK/server.log")
  own[peer]=$(health_line "$WORK/peer.log")
  queries[tribist]=$((${after% *} - ${before% *}))
  queries[peer]=$((${after#* } - ${before#* }))

  echo "  pgbench: SELECT 1, $pool connections, $secs s, database tribist"
  echo 'SELECT 1;' >"$WORK/select1.sql"
  local tps
  tps=$(PGPASSWORD=tribist-test-pw pgbench -n -h 127.0.0.1 -p "$pg_port" -U tribist -c "$pool" \
    -j "$pool" -T "$secs" -f "$WORK/select1.sql" tribist 2>/dev/null |
    awk '/^tps/ { print $3; exit }')

  print_table "$rounds" "$secs"
  print_bursts
  echo
  grep -h 'connections: .* found waiting' "$WORK/server.log" | sed 's/^.*connections:/tribist: connections:/' || true

  echo
  echo "=== memory (RSS, kB)"
  printf '%-8s %10s %22s %12s\n' server idle "database connections" "after load"
  for server in tribist peer; do
    printf '%-8s %10s %22s %12s\n' "$server" "${rss_idle[$server]}" "${rss_open[$server]}" "${rss_after[$server]}"
  done

  echo
  echo "=== database queries per /health answer (the whole run: warm-up and rounds)"
  echo "    measured: the delta of pg_stat_database.xact_commit of the server's database, read once its"
  echo "    connections closed (PostgreSQL counts every query as one transaction: tribist's check,"
  echo "    postgres' Client::is_valid, sends an empty query, which counts too; the peer's prepared SELECT 1"
  echo "    counts once per Bind/Execute/Sync); it includes each connection's start-up and first query."
  echo "    Answers: wrk's count (requests in flight when a run ends are not counted). Own count: the"
  echo "    server's 'health: A answers from Q database checks' log line at its shutdown."
  local answers own_answers own_checks
  for server in tribist peer; do
    answers=$(health_answers "$server")
    printf '%-8s %s measured (%d transactions / %d answers); ' "$server" \
      "$(ratio "${queries[$server]}" "$answers")" "${queries[$server]}" "$answers"
    if [[ -n "${own[$server]}" ]]; then
      read -r own_answers own_checks <<<"${own[$server]}"
      echo "own count $(ratio "$own_checks" "$own_answers") ($own_checks checks / $own_answers answers)"
    else
      echo "own count n/a (no such line in its log)"
    fi
  done

  echo
  local health_rps
  health_rps=$(column "/health@${conns[-1]}" tribist 4 | median)
  echo "pgbench SELECT 1 over $pool connections: $(awk -v t="${tps:-0}" 'BEGIN { printf "%.0f", t }') tps;" \
    "tribist /health req/s at ${conns[-1]} connections / pgbench tps = $(ratio "$health_rps" "${tps:-0}") (README target >= 0.80)"
}

main "$@"

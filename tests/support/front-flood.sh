#!/usr/bin/env bash
# What the HTTPS front door buys, measured: the cost of going through it on /health (wrk), and
# a flood of idle and slowloris connections against the front and then against the service
# directly, while a paced prober asks /health on a new connection each time. Prints the
# figures side by side. Rerunnable; every phase is bounded in time and stops by itself.
#
# Run it where both addresses are reachable and the service's process is visible (on a host,
# or in the host's network namespace: ip netns exec NS front-flood.sh ...). docs/front-door.md
# says what each figure means; tests/support/front-lab.sh makes a front on this machine.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: front-flood.sh --front https://DOMAIN --direct http://IP:PORT [options]
  --connect IP      reach DOMAIN at IP (no DNS needed; wrk then runs in a private mount
                    namespace whose /etc/hosts maps DOMAIN to IP: root only)
  --cacert FILE     the CA that signed the front's certificate (pebble's root in tests)
  --idle N          idle keep-alive connections, each after one request, reopened whenever
                    closed (default 10000)
  --slow N          slowloris connections, reopened whenever cut (default 500)
  --seconds S       how long the prober runs once the flood is up (default 30)
  --rate R          probes per second, each on a new connection (default 20)
  --wrk-seconds S   duration of each wrk run (default 10); --wrk-connections N (default 16)
  --skip-direct     no flood against the service itself (it may exhaust it: that is the point)
Needs: python3, wrk, ss. The service is found by its listening port (ss -ltnp).
USAGE
}

die() {
  echo "front-flood.sh: $*" >&2
  exit 2
}

FRONT="" DIRECT="" CONNECT="" CACERT="" IDLE=10000 SLOW=500 SECONDS_=30 RATE=20
WRK_S=10 WRK_C=16 SKIP_DIRECT=0
while (($#)); do
  case $1 in
    --front) FRONT=${2:?}; shift 2 ;;
    --direct) DIRECT=${2:?}; shift 2 ;;
    --connect) CONNECT=${2:?}; shift 2 ;;
    --cacert) CACERT=${2:?}; shift 2 ;;
    --idle) IDLE=${2:?}; shift 2 ;;
    --slow) SLOW=${2:?}; shift 2 ;;
    --seconds) SECONDS_=${2:?}; shift 2 ;;
    --rate) RATE=${2:?}; shift 2 ;;
    --wrk-seconds) WRK_S=${2:?}; shift 2 ;;
    --wrk-connections) WRK_C=${2:?}; shift 2 ;;
    --skip-direct) SKIP_DIRECT=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ $FRONT =~ ^https://([a-z0-9.-]+)(:[0-9]+)?/?$ ]] || die "--front must be https://DOMAIN, got '$FRONT'"
DOMAIN=${BASH_REMATCH[1]}
[[ $DIRECT =~ ^http://([0-9.]+|\[[0-9a-f:]+\]):([0-9]+)/?$ ]] || die "--direct must be http://IP:PORT, got '$DIRECT'"
PORT=${BASH_REMATCH[2]}
for n in "$IDLE" "$SLOW" "$SECONDS_" "$RATE" "$WRK_S" "$WRK_C"; do
  [[ $n =~ ^[0-9]+$ ]] || die "counts and durations are whole numbers, got '$n'"
done
((SECONDS_ <= 600 && WRK_S <= 120)) || die "--seconds is at most 600 and --wrk-seconds 120"
for c in python3 wrk ss; do
  command -v "$c" >/dev/null || die "$c is missing; run: apt-get install python3 wrk iproute2"
done
if [[ -n $CONNECT ]]; then
  [[ $CONNECT =~ ^[0-9.]+$ ]] || die "--connect takes an IPv4 address, got '$CONNECT'"
  [[ $(id -u) -eq 0 ]] || die "--connect needs root (wrk resolves DOMAIN through /etc/hosts); or drop it where DOMAIN resolves"
fi
HERE=$(cd "$(dirname "$0")" && pwd)
FLOOD=$HERE/front_flood.py
# 10,000 idle plus 500 slow connections, each a descriptor here (and at the front).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
need=$((IDLE + SLOW + 200))
(($(ulimit -n) >= need)) || die "this shell may open $(ulimit -n) files, the flood needs $need: lower --idle or raise the hard limit (LimitNOFILE=)"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# wrk URL → "req/s p50 p99 errors"
wrk_run() {
  local url=$1 out
  if [[ -n $CONNECT && $url == https://* ]]; then
    printf '%s %s\n' "$CONNECT" "$DOMAIN" >"$TMP/hosts"
    # shellcheck disable=SC2016 # expanded by the inner bash
    out=$(unshare -m bash -c 'mount --bind "$0" /etc/hosts && exec wrk -t2 -c"$1" -d"$2"s --latency "$3"' \
      "$TMP/hosts" "$WRK_C" "$WRK_S" "$url" 2>&1) || true
  else
    out=$(wrk -t2 -c"$WRK_C" -d"$WRK_S"s --latency "$url" 2>&1) || true
  fi
  awk '/Requests\/sec/ {r=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
       /Non-2xx/ {n=$NF} /Socket errors/ {e=$0}
       END {printf "%s %s %s %s\n", r ? r : "-", p50 ? p50 : "-", p99 ? p99 : "-", (n ? n : 0) (e ? " (" e ")" : "")}' <<<"$out"
}

wait_healthy() {
  local i
  for ((i = 0; i < 60; i++)); do
    python3 - "$DIRECT" <<'PY' && return 0
import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1].rstrip("/") + "/health", timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)
PY
    sleep 1
  done
  echo "front-flood.sh: warning: $DIRECT/health is not healthy after 60 s" >&2
}

flood() {
  local url=$1 out=$2
  local args=(flood --url "$url/health" --service-port "$PORT" --idle "$IDLE" --slow "$SLOW"
    --seconds "$SECONDS_" --rate "$RATE")
  [[ -n $CONNECT && $url == https://* ]] && args+=(--connect "$CONNECT")
  [[ -n $CACERT ]] && args+=(--cacert "$CACERT")
  python3 "$FLOOD" "${args[@]}" >"$out"
}

echo "front-flood: front $FRONT${CONNECT:+ (at $CONNECT)}, direct $DIRECT; $(nproc) cores"
wait_healthy
echo "== cost of the front on /health: wrk -t2 -c$WRK_C -d${WRK_S}s"
direct_wrk=$(wrk_run "${DIRECT%/}/health")
front_wrk=$(wrk_run "https://$DOMAIN/health")
printf '%-28s %-14s %-14s\n' "" direct front
paste <(printf '%s\n' "requests/s" "p50" "p99" "non-2xx") \
  <(tr ' ' '\n' <<<"${direct_wrk%% (*}") <(tr ' ' '\n' <<<"${front_wrk%% (*}") |
  awk -F'\t' '{printf "%-28s %-14s %-14s\n", $1, $2, $3}'

echo "== quiet: the prober alone, ${RATE}/s for 10 s, a new connection (and TLS handshake) each"
quiet() {
  local url=$1
  local args=(flood --url "$url/health" --service-port "$PORT" --idle 0 --slow 0 --seconds 10 --rate "$RATE")
  [[ -n $CONNECT && $url == https://* ]] && args+=(--connect "$CONNECT")
  [[ -n $CACERT ]] && args+=(--cacert "$CACERT")
  python3 "$FLOOD" "${args[@]}" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["probes"], r["failed"], r["p50_ms"], r["p99_ms"])'
}
q_direct=$(quiet "${DIRECT%/}")
q_front=$(quiet "https://$DOMAIN")
printf '%-28s %-14s %-14s\n' "" direct front
paste <(printf '%s\n' "probes" "failed" "p50 (ms)" "p99 (ms)") <(tr ' ' '\n' <<<"$q_direct") <(tr ' ' '\n' <<<"$q_front") |
  awk -F'\t' '{printf "%-28s %-14s %-14s\n", $1, $2, $3}'

echo "== flood: $IDLE idle + $SLOW slowloris connections, prober ${RATE}/s for ${SECONDS_}s"
flood "https://$DOMAIN" "$TMP/front.json"
if ((SKIP_DIRECT)); then
  echo '{}' >"$TMP/direct.json"
else
  wait_healthy
  flood "${DIRECT%/}" "$TMP/direct.json"
  wait_healthy
fi
python3 - "$TMP/direct.json" "$TMP/front.json" <<'PY'
import json, sys
d, f = (json.load(open(p)) for p in sys.argv[1:3])
rows = [
    ("set-up time (s)", "setup_s"),
    ("idle connections open", "idle_open_at_start"),
    ("idle attempts failed", "idle_failed"),
    ("idle closed by the server", "idle_closed"),
    ("idle open at end", "idle_open_at_end"),
    ("slowloris open at start", "slow_open_at_start"),
    ("slowloris cut (reopened)", "slow_cut"),
    ("probes", "probes"),
    ("probes failed", "failed"),
    ("probe p50 (ms)", "p50_ms"),
    ("probe p99 (ms)", "p99_ms"),
    ("probe max (ms)", "max_ms"),
    ("service threads (max)", "service_threads_max"),
    ("service connections (max)", "service_conns_max"),
    ("front RSS max (MB)", "front_rss_mb_max"),
    ("service pid before", "service_pid_before"),
    ("service pids seen after", "service_pids_seen"),
]
print(f"{'':28} {'direct':14} {'front':14}")
for label, key in rows:
    print(f"{label:28} {str(d.get(key, '-')):14} {str(f.get(key, '-')):14}")
for name, r in (("direct", d), ("front", f)):
    if r.get("errors"):
        print(f"{name} probe errors: {r['errors']}")
PY

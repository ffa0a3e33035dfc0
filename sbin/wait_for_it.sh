#!/usr/bin/env bash
# Waits until an HTTP endpoint answers 2xx: by default tribist's /health, on the address
# tribist.socket listens on (as systemd reports it), else http://localhost:8383/health.
set -euo pipefail

readonly PROG=wait_for_it.sh
readonly DEFAULT_URL=http://localhost:8383/health
readonly EXIT_TIMEOUT=124
readonly EXIT_USAGE=2
# At most this many bytes of an answer are read, kept or shown.
readonly BODY_MAX=2000

usage() {
  cat <<USAGE
usage: $PROG [-t SECONDS] [-q] [URL] [-- COMMAND [ARG...]]

Polls URL until it answers with a 2xx status. The default is /health on the address
tribist.socket listens on (systemctl show -p Listen tribist.socket; set by make install
LISTEN=), or $DEFAULT_URL without it.
  -t SECONDS  give up after this long (default 30; 0 tries once)
  -q          quiet: print nothing on success or while waiting
  -- COMMAND  run COMMAND after success (exec: its exit code becomes ours)
  -h, --help  this help

Exit codes: 0 success, $EXIT_TIMEOUT timed out (the last status and body seen are printed:
at most $BODY_MAX bytes of it, printable ASCII only), $EXIT_USAGE misuse, or COMMAND's own.
USAGE
}

# /health on tribist.socket's address, if systemd knows one; else DEFAULT_URL.
default_url() {
  local listen=""
  if command -v systemctl >/dev/null; then
    listen=$(systemctl show -p Listen --value tribist.socket 2>/dev/null | head -n 1) || listen=""
    listen=${listen%% *}
  fi
  if [[ "$listen" =~ ^(([0-9]{1,3}\.){3}[0-9]{1,3}|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$ ]]; then
    listen=${listen/0.0.0.0/127.0.0.1}
    listen=${listen/\[::\]/[::1]}
    echo "http://$listen/health"
  else
    echo "$DEFAULT_URL"
  fi
}

usage_error() {
  echo "$PROG: $*" >&2
  echo "try: $PROG --help" >&2
  exit "$EXIT_USAGE"
}

say() { [[ -n "$QUIET" ]] || echo "$PROG: $*" >&2; }

# Milliseconds on a monotonic-enough clock (bash's EPOCHREALTIME, microseconds).
now_ms() {
  local t=${EPOCHREALTIME/[.,]/}
  echo $((10#${t:0:${#t}-3}))
}

# Printable ASCII only: tabs and line breaks become spaces (trailing ones dropped), every
# other control character (C0, DEL, 8-bit C1) and every non-ASCII byte is dropped. What the
# server sends can reach root's terminal through us; an escape sequence must not.
printable() { LC_ALL=C tr '\t\n\r' '   ' | LC_ALL=C tr -cd '\40-\176' | sed 's/ *$//'; }

# One attempt: sets STATUS (000 when nothing answered) and BODY (printable, from at most
# BODY_MAX bytes of the answer; curl's error text when nothing answered). Bounded in time by
# MAX (curl --max-time) and in memory whatever the server sends, a huge or endless body
# included: head stops after BODY_MAX bytes and curl then gives up (failed write). curl's
# stderr (its error line, and the status via -w %{stderr}, curl >= 7.63) reaches the outer
# capture while curl runs; the body (no line breaks left) is printed after it, ended by a dot.
probe() {
  local url=$1 max=$2 out rest body
  out=$(
    {
      body=$(curl -sS --max-time "$max" -o - -w '%{stderr}\nhttp_code=%{http_code}\n' "$url" 2>&3 |
        head -c "$BODY_MAX" | printable) || true
      printf '%s.' "$body"
    } 3>&1
  ) || true
  BODY=${out##*$'\n'}
  BODY=${BODY%.}
  rest=${out%$'\n'*}
  STATUS=000
  if [[ "$rest" =~ (^|$'\n')http_code=([0-9]{3})($'\n'|$) ]]; then
    STATUS=${BASH_REMATCH[2]}
    rest=${rest/http_code=$STATUS/}
  fi
  if [[ "$STATUS" == 000 ]]; then
    BODY=$(printf '%s' "${rest:0:$BODY_MAX}" | printable)
  fi
  [[ "$STATUS" == 2?? ]]
}

main() {
  local timeout=30 url="" url_set=""
  QUIET=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      -q) QUIET=1 ;;
      -t)
        [[ $# -ge 2 ]] || usage_error "-t needs a number of seconds"
        [[ "$2" =~ ^[0-9]+$ ]] || usage_error "-t needs a whole number of seconds, got '$2'"
        timeout=$2
        shift
        ;;
      -t*) set -- -t "${1#-t}" "${@:2}"; continue ;;
      --) shift; break ;;
      -*) usage_error "unknown option '$1'" ;;
      *)
        [[ -z "$url_set" ]] || usage_error "more than one URL: '$url' and '$1'"
        url=$1
        url_set=1
        ;;
    esac
    shift
  done
  command -v curl >/dev/null || { echo "$PROG: curl is required (apt-get install curl)" >&2; exit 1; }
  [[ -n "$url_set" ]] || url=$(default_url)

  local start deadline left
  start=$(now_ms)
  deadline=$((start + timeout * 1000))
  say "waiting up to ${timeout}s for $url"
  while true; do
    left=$((deadline - $(now_ms)))
    # Each attempt is bounded by the time left (at least 0.2 s, at most 5 s).
    left=$(((left < 200) ? 200 : (left > 5000 ? 5000 : left)))
    if probe "$url" "$((left / 1000)).$(printf '%03d' $((left % 1000)))"; then
      say "$url answered $STATUS after $(( ($(now_ms) - start) / 1000 ))s"
      break
    fi
    if (($(now_ms) >= deadline)); then
      echo "$PROG: timed out after ${timeout}s waiting for $url" >&2
      if [[ "$STATUS" == 000 ]]; then
        echo "$PROG: last attempt: no HTTP answer (${BODY:-nothing listening})" >&2
      else
        echo "$PROG: last answer: HTTP $STATUS ${BODY:0:2000}" >&2
      fi
      exit "$EXIT_TIMEOUT"
    fi
    sleep 0.5
  done
  if [[ $# -gt 0 ]]; then
    exec "$@"
  fi
}

main "$@"

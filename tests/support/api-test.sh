#!/usr/bin/env bash
# `make test-api`: schemathesis (PyPI) fuzzes the live server against api/openapi.yaml, with a
# real PostgreSQL behind it. Every check is on (status codes, content types, headers, schemas,
# 405 with Allow, no 5xx).
set -euo pipefail

readonly SCHEMATHESIS_VERSION=4.32.5

usage() {
  cat <<'USAGE'
usage: api-test.sh [--help]
Environment: BIN (server binary, default target/debug/server), MAX_TIME (fuzzing seconds, 20),
VENV (where schemathesis is installed, default ~/.cache/tribist/venv).
USAGE
}

die() {
  echo "api-test.sh: $*" >&2
  exit 1
}

main() {
  case "${1:-}" in
    -h | --help) usage; return 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
  esac
  local repo venv bin work pg_port port url
  repo=$(cd "$(dirname "$0")/../.." && pwd)
  venv=${VENV:-$HOME/.cache/tribist/venv}
  bin=${BIN:-$repo/target/debug/server}
  [[ -x "$bin" ]] || die "no server binary at $bin (cargo build)"
  if [[ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != *"$SCHEMATHESIS_VERSION"* ]]; then
    echo "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" || die "pip install schemathesis failed"
  fi
  work=$(mktemp -d /tmp/tribist-api.XXXXXX)
  chmod 755 "$work"
  # shellcheck disable=SC2064 # expand now
  trap "kill \$(cat '$work/run/PID' 2>/dev/null) 2>/dev/null; '$repo/tests/support/pg.sh' stop '$work/pg' 2>/dev/null; rm -rf '$work'" EXIT
  pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  url=$("$repo/tests/support/pg.sh" start "$work/pg" "$pg_port")
  mkdir -p "$work/run"
  (cd "$work/run" && DATABASE_URL=$url TRIBIST_LISTEN=127.0.0.1:0 exec "$bin" 2>"$work/server.log") &
  for _ in $(seq 100); do grep -q 'listening on' "$work/server.log" 2>/dev/null && break; sleep 0.05; done
  port=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$work/server.log")
  [[ -n "$port" ]] || die "server did not start: $(cat "$work/server.log")"
  "$venv/bin/schemathesis" run "$repo/api/openapi.yaml" --url "http://127.0.0.1:$port" \
    --checks all --max-time "${MAX_TIME:-20}" --seed 4711
}

main "$@"

#!/usr/bin/env bash
# `make test-api`: schemathesis (PyPI) fuzzes the live server against api/openapi.yaml, with a
# real PostgreSQL behind it. Every check is on (status codes, content types, headers, schemas,
# 405 with Allow, no 5xx).
set -euo pipefail

readonly SCHEMATHESIS_VERSION=4.32.5
# shellcheck source=tests/support/stack.sh
source "$(dirname "$0")/stack.sh"

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
  local repo venv bin work port
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
  # shellcheck disable=SC2064 # expand now: the path is fixed
  trap "stack_down '$work'" EXIT
  stack_up "$work" "$bin" || die "cannot start PostgreSQL and the server"
  port=$STACK_PORT
  "$venv/bin/schemathesis" run "$repo/api/openapi.yaml" --url "http://127.0.0.1:$port" \
    --checks all --max-time "${MAX_TIME:-20}" --seed 4711
}

main "$@"

#!/usr/bin/env bash
# `make run`: the release binary on LISTEN, against DATABASE_URL or, when that is unset, a
# local PostgreSQL cluster in DEV_DIR/pg (installed first when missing and run as root).
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: run.sh    (environment: BIN, LISTEN, DEV_DIR, DEV_PG_PORT, DATABASE_URL)
USAGE
}

main() {
  case "${1:-}" in
    -h | --help) usage; return 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
  esac
  local here bin dev
  here=$(cd "$(dirname "$0")" && pwd)
  bin=$(realpath "${BIN:-target/x86_64-unknown-linux-gnu/release/server}")
  dev=${DEV_DIR:-.dev}
  mkdir -p "$dev/run"
  if [[ -z "${DATABASE_URL:-}" ]]; then
    if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
      "$here/deps.sh" postgresql || {
        echo "run.sh: no PostgreSQL server here; install it (sudo apt-get install postgresql) or set DATABASE_URL" >&2
        exit 1
      }
    fi
    DATABASE_URL=$("$here/pg.sh" start "$dev/pg" "${DEV_PG_PORT:-54329}")
    export DATABASE_URL
    echo "using the local PostgreSQL in $dev/pg (port ${DEV_PG_PORT:-54329})"
  fi
  cd "$dev/run"
  TRIBIST_LISTEN=${LISTEN:-127.0.0.1:8383} exec "$bin"
}

main "$@"

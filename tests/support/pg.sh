#!/usr/bin/env bash
# Throwaway PostgreSQL clusters for tests and `make run`: a real server, in a directory of its
# own, on a port of its own, with a password-protected role `tribist` and database `tribist`.
set -euo pipefail

readonly ROLE=tribist
readonly PASSWORD=tribist-test-pw

usage() {
  cat <<'USAGE'
usage: pg.sh start DIR PORT   create (first time) and start a cluster in DIR listening on
                              127.0.0.1:PORT; prints its DATABASE_URL
       pg.sh stop DIR         stop it (fast shutdown)
       pg.sh url DIR          print the DATABASE_URL of the cluster in DIR
       pg.sh --help

PG_BINDIR selects the PostgreSQL binaries (default: newest /usr/lib/postgresql/*/bin).
As root, the cluster runs as user postgres (PostgreSQL refuses to run as root).
USAGE
}

die() {
  local code=$1
  shift
  echo "pg.sh: $*" >&2
  exit "$code"
}

bindir() {
  if [[ -n "${PG_BINDIR:-}" ]]; then
    echo "$PG_BINDIR"
    return
  fi
  local d
  d=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
  [[ -n "$d" ]] || die 1 "no PostgreSQL server found under /usr/lib/postgresql; install it: apt-get install postgresql"
  echo "$d"
}

# Runs a command as the cluster's owner.
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

url_of() {
  local dir=$1
  [[ -f "$dir/port" ]] || die 1 "no cluster in $dir (run: pg.sh start $dir PORT)"
  echo "postgres://$ROLE:$PASSWORD@127.0.0.1:$(cat "$dir/port")/$ROLE"
}

start() {
  local dir=$1 port=$2 bin
  bin=$(bindir)
  [[ "$port" =~ ^[0-9]+$ ]] || die 2 "PORT must be a number, got '$port'"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [[ $(id -u) -eq 0 ]] && chown postgres: "$dir"
  if [[ ! -f "$dir/data/PG_VERSION" ]]; then
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust \
      --auth-host=scram-sha-256 -N -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
      die 1 "initdb failed; see $dir/initdb.log"
    echo "$port" >"$dir/port"
    local fresh=1
  fi
  port=$(cat "$dir/port")
  if ! as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
      start >/dev/null || die 1 "PostgreSQL did not start; see $dir/server.log"
  fi
  if [[ -n "${fresh:-}" ]]; then
    as_owner "$bin/psql" -X -q -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
      -c "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD'" \
      -c "CREATE DATABASE $ROLE OWNER $ROLE" >/dev/null || die 1 "cannot create role $ROLE"
  fi
  url_of "$dir"
}

stop() {
  local dir=$1 bin
  bin=$(bindir)
  [[ -f "$dir/data/PG_VERSION" ]] || die 1 "no cluster in $dir"
  as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
}

main() {
  case "${1:-}" in
    -h | --help) usage ;;
    start) [[ $# -eq 3 ]] || die 2 "usage: pg.sh start DIR PORT"; start "$2" "$3" ;;
    stop) [[ $# -eq 2 ]] || die 2 "usage: pg.sh stop DIR"; stop "$2" ;;
    url) [[ $# -eq 2 ]] || die 2 "usage: pg.sh url DIR"; url_of "$2" ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"

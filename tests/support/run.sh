#!/usr/bin/env bash
# `make run`: the release binary on LISTEN, against DATABASE_URL or, when that is unset, a
# local PostgreSQL cluster in DEV_DIR/pg (installed first when missing and run as root).
#
# The cluster listens on 127.0.0.1:DEV_PG_PORT when that is given (every time: a cluster that
# ran on another port is moved), else on the first free port of the one it used last and
# 54329 upwards. The role and database tribist are made whenever they are missing.
set -euo pipefail

readonly PROG=run.sh
readonly FIRST_PORT=54329
readonly PORT_TRIES=20

usage() {
  cat <<USAGE
usage: $PROG    (environment: BIN, LISTEN, DEV_DIR, DEV_PG_PORT, DATABASE_URL)

Without DATABASE_URL, starts (creating it the first time) a PostgreSQL cluster in
DEV_DIR/pg (default .dev/pg) on 127.0.0.1:DEV_PG_PORT, or, when DEV_PG_PORT is empty, on
the first free port of the one it used last and $FIRST_PORT..$((FIRST_PORT + PORT_TRIES - 1)).
Prints the port it uses, then runs BIN on LISTEN (default 127.0.0.1:8383).
USAGE
}

die() {
  echo "$PROG: $*" >&2
  exit 1
}

# True when something accepts TCP connections on 127.0.0.1:PORT.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The first port from FIRST_PORT up that nothing listens on (a suggestion for a fix).
free_port() {
  local port
  for ((port = FIRST_PORT; port < FIRST_PORT + 1000; port++)); do
    listening "$port" || { echo "$port"; return 0; }
  done
  echo "$((FIRST_PORT + 1000))"
}

# The directory of the cluster: DEV/pg. As root the cluster runs as user postgres, which
# cannot enter a checkout under a closed directory (/root): then DEV/pg is a link to a
# directory of this checkout's own in /var/tmp.
pg_dir() {
  local dev=$1 abs alt
  abs=$(cd "$dev" && pwd -P)
  if [[ $(id -u) -ne 0 || -L "$dev/pg" ]] || runuser -u postgres -- test -x "$abs" 2>/dev/null; then
    echo "$dev/pg"
    return 0
  fi
  [[ ! -e "$abs/pg/data/PG_VERSION" ]] ||
    die "the cluster in $dev/pg cannot run: user postgres cannot enter $abs; fix (the cluster is throwaway): rm -rf $dev/pg"
  rm -rf "${abs:?}/pg"
  alt=/var/tmp/tribist-dev-$(printf '%s' "$abs" | cksum | cut -d ' ' -f 1)
  mkdir -p "$alt"
  ln -s "$alt" "$abs/pg"
  echo "user postgres cannot enter $abs, so the cluster lives in $alt ($dev/pg links to it)" >&2
  echo "$dev/pg"
}

# Starts the cluster in DIR; sets URL and PORT.
start_pg() {
  local dir=$1 pg=$2 given=${DEV_PG_PORT:-} err=$3 rc port taken=() tried=" "
  if [[ -n "$given" ]]; then
    if ! [[ "$given" =~ ^[1-9][0-9]{0,4}$ ]] || ((given > 65535)); then
      die "DEV_PG_PORT must be a TCP port number (1-65535), got '$given'; fix: make run DEV_PG_PORT=$(free_port)"
    fi
    rc=0
    URL=$("$pg" start "$dir" "$given" 2>"$err") || rc=$?
    if ((rc == 3)); then
      sed 's/; start it on another.*//; s/^pg\.sh: //' "$err" >&2
      die "DEV_PG_PORT=$given is taken; fix: make run DEV_PG_PORT=$(free_port)"
    fi
    ((rc == 0)) || { cat "$err" >&2; exit "$rc"; }
    PORT=$given
    return 0
  fi
  local candidates=()
  [[ -f "$dir/port" ]] && candidates+=("$(cat "$dir/port")")
  for ((port = FIRST_PORT; port < FIRST_PORT + PORT_TRIES; port++)); do candidates+=("$port"); done
  for port in "${candidates[@]}"; do
    [[ "$tried" == *" $port "* ]] && continue
    tried+="$port "
    rc=0
    URL=$("$pg" start "$dir" "$port" 2>"$err") || rc=$?
    if ((rc == 0)); then
      PORT=$port
      ((${#taken[@]} == 0)) || printf 'taken on 127.0.0.1: %s; using port %s\n' "$(IFS=,; echo "${taken[*]}")" "$port" >&2
      return 0
    fi
    ((rc == 3)) || { cat "$err" >&2; exit "$rc"; }
    taken+=("$(sed -n 's/.*port \([0-9]*\) on 127\.0\.0\.1 is taken\( (by \([^)]*\))\)\{0,1\}.*/\1\2/p' "$err")")
  done
  die "no free port for PostgreSQL among ${candidates[*]} on 127.0.0.1; fix: make run DEV_PG_PORT=$(free_port)"
}

main() {
  case "${1:-}" in
    -h | --help) usage; return 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
  esac
  local here bin dev dir
  here=$(cd "$(dirname "$0")" && pwd)
  bin=$(realpath "${BIN:-target/x86_64-unknown-linux-gnu/release/server}")
  dev=${DEV_DIR:-.dev}
  mkdir -p "$dev/run"
  if [[ -z "${DATABASE_URL:-}" ]]; then
    if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
      "$here/deps.sh" postgresql || {
        echo "$PROG: no PostgreSQL server here; install it (sudo apt-get install postgresql) or set DATABASE_URL" >&2
        exit 1
      }
    fi
    dir=$(pg_dir "$dev")
    URL="" PORT=""
    start_pg "$dir" "$here/pg.sh" "$dev/run/pg-start.err"
    export DATABASE_URL=$URL
    echo "using the local PostgreSQL in $dir on 127.0.0.1:$PORT (another port: make run DEV_PG_PORT=PORT); psql $URL"
  fi
  cd "$dev/run"
  TRIBIST_LISTEN=${LISTEN:-127.0.0.1:8383} exec "$bin"
}

main "$@"

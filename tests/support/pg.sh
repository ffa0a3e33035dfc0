#!/usr/bin/env bash
# Throwaway PostgreSQL clusters for tests and `make run`: a real server, in a directory of its
# own, on a port of its own, with a password-protected role `tribist` and database `tribist`.
set -euo pipefail

readonly ROLE=tribist
readonly PASSWORD=tribist-test-pw

usage() {
  cat <<'USAGE'
usage: pg.sh start DIR PORT [--tls]
                              create (first time) and start a cluster in DIR listening on
                              127.0.0.1:PORT (every time: a cluster already running on
                              another port is restarted on PORT), with the role and
                              database tribist (made whenever missing); prints its
                              DATABASE_URL. Exit 3 if PORT is taken. With --tls the
                              cluster has ssl = on with a certificate for localhost and
                              127.0.0.1 signed by a CA made for it: DIR/tls/ca.pem; and
                              DIR/tls/other-ca.pem is a CA that did not sign it
       pg.sh stop DIR         stop it (fast shutdown)
       pg.sh url DIR          print the DATABASE_URL of the cluster in DIR
       pg.sh --help

PG_BINDIR selects the PostgreSQL binaries (default: newest /usr/lib/postgresql/*/bin).
As root, the cluster runs as user postgres (PostgreSQL refuses to run as root), so DIR and
every directory above it must be open to that user.
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

# A CA, a server certificate it signs (localhost, 127.0.0.1), and an unrelated CA, in DIR/tls.
make_certs() {
  local tls=$1/tls
  [[ -f "$tls/server.pem" ]] && return 0
  mkdir -p "$tls"
  local ca
  for ca in ca other-ca; do
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=tribist test $ca" \
      -keyout "$tls/$ca.key" -out "$tls/$ca.pem" 2>/dev/null || die 1 "openssl: cannot make $ca"
  done
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$tls/server.key" \
    -out "$tls/server.csr" 2>/dev/null || die 1 "openssl: cannot make the server key"
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$tls/san.ext"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
    -CAcreateserial -days 30 -extfile "$tls/san.ext" -out "$tls/server.pem" 2>/dev/null ||
    die 1 "openssl: cannot sign the server certificate"
  chmod 600 "$tls/server.key"
  chmod 644 "$tls/ca.pem" "$tls/other-ca.pem" "$tls/server.pem"
  [[ $(id -u) -eq 0 ]] && chown postgres: "$tls/server.key" "$tls/server.pem"
  return 0
}

url_of() {
  local dir=$1
  [[ -f "$dir/port" ]] || die 1 "no cluster in $dir (run: pg.sh start $dir PORT)"
  echo "postgres://$ROLE:$PASSWORD@127.0.0.1:$(cat "$dir/port")/$ROLE"
}

# The port the cluster in DIR is running on, or nothing (postmaster.pid's fourth line).
running_port() {
  local pidfile=$1/data/postmaster.pid
  [[ -f "$pidfile" ]] && sed -n 4p "$pidfile"
  return 0
}

# Who listens on 127.0.0.1:PORT, as ss names it ("" if it cannot tell).
holder() {
  command -v ss >/dev/null || return 0
  ss -Hltnp "sport = :$1" 2>/dev/null | head -n 1 |
    sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1, pid \2/p' || true
}

# True when something accepts TCP connections on 127.0.0.1:PORT.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Exits 3: PORT is taken.
port_taken() {
  local who
  who=$(holder "$2")
  die 3 "port $2 on 127.0.0.1 is taken${who:+ (by $who)}; start it on another: pg.sh start $1 OTHER-PORT"
}

# Creates the role and the database whenever they are missing (a first start that failed
# half-way, a role dropped by hand), and sets the password every time.
ensure_role() {
  local dir=$1 port=$2 bin=$3
  as_owner "$bin/psql" -X -q -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -v role="$ROLE" -v password="$PASSWORD" >/dev/null <<'SQL' || die 1 "cannot create role and database $ROLE; see $dir/server.log"
SELECT format('CREATE ROLE %I LOGIN', :'role')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'role', :'role')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'role') \gexec
SQL
}

start() {
  local dir=$1 port=$2 tls=${3:-} bin ssl_opts="" running
  bin=$(bindir)
  if ! [[ "$port" =~ ^[1-9][0-9]{0,4}$ ]] || ((port > 65535)); then
    die 2 "PORT must be a number from 1 to 65535, got '$port'"
  fi
  mkdir -p "$dir"
  # The physical path: as root the cluster runs as postgres, which must not meet a symbolic
  # link through a directory closed to it.
  dir=$(cd "$dir" && pwd -P)
  if [[ $(id -u) -eq 0 ]]; then
    chown postgres: "$dir"
    runuser -u postgres -- test -w "$dir" ||
      die 1 "user postgres cannot write $dir (as root the cluster runs as postgres, and a directory above it is closed to that user); use a directory it can reach, e.g.: pg.sh start /var/tmp/tribist-pg $port"
  fi
  if [[ ! -f "$dir/data/PG_VERSION" ]]; then
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust \
      --auth-host=scram-sha-256 -N -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
      die 1 "initdb failed; see $dir/initdb.log"
  fi
  if [[ "$tls" == --tls ]]; then
    make_certs "$dir"
    ssl_opts=" -c ssl=on -c ssl_cert_file=$dir/tls/server.pem -c ssl_key_file=$dir/tls/server.key"
  fi
  running=""
  as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1 && running=$(running_port "$dir")
  if [[ -n "$running" && "$running" != "$port" ]] && listening "$port"; then
    port_taken "$dir" "$port"
  fi
  if [[ -n "$running" && "$running" != "$port" ]]; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null ||
      die 1 "cannot stop the cluster in $dir (port $running) to move it to port $port; see $dir/server.log"
    running=""
  fi
  if [[ -z "$running" ]]; then
    local logged=0
    [[ -f "$dir/server.log" ]] && logged=$(stat -c %s "$dir/server.log")
    if ! as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200$ssl_opts" \
      start >/dev/null 2>&1; then
      if tail -c +"$((logged + 1))" "$dir/server.log" 2>/dev/null | grep -q 'Address already in use'; then
        port_taken "$dir" "$port"
      fi
      die 1 "PostgreSQL did not start; see $dir/server.log"
    fi
  fi
  echo "$port" >"$dir/port"
  ensure_role "$dir" "$port" "$bin"
  url_of "$dir"
}

stop() {
  local dir=$1 bin
  bin=$(bindir)
  [[ -f "$dir/data/PG_VERSION" ]] || die 1 "no cluster in $dir"
  # The physical path, as start uses: user postgres may not pass through a link's directory.
  dir=$(cd "$dir" && pwd -P)
  as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
}

main() {
  case "${1:-}" in
    -h | --help) usage ;;
    start)
      [[ $# -eq 3 || ( $# -eq 4 && "$4" == --tls ) ]] || die 2 "usage: pg.sh start DIR PORT [--tls]"
      start "$2" "$3" "${4:-}"
      ;;
    stop) [[ $# -eq 2 ]] || die 2 "usage: pg.sh stop DIR"; stop "$2" ;;
    url) [[ $# -eq 2 ]] || die 2 "usage: pg.sh url DIR"; url_of "$2" ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"

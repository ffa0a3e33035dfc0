#!/usr/bin/env bash
# Every binary state and rename in /home/tribist/api, in one place, always as user tribist.
#
# Installed as /home/tribist/bin/releases.sh (root-owned). api/ is the one directory user
# tribist owns on the host, so nothing that runs as root may work in it (docs/deploying.md, "Who owns
# what"): root's deploy.sh calls this script through setpriv as tribist, the unit's pre-start
# step does too, and tribist's own deploy.sh calls it directly. It refuses to run as root.
#
# The states (all files in api/, owned by tribist):
#
# | name              | what                                           | written by            |
# | ----------------- | ---------------------------------------------- | --------------------- |
# | server            | the binary systemd runs                        | promote, revert, swap |
# | server_new        | staged; the next start promotes it             | stage, or tribist's scp |
# | server.prev       | the binary before the last promotion:          | promote, revert, swap |
# |                   | the rollback target                            |                       |
# | server.failed     | the binary of the last failed upgrade          | revert                |
# | .server.before    | during an upgrade: the binary serving before   | stage; removed by     |
# |                   | it (a hard link), put back if the upgrade fails| commit and revert     |
# | .server.prev.keep | during an upgrade: the rollback target before  | stage; removed by     |
# |                   | it, put back if the upgrade fails              | commit and revert     |
# | .upload.XXXXXX    | an upload, checksum verified by receive        | receive, restage;     |
# |                   | (or a kept release, restaged to roll back to)  | discard               |
# | .deploy.holder    | who holds the deploy lock, when tribist does   | deploy.sh as tribist  |
# | releases/ID       | a release that served, by its releaseId (a     | keep; pruned by keep  |
# |                   | hard link): the last KEEP, and the serving and |                       |
# |                   | the previous one whatever their age            |                       |
# | releases/ID.meta  | its version, when it was kept, who shipped it  | keep                  |
#
# A release is its bytes: `identity` tells whether an upload is the installed binary, a new
# release, or other bytes under the installed binary's id (refused by deploy.sh: old and new
# could not be told apart) or a kept one's, and `keep` never replaces a kept binary with
# other bytes. Pruning also removes
# whatever the kit left in releases/ that no release owns (temporary links, lone metadata).
#
# Every step is a rename(2) or a hard link in the same directory: `server` exists at every
# instant and is always a complete binary.
set -euo pipefail
export LC_ALL=C

readonly PROG=releases.sh
readonly API_DIR=${TRIBIST_API_DIR:-/home/tribist/api}
readonly EXIT_CHECKSUM=3
readonly EXIT_CONFIGURATION=4

usage() {
  cat <<USAGE
usage: $PROG COMMAND   (as user tribist; in $API_DIR)

  receive SHA256   read a binary from stdin into a new .upload.XXXXXX, check its SHA-256
                   (exit $EXIT_CHECKSUM and remove it on a mismatch), print its name
  describe NAME    what NAME (server, server.prev, server_new, server.failed or an upload)
                   says of itself with --describe (docs/server.md), checked, as three
                   lines: releaseId=ID, version=V, features=F1 F2 …; exit 1 if it does
                   not run or predates --describe
  version NAME     print the release id NAME reports: its --describe's releaseId, or for a
                   binary that predates --describe the commit of its --version ('server
                   VERSION (commit ID)'); exit 1 if it does not run or says no valid id
  identity NAME ID whether binary NAME, which reports release ID, is 'installed' (the same
                   bytes as server), 'conflict: …' (the installed binary carries ID with
                   other bytes: old and new could not be told apart), 'kept-other: …' (a
                   kept release carries ID with other bytes: NAME may serve but is never
                   kept under that id), or 'new'
  hands-over NAME  exit 0 if NAME can take over from the serving process (its --describe
                   lists the feature 'handover'; before --describe, its --version says
                   'handover: SIGUSR2'), 1 if not
  stage NAME       make upload NAME server_new, keeping server.prev as .server.prev.keep
  commit           the staged upgrade succeeded: drop .server.prev.keep
  revert           a staged upgrade failed: server_new removed; if server was promoted
                   meanwhile, the binary serving before it (.server.before) is server again,
                   .server.prev.keep server.prev, and the failed binary server.failed
  swap             a manual rollback: server and server.prev change places
  promote          server -> server.prev, server_new -> server (the unit's pre-start step)
  preflight NAME RELEASE SECONDS ENVFILE
                   run NAME (server, server.prev or an upload) beside the serving one, with
                   the service's configuration ENVFILE (its TRIBIST_LISTEN replaced by a
                   free loopback port) in a scratch directory; succeed once /health
                   answers 200 with releaseId RELEASE, fail (printing why, the last
                   answer and its output) if it exits, answers otherwise or SECONDS pass;
                   fail at once, exit $EXIT_CONFIGURATION, when /health says the database refuses
                   the configuration ("failure":"configuration": a wrong password, an
                   unknown database or role, a certificate that does not verify)
  discard NAME     remove upload NAME
  keep ID KEEP BY  after a switch: keep the serving binary as releases/ID (ID: its releaseId)
                   with its version, the time and BY (who shipped it); then prune releases/
                   to the newest KEEP, never the serving or the previous one
  list             the kept releases, newest first: ID, version, kept at, by, and which
                   one serves and which is the previous one
  restage PREFIX   copy (hard link) the kept release whose ID starts with PREFIX (one only)
                   to a new upload, for an upgrade to it; print the upload's name
  --help

Exit codes: 0 done, 1 failed (the message says why), 2 misuse, $EXIT_CHECKSUM checksum mismatch,
$EXIT_CONFIGURATION preflight: the database refuses the configuration (waiting will not help).
USAGE
}

die() {
  echo "$PROG: $*" >&2
  exit 1
}

usage_error() {
  echo "$PROG: $*" >&2
  echo "try: $PROG --help" >&2
  exit 2
}

# An upload's name as receive makes it; nothing else is accepted where an upload is meant.
check_upload() {
  [[ "$1" =~ ^\.upload\.[A-Za-z0-9]{6,16}$ ]] || usage_error "'$1' is not an upload name (.upload.XXXXXX)"
}

cmd_receive() {
  local want=$1 tmp got
  [[ "$want" =~ ^[0-9a-f]{64}$ ]] || usage_error "'$want' is not a SHA-256 (64 hex digits)"
  tmp=$(mktemp "$API_DIR/.upload.XXXXXX")
  if ! cat >"$tmp"; then
    rm -f "$tmp"
    die "the upload was cut off; nothing changed, run it again"
  fi
  got=$(sha256sum "$tmp" | cut -d' ' -f1)
  if [[ "$got" != "$want" ]]; then
    rm -f "$tmp"
    echo "$PROG: checksum mismatch: the upload is damaged or incomplete; nothing changed, run make upgrade again" >&2
    exit "$EXIT_CHECKSUM"
  fi
  chmod 0750 "$tmp"
  basename "$tmp"
}

# The commit in `server X.Y.Z (commit C)`; only a plain token is ever printed.
# NAME must be one of the binaries or an upload, and exist.
check_binary() {
  case "$1" in
    server | server.prev | server_new | server.failed) ;;
    *) check_upload "$1" ;;
  esac
  [[ -f "$API_DIR/$1" ]] || die "$1: no such binary"
}

# What binary NAME prints for --version (at most 2000 bytes); fails if it does not run.
version_output() {
  (cd "$API_DIR" && timeout -k 2 10 "./$1" --version </dev/null 2>&1 | head -c 2000)
}

# The one line binary NAME prints for --describe (stdout only, at most 2000 bytes); fails if
# it does not run or refuses the option (a binary that predates it exits 2).
describe_output() {
  (cd "$API_DIR" && timeout -k 2 10 "./$1" --describe </dev/null 2>/dev/null | head -c 2000)
}

# The form of --describe's line (src/contract.rs): {"key":VALUE,…}, VALUE a whole number, a
# string without " or \, or an array of such strings; no blanks. So a key is found by its
# quotes alone: no string can hold a quote.
readonly DESCRIBE_STRING='"[^"\]*"'
readonly DESCRIBE_PAIR="$DESCRIBE_STRING:($DESCRIBE_STRING|[0-9]+|\[($DESCRIBE_STRING(,$DESCRIBE_STRING)*)?\])"
readonly DESCRIBE_LINE="^\{($DESCRIBE_PAIR(,$DESCRIBE_PAIR)*)?\}\$"
# The contract this kit reads.
readonly CONTRACT=1

# describe_key LINE KEY: the value of KEY in a checked line (as it is written: a string with
# its quotes), if KEY is there exactly once.
describe_key() {
  local rest=$1 re="[{,]\"$2\":(\"[^\"]*\"|[0-9]+|\\[[^]]*\\])[,}]"
  [[ "$rest" =~ $re ]] || return 1
  local value=${BASH_REMATCH[1]}
  rest=${rest/"${BASH_REMATCH[0]}"/,}
  [[ ! "$rest" =~ $re ]] || return 1
  printf '%s\n' "$value"
}

# describe_string LINE KEY PATTERN: the string value of KEY, without its quotes, if it
# matches PATTERN (an extended regular expression for the whole value).
describe_string() {
  local value
  value=$(describe_key "$1" "$2") || return 1
  [[ "$value" =~ ^\"(.*)\"$ ]] || return 1
  value=${BASH_REMATCH[1]}
  [[ "$value" =~ ^($3)$ ]] || return 1
  printf '%s\n' "$value"
}

# Sets DESCRIBED_ID, DESCRIBED_VERSION and DESCRIBED_FEATURES (space-separated) from binary
# NAME's --describe; returns 1, setting nothing, when NAME does not describe itself in a
# form this kit reads (it predates --describe, does not run, or says something else).
DESCRIBED_ID="" DESCRIBED_VERSION="" DESCRIBED_FEATURES=""
describe_binary() {
  local out id version features f list=()
  out=$(describe_output "$1") || return 1
  [[ "$out" != *$'\n'* && "$out" =~ $DESCRIBE_LINE ]] || return 1
  [[ "$(describe_key "$out" contract)" == "$CONTRACT" ]] || return 1
  describe_string "$out" name tribist >/dev/null || return 1
  id=$(describe_string "$out" releaseId '[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,63}') || return 1
  version=$(describe_string "$out" version '[A-Za-z0-9._+-]{1,40}') || return 1
  features=$(describe_key "$out" features) || return 1
  [[ "$features" == \[*\] ]] || return 1
  features=${features#[}
  features=${features%]}
  if [[ -n "$features" ]]; then
    IFS=, read -r -a list <<<"$features"
  fi
  features=""
  for f in "${list[@]}"; do
    [[ "$f" =~ ^\"([a-z0-9-]{1,32})\"$ ]] || return 1
    features+="${features:+ }${BASH_REMATCH[1]}"
  done
  DESCRIBED_ID=$id DESCRIBED_VERSION=$version DESCRIBED_FEATURES=$features
}

# Whether the binary describe_binary last read lists feature $1.
described_has() { [[ " $DESCRIBED_FEATURES " == *" $1 "* ]]; }

cmd_describe() {
  local name=$1
  check_binary "$name"
  describe_binary "$name" ||
    die "$name does not describe itself ('$name --describe' failed or printed no line this kit reads: it predates --describe, or does not run)"
  printf 'releaseId=%s\nversion=%s\nfeatures=%s\n' "$DESCRIBED_ID" "$DESCRIBED_VERSION" "$DESCRIBED_FEATURES"
}

# The version binary NAME reports (--describe's, else --version's first line), or nothing.
version_of() {
  if describe_binary "$1"; then
    echo "$DESCRIBED_VERSION"
  else
    version_output "$1" | sed -n '1s/^server \([^ ]*\) .*/\1/p' | tr -cd 'A-Za-z0-9._+-' | head -c 40
  fi
}

cmd_version() {
  local name=$1 out commit
  check_binary "$name"
  if describe_binary "$name"; then
    echo "$DESCRIBED_ID"
    return 0
  fi
  # A binary that predates --describe.
  out=$(version_output "$name") || die "$name does not run on this host ('$name --version' failed)"
  commit=$(sed -n 's/^server [^ ]* (commit \([A-Za-z0-9._+-]\{1,64\}\))$/\1/p' <<<"$out" | head -n 1)
  [[ -n "$commit" ]] || die "$name --version did not print 'server VERSION (commit ID)'"
  echo "$commit"
}

cmd_hands_over() {
  local name=$1 out
  check_binary "$name"
  if describe_binary "$name"; then
    described_has handover
    return
  fi
  # A binary that predates --describe.
  out=$(version_output "$name") || return 1
  grep -qx 'handover: SIGUSR2' <<<"$out"
}

readonly RELEASES_DIR=releases

# A releaseId as --version reports it (the same rule as cmd_version's).
check_id() {
  [[ "$1" =~ ^[A-Za-z0-9._+-]{1,64}$ && "$1" != .* ]] || usage_error "'$1' is not a release id"
}

cmd_keep() {
  local id=$1 keep=$2 by=$3 version f n=0
  check_id "$id"
  [[ "$keep" =~ ^[1-9][0-9]?$ ]] || usage_error "KEEP must be 1 to 99, got '$keep'"
  cd "$API_DIR"
  [[ -f server ]] || die "no server to keep"
  mkdir -p "$RELEASES_DIR"
  [[ -d "$RELEASES_DIR" && ! -L "$RELEASES_DIR" ]] || die "$API_DIR/$RELEASES_DIR is not a directory"
  if [[ -f "$RELEASES_DIR/$id.meta" && "$RELEASES_DIR/$id" -ef server ]]; then
    # Already kept (a rollback to it): it keeps its place and note.
    echo "$PROG: release $id is kept already"
  elif [[ -e "$RELEASES_DIR/$id" ]] && ! cmp -s server "$RELEASES_DIR/$id"; then
    die "releases/$id holds other bytes than the serving binary; not replacing it (two binaries are never one release)"
  else
    version=$(version_of server) || version=""
    ln -f server "$RELEASES_DIR/.$id.tmp"
    mv -f "$RELEASES_DIR/.$id.tmp" "$RELEASES_DIR/$id"
    printf 'version=%s\nkept=%s\nby=%s\n' "${version:-unknown}" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
      "$(printf '%s' "$by" | tr -cd '\40-\176' | head -c 120)" >"$RELEASES_DIR/.$id.meta.tmp"
    mv -f "$RELEASES_DIR/.$id.meta.tmp" "$RELEASES_DIR/$id.meta"
  fi
  # Newest first by the time kept; the serving and the previous binary always stay.
  while IFS= read -r f; do
    n=$((n + 1))
    f=${f%.meta}
    [[ -n "$f" ]] || continue
    if ((n > keep)) && ! [[ "$RELEASES_DIR/$f" -ef server || "$RELEASES_DIR/$f" -ef server.prev ]]; then
      rm -f "$RELEASES_DIR/$f" "$RELEASES_DIR/$f.meta"
      echo "$PROG: pruned release $f (KEEP=$keep)"
    fi
  done < <(cd "$RELEASES_DIR" && ls -1t -- *.meta 2>/dev/null)
  prune_strays
}

# Removes from releases/ what no release owns: temporary links and notes a run left (.ID.tmp,
# .ID.meta.tmp), a binary without its note and a note without its binary.
prune_strays() {
  local f
  for f in "$RELEASES_DIR"/.* "$RELEASES_DIR"/*; do
    [[ -e "$f" || -L "$f" ]] || continue
    case "${f##*/}" in
      . | ..) continue ;;
      .*) ;;
      *.meta) [[ -f "${f%.meta}" ]] && continue ;;
      *) [[ -f "$f.meta" && -f "$f" && ! -L "$f" ]] && continue ;;
    esac
    rm -rf -- "$f"
    echo "$PROG: removed ${f} (no release owns it)"
  done
}

# identity NAME ID: see usage.
cmd_identity() {
  local name=$1 id=$2
  check_binary "$name"
  check_id "$id"
  cd "$API_DIR"
  if [[ -f server ]] && cmp -s "$name" server; then
    echo installed
  elif [[ -f server && "$(cmd_version server 2>/dev/null)" == "$id" ]]; then
    echo "conflict: the installed binary is release $id with other bytes"
  elif [[ -e "$RELEASES_DIR/$id" ]] && ! cmp -s "$name" "$RELEASES_DIR/$id"; then
    echo "kept-other: release $id is kept with other bytes (releases/$id)"
  else
    echo new
  fi
}

cmd_list() {
  local f id marks version kept by
  cd "$API_DIR"
  if [[ ! -d "$RELEASES_DIR" ]]; then
    echo "no release kept yet (one is kept at every successful install and upgrade)"
    unkept_serving
    return 0
  fi
  printf '%-42s %-10s %-21s %s\n' RELEASE VERSION KEPT BY
  while IFS= read -r f; do
    id=${f%.meta}
    [[ -n "$id" && -f "$RELEASES_DIR/$id" ]] || continue
    version=$(sed -n 's/^version=//p' "$RELEASES_DIR/$f" | head -n 1)
    kept=$(sed -n 's/^kept=//p' "$RELEASES_DIR/$f" | head -n 1)
    by=$(sed -n 's/^by=//p' "$RELEASES_DIR/$f" | head -n 1)
    marks=""
    [[ "$RELEASES_DIR/$id" -ef server ]] && marks+=" [serving]"
    [[ -e server.prev && "$RELEASES_DIR/$id" -ef server.prev ]] && marks+=" [previous]"
    printf '%-42s %-10s %-21s %s%s\n' "$id" "${version:-?}" "${kept:-?}" "${by:-?}" "$marks"
  done < <(cd "$RELEASES_DIR" && ls -1t -- *.meta 2>/dev/null)
  unkept_serving
}

# The installed binary when no kept release is it (promoted by hand: server_new and a
# restart), so that what serves is always listed.
unkept_serving() {
  local f id version
  [[ -f server ]] || return 0
  for f in "$RELEASES_DIR"/*; do
    [[ "$f" != *.meta && "$f" -ef server ]] && return 0
  done
  local why="(not kept: installed by hand or not yet healthy)"
  id=$(cmd_version server 2>/dev/null) || id="(does not run)"
  [[ ! -e "$RELEASES_DIR/$id" ]] || why="(not kept: releases/$id holds other bytes)"
  version=$(version_of server) || version=""
  printf '%-42s %-10s %-21s %s%s\n' "$id" "${version:-?}" "-" "$why" " [serving]"
}

cmd_restage() {
  local prefix=$1 matches=() f up
  [[ "$prefix" =~ ^[A-Za-z0-9._+-]{1,64}$ && "$prefix" != .* ]] || usage_error "'$prefix' is not a release id or a prefix of one"
  cd "$API_DIR"
  [[ -d "$RELEASES_DIR" ]] || die "no release is kept here yet"
  for f in "$RELEASES_DIR/$prefix"*; do
    [[ -f "$f" && "$f" != *.meta ]] && matches+=("${f#"$RELEASES_DIR"/}")
  done
  ((${#matches[@]} > 0)) || die "no kept release starts with '$prefix' (make releases lists them)"
  # A whole id wins over the longer ids it begins (<commit> and <commit>-dirty-<hash>).
  if [[ -f "$RELEASES_DIR/$prefix" ]]; then matches=("$prefix"); fi
  ((${#matches[@]} == 1)) || die "'$prefix' names ${#matches[@]} kept releases (${matches[*]}): give more of the id"
  up=$(mktemp "$API_DIR/.upload.XXXXXXXX")
  ln -f "$RELEASES_DIR/${matches[0]}" "$up"
  echo "${up##*/}"
}

cmd_stage() {
  local name=$1
  check_upload "$name"
  [[ -f "$API_DIR/$name" ]] || die "no upload $name"
  cd "$API_DIR"
  rm -f .server.prev.keep .server.before
  if [[ -e server.prev ]]; then ln -f server.prev .server.prev.keep; fi
  if [[ -e server ]]; then ln -f server .server.before; fi
  mv -f "$name" server_new
}

cmd_commit() { rm -f "$API_DIR/.server.prev.keep" "$API_DIR/.server.before"; }

cmd_revert() {
  cd "$API_DIR"
  rm -f server_new
  if [[ ! -e .server.before || server -ef .server.before ]]; then
    # Interrupted before the promotion: the binary serving before is still in place.
    rm -f .server.prev.keep .server.before
    echo "$PROG: server is unchanged"
    return 0
  fi
  ln -f server .server.rolled-back
  mv -f .server.before server
  if [[ -e .server.prev.keep ]]; then mv -f .server.prev.keep server.prev; else rm -f server.prev; fi
  mv -f .server.rolled-back server.failed
  echo "$PROG: the binary serving before the upgrade is server again; the failed one is kept as server.failed"
}

cmd_swap() {
  cd "$API_DIR"
  [[ -e server.prev ]] || die "there is no server.prev to roll back to (already rolled back?)"
  ln -f server .server.rolled-back
  mv -f server.prev server
  mv -f .server.rolled-back server.prev
}

cmd_promote() {
  local had_prev=""
  cd "$API_DIR"
  if [[ ! -e server_new ]]; then
    echo "$PROG: nothing to promote; sha256 $(sha256sum <server | cut -c1-64)"
    return 0
  fi
  [[ -f server_new && -x server_new ]] || die "$API_DIR/server_new is not an executable file; fix or remove it"
  if [[ -e server ]]; then
    # A hard link keeps the running binary as server.prev while `server` stays in place.
    ln -f server server.prev || die "cannot keep server as server.prev"
    had_prev=1
  fi
  # rename(2): `server` is the old or the new binary at every instant, never missing.
  mv -f server_new server || die "cannot move server_new to server"
  echo "$PROG: promoted server_new to server${had_prev:+ (previous binary kept as server.prev)}; sha256 $(sha256sum <server | cut -c1-64)"
}

PREFLIGHT_PID=""
PREFLIGHT_DIR=""
preflight_cleanup() {
  if [[ -n "$PREFLIGHT_PID" ]] && kill -0 "$PREFLIGHT_PID" 2>/dev/null; then
    kill -TERM "$PREFLIGHT_PID" 2>/dev/null || true
    local _
    for _ in $(seq 60); do kill -0 "$PREFLIGHT_PID" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$PREFLIGHT_PID" 2>/dev/null || true
  fi
  if [[ -n "$PREFLIGHT_DIR" ]]; then rm -rf "$PREFLIGHT_DIR"; fi
}

# preflight_failed RELEASE WHY [STATUS]: says why, with the binary's last output lines (whole
# lines, each at most 300 characters), and exits STATUS (default 1).
preflight_failed() {
  echo "$PROG: preflight: release $1 $2" >&2
  if [[ -s "$PREFLIGHT_DIR/log" ]]; then
    echo "$PROG: preflight: its last output lines:" >&2
    tail -n 15 "$PREFLIGHT_DIR/log" | cut -c 1-300 | sed 's/^/    /' >&2
  fi
  exit "${3:-1}"
}

# The "output" of a /health body (why it failed), unescaped enough to read; at most 600 bytes.
health_output() {
  sed -n 's/.*"output":"\(\([^"\\]\|\\.\)*\)".*/\1/p' <<<"$1" | head -n 1 | sed 's/\\"/"/g; s/\\\\/\\/g' | head -c 600
}

cmd_preflight() {
  local name=$1 want=$2 secs=$3 env=$4 port="" out="" status=000 body="" got rc start addr described=""
  case "$name" in server | server.prev) ;; *) check_upload "$name" ;; esac
  [[ "$want" =~ ^[A-Za-z0-9._+-]{1,64}$ ]] || usage_error "'$want' is not a release id"
  [[ "$secs" =~ ^[1-9][0-9]{0,2}$ ]] || usage_error "SECONDS must be 1 to 999, got '$secs'"
  [[ -f "$API_DIR/$name" ]] || die "$name: no such binary"
  [[ -r "$env" ]] || die "cannot read the configuration $env as $(id -un)"
  # What the binary offers: the address file, --env-file. One that predates --describe is
  # read from its output instead (below).
  if describe_binary "$name"; then
    described=1
    if ! described_has env-file; then
      echo "$PROG: preflight: release $want predates server --env-file; not checked before the switch (only after it)"
      return 0
    fi
  fi
  PREFLIGHT_DIR=$(mktemp -d /tmp/tribist-preflight.XXXXXX)
  trap preflight_cleanup EXIT
  trap 'exit 130' INT TERM HUP
  start=$SECONDS
  # Made here, before the background process opens it: on a busy machine the first look at
  # it can come first.
  : >"$PREFLIGHT_DIR/log"
  # The service's environment as systemd gives it (User=tribist), the port moved and written
  # to the address file once bound, the log at info (a binary that predates the address file
  # says the port in its "listening on" line), and a time bound of its own.
  (cd "$PREFLIGHT_DIR" && exec env -i PATH=/usr/local/bin:/usr/bin:/bin USER=tribist LOGNAME=tribist \
    HOME=/home/tribist TRIBIST_LISTEN=127.0.0.1:0 TRIBIST_LOG_LEVEL=info \
    TRIBIST_ADDRESS_FILE="$PREFLIGHT_DIR/address" timeout -k 2 "$((secs + 5))" "$API_DIR/$name" --env-file "$env") </dev/null >>"$PREFLIGHT_DIR/log" 2>&1 &
  PREFLIGHT_PID=$!
  while true; do
    if [[ -z "$port" && -n "$described" ]] && described_has address-file; then
      # Written whole (renamed into place), once the server listens.
      if [[ -f "$PREFLIGHT_DIR/address" ]]; then
        addr=$(head -c 100 "$PREFLIGHT_DIR/address")
        [[ "$addr" =~ ^127\.0\.0\.1:([1-9][0-9]{0,4})$ ]] ||
          preflight_failed "$want" "wrote an address file that is not 127.0.0.1:PORT (TRIBIST_ADDRESS_FILE)"
        port=${BASH_REMATCH[1]}
      fi
    elif [[ -z "$port" ]]; then
      # A binary that predates the address file.
      port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$PREFLIGHT_DIR/log" | head -n 1)
    fi
    if [[ -n "$port" ]]; then
      out=$(curl -sS --max-time 2 -w '\n%{http_code}' "http://127.0.0.1:$port/health" 2>&1) || true
      status=${out##*$'\n'}
      body=${out%$'\n'*}
      if [[ "$status" == 200 ]]; then
        got=$(sed -n 's/.*"releaseId":"\([A-Za-z0-9._+-]*\)".*/\1/p' <<<"$body" | head -n 1)
        [[ "$got" == "$want" ]] || preflight_failed "$want" "answered /health 200 but reports releaseId '$got'"
        echo "$PROG: preflight: release $want answered /health 200 (127.0.0.1:$port, $((SECONDS - start)) s)"
        return 0
      fi
      # The server's contract (api/openapi.yaml): a failure waiting cannot cure.
      if [[ "$status" == 503 && "$body" == *'"failure":"configuration"'* ]]; then
        preflight_failed "$want" "cannot work with this configuration: the database refuses it ($(health_output "$body")); waiting will not help" "$EXIT_CONFIGURATION"
      fi
    fi
    if ! kill -0 "$PREFLIGHT_PID" 2>/dev/null; then
      rc=0
      wait "$PREFLIGHT_PID" || rc=$?
      PREFLIGHT_PID=""
      # A binary that predates --describe says so only in its refusal.
      if [[ -z "$described" ]] && grep -q -- 'unexpected argument "--env-file"' "$PREFLIGHT_DIR/log"; then
        echo "$PROG: preflight: release $want predates server --env-file; not checked before the switch (only after it)"
        return 0
      fi
      # Exit status 2 is the server refusing a setting (server --help): definite too.
      if ((rc == 2)); then
        preflight_failed "$want" "refused its configuration (exit status 2; the reason is in its output below)" "$EXIT_CONFIGURATION"
      fi
      preflight_failed "$want" "exited (status $rc) before answering /health 200"
    fi
    if ((SECONDS - start >= secs)); then
      local last=""
      if [[ -n "$port" ]]; then
        last=$(health_output "$body")
        last="; last answer: HTTP $status${last:+: $last}"
        [[ "$status" != 000 || -n "$body" ]] || last="; /health did not answer"
      fi
      preflight_failed "$want" "did not answer /health 200 within ${secs}s$last"
    fi
    sleep 0.05
  done
}

cmd_discard() {
  check_upload "$1"
  rm -f "$API_DIR/$1"
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    -h | --help) usage; return 0 ;;
    "") usage >&2; exit 2 ;;
  esac
  [[ $(id -u) -ne 0 ]] || die "refusing to run as root: api/ belongs to user tribist; deploy.sh runs this through setpriv"
  [[ -d "$API_DIR" ]] || die "$API_DIR does not exist: is tribist installed? (make install)"
  umask 027
  case "$cmd $#" in
    "receive 1") cmd_receive "$1" ;;
    "describe 1") cmd_describe "$1" ;;
    "version 1") cmd_version "$1" ;;
    "identity 2") cmd_identity "$1" "$2" ;;
    "hands-over 1") cmd_hands_over "$1" ;;
    "keep 3") cmd_keep "$1" "$2" "$3" ;;
    "list 0") cmd_list ;;
    "restage 1") cmd_restage "$1" ;;
    "stage 1") cmd_stage "$1" ;;
    "commit 0") cmd_commit ;;
    "revert 0") cmd_revert ;;
    "swap 0") cmd_swap ;;
    "promote 0") cmd_promote ;;
    "discard 1") cmd_discard "$1" ;;
    "preflight 4") cmd_preflight "$@" ;;
    *) usage_error "unknown command or wrong arguments: $cmd" ;;
  esac
}

main "$@"

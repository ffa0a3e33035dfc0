#!/usr/bin/env bash
# Builds the server from a different commit: a clone of this repository with one more
# (empty) commit, so its releaseId differs from the current build's. Used by the e2e tests,
# `make demo` and `make bench-upgrade` to ship a genuinely different release.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: build-alt.sh OUT [DIRTY_OUT]
  build and copy the other release's binary to OUT; with DIRTY_OUT, also a build of the
  same commit with an uncommitted change to its sources (release id <commit>-dirty-<hash>)
The build directory is cached in $TRIBIST_E2E_CACHE/target-alt (default /var/cache/tribist-e2e).
USAGE
}

main() {
  case "${1:-}" in
    -h | --help) usage; return 0 ;;
    "") usage >&2; exit 2 ;;
  esac
  local out=$1 dirty=${2:-} repo src cache
  repo=$(cd "$(dirname "$0")/../.." && pwd)
  cache=${TRIBIST_E2E_CACHE:-/var/cache/tribist-e2e}
  src=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now
  trap "rm -rf '$src'" EXIT
  git clone -q --shared "$repo" "$src/repo"
  git -C "$src/repo" -c user.name=tribist-e2e -c user.email=e2e@localhost \
    commit -q --allow-empty -m "e2e: another release"
  # A suite of its own (TRIBIST_E2E_RUN, see host.sh) builds in a directory of its own: two
  # trees built into one target directory at once mix their artifacts.
  local target=$cache/target-alt
  [[ -z "${TRIBIST_E2E_RUN:-}" ]] || target=$TRIBIST_E2E_RUN/target-alt
  mkdir -p "$target"
  (cd "$src/repo" && CARGO_TARGET_DIR="$target" cargo build -q --release --locked --bin server)
  cp "$target/release/server" "$out"
  if [[ -n "$dirty" ]]; then
    echo "// e2e: an uncommitted change" >>"$src/repo/src/main.rs"
    (cd "$src/repo" && CARGO_TARGET_DIR="$target" cargo build -q --release --locked --bin server)
    cp "$target/release/server" "$dirty"
  fi
}

main "$@"

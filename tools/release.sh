#!/usr/bin/env bash
# `make release`: the binary that make install and make upgrade ship, built to run on every
# maintained x86_64 Linux distribution — it needs glibc 2.17 or newer (RHEL/CentOS 7+,
# Debian 8+, Ubuntu 14.04+), not the glibc of the machine that built it (Debian 12's 2.36).
#
# cargo-zigbuild links with zig's C toolchain against glibc 2.17's symbol versions. Both come
# from PyPI (ziglang, cargo-zigbuild), pinned, into a virtualenv of this checkout's own
# (.tools/zig, ignored by git), installed on first use. Afterwards it checks what it built:
# an x86-64 ELF whose highest GLIBC_ symbol version is at most 2.17.
set -euo pipefail

readonly PROG=release.sh
readonly TARGET=x86_64-unknown-linux-gnu
readonly GLIBC=2.17
readonly ZIGLANG=ziglang==0.17.1
readonly ZIGBUILD=cargo-zigbuild==0.24.1
REPO=$(cd "$(dirname "$0")/.." && pwd)
readonly REPO

usage() {
  cat <<USAGE
usage: $PROG [--help]

Builds target/$TARGET/release/server (and the host program tribist-host beside it) for $TARGET with glibc $GLIBC symbol versions
(cargo zigbuild --release --locked --target $TARGET.$GLIBC), installing $ZIGLANG and
$ZIGBUILD from PyPI into \$TRIBIST_TOOLS/zig (default: .tools/zig in this checkout)
when missing, then checks the result (ELF machine, highest GLIBC_ version needed).
Prints the binary's path. Exit codes: 0 built and checked, 1 failed (the message says why).
USAGE
}

die() {
  echo "$PROG: $*" >&2
  exit 1
}

# The virtualenv with zig and cargo-zigbuild, made or completed when needed; a stamp file
# names the pinned versions it holds.
tools() {
  local venv=$1
  if [[ -x "$venv/bin/cargo-zigbuild" && "$(cat "$venv/.pins" 2>/dev/null)" == "$ZIGLANG $ZIGBUILD" ]]; then
    return 0
  fi
  echo "$PROG: installing $ZIGLANG and $ZIGBUILD from PyPI into $venv (once)" >&2
  # On a fresh machine: installed when root, else named with the command that installs them.
  if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    "$REPO/tests/support/deps.sh" python3 python3-venv || die "python3 and python3-venv are needed (above)"
  fi
  python3 -m venv "$venv" >/dev/null ||
    die "cannot make a virtualenv in $venv: apt-get install python3-venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$ZIGLANG" "$ZIGBUILD" >&2 ||
    die "pip could not install $ZIGLANG and $ZIGBUILD from PyPI (above). Without them no portable binary: build for this machine's glibc only with 'cargo build --release' and ship it with BIN=target/release/server"
  echo "$ZIGLANG $ZIGBUILD" >"$venv/.pins"
}

# Says which release id the binary carries; warns when it is a build of uncommitted changes
# (build.rs names those <commit>-dirty-<hash>, a release of their own).
report_id() {
  local id
  id=$("$1" --version 2>/dev/null | sed -n 's/^server [^ ]* (commit \(.*\))$/\1/p' | head -n 1) || id=""
  if [[ "$id" == *-dirty-* ]]; then
    echo "$PROG: WARNING: built from uncommitted changes: release id $id (a release of its own; commit them to ship a release named by its commit)" >&2
  else
    echo "$PROG: built release ${id:-unknown}" >&2
  fi
}

main() {
  case "${1:-}" in
    -h | --help) usage; return 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
  esac
  local repo=$REPO venv out machine needed
  # shellcheck source=tools/elf.sh
  source "$repo/tools/elf.sh"
  venv=${TRIBIST_TOOLS:-$repo/.tools}/zig
  tools "$venv"
  echo "$PROG: building the release (cargo zigbuild; about a minute the first time)" >&2
  # cargo's own progress goes to the terminal (stderr); the path alone to stdout.
  (cd "$repo" && PATH="$venv/bin:$PATH" "${CARGO:-cargo}" zigbuild --release --locked --target "$TARGET.$GLIBC") ||
    die "the build failed (above)"
  out=$repo/target/$TARGET/release/server
  [[ -x "$out" ]] || die "the build left no $out"
  machine=$(elf_machine "$out")
  needed=$(glibc_needed "$out")
  [[ "$machine" == x86_64 ]] || die "$out is $machine, not x86_64"
  [[ -n "$needed" ]] || die "$out names no GLIBC_ version: not a glibc binary?"
  version_le "$needed" "$GLIBC" || die "$out needs glibc $needed, more than $GLIBC"
  # The host program (tribist-host), shipped by make install beside the server: the same checks.
  local host_out=$repo/target/$TARGET/release/tribist-host
  [[ -x "$host_out" ]] || die "the build left no $host_out"
  [[ "$(elf_machine "$host_out")" == x86_64 ]] || die "$host_out is not x86_64"
  needed=$(glibc_needed "$host_out")
  if [[ -z "$needed" ]] || ! version_le "$needed" "$GLIBC"; then
    die "$host_out needs glibc ${needed:-?}, more than $GLIBC"
  fi
  report_id "$out"
  echo "$out"
}

main "$@"

#!/usr/bin/env bash
# Installs the Debian packages named on the command line that are missing (as root), or says
# which they are and the command that installs them (otherwise). `make deps`, `make run`.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: deps.sh PACKAGE...    install the missing ones (root), or name them and exit 1
USAGE
}

main() {
  case "${1:-}" in
    -h | --help) usage; return 0 ;;
    "") usage >&2; exit 2 ;;
  esac
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
  done
  ((${#missing[@]} > 0)) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing Debian packages: ${missing[*]}; install them: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

main "$@"

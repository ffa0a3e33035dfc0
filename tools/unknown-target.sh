#!/usr/bin/env bash
# `make TYPO`: says the target is unknown, names the nearest one (by edit distance) and where
# the list is, instead of make's bare "No rule to make target". Exit 2.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: unknown-target.sh TARGET MAKEFILE   (make's .DEFAULT rule runs it)
USAGE
}

# The targets `make help` lists: lines "name: … ## help".
targets() { sed -n 's/^\([a-z0-9-]*\):.*## .*/\1/p' "$1"; }

# The target nearest to $1 (Levenshtein distance at most 3), or nothing.
nearest() {
  awk -v want="$1" '
    function dist(a, b,   i, j, la, lb, d, cost, x) {
      la = length(a); lb = length(b)
      for (i = 0; i <= la; i++) d[i, 0] = i
      for (j = 0; j <= lb; j++) d[0, j] = j
      for (i = 1; i <= la; i++)
        for (j = 1; j <= lb; j++) {
          cost = (substr(a, i, 1) == substr(b, j, 1)) ? 0 : 1
          x = d[i-1, j] + 1
          if (d[i, j-1] + 1 < x) x = d[i, j-1] + 1
          if (d[i-1, j-1] + cost < x) x = d[i-1, j-1] + cost
          d[i, j] = x
        }
      return d[la, lb]
    }
    { n = dist(want, $0); if (best == "" || n < bestn) { best = $0; bestn = n } }
    END { if (best != "" && bestn <= 3) print best }'
}

# Every argument is data (make passes the target as typed, `make -- --help` included).
main() {
  [[ $# -eq 2 ]] || { usage >&2; exit 2; }
  local target=$1 makefile=$2 near
  near=$(targets "$makefile" | nearest "$target")
  printf 'make: there is no target %q%s; make help lists them all\n' "$target" "${near:+ (did you mean: make $near?)}" >&2
  exit 2
}

main "$@"

#!/usr/bin/env bash
# The developer's side of every deployment target: `make install|upgrade|rollback|status|logs|
# audit|unlock|uninstall|check|config|releases|start|stop` each call this script, which hands
# over to the program tribist-deploy (src/bin/tribist-deploy.rs, src/deployer/): it checks
# every value, builds each remote command as words quoted by one tested function, and talks
# to the host over ssh. Settings come from the environment (tribist-deploy --help lists them).
#
# This wrapper only builds that program for this machine and runs it with the same arguments
# and environment. It is cargo's debug build, shared with `cargo build` and the tests: after a
# change anywhere in the crate it is rebuilt in seconds (a release build with LTO took
# minutes), and nothing it does is CPU-bound (ssh is).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$REPO/target}
[[ "$target" == /* ]] || target=$PWD/$target
bin=$target/debug/tribist-deploy

if command -v "${CARGO:-cargo}" >/dev/null; then
  [[ -x "$bin" ]] || echo "remote.sh: building tribist-deploy, the deployer's program (cargo build; once)" >&2
  "${CARGO:-cargo}" build --quiet --locked --manifest-path "$REPO/Cargo.toml" --bin tribist-deploy ||
    { echo "remote.sh: building tribist-deploy failed (above); fix that, then run the command again" >&2; exit 1; }
elif [[ ! -x "$bin" ]]; then
  echo "remote.sh: cargo is needed to build $bin: install Rust (https://rustup.rs), then run the command again" >&2
  exit 1
fi
exec "$bin" "$@"

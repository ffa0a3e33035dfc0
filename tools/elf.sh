# shellcheck shell=bash
# What an executable needs from the machine that runs it, read with od and grep only (so it
# works on any machine, binutils or not). Sourced by tools/release.sh; the deployer's program
# reads the same from the ELF's version table (src/deployer/elf.rs).

# "x86_64", "aarch64", … from the ELF header's e_machine (little-endian files); "not-elf"
# for anything else (a script, say).
elf_machine() {
  local magic machine
  magic=$(od -An -tx1 -N4 "$1" 2>/dev/null | tr -d ' \n')
  [[ "$magic" == 7f454c46 ]] || { echo not-elf; return 0; }
  machine=$(od -An -tu2 -j18 -N2 "$1" | tr -d ' \n')
  case "$machine" in
    62) echo x86_64 ;;
    183) echo aarch64 ;;
    3) echo i686 ;;
    40) echo arm ;;
    243) echo riscv64 ;;
    *) echo "elf-machine-$machine" ;;
  esac
}

# The highest GLIBC_x.y[.z] symbol version ELF file $1 needs (from its dynamic string
# table); nothing for a binary without glibc (static, musl).
glibc_needed() {
  { LC_ALL=C grep -aoE 'GLIBC_[0-9]+\.[0-9]+(\.[0-9]+)?' "$1" || true; } | sed 's/^GLIBC_//' | sort -uV | tail -n 1
}

# Whether version $1 <= version $2 (dotted numbers).
version_le() {
  [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" == "$1" ]]
}

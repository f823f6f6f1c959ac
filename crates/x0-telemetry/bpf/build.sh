#!/usr/bin/env bash
# Rebuilds the eBPF objects next to their C sources, reproducibly.
#
#   crates/x0-telemetry/bpf/build.sh           rebuild the committed objects in place
#   crates/x0-telemetry/bpf/build.sh --check   rebuild into a temporary directory and fail if
#                                              any object differs from the committed one
#
# Needs clang, llvm (llvm-strip) and libbpf-dev (bpf_helpers.h): apt-get install -y clang llvm
# libbpf-dev. The objects are built by the clang named in TOOLCHAIN; another clang produces
# different (still valid) bytes, so --check refuses to compare with a different one.
#
# Determinism: compiled from this directory with relative file names, -g only for the BTF that
# the loader needs (map definitions, CO-RE relocations), then the DWARF sections (which hold
# the build directory and the producer string) are stripped; .BTF and .BTF.ext stay.
set -euo pipefail
cd "$(dirname "$0")"

OBJECTS=(underlay tracepoints)
CFLAGS=(-O2 -g -target bpf -mcpu=v3 -Wall -Werror -fno-ident
  "-fdebug-prefix-map=$PWD=." -I/usr/include/x86_64-linux-gnu)

mode=build
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  *) echo "usage: $0 [--check]" >&2; exit 64 ;;
esac

for tool in clang llvm-strip; do
  if ! command -v "$tool" >/dev/null; then
    echo "build.sh: $tool is missing: apt-get install -y clang llvm libbpf-dev" >&2
    exit 1
  fi
done
if [ ! -f /usr/include/bpf/bpf_helpers.h ]; then
  echo "build.sh: bpf/bpf_helpers.h is missing: apt-get install -y libbpf-dev" >&2
  exit 1
fi

toolchain=$(clang --version | head -n 1)
if [ "$mode" = check ] && [ "$toolchain" != "$(cat TOOLCHAIN)" ]; then
  echo "build.sh --check: the objects were built with '$(cat TOOLCHAIN)'," >&2
  echo "  this machine has '$toolchain'; a different clang gives different bytes." >&2
  exit 1
fi

out=.
if [ "$mode" = check ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi

for name in "${OBJECTS[@]}"; do
  clang "${CFLAGS[@]}" -c "$name.c" -o "$out/$name.o.tmp"
  llvm-strip --strip-debug "$out/$name.o.tmp" -o "$out/$name.o"
  rm -f "$out/$name.o.tmp"
done

if [ "$mode" = build ]; then
  echo "$toolchain" > TOOLCHAIN
  sha256sum "${OBJECTS[@]/%/.o}"
  exit 0
fi

status=0
for name in "${OBJECTS[@]}"; do
  if cmp -s "$out/$name.o" "$name.o"; then
    echo "build.sh --check: $name.o matches $name.c"
  else
    echo "build.sh --check: $name.o differs from a fresh build of $name.c;" >&2
    echo "  run crates/x0-telemetry/bpf/build.sh and commit the objects" >&2
    status=1
  fi
done
exit $status

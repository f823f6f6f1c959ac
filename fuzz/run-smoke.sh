#!/usr/bin/env bash
# Fuzz every target for a short time; exit non-zero if any target crashes or fails to build.
#
#   fuzz/run-smoke.sh [SECONDS]      # SECONDS per target, default 10
#
# Runs on stable Rust: `-s none` turns off the sanitizer (AddressSanitizer needs nightly's
# -Zsanitizer; the parsers under test are safe Rust, so the fuzzer still catches panics, failed
# round-trip assertions, overflow (-a: debug assertions) and runaway allocation). To fuzz with
# ASan on a stable toolchain anyway, set X0_FUZZ_SANITIZER=address and RUSTC_BOOTSTRAP=1.
#
# Inputs that found new coverage go to fuzz/corpus/<target>/ (ignored by git); the committed
# starting points are fuzz/seeds/<target>/ (regenerate: cargo run --manifest-path
# fuzz/Cargo.toml --example make_seeds). A crash leaves its input in fuzz/artifacts/<target>/;
# replay it with `cargo fuzz run -s none -a <target> <file>`.
set -euo pipefail

seconds="${1:-10}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS]   (a positive whole number of seconds per target)" >&2
    exit 64
fi
sanitizer="${X0_FUZZ_SANITIZER:-none}"

cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz not found; installing it" >&2
    cargo install cargo-fuzz --locked
fi

flags=(-s "$sanitizer" -a)
echo "building fuzz targets (cargo fuzz build ${flags[*]})" >&2
if ! cargo fuzz build "${flags[@]}"; then
    echo "FAILED: fuzz targets do not build" >&2
    exit 1
fi

mapfile -t targets < <(cargo fuzz list)
if [ "${#targets[@]}" -eq 0 ]; then
    echo "FAILED: no fuzz targets found" >&2
    exit 1
fi

failed=()
for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    dirs=("$corpus")
    if [ -d "fuzz/seeds/$target" ]; then
        dirs+=("fuzz/seeds/$target")
    fi
    echo "== $target: ${seconds}s" >&2
    if ! cargo fuzz run "${flags[@]}" "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "ok: ${#targets[@]} targets, ${seconds}s each, no crashes" >&2

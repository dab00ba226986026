#!/usr/bin/env bash
# The test command (README): installs what a fresh Debian machine lacks, then runs every check
# and test. `.ci/run` calls it with the real data and REQUIRE_REAL_DATA=1.
#   1. rustfmt and clippy (warnings are errors)
#   2. the Rust tests of every crate (set CIFAR10_DIR for the real-data ones)
#   3. the parsers of untrusted files fuzzed, FUZZ_SECONDS (30) per target
#   4. the browser bundle (trunk) and its end-to-end test in headless Chromium
set -euo pipefail
cd "$(dirname "$0")/.."

# Mesa's lavapipe gives wgpu a Vulkan adapter on a CPU-only machine; Chromium runs the page
# (its WebGPU is SwiftShader there). System packages need root.
missing=()
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers libvulkan1)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "test.sh: missing ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

# The toolchain's parts and the browser build's tools, reused when the right versions are there.
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add wasm32-unknown-unknown >/dev/null
bindgen=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
if [ "$(wasm-bindgen --version 2>/dev/null | cut -d' ' -f2)" != "$bindgen" ]; then
  cargo install wasm-bindgen-cli --version "$bindgen"
fi
if [ "$(trunk --version 2>/dev/null | cut -d' ' -f2)" != "0.21.14" ]; then
  # trunk's own release profile is fat LTO in one codegen unit: 11 min here from cold, 7.7
  # without it. A build tool's speed does not need it.
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
    cargo install trunk --version 0.21.14 --locked
fi
npm ci --prefix tests/e2e --no-audit --no-fund
# wasm-opt for the release bundle (index.html): npm's binaryen, so the build stays offline.
npm ci --prefix tools/web --no-audit --no-fund
export PATH="$PWD/tools/web/node_modules/.bin:$PATH"
# Fuzzing needs a nightly compiler (sanitizer flags) and cargo-fuzz; both pinned.
nightly=nightly-2026-05-19
if ! rustup toolchain list | grep -q "^$nightly" && ! rustup toolchain install "$nightly" --profile minimal; then
  # Without the Rust download server, a nightly already installed serves.
  nightly=$(rustup toolchain list | sed -n 's/^\(nightly[^ ]*\).*/\1/p' | head -n 1)
  [ -n "$nightly" ] || { echo "test.sh: no nightly toolchain for fuzzing (rustup toolchain install nightly)" >&2; exit 1; }
  echo "test.sh: nightly-2026-05-19 could not be installed; fuzzing with $nightly" >&2
fi
if [ "$(cargo fuzz --version 2>/dev/null | cut -d' ' -f2)" != "0.13.1" ]; then
  cargo install cargo-fuzz --version 0.13.1 --locked
fi

# Kept outside the clone so that the next run on this machine reuses the build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cifar-webgpu-target}"

cargo fmt --all --check

# The Burn-free parsers (crates/formats) under libFuzzer: no panic, no allocation out of
# proportion to the input (256 MB cap on one allocation, 1 GB of memory in all). New inputs
# go to a corpus kept beside the build; the seeds in crates/formats/fuzz/corpus are read too.
fuzz_seconds="${FUZZ_SECONDS:-30}"
for target in cifar_batch cifar_archive tensor_file checkpoint; do
  kept="$CARGO_TARGET_DIR/fuzz-corpus/$target"
  mkdir -p "$kept"
  log="$CARGO_TARGET_DIR/fuzz-$target.log"
  if ! cargo "+$nightly" fuzz run --fuzz-dir crates/formats/fuzz "$target" "$kept" "crates/formats/fuzz/corpus/$target" -- \
    -max_total_time="$fuzz_seconds" -max_len=16384 -malloc_limit_mb=256 -rss_limit_mb=1024 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "test.sh: fuzz target $target failed; the input is in crates/formats/fuzz/artifacts/$target" >&2
    exit 1
  fi
  echo "fuzz $target: $(grep -E '^(Done|stat::new_units_added)' "$log" | tr '\n' ' ')"
done
# Clippy (warnings are errors) lints the workspace's own crates while the tests and the page
# build them: cargo hands only workspace members to RUSTC_WORKSPACE_WRAPPER, which is how
# `cargo clippy` runs clippy-driver too. A separate `cargo clippy` would compile Burn a second
# time in check mode, natively and for wasm32 (minutes on a cold machine).
clippy=$(rustup which clippy-driver) || { echo "test.sh: clippy is not installed (rustup component add clippy)" >&2; exit 1; }
export RUSTC_WORKSPACE_WRAPPER="$clippy"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
cargo test --release
trunk build --release
npm --prefix tests/e2e test

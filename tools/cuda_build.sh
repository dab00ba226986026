#!/usr/bin/env bash
# Builds the native binary with the `cuda` backend, offline but for Debian's package servers:
#   tools/cuda_build.sh [cargo build arguments...]      (e.g. --release)
#
# Burn's cuda backend links LLVM 23 (cubecl-cuda → cubecl-llvm → tracel-llvm-bundler), and the
# bundler's build script downloads a prebuilt LLVM from GitHub unless it finds one already
# installed in its cache. This script installs Debian's LLVM 23 (sid's static libraries and
# llvm-config, unpacked, not installed) in that cache's layout and lets the build find it:
#   - a private XDG_DATA_HOME holds `tracel/tracel-llvm-<version>/` with the bundler's
#     "installed" marker and a `bin/llvm-config` that forwards to Debian's, without the
#     libraries nothing here links (Polly, z3, libxml2);
#   - glibc before 2.38 lacks the C23 `__isoc23_strto*` that sid's objects call: a three-line
#     shim archive forwards them to `strto*`, so the binary still runs on glibc 2.36.
# No CUDA toolkit is needed: cudarc loads the driver and NVRTC when the backend starts.
# LLVM_CACHE (default ~/.cache/cifar-webgpu-llvm23) keeps the unpacked LLVM between builds.
set -euo pipefail
cd "$(dirname "$0")/.."

# Its own target folder: the cuda feature changes cubecl-core's features, so sharing the
# default build's folder would rebuild most of the tree each time one switches.
export CARGO_TARGET_DIR="${CUDA_TARGET_DIR:-$HOME/.cache/cifar-webgpu-target-cuda}"
cache="${LLVM_CACHE:-$HOME/.cache/cifar-webgpu-llvm23}"
# The LLVM that this Cargo.lock's tracel-llvm-bundler expects, and the cache folder it looks in.
bundler=$(grep -A1 '^name = "tracel-llvm-bundler"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
[ -n "$bundler" ] || { echo "cuda_build.sh: no tracel-llvm-bundler in Cargo.lock" >&2; exit 1; }
major=${bundler%%.*}
llvm="$cache/root/usr/lib/llvm-$major"

if [ ! -x "$llvm/bin/llvm-config" ] || [ ! -f "$llvm/lib/libLLVMNVPTXCodeGen.a" ]; then
  echo "cuda_build.sh: fetching Debian's LLVM $major (sid) into $cache"
  rm -rf "$cache" && mkdir -p "$cache/lists/partial" "$cache/debs/partial" "$cache/root"
  echo "deb http://deb.debian.org/debian sid main" > "$cache/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$cache/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$cache/lists" -o "Dir::Cache::Archives=$cache/debs"
    -o APT::Sandbox::User=root -o Debug::NoLocking=1)
  apt-get "${apt_opts[@]}" update -qq
  (cd "$cache/debs" && apt-get "${apt_opts[@]}" download "llvm-$major-dev" "libllvm$major" "llvm-$major")
  for deb in "$cache"/debs/*.deb; do dpkg-deb -x "$deb" "$cache/root"; done
  rm -rf "$cache/lists" "$cache/debs"
fi
version=$("$llvm/bin/llvm-config" --version)
[ "${version%%.*}" = "$major" ] || {
  echo "cuda_build.sh: $llvm/bin/llvm-config is LLVM $version, the bundler wants $major" >&2
  exit 1
}

# LLVM's support library compresses with zstd: the linker needs libzstd.so.
if [ ! -e /usr/lib/x86_64-linux-gnu/libzstd.so ] && [ ! -e /usr/lib/libzstd.so ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libzstd-dev >/dev/null
  else
    echo "cuda_build.sh: libzstd-dev is missing; install it as root" >&2
    exit 1
  fi
fi

shim=""
glibc=$(getconf GNU_LIBC_VERSION | cut -d' ' -f2)
if [ "$(printf '%s\n2.38\n' "$glibc" | sort -V | head -n 1)" != 2.38 ]; then
  if [ ! -f "$llvm/lib/libcifar_isoc23.a" ]; then
    cat > "$cache/isoc23.c" <<'EOF'
#include <stdlib.h>
long __isoc23_strtol(const char *s, char **end, int base) { return strtol(s, end, base); }
long long __isoc23_strtoll(const char *s, char **end, int base) { return strtoll(s, end, base); }
unsigned long long __isoc23_strtoull(const char *s, char **end, int base) { return strtoull(s, end, base); }
EOF
    gcc -O2 -fPIC -c "$cache/isoc23.c" -o "$cache/isoc23.o"
    ar rcs "$llvm/lib/libcifar_isoc23.a" "$cache/isoc23.o"
  fi
  shim=" -lcifar_isoc23"
fi

prefix="$cache/xdg/tracel/tracel-llvm-$bundler"
mkdir -p "$prefix/bin"
cat > "$cache/llvm-config" <<EOF
#!/bin/sh
# tools/cuda_build.sh: Debian's llvm-config for tracel-llvm-bundler.
real="$llvm/bin/llvm-config"
case " \$* " in
  *" --libs "*|*" --libnames "*)
    echo "\$("\$real" "\$@" | tr ' ' '\n' | grep -v Polly | tr '\n' ' ')$shim" ;;
  *" --system-libs "*) "\$real" "\$@" | tr ' ' '\n' | grep -v -e z3 -e xml2 | tr '\n' ' '; echo ;;
  *) exec "\$real" "\$@" ;;
esac
EOF
# Written only when new: the bundler's build script reruns when its marker changes, and
# everything above cubecl-llvm would be rebuilt.
cmp -s "$cache/llvm-config" "$prefix/bin/llvm-config" || install -m 755 "$cache/llvm-config" "$prefix/bin/llvm-config"
[ -f "$prefix/.tracel-llvm-installed" ] || touch "$prefix/.tracel-llvm-installed"

# The cache marker above stops the bundler's download; only its build script reads this.
export XDG_DATA_HOME="$cache/xdg"
exec cargo build --features cuda "$@"

#!/usr/bin/env bash
# Installs every Debian package that Kiln's build, tests and benchmarks need, then builds.
#   scripts/setup.sh [--bench-extras] [--no-build | --release-only]
# --bench-extras also installs bench/extra-packages.txt (libguestfs for fs_bench.py).
# Builds: build/release (Release), build/asan (Debug with ASan+UBSan), build/fuzz (clang,
# libFuzzer targets).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

# Every module lists its own packages in <module>/packages.txt.
extras=
if [ "${1:-}" = "--bench-extras" ]; then extras=bench/extra-packages.txt; shift; fi
pkgs=$(cat scripts/packages.txt $(ls */packages.txt | grep -v ^scripts/) $extras | sed 's/#.*//' | tr -s ' \n' ' ')
missing=()
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ "${1:-}" = "--no-build" ] && exit 0

build() {  # build DIR [cmake args...]
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja "$@" >/dev/null
  cmake --build "$dir"
}
build build/release -DCMAKE_BUILD_TYPE=Release
[ "${1:-}" = "--release-only" ] && exit 0
build build/asan -DCMAKE_BUILD_TYPE=Debug -DKILN_SANITIZE=ON -DKILN_BUILD_BENCH=OFF
# libFuzzer targets need clang.
CC=clang CXX=clang++ cmake -S . -B build/fuzz -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DKILN_BUILD_FUZZ=ON -DKILN_BUILD_BENCH=OFF >/dev/null
cmake --build build/fuzz --target kiln_fuzz_targets

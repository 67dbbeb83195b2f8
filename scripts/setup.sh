#!/usr/bin/env bash
# Installs every Debian package that Kiln's build, tests and benchmarks need, then builds.
#   scripts/setup.sh [--bench-extras] [--no-build | --release-only] [--help]
# Flags may come in any order.
#   --bench-extras   also install bench/extra-packages.txt (libguestfs for fs_bench.py)
#   --no-build       install packages only
#   --release-only   build build/release only
# Builds: build/release (Release), build/asan (ASan+UBSan at -O1), build/fuzz (clang,
# libFuzzer targets).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

usage() { sed -n '3,9s/^# \{0,1\}//p' "$0"; }
extras= no_build= release_only=
for arg in "$@"; do
  case $arg in
    --bench-extras) extras=bench/extra-packages.txt ;;
    --no-build) no_build=1 ;;
    --release-only) release_only=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done
if [ -n "$no_build" ] && [ -n "$release_only" ]; then
  echo "setup.sh: --no-build and --release-only exclude each other" >&2
  exit 2
fi

# Every module lists its own packages in <module>/packages.txt.
pkgs=$(cat scripts/packages.txt $(ls */packages.txt | grep -v ^scripts/) $extras | sed 's/#.*//' | tr -s ' \n' ' ')
export DEBIAN_FRONTEND=noninteractive
missing=()
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# The guest builders (tests/guest/build.sh, scripts/cloud-image/build.sh) and some tests
# download Debian packages too: they need package lists even when nothing is missing here.
if [ ${#missing[@]} -gt 0 ] || ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
  apt-get update -qq
fi
# The store tests start a PostgreSQL server of their own (tests/common/pg_server.sh): the
# package's default cluster, a service on port 5432, is not wanted.
if [[ " ${missing[*]} " == *" postgresql-15 "* ]]; then
  mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/kiln-no-main-cluster.conf
fi
if [ ${#missing[@]} -gt 0 ]; then
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -n "$no_build" ] && exit 0

# Unity builds (each target's sources compiled in batches) make a clean build 2.4 times faster
# on two cores, and a one-file change slower to rebuild: KILN_UNITY_BUILD=OFF for the latter.
unity=${KILN_UNITY_BUILD:-ON}
build() {  # build DIR [cmake args...]
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja -DCMAKE_UNITY_BUILD="$unity" "$@" >/dev/null
  cmake --build "$dir"
}
build build/release -DCMAKE_BUILD_TYPE=Release
[ -n "$release_only" ] && exit 0
# Line tables (-g1) are what the sanitizers' reports need, and build faster than full -g. -O1,
# as ASan's authors advise: the instrumented code runs 20% faster in the block tests than at
# -O0 (the sanitizer tier runs thousands of processes), for 13% more compile time. clang, not
# GCC: it builds this tree with the sanitizers in 60% of GCC's time, its instrumented
# processes start in two thirds of the time, and CI then compiles with both compilers'
# warnings as errors (docs/layout.md).
build build/asan -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=Debug -DKILN_SANITIZE=ON -DKILN_BUILD_BENCH=OFF \
  "-DCMAKE_CXX_FLAGS_DEBUG=-g1 -O1" "-DCMAKE_C_FLAGS_DEBUG=-g1 -O1"
# libFuzzer targets need clang.
CC=clang CXX=clang++ cmake -S . -B build/fuzz -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_UNITY_BUILD="$unity" \
  -DKILN_BUILD_FUZZ=ON -DKILN_BUILD_BENCH=OFF >/dev/null
cmake --build build/fuzz --target kiln_fuzz_targets

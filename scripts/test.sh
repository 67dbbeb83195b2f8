#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test tier:
#   - the release build: unit, integration and fuzz-free tests;
#   - the ASan+UBSan build: unit and integration tests (scaled down: KILN_TEST_SCALE=0.5);
#   - the libFuzzer targets (clang), each for a bounded time.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
stamp "setup: packages and the release build"
scripts/setup.sh --release-only

jobs=$(nproc)
status=0
mkdir -p build
# The sanitizer and fuzz builds run beside the release tier, at the lowest priority: the tier's
# tests wait on timers, guests and disks much of the time, and the compilers take that idle
# time instead of running before the tests.
# A session of its own is an autogroup of its own, and the scheduler shares the CPU between
# autogroups before nice values count: the group itself is made nice 19 (without this the
# builds took half the CPU and the release tier's suites ran twice as long). The new session
# does it itself: written from here, it could reach this session's group before setsid ran.
setsid bash -c 'echo 19 >/proc/self/autogroup 2>/dev/null; exec nice -n 19 "$@"' builds \
  scripts/setup.sh --no-release >build/other-builds.log 2>&1 &
builds_pid=$!
# The cloud image for e2e.cloud_image takes minutes to build, mostly waiting for downloads:
# build it beside the release tier (the test waits for it through the script's lock). Stopped
# (mmdebstrap and all) by its process group if the run ends first, as the builds are.
setsid scripts/cloud-image/build.sh >build/cloud-image.log 2>&1 &
image_pid=$!
trap 'kill -- "-$image_pid" 2>/dev/null || true; kill -- "-$builds_pid" 2>/dev/null || true' EXIT
stamp "release build: all tests"
ctest --test-dir build/release --output-on-failure -j"$jobs" -LE fuzz || status=1
stamp "waiting for the sanitizer and fuzz builds"
if ! wait "$builds_pid"; then
  tail -n 100 build/other-builds.log
  stamp "the sanitizer or fuzz build failed (build/other-builds.log)"
  exit 1
fi
stamp "ASan+UBSan build: unit and integration tests"
KILN_TEST_SCALE=0.5 ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build/asan --output-on-failure -j"$jobs" -L 'unit|integration' || status=1
if [ -d build/fuzz ]; then
  stamp "fuzz targets (bounded time)"
  ctest --test-dir build/fuzz --output-on-failure -j"$jobs" -L fuzz || status=1
fi
stamp "done"
exit $status

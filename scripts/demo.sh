#!/usr/bin/env bash
# Kiln's main job on embedded defaults: install what is missing, build, build the test guest
# from Debian packages, then boot it with kiln-spawn through kiln-nbd, kiln-net and a libvirtd
# of its own (scripts/boot_demo.py), and show its console. Nothing of the host's libvirt,
# network or processes is changed; everything is removed at the end.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
scripts/setup.sh --release-only
guest=build/release/tests/e2e/guest
echo "== building the test guest (Debian cloud kernel, busybox, ext4 root) into $guest"
tests/guest/build.sh "$guest" >/dev/null
exec /usr/bin/python3 scripts/boot_demo.py build/release "$guest"

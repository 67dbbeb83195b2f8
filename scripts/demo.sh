#!/usr/bin/env bash
# Kiln's main job on embedded defaults: install what is missing, build, build (or reuse) Kiln's
# Debian cloud image from Debian packages (scripts/cloud-image/build.sh, docs/cloud-image.md),
# then boot it with kiln-spawn through kiln-nbd, kiln-net and a libvirtd of its own
# (scripts/boot_demo.py), log in over SSH and show what the guest says. Nothing of the host's
# libvirt, network or processes is changed; everything is removed at the end.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
scripts/setup.sh --release-only
echo "== the cloud image (built from Debian packages the first time: a few minutes)"
image=$(scripts/cloud-image/build.sh)
exec /usr/bin/python3 scripts/boot_demo.py build/release "$image"

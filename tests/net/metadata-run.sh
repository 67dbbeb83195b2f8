#!/usr/bin/env bash
# Runs net.metadata: first, outside the test's namespaces (which have no network), cloud-init's
# Python package unpacked from Debian's packages into a cache that spawn.cli shares
#   metadata-run.sh CACHE_DIR PATH/TO/kiln-net
# then metadata.sh under run-in-netns.sh.
set -euo pipefail
cache=$1
here=$(cd "$(dirname "$0")" && pwd)
site=$cache/tree/usr/lib/python3/dist-packages
if [ ! -d "$site/cloudinit" ]; then
  for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || { echo "FAIL: required tool '$tool' is missing"; exit 1; }
  done
  mkdir -p "$cache/debs"
  (cd "$cache/debs" && apt-get download cloud-init python3-configobj >/dev/null)
  for deb in "$cache"/debs/*.deb; do dpkg-deb -x "$deb" "$cache/tree"; done
fi
export KILN_CLOUD_INIT_SITE=$site
exec bash "$here/run-in-netns.sh" "$here/metadata.sh" "$2"

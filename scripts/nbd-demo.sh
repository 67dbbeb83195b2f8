#!/usr/bin/env bash
# The storage path alone: make a qcow2 overlay on a base image, serve it over
# NBD with kiln-nbd, write to it through a client, and show what the export looks like.
# Everything lives in a temporary directory that is removed at the end.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
scripts/setup.sh --release-only

bin=build/release/nbdserver
work=$(mktemp -d /tmp/kiln-demo-XXXXXX)
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; fi
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "A 1 GiB base image with 16 MiB of data, and a copy-on-write overlay on it"
$bin/tools/kiln-img create -f qcow2 "$work/base.qcow2" 1G
$bin/tools/kiln-io "$work/base.qcow2" -c "write -P 0x4b 0 16M" >/dev/null
$bin/tools/kiln-img create -f qcow2 -b base.qcow2 -F qcow2 "$work/overlay.qcow2"

step "Serve the overlay with kiln-nbd (export 'demo' on a Unix socket)"
sock="$work/nbd.sock"
$bin/kiln-nbd/kiln-nbd --fork --pid-file "$work/kiln-nbd.pid" -t -e 0 -k "$sock" -x demo -f qcow2 \
  -D "Kiln demo overlay" --log "$work/kiln-nbd.log" "$work/overlay.qcow2"
pid=$(cat "$work/kiln-nbd.pid")
uri="nbd+unix:///demo?socket=$sock"
echo "kiln-nbd is running as PID $pid: $uri"

step "A client writes 1 MiB at offset 32 MiB through NBD (qemu-io)"
qemu-io -f raw -c "write -P 0x4e 32M 1M" -c "read -P 0x4e 32M 1M" "$uri"

step "nbdinfo of the export"
nbdinfo "$uri"
step "nbdinfo --map (base:allocation)"
nbdinfo --map "$uri"
step "nbdinfo --map=qemu:allocation-depth (1 = the overlay, 2 = the base)"
nbdinfo --map=qemu:allocation-depth "$uri"

step "Stop kiln-nbd (SIGTERM: drain, flush, close) and check the overlay"
kill -TERM "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
pid=
$bin/tools/kiln-img check "$work/overlay.qcow2"
$bin/tools/kiln-img map -f qcow2 "$work/overlay.qcow2"
echo
echo "kiln-nbd's log:"
sed 's/^/  /' "$work/kiln-nbd.log"

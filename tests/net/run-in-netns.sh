#!/usr/bin/env bash
# Runs one netplumb integration test inside fresh namespaces:
#   run-in-netns.sh TEST.sh PATH/TO/kiln-net
# The test body gets its own network, mount and PID namespaces (so the root namespace's
# links, routes and firewall are never touched, and every process it starts - dnsmasq
# included - dies with it), and a temporary directory that is removed afterwards.
set -euo pipefail
test_script=$(realpath "$1")
kiln_net=$(realpath "$2")
here=$(cd "$(dirname "$0")" && pwd)
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

for tool in unshare nsenter ip nft busybox; do
  command -v "$tool" >/dev/null || { echo "FAIL: required tool '$tool' is missing"; exit 1; }
done
[ -x /usr/sbin/dnsmasq ] || { echo "FAIL: /usr/sbin/dnsmasq is missing (dnsmasq-base)"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "FAIL: integration tests need root"; exit 1; }

tmp=$(mktemp -d /tmp/netplumb-it.XXXXXX)
chmod 755 "$tmp"  # dnsmasq rereads its files as nobody
cleanup() { rm -rf "$tmp"; }
trap cleanup EXIT

export T=$tmp KILN_NET=$kiln_net NP_LIB=$here/lib.sh
export KILN_STATE_DIR=$tmp/state KILN_RUN_DIR=$tmp/run
mkdir -p "$KILN_STATE_DIR" "$KILN_RUN_DIR" "$tmp/ns"
# --kill-child: if this script is killed (ctest timeout), the namespace's processes go too.
unshare --net --mount --pid --fork --mount-proc --kill-child --propagation private \
  bash -c 'ip link set lo up && exec bash "$0"' "$test_script"

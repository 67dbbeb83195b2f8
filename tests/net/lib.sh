# Helpers for netplumb integration tests; sourced inside the test's own namespaces.
# No pipefail: "cmd | grep -q" would fail whenever grep exits before cmd finished writing.
set -eu

kiln-net() { "$KILN_NET" "$@"; }

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "--- $*"; }

# A namespace bound to $T/ns/NAME, for a guest or an "external" network.
make_ns() {
  touch "$T/ns/$1"
  unshare --net="$T/ns/$1" ip link set lo up
}
in_ns() { local ns=$1; shift; nsenter --net="$T/ns/$ns" "$@"; }

# The udhcpc script: configure the leased address and the default route.
cat > "$T/udhcpc.sh" <<'SCRIPT'
#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    if [ -n "$router" ]; then ip route replace default via "${router%% *}" dev "$interface"; fi
    ;;
esac
exit 0
SCRIPT
chmod +x "$T/udhcpc.sh"

# Gets an address by DHCP in guest namespace NS; prints it.
dhcp() {
  in_ns "$1" busybox udhcpc -i "${2:-eth0}" -n -q -t 6 -T 1 -s "$T/udhcpc.sh" >/dev/null 2>&1 ||
    fail "no DHCP lease in $1"
  in_ns "$1" ip -4 -o addr show dev "${2:-eth0}" | awk '{print $4}' | cut -d/ -f1
}

# ping that must pass (a few tries: ARP and bridge learning) / must fail.
ping_ok() {
  local ns=$1 ip=$2
  for _ in 1 2 3 4 5; do
    in_ns "$ns" busybox ping -c 1 -W 1 "$ip" >/dev/null 2>&1 && return 0
  done
  fail "$ns cannot ping $ip"
}
ping_blocked() {
  local ns=$1 ip=$2
  if in_ns "$ns" busybox ping -c 2 -W 1 "$ip" >/dev/null 2>&1; then fail "$ns can ping $ip"; fi
}

# A JSON field of the output of a kiln-net command run with --format json.
json_field() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval("d"+sys.argv[1]))' "$1"; }

# The port's fixed IP.
port_ip() { kiln-net --format json port-show "$1" | json_field '["fixed_ips"][0]["ip_address"]'; }

# Expects a command to fail with a message containing TEXT.
expect_error() {
  local text=$1; shift
  local out
  if out=$("$@" 2>&1); then fail "'$*' succeeded; expected an error with '$text'"; fi
  [[ $out == *"$text"* ]] || fail "'$*' said '$out'; expected '$text'"
}

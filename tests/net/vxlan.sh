# Two "hosts" (namespaces, each with its own kiln-net state) joined by an underlay veth:
# guests on the same VXLAN network reach each other across hosts; a network with another
# VNI and the same addresses stays apart.
source "$NP_LIB"

make_ns hostA
make_ns hostB
ip link add underA netns "$T/ns/hostA" type veth peer name underB netns "$T/ns/hostB"
in_ns hostA ip addr add 10.99.0.1/24 dev underA
in_ns hostB ip addr add 10.99.0.2/24 dev underB
in_ns hostA ip link set underA up
in_ns hostB ip link set underB up

# kiln-net on host H (A or B), with that host's own state and run directories.
on() {
  local h=$1; shift
  mkdir -p "$T/$h/state" "$T/$h/run"
  KILN_STATE_DIR=$T/$h/state KILN_RUN_DIR=$T/$h/run in_ns "host$h" "$KILN_NET" "$@"
}

for h in A B; do
  if [ $h = A ]; then local_ip=10.99.0.1 peer=10.99.0.2; else local_ip=10.99.0.2 peer=10.99.0.1; fi
  on $h --no-plumb config-set vxlan_local_ip $local_ip
  on $h --no-plumb config-set vxlan_peers $peer
  for n in 1 2; do
    on $h net-create net$n --provider:network_type vxlan --provider:segmentation_id $((n * 100)) >/dev/null
    on $h subnet-create net$n 10.10.0.0/24 --name sub$n --disable-dhcp >/dev/null
  done
done

# guest NAME HOST NET IP: a guest namespace with a port on NET at IP, configured statically.
guest() {
  make_ns "$1"
  on "$2" port-create "$3" --name "$1" --netns "$T/ns/$1" --disable-port-security \
    --fixed-ip "subnet=sub${3#net},ip_address=$4" >/dev/null
  in_ns "$1" ip addr add "$4/24" dev eth0
}
guest a1 A net1 10.10.0.11
guest b1 B net1 10.10.0.21
guest a2 A net2 10.10.0.11   # the same addresses on the other network
guest b2 B net2 10.10.0.21
guest b3 B net2 10.10.0.33   # an address that exists only on net2

step "same VXLAN network, different hosts: reachable"
ping_ok a1 10.10.0.21
ping_ok b1 10.10.0.11
ping_ok a2 10.10.0.21
mac_of() { in_ns "$1" ip -o link show eth0 | grep -o "link/ether [0-9a-f:]*" | cut -d" " -f2; }
[[ $(in_ns a1 ip neigh show 10.10.0.21) == *"$(mac_of b1)"* ]] || fail "a1 reached another 10.10.0.21"
[[ $(in_ns a2 ip neigh show 10.10.0.21) == *"$(mac_of b2)"* ]] || fail "a2 reached another 10.10.0.21"

step "peers follow the setting: dropped, then restored"
flood() { in_ns hostA bridge fdb show dev vxlan-100 | grep -c '^00:00:00:00:00:00 dst' || true; }
[ "$(flood)" = 1 ] || fail "vxlan-100 floods to $(flood) peers, not 1"
on A config-set vxlan_peers ""
[ "$(flood)" = 0 ] || fail "flood entry left after the peer was removed"
on A config-set vxlan_peers 10.99.0.2
[ "$(flood)" = 1 ] || fail "flood entry not restored"
in_ns a1 ip neigh flush dev eth0
ping_ok a1 10.10.0.21

step "another network: unreachable"
ping_blocked a1 10.10.0.33
ping_ok a2 10.10.0.33
echo "PASS"

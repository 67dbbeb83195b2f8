# `kiln-net apply` repairs drift: removed devices come back, a killed dnsmasq restarts,
# flushed rules return, stale devices go away; a second apply changes nothing.
source "$NP_LIB"

source "$(dirname "$NP_LIB")/walkthrough.txt" >/dev/null
make_ns vm1
kiln-net --tenant-id demo port-create demo-net --name vm1 --netns "$T/ns/vm1" >/dev/null
net_id=$(kiln-net -f json net-show demo-net | json_field '["id"]')
port_id=$(kiln-net -f json port-show vm1 | json_field '["id"]')
router_id=$(kiln-net -f json router-show demo-router | json_field '["id"]')
rns=$KILN_RUN_DIR/netns/qrouter-$router_id
bridge=brq${net_id:0:11}
tap=tap${port_id:0:11}
ip1=$(port_ip vm1)
[ "$(dhcp vm1)" = "$ip1" ] || fail "no lease"
ping_ok vm1 192.168.0.1

step "apply on a plumbed host changes nothing"
[ -z "$(kiln-net apply 2>&1)" ] || { kiln-net apply; fail "apply was not idempotent"; }

step "a bridge deleted by hand comes back with everything on it"
ip link del "$bridge"
kiln-net apply 2>/dev/null
for dev in vxlan-1 "$tap"; do
  [[ $(ip -o link show "$dev") == *"master $bridge "* ]] || fail "$dev not back on $bridge"
done
ping_ok vm1 192.168.0.1

step "a port device deleted by hand comes back, in the guest's namespace too"
ip link del "$tap"
! in_ns vm1 ip link show eth0 >/dev/null 2>&1 || fail "eth0 survived its peer"
kiln-net apply 2>/dev/null
[[ $(in_ns vm1 ip -o link show eth0) == *"fa:16:3e"* ]] || fail "eth0 not back with the port MAC"
[ "$(dhcp vm1)" = "$ip1" ] || fail "no lease after repair"
ping_ok vm1 192.168.0.1

step "a killed dnsmasq restarts"
pid=$(cat "$KILN_RUN_DIR/dhcp/$net_id/pid")
kill "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
kiln-net apply 2>/dev/null
new=$(cat "$KILN_RUN_DIR/dhcp/$net_id/pid")
[ "$new" != "$pid" ] && kill -0 "$new" || fail "dnsmasq not restarted"
in_ns vm1 ip addr flush dev eth0
[ "$(dhcp vm1)" = "$ip1" ] || fail "no lease from the new dnsmasq"

step "an address removed in the router namespace and flushed rules come back"
nsenter --net="$rns" ip addr flush dev "$(nsenter --net="$rns" ip -o link | grep -o "qr-[^@:]*" | head -1)"
nft delete table inet kiln_sg
nsenter --net="$rns" nft delete table ip kiln_nat
kiln-net apply 2>/dev/null
nsenter --net="$rns" ip -4 -o addr | grep -q '192.168.0.1/24' || fail "router address not back"
nft list table inet kiln_sg >/dev/null || fail "security group table not back"
nsenter --net="$rns" nft list table ip kiln_nat | grep -q 'snat to' || fail "NAT not back"
ping_ok vm1 192.168.0.1

step "a port's chain flushed by hand is refilled"
tag_chain=$(nft list table inet kiln_sg | grep -o 'chain ingress_[0-9]*' | head -1 | cut -d' ' -f2)
nft flush chain inet kiln_sg "$tag_chain"
[[ $(nft list chain inet kiln_sg "$tag_chain") != *"ct state"* ]] || fail "flush did nothing"
kiln-net apply 2>/dev/null
[[ $(nft list chain inet kiln_sg "$tag_chain") == *"ct state established,related accept"* ]] ||
  fail "$tag_chain not refilled"

step "stale devices and namespaces go away"
ip tuntap add tapdeadbeef-00 mode tap
stale=$(kiln-net --no-plumb -f json port-create demo-net | json_field '["id"]')
kiln-net apply 2>/dev/null
ip link show "tap${stale:0:11}" >/dev/null || fail "port not plumbed"
kiln-net --no-plumb port-delete "$stale" >/dev/null
touch "$KILN_RUN_DIR/netns/qrouter-00000000-0000-0000-0000-000000000000"
kiln-net apply 2>/dev/null
! ip link show tapdeadbeef-00 >/dev/null 2>&1 || fail "stale tap kept"
! ip link show "tap${stale:0:11}" >/dev/null 2>&1 || fail "deleted port's tap kept"
[ ! -e "$KILN_RUN_DIR/netns/qrouter-00000000-0000-0000-0000-000000000000" ] ||
  fail "stale namespace kept"
[ -z "$(kiln-net apply 2>&1)" ] || fail "apply not idempotent after repairs"
ping_ok vm1 192.168.0.1
echo "PASS"

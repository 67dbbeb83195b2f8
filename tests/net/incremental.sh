# Port commands plumb just their port: a port added to a plumbed network gets its device, its
# DHCP entry (dnsmasq reloaded, not restarted) and its security-group chains, without touching
# another port's chains or its established connection, and without the whole-host reconcile
# (a stale device survives until `apply`, which still repairs everything).
source "$NP_LIB"

source "$(dirname "$NP_LIB")/walkthrough.txt" >/dev/null
net_id=$(kiln-net -f json net-show demo-net | json_field '["id"]')
bridge=brq${net_id:0:11}
dhcp_dir=$KILN_RUN_DIR/dhcp/$net_id

make_ns vm1
make_ns vm2
kiln-net --tenant-id demo port-create demo-net --name vm1 --netns "$T/ns/vm1" >/dev/null
kiln-net --tenant-id demo port-create demo-net --name vm2 --netns "$T/ns/vm2" >/dev/null
ip1=$(port_ip vm1)
ip2=$(port_ip vm2)
[ "$(dhcp vm1)" = "$ip1" ] || fail "vm1 got no lease"
[ "$(dhcp vm2)" = "$ip2" ] || fail "vm2 got no lease"
tag1=$(kiln-net -f json port-show vm1 | json_field '["id"]')
tag1=$(nft list map bridge kiln_sg from_port | grep -o "\"tap${tag1:0:11}\" : jump from_[0-9]*" |
  grep -o '[0-9]*$')
[ -n "$tag1" ] || fail "vm1 has no security-group chains"
[ -z "$(kiln-net apply 2>&1)" ] || fail "apply after plumbed port-creates found work left"

step "an established TCP connection vm2 -> vm1"
mkfifo "$T/hold" "$T/to-vm1"
exec 4<> "$T/hold"
in_ns vm1 busybox nc -l -p 5000 < "$T/hold" > "$T/received" &
listener=$!
for _ in $(seq 50); do
  [[ $(in_ns vm1 ss -Hltn) == *":5000 "* ]] && break
  sleep 0.1
done
in_ns vm2 busybox nc "$ip1" 5000 < "$T/to-vm1" &
sender=$!
exec 3> "$T/to-vm1"
wait_for() {  # wait_for TEXT: until vm1 has received TEXT
  for _ in $(seq 50); do grep -q "$1" "$T/received" && return 0; sleep 0.1; done
  fail "vm1 never received '$1'"
}
cleanup_flow() {
  exec 3>&- 4>&-
  kill "$sender" "$listener" 2>/dev/null || true
  wait "$sender" "$listener" 2>/dev/null || true
}
trap cleanup_flow EXIT
echo one >&3
wait_for one

step "a port added now: plumbed alone"
ip tuntap add tapdeadbeef-00 mode tap  # stale, netplumb-named: only apply may remove it
chains_before=$(nft -a list chain inet kiln_sg "ingress_$tag1"; nft -a list chain bridge kiln_sg "from_$tag1")
dnsmasq_pid=$(cat "$dhcp_dir/pid")
make_ns vm3
kiln-net --tenant-id demo port-create demo-net --name vm3 --netns "$T/ns/vm3" >/dev/null
ip3=$(port_ip vm3)
id3=$(kiln-net -f json port-show vm3 | json_field '["id"]')
[[ $(ip -o link show "tap${id3:0:11}") == *"master $bridge "* ]] || fail "vm3's device is not on $bridge"
grep -q ",$ip3\$" "$dhcp_dir/host" || fail "the host file lacks vm3"
[ "$(cat "$dhcp_dir/pid")" = "$dnsmasq_pid" ] && kill -0 "$dnsmasq_pid" ||
  fail "dnsmasq was restarted for a port"
[ "$(dhcp vm3)" = "$ip3" ] || fail "vm3 got no lease"
tag3=$(nft list map bridge kiln_sg from_port | grep -o "\"tap${id3:0:11}\" : jump from_[0-9]*" |
  grep -o '[0-9]*$')
[ -n "$tag3" ] || fail "vm3 has no security-group chains"
[[ $(nft list chain inet kiln_sg "ingress_$tag3") == *"ct state established,related accept"* ]] ||
  fail "vm3's ingress chain is empty"
ping_ok vm3 "$ip1"   # the default group admits its members
ping_ok vm1 "$ip3"
[ "$(nft -a list chain inet kiln_sg "ingress_$tag1"; nft -a list chain bridge kiln_sg "from_$tag1")" = \
  "$chains_before" ] || fail "vm1's chains were rewritten (rule handles changed)"
echo two >&3
wait_for two
ip link show tapdeadbeef-00 >/dev/null 2>&1 || fail "port-create reconciled the whole host"

step "a spoofing vm3 still gets nothing through"
in_ns vm3 ip addr flush dev eth0
in_ns vm3 ip addr add 192.168.0.99/24 dev eth0
ping_blocked vm3 "$ip1"
in_ns vm3 ip addr flush dev eth0
in_ns vm3 ip addr add "$ip3/24" dev eth0
ping_ok vm3 "$ip1"

step "port-update and port-delete are incremental too"
kiln-net --tenant-id demo security-group-create locked >/dev/null
kiln-net --tenant-id demo port-update vm3 --security-group locked >/dev/null
ping_blocked vm1 "$ip3"
kiln-net port-delete vm3 >/dev/null
! ip link show "tap${id3:0:11}" >/dev/null 2>&1 || fail "vm3's device survived port-delete"
! nft list chain inet kiln_sg "ingress_$tag3" >/dev/null 2>&1 || fail "vm3's chains survived"
! grep -q ",$ip3\$" "$dhcp_dir/host" || fail "vm3 is still in the host file"
[ "$(cat "$dhcp_dir/pid")" = "$dnsmasq_pid" ] || fail "dnsmasq was restarted for a port-delete"
echo three >&3
wait_for three

step "apply still reconciles everything: the stale device goes, then nothing is left to do"
kiln-net apply 2>/dev/null
! ip link show tapdeadbeef-00 >/dev/null 2>&1 || fail "apply kept the stale tap"
[ -z "$(kiln-net apply 2>&1)" ] || fail "apply not idempotent"

step "a killed dnsmasq is started again by the next port on its network"
kill "$dnsmasq_pid"
while kill -0 "$dnsmasq_pid" 2>/dev/null; do sleep 0.05; done
make_ns vm4
kiln-net --tenant-id demo port-create demo-net --name vm4 --netns "$T/ns/vm4" >/dev/null
new_pid=$(cat "$dhcp_dir/pid")
[ "$new_pid" != "$dnsmasq_pid" ] && kill -0 "$new_pid" || fail "dnsmasq not started again"
[ "$(dhcp vm4)" = "$(port_ip vm4)" ] || fail "vm4 got no lease"
ping_ok vm4 "$ip1"

step "a port on a network whose bridge went: the whole host is reconciled"
ip link del "$bridge"
make_ns vm5
kiln-net --tenant-id demo port-create demo-net --name vm5 --netns "$T/ns/vm5" >/dev/null
id1=$(kiln-net -f json port-show vm1 | json_field '["id"]')
for dev in vxlan-1 "tap${id1:0:11}"; do
  [[ $(ip -o link show "$dev") == *"master $bridge "* ]] || fail "$dev not back on $bridge"
done
[ "$(dhcp vm5)" = "$(port_ip vm5)" ] || fail "vm5 got no lease"
ping_ok vm5 "$ip1"
ping_ok vm1 192.168.0.1
echo four >&3
wait_for four
[ -z "$(kiln-net apply 2>&1)" ] || fail "apply not idempotent at the end"
echo "PASS"

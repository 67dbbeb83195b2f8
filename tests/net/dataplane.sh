# Issue 5's data plane: DHCP, pings across the bridge and the router, SNAT, floating IPs,
# security groups and anti-spoofing - all inside this test's namespaces.
source "$NP_LIB"

step "external network: a namespace that plays the data centre, behind veth ext0"
make_ns external
ip link add ext0 type veth peer name eth0 netns "$T/ns/external"
in_ns external ip addr add 172.24.1.1/24 dev eth0
in_ns external ip link set eth0 up
# Count what arrives there, by source address: SNAT must show the router's gateway IP.
in_ns external nft -f - <<'NFT'
table ip seen {
  counter from_router {}
  counter from_tenant {}
  chain input {
    type filter hook input priority 0;
    ip saddr 172.24.1.100 icmp type echo-request counter name from_router
    ip saddr 192.168.0.0/24 counter name from_tenant
  }
}
NFT
kiln-net --no-plumb config-set physical_interface_mappings physnet1:ext0

step "the walkthrough"
source "$(dirname "$NP_LIB")/walkthrough.txt" >/dev/null

step "two guests on demo-net get their fixed IPs by DHCP"
make_ns vm1
make_ns vm2
kiln-net --tenant-id demo port-create demo-net --name vm1 --netns "$T/ns/vm1" >/dev/null
kiln-net --tenant-id demo port-create demo-net --name vm2 --netns "$T/ns/vm2" \
  --fixed-ip subnet=demo-subnet,ip_address=192.168.0.42 >/dev/null
ip1=$(port_ip vm1)
[ "$(dhcp vm1)" = "$ip1" ] || fail "vm1 leased another address than $ip1"
[ "$(dhcp vm2)" = 192.168.0.42 ] || fail "vm2 did not lease 192.168.0.42"
[ "$(in_ns vm1 ip route show default | awk '{print $3}')" = 192.168.0.1 ] || fail "no default route"

step "guests reach each other and the gateway"
ping_ok vm1 192.168.0.42
ping_ok vm2 "$ip1"
ping_ok vm1 192.168.0.1

step "a guest reaches the external namespace through the router, SNATed"
ping_ok vm1 172.24.1.1
[[ $(in_ns external nft list counter ip seen from_router) == *"packets "[1-9]* ]] ||
  fail "no echo request from 172.24.1.100 seen outside"
[[ $(in_ns external nft list counter ip seen from_tenant) == *"packets 0 "* ]] ||
  fail "tenant addresses leaked outside without SNAT"

step "a floating IP: blocked by the default group until a rule allows it"
fip=$(kiln-net --format json --tenant-id demo floatingip-create public | json_field '["floating_ip_address"]')
[ "$fip" = 172.24.1.101 ] || fail "floating IP is $fip"
kiln-net floatingip-associate "$fip" vm1 >/dev/null
ping_blocked external "$fip"
rule=$(kiln-net --format json --tenant-id demo security-group-rule-create default \
  --direction ingress --protocol icmp --remote-ip-prefix 0.0.0.0/0 | json_field '["id"]')
ping_ok external "$fip"
step "the rule removed: blocked again; vm2 (same group) still reaches vm1"
kiln-net security-group-rule-delete "$rule" >/dev/null
ping_blocked external "$fip"
ping_ok vm2 "$ip1"

step "port-update moves vm1 into a group that allows ping, and out again"
kiln-net --tenant-id demo security-group-create pingable >/dev/null
kiln-net --tenant-id demo security-group-rule-create pingable --protocol icmp >/dev/null
kiln-net --tenant-id demo port-update vm1 --security-group default --security-group pingable >/dev/null
ping_ok external "$fip"
kiln-net --tenant-id demo port-update vm1 --security-group default >/dev/null
ping_blocked external "$fip"

step "an established connection survives rule changes elsewhere"
# busybox nc quits when its stdin ends: give the listener a FIFO that this shell holds open.
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
echo one >&3
wait_for one
kiln-net --tenant-id demo security-group-create other >/dev/null
r=$(kiln-net -f json --tenant-id demo security-group-rule-create other --protocol tcp \
  --port-range-min 22 | json_field '["id"]')
other_port=$(kiln-net -f json --tenant-id demo port-create demo-net --security-group other |
  json_field '["id"]')
kiln-net security-group-rule-delete "$r" >/dev/null
kiln-net port-delete "$other_port" >/dev/null
echo two >&3
wait_for two
exec 3>&- 4>&-
wait "$sender" || true
kill "$listener" 2>/dev/null || true
wait "$listener" 2>/dev/null || true

step "a guest that forges its source IP gets nothing through"
in_ns vm2 ip addr flush dev eth0
in_ns vm2 ip addr add 192.168.0.99/24 dev eth0
ping_blocked vm2 "$ip1"
ping_blocked vm2 192.168.0.1
in_ns vm2 ip addr flush dev eth0
in_ns vm2 ip addr add 192.168.0.42/24 dev eth0
ping_ok vm2 "$ip1"

step "a guest that forges its MAC gets nothing through"
in_ns vm2 ip link set eth0 address fa:16:3e:de:ad:01
ping_blocked vm2 "$ip1"
ping_blocked vm2 192.168.0.1
echo "PASS"

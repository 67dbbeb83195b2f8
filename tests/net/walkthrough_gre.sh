# Issue 12's Neutron walkthrough (walkthrough_gre.txt: the issue's lines with `neutron` replaced
# by `kiln-net`, nothing else changed), run the way DevStack runs it: the first three lines'
# output (the id that `grep " id " | awk '{print $4}'` takes from the table) becomes
# TENANT_NET_ID, TENANT_SUBNET_ID and ROUTER_ID. Then the objects it made, a guest's DHCP lease
# with the network's MTU (1500 less 42 bytes of GRE), and the GRE plumbing: one gretap per peer
# on the bridge, isolated from each other.
source "$NP_LIB"

TENANT_ID=demo
TENANT_NETWORK_NAME=demo-net
TENANT_SUBNET_NAME=demo-subnet
TENANT_ROUTER_NAME=demo-router
FIXED_RANGE=10.0.0.0/24
NETWORK_GATEWAY=10.0.0.1
PUBLIC_GATEWAY=172.24.4.1
PUBLIC_RANGE=172.24.4.0/24
PUBLIC_START=172.24.4.100
PUBLIC_END=172.24.4.200

# Two other hosts: broadcasts must reach both.
kiln-net --no-plumb config-set vxlan_local_ip 10.99.0.1
kiln-net --no-plumb config-set vxlan_peers 10.99.0.3,10.99.0.2

gre=yes
if ! ip link add kilnprobe type gretap key 1 remote 10.255.0.1 2>/dev/null; then gre=no; fi
[ $gre = no ] || ip link del kilnprobe

step "the walkthrough, verbatim (GRE in this kernel: $gre)"
mapfile -t lines < "$(dirname "$NP_LIB")/walkthrough_gre.txt"
[ ${#lines[@]} = 7 ] || fail "walkthrough_gre.txt has ${#lines[@]} lines, not 7"
# Without GRE every command still records its object but exits 1 naming the missing devices
# (the plumbing runs after each change); with GRE every line must succeed.
run_line() {
  local out rc=0
  out=$(eval "$1" 2>"$T/stderr") || rc=$?
  if [ $gre = yes ]; then
    [ $rc = 0 ] && [ ! -s "$T/stderr" ] || fail "'$1' failed ($rc): $(cat "$T/stderr")"
  elif [ $rc != 0 ] || [ -s "$T/stderr" ]; then
    grep -q "this kernel has no GRE tunnel devices" "$T/stderr" ||
      fail "'$1' failed ($rc) for another reason: $(cat "$T/stderr")"
  fi
  printf '%s' "$out"
}
TENANT_NET_ID=$(run_line "${lines[0]}")
TENANT_SUBNET_ID=$(run_line "${lines[1]}")
ROUTER_ID=$(run_line "${lines[2]}")
for i in 3 4 5 6; do run_line "${lines[$i]}" >/dev/null; done

step "the ids the table gave are the objects'"
uuid='^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
for v in TENANT_NET_ID TENANT_SUBNET_ID ROUTER_ID; do
  [[ ${!v} =~ $uuid ]] || fail "$v is '${!v}', not a UUID"
done
[ "$(kiln-net -f json net-show demo-net | json_field '["id"]')" = "$TENANT_NET_ID" ] || fail "net id"
[ "$(kiln-net -f json subnet-show demo-subnet | json_field '["id"]')" = "$TENANT_SUBNET_ID" ] ||
  fail "subnet id"
[ "$(kiln-net -f json router-show demo-router | json_field '["id"]')" = "$ROUTER_ID" ] ||
  fail "router id"

step "the objects"
net() { kiln-net -f json net-show "$1" | json_field "$2"; }
[ "$(net demo-net '["provider:network_type"]')" = gre ] || fail "network type"
[ "$(net demo-net '["provider:segmentation_id"]')" = 1 ] || fail "segmentation id"
[ "$(net demo-net '["tenant_id"]')" = demo ] || fail "tenant"
[ "$(net demo-net '["mtu"]')" = 1458 ] || fail "GRE network MTU is $(net demo-net '["mtu"]')"
[ "$(net public '["router:external"]')" = True ] || fail "public is not external"
[ "$(net public '["mtu"]')" = 1500 ] || fail "flat network MTU"
sub() { kiln-net -f json subnet-show "$1" | json_field "$2"; }
[ "$(sub demo-subnet '["cidr"]')" = 10.0.0.0/24 ] || fail "subnet cidr"
[ "$(sub demo-subnet '["gateway_ip"]')" = 10.0.0.1 ] || fail "subnet gateway"
[ "$(sub demo-subnet '["dns_nameservers"]')" = "['8.8.8.8']" ] || fail "dns nameservers"
[ "$(sub demo-subnet '["ip_version"]')" = 4 ] || fail "ip version"
[ "$(sub demo-subnet '["tenant_id"]')" = demo ] || fail "subnet tenant"
[ "$(sub public-subnet '["enable_dhcp"]')" = False ] || fail "public subnet has DHCP"
[ "$(sub public-subnet '["allocation_pools"]')" = \
  "[{'start': '172.24.4.100', 'end': '172.24.4.200'}]" ] || fail "allocation pool"
[ "$(kiln-net -f json router-show demo-router |
     json_field '["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]')" = 172.24.4.100 ] ||
  fail "router gateway IP"
kiln-net port-list | grep -q 'network:router_interface' || fail "no router interface port"

step "list=true takes every value up to the next option"
kiln-net -f json subnet-create demo-net 10.1.0.0/24 --name two --dns_nameservers list=true \
  1.1.1.1 9.9.9.9 --ip_version 4 >/dev/null 2>&1 || [ $gre = no ]
[ "$(sub two '["dns_nameservers"]')" = "['1.1.1.1', '9.9.9.9']" ] || fail "list=true values"
expect_error "list=true needs at least one value" kiln-net subnet-create demo-net 10.2.0.0/24 \
  --dns-nameservers list=true --name x
kiln-net subnet-delete two >/dev/null 2>&1 || [ $gre = no ]

step "a guest on the GRE network is told its MTU, 1458, by DHCP (option 26)"
# The bridge and dnsmasq are plumbed with or without GRE in the kernel; only the gretaps are not.
cat > "$T/udhcpc-mtu.sh" <<'SCRIPT'
#!/bin/sh
case "$1" in
  bound|renew) echo "$ip $mtu" > "$LEASE_FILE" ;;
esac
exit 0
SCRIPT
chmod +x "$T/udhcpc-mtu.sh"
make_ns gre-vm
run_line "kiln-net --tenant-id demo port-create demo-net --name gre-vm --netns $T/ns/gre-vm" \
  >/dev/null
in_ns gre-vm ip link set eth0 up
LEASE_FILE=$T/gre-vm.lease in_ns gre-vm busybox udhcpc -i eth0 -n -q -t 6 -T 1 -O mtu \
  -s "$T/udhcpc-mtu.sh" >/dev/null 2>&1 || fail "no DHCP lease on the GRE network"
[ "$(cat "$T/gre-vm.lease")" = "$(port_ip gre-vm) 1458" ] ||
  fail "the GRE network's lease (IP MTU): '$(cat "$T/gre-vm.lease")'"

if [ $gre = no ]; then
  echo "SKIP: GRE plumbing checks (MTU, one gretap per peer): this kernel has no gretap devices"
  echo "PASS"
  exit 0
fi

step "GRE plumbing: a gretap per peer, MTU 1458, isolated bridge ports"
bridge=brq${TENANT_NET_ID:0:11}
for k in 0 1; do
  dev=gre-1-$k
  peer=10.99.0.$((k + 2))  # the peers sorted: 10.99.0.2, 10.99.0.3
  ip -d link show $dev | grep -q "gretap remote $peer local 10.99.0.1" ||
    fail "$dev does not go to $peer: $(ip -d link show $dev)"
  ip -d link show $dev | grep -q "key 0.0.0.1\|ikey 0.0.0.1" || fail "$dev has not key 1"
  [ "$(ip -o link show $dev | grep -o 'mtu [0-9]*')" = "mtu 1458" ] || fail "$dev MTU"
  [ "$(ip -o link show $dev | grep -o 'master [^ ]*')" = "master $bridge" ] || fail "$dev bridge"
  ip -d link show $dev | grep -q "isolated on" || fail "$dev is not an isolated bridge port"
done
! ip link show gre-1 >/dev/null 2>&1 || fail "the single-remote gre-1 is still there"

step "peers follow the setting"
kiln-net config-set vxlan_peers 10.99.0.2 >/dev/null
ip -d link show gre-1-0 | grep -q "remote 10.99.0.2" || fail "gre-1-0 lost its peer"
! ip link show gre-1-1 >/dev/null 2>&1 || fail "gre-1-1 left after its peer went"
kiln-net config-set vxlan_peers "" >/dev/null
ip link show gre-1 >/dev/null || fail "no local gre-1 without peers"
! ip link show gre-1-0 >/dev/null 2>&1 || fail "gre-1-0 left without peers"
echo "PASS"

# Issue 5's Neutron walkthrough, verbatim, then the CLI around it: list/show/delete, names or
# ids, tables and JSON, --no-plumb and apply, refusals, and taking everything apart.
source "$NP_LIB"

step "the walkthrough, verbatim"
source "$(dirname "$NP_LIB")/walkthrough.txt"

step "lists and shows, as tables and JSON, by name or id"
kiln-net net-list | grep -q ' demo-net ' || fail "net-list table lacks demo-net"
[ "$(kiln-net --format json net-list | json_field '.__len__()')" = 2 ] || fail "net-list json"
net_id=$(kiln-net --format json net-show demo-net | json_field '["id"]')
[ "$(kiln-net -f json net-show "$net_id" | json_field '["provider:segmentation_id"]')" = 1 ] ||
  fail "net-show by id"
[ "$(kiln-net -f json net-show public | json_field '["router:external"]')" = True ] ||
  fail "public is not external"
[ "$(kiln-net -f json router-show demo-router |
     json_field '["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]')" = 172.24.1.100 ] ||
  fail "router gateway IP"
[ "$(kiln-net -f json subnet-show public-subnet | json_field '["allocation_pools"][0]["end"]')" = \
  172.24.1.200 ] || fail "allocation pool"
[ "$(kiln-net -f json subnet-show demo-subnet | json_field '["dns_nameservers"][0]')" = 8.8.8.8 ] ||
  fail "dns nameserver"
kiln-net subnet-list | grep -q '192.168.0.0/24' || fail "subnet-list"
kiln-net router-list | grep -q demo-router || fail "router-list"
kiln-net port-list | grep -q 'network:router_interface' || fail "port-list"

step "plumbed: bridge, VXLAN segment 1, router namespace with both legs, DHCP namespace"
bridge=brq${net_id:0:11}
ip -d link show vxlan-1 | grep -q 'vxlan id 1 ' || fail "no vxlan-1"
[ "$(ip -o link show vxlan-1 | grep -o 'master [^ ]*')" = "master $bridge" ] || fail "vxlan-1 not on $bridge"
router_id=$(kiln-net -f json router-show demo-router | json_field '["id"]')
rns=$KILN_RUN_DIR/netns/qrouter-$router_id
nsenter --net="$rns" ip -4 -o addr | grep -q '192.168.0.1/24' || fail "router lacks 192.168.0.1"
nsenter --net="$rns" ip -4 -o addr | grep -q '172.24.1.100/24' || fail "router lacks 172.24.1.100"
nsenter --net="$rns" ip route | grep -q 'default via 172.24.1.1' || fail "router default route"
nsenter --net="$rns" nft list table ip kiln_nat | grep -q 'snat to 172.24.1.100' || fail "no SNAT"
nsenter --net="$KILN_RUN_DIR/netns/qdhcp-$net_id" ip -4 -o addr | grep -q '192.168.0.2/24' ||
  fail "DHCP namespace lacks 192.168.0.2"

step "--no-plumb records without plumbing; apply plumbs"
port_id=$(kiln-net --no-plumb -f json --tenant-id demo port-create demo-net --name vm1 \
  --mac-address fa:16:3e:00:00:42 | json_field '["id"]')
! ip link show "tap${port_id:0:11}" >/dev/null 2>&1 || fail "--no-plumb plumbed the tap"
kiln-net apply 2>/dev/null
ip -d link show "tap${port_id:0:11}" | grep -q 'tun type tap' || fail "apply made no tap"
[ "$(kiln-net -f json port-show vm1 | json_field '["mac_address"]')" = fa:16:3e:00:00:42 ] ||
  fail "requested MAC not kept"
grep -q 'fa:16:3e:00:00:42,host-192-168-0-3,192.168.0.3' "$KILN_RUN_DIR/dhcp/$net_id/host" ||
  fail "dnsmasq host file lacks vm1"

step "refusals name the user"
expect_error "is in use by router 'demo-router' (interface" kiln-net subnet-delete demo-subnet
expect_error "port $port_id ('vm1')" kiln-net net-delete demo-net
expect_error "network 'public' is in use by router 'demo-router' (gateway" kiln-net net-delete public
expect_error "still has interfaces on subnet 'demo-subnet'" kiln-net router-delete demo-router
expect_error "already allocated in subnet demo-subnet" kiln-net port-create demo-net \
  --fixed-ip subnet=demo-subnet,ip_address=192.168.0.3
expect_error "is not in subnet demo-subnet" kiln-net port-create demo-net \
  --fixed-ip subnet=demo-subnet,ip_address=10.0.0.5
expect_error "network 'nope' not found" kiln-net net-show nope
set +e; kiln-net net-show nope 2>/dev/null; rc=$?; set -e
[ "$rc" = 3 ] || fail "not found exits $rc, not 3"
expect_error "unknown option --bogus" kiln-net net-list --bogus
expect_error "is not an IPv4 CIDR" kiln-net subnet-create demo-net 10.0.0.1/33
expect_error "unknown command" kiln-net frobnicate

step "security groups and floating IPs through the CLI"
kiln-net --tenant-id demo security-group-create web --description "web servers" >/dev/null
rule=$(kiln-net -f json --tenant-id demo security-group-rule-create web --protocol tcp \
  --port-range-min 80 --port-range-max 81 --remote-ip-prefix 10.0.0.0/8 | json_field '["id"]')
kiln-net security-group-rule-show "$rule" | grep -q '10.0.0.0/8' || fail "rule-show"
kiln-net security-group-rule-list | grep -q "$rule" || fail "rule-list"
[ "$(kiln-net -f json --tenant-id demo security-group-show web |
     json_field '["security_group_rules"].__len__()')" = 2 ] || fail "web has not 2 rules"
kiln-net security-group-list | grep -q ' web ' || fail "security-group-list"
web_port=$(kiln-net -f json --tenant-id demo port-create demo-net --security-group web |
  json_field '["id"]')
nft list table inet kiln_sg | grep -q 'tcp dport 80-81 accept' || fail "rule not in nftables"
expect_error "is in use by port $web_port" kiln-net security-group-delete web
kiln-net port-delete "$web_port" >/dev/null
kiln-net security-group-rule-delete "$rule" >/dev/null
kiln-net security-group-delete web >/dev/null
fip=$(kiln-net -f json --tenant-id demo floatingip-create public --port-id vm1 | json_field '["id"]')
kiln-net floatingip-list | grep -q 172.24.1.101 || fail "floatingip-list"
[ "$(kiln-net -f json floatingip-show 172.24.1.101 | json_field '["fixed_ip_address"]')" = 192.168.0.3 ] ||
  fail "floating IP not associated"
nsenter --net="$rns" nft list table ip kiln_nat | grep -q 'dnat to 192.168.0.3' || fail "no DNAT"
kiln-net floatingip-disassociate "$fip" >/dev/null
! nsenter --net="$rns" nft list table ip kiln_nat | grep -q 'dnat to' || fail "DNAT left behind"
kiln-net floatingip-delete "$fip" >/dev/null

step "gre is accepted in the model; plumbing it says clearly if the kernel cannot"
if ip link add kilnprobe type gretap key 1 remote 10.255.0.1 2>/dev/null; then
  ip link del kilnprobe
  kiln-net net-create gre-net --provider:network_type gre --provider:segmentation_id 5 >/dev/null
else
  expect_error "this kernel has no GRE tunnel devices" \
    kiln-net net-create gre-net --provider:network_type gre --provider:segmentation_id 5
fi
[ "$(kiln-net -f json net-show gre-net | json_field '["provider:network_type"]')" = gre ] ||
  fail "gre network not recorded"
kiln-net net-delete gre-net >/dev/null

step "vlan needs an uplink and 802.1Q; without 802.1Q plumbing says so"
ip link add uplink0 type veth peer name uplink0-peer
kiln-net --no-plumb config-set physical_interface_mappings physnet1:uplink0
if ip link add link uplink0 name kilnprobe type vlan id 9 2>/dev/null; then
  ip link del kilnprobe
  kiln-net net-create vlan-net --provider:network_type vlan --provider:segmentation_id 10 >/dev/null
  ip -d link show uplink0.10 | grep -q 'vlan protocol 802.1Q id 10' || fail "no VLAN device"
else
  expect_error "this kernel has no 802.1Q VLAN support" \
    kiln-net net-create vlan-net --provider:network_type vlan --provider:segmentation_id 10
fi
kiln-net net-delete vlan-net >/dev/null
[[ $(ip -o link show uplink0) == *"master brq"* ]] || fail "uplink0 not on the public bridge"
kiln-net config-set physical_interface_mappings ""
[[ $(ip -o link show uplink0) != *"master"* ]] || fail "uplink0 still on a bridge"
ip link del uplink0

step "taking it all apart leaves nothing plumbed"
kiln-net port-delete vm1 >/dev/null
kiln-net router-interface-delete demo-router demo-subnet >/dev/null
kiln-net router-gateway-clear demo-router >/dev/null
kiln-net router-delete demo-router >/dev/null
kiln-net subnet-delete demo-subnet >/dev/null
kiln-net net-delete demo-net public >/dev/null
[ "$(kiln-net -f json port-list)" = "[]" ] || fail "ports left"
[ "$(ip -o link | grep -vc ': lo:')" = 0 ] || { ip -br link; fail "devices left"; }
[ -z "$(ls "$KILN_RUN_DIR/netns")" ] || fail "namespaces left"
[ -z "$(ls "$KILN_RUN_DIR/dhcp")" ] || fail "dnsmasq left"
! nft list table inet kiln_sg >/dev/null 2>&1 || fail "security group table left"
echo "PASS"

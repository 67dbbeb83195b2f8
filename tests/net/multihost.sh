# Several hosts on one shared PostgreSQL (issue 15): three "hosts" (namespaces, each with its own
# kiln-net state and run directories and KILN_HOST) on a veth fabric, one database that the
# test starts in its temporary directory. Each host sets only its own vxlan_local_ip: the VXLAN
# peers are learned from the agents that `apply` records, ports are plumbed on the host they
# are bound to (binding:host_id), and the DHCP of a network runs where its DHCP port is bound.
source "$NP_LIB"

: "${PG_SERVER:?the path of tests/common/pg_server.sh}"
bash "$PG_SERVER" start "$T/pg"
trap 'bash "$PG_SERVER" stop "$T/pg"' EXIT
export KILN_DB_URL="postgresql:///postgres?host=$T/pg&user=kiln"

# The fabric: a bridge in a namespace of its own, a veth leg to each host.
make_ns fabric
in_ns fabric ip link add fabric type bridge
in_ns fabric ip link set fabric up
for h in A B C; do make_ns "host$h"; done
underlay() {  # underlay HOST N: the host's leg, 10.99.0.N/24
  ip link add "under$1" netns "$T/ns/host$1" type veth peer name "leg$1" netns "$T/ns/fabric"
  in_ns fabric ip link set "leg$1" master fabric up
  in_ns "host$1" ip addr add "10.99.0.$2/24" dev "under$1"
  in_ns "host$1" ip link set "under$1" up
}
underlay A 1
underlay B 2

# kiln-net on host H: its own name, state and run directories; the shared database.
on() {
  local h=$1; shift
  mkdir -p "$T/$h/state" "$T/$h/run"
  KILN_HOST=host$h KILN_STATE_DIR=$T/$h/state KILN_RUN_DIR=$T/$h/run in_ns "host$h" "$KILN_NET" "$@"
}
# The VXLAN flood entries (peers) of device DEV on host H, sorted, one line.
flood() {
  in_ns "host$1" bridge fdb show dev "$2" | awk '/^00:00:00:00:00:00 dst/ {print $3}' | sort |
    tr '\n' ' ' | sed 's/ $//'
}
has_link() { in_ns "host$1" ip link show "$2" >/dev/null 2>&1; }
tap_of() { echo "tap$(on A -f json port-show "$1" | json_field '["id"]' | cut -c1-11)"; }

step "per-host settings: each host its own vxlan_local_ip, one of them set from another host"
on A --no-plumb config-set vxlan_local_ip 10.99.0.1
on B --no-plumb config-set vxlan_local_ip 10.99.0.2
on A --no-plumb config-set vxlan_local_ip 10.99.0.3 --host hostC
[ "$(on C -f json config-show | json_field '["vxlan_local_ip"]')" = 10.99.0.3 ] ||
  fail "hostC's setting, set from host A, is not hostC's"
[ "$(on B -f json config-show | json_field '["vxlan_local_ip"]')" = 10.99.0.2 ] ||
  fail "host B sees another host's vxlan_local_ip"
[ "$(on A -f json config-show | json_field '["vxlan_peers"]')" = "" ] || fail "vxlan_peers set"

step "one model: net1 (DHCP, its port on host A) on every host, net2 on host A only"
on A --no-plumb net-create net1 --provider:network_type vxlan --provider:segmentation_id 100 >/dev/null
on A --no-plumb subnet-create net1 10.10.0.0/24 --name sub1 >/dev/null
on A --no-plumb net-create net2 --provider:network_type vxlan --provider:segmentation_id 200 >/dev/null
on A --no-plumb subnet-create net2 10.20.0.0/24 --name sub2 --disable-dhcp >/dev/null
dhcp_port=$(on A -f json port-list | python3 -c '
import json, sys
print([p["id"] for p in json.load(sys.stdin) if p["device_owner"] == "network:dhcp"][0])')
on A --no-plumb port-update "$dhcp_port" --binding:host_id hostA >/dev/null
[ "$(on B -f json port-show "$dhcp_port" | json_field '["binding:host_id"]')" = hostA ] ||
  fail "the DHCP port's binding is not shown"

# guest NAME HOST NET [IP]: a guest namespace with a port on NET bound to HOST, created there.
guest() {
  make_ns "$1"
  local ip=()
  [ -n "${4:-}" ] && ip=(--fixed-ip "ip_address=$4")
  on "$2" port-create "$3" --name "$1" --netns "$T/ns/$1" --disable-port-security \
    --binding:host_id "host$2" "${ip[@]}" >/dev/null
  if [ -n "${4:-}" ]; then in_ns "$1" ip addr add "$4/24" dev eth0; fi
}
guest a1 A net1 10.10.0.11
guest b1 B net1
guest a2 A net2 10.20.0.11
for h in A B A; do on "$h" apply 2>/dev/null; done  # A again: B registered after A's first

step "agents: both hosts registered with their tunnel IPs"
[ "$(on B -f json agent-list | python3 -c '
import json, sys
print(" ".join("%s=%s:%s" % (a["host"], a["configurations"]["tunneling_ip"], a["alive"])
               for a in json.load(sys.stdin)))')" = "hostA=10.99.0.1:True hostB=10.99.0.2:True" ] ||
  fail "agent-list: $(on B agent-list)"

step "learned peers: each host floods net1 to the other"
[ "$(flood A vxlan-100)" = 10.99.0.2 ] || fail "host A floods vxlan-100 to '$(flood A vxlan-100)'"
[ "$(flood B vxlan-100)" = 10.99.0.1 ] || fail "host B floods vxlan-100 to '$(flood B vxlan-100)'"

step "each host has the taps of its own ports, and the networks and DHCP they need"
has_link A "$(tap_of a1)" || fail "host A has no tap for a1"
has_link B "$(tap_of b1)" || fail "host B has no tap for b1"
! has_link A "$(tap_of b1)" || fail "host A has b1's tap"
! has_link B "$(tap_of a1)" || fail "host B has a1's tap"
! has_link B "$(tap_of a2)" || fail "host B has a2's tap"
has_link A vxlan-200 || fail "host A has no vxlan-200"
! has_link B vxlan-200 || fail "host B plumbs net2, where it has no port"
[ -e "$T/A/run/netns/qdhcp-$(on A -f json net-show net1 | json_field '["id"]')" ] ||
  fail "no DHCP namespace on host A"
[ -z "$(ls "$T/B/run/netns" 2>/dev/null)" ] || fail "host B has namespaces: $(ls "$T/B/run/netns")"

step "across hosts: b1 leases its address from host A's dnsmasq, a1 and b1 ping each other"
b1_ip=$(dhcp b1)
[ "$b1_ip" = "$(on B -f json port-show b1 | json_field '["fixed_ips"][0]["ip_address"]')" ] ||
  fail "b1 leased $b1_ip, not its port's address"
ping_ok a1 "$b1_ip"
ping_ok b1 10.10.0.11

step "a third host: after its apply and the others', everyone floods to everyone"
underlay C 3
guest c1 C net1 10.10.0.31
on C apply 2>/dev/null
[ "$(flood C vxlan-100)" = "10.99.0.1 10.99.0.2" ] || fail "host C floods to '$(flood C vxlan-100)'"
[ "$(flood A vxlan-100)" = 10.99.0.2 ] || fail "host A changed before its apply"
on A apply 2>/dev/null
on B apply 2>/dev/null
[ "$(flood A vxlan-100)" = "10.99.0.2 10.99.0.3" ] || fail "host A floods to '$(flood A vxlan-100)'"
[ "$(flood B vxlan-100)" = "10.99.0.1 10.99.0.3" ] || fail "host B floods to '$(flood B vxlan-100)'"
ping_ok c1 10.10.0.11
ping_ok c1 "$b1_ip"
! has_link C "$(tap_of a1)" || fail "host C has a1's tap"

step "agent-delete: the host's flood entries go at the others' next apply"
on A --no-plumb port-delete c1 >/dev/null
on A agent-delete hostC >/dev/null
expect_error "not found" on A agent-show hostC
on A apply 2>/dev/null
on B apply 2>/dev/null
[ "$(flood A vxlan-100)" = 10.99.0.2 ] || fail "host A still floods to '$(flood A vxlan-100)'"
[ "$(flood B vxlan-100)" = 10.99.0.1 ] || fail "host B still floods to '$(flood B vxlan-100)'"
[ "$(psql -At "$KILN_DB_URL" -c 'SELECT host FROM kiln_net.agents ORDER BY host' | tr '\n' ' ')" = \
  "hostA hostB " ] || fail "agents rows: $(psql -At "$KILN_DB_URL" -c 'SELECT host FROM kiln_net.agents')"
ping_ok a1 "$b1_ip"

step "an explicit vxlan_peers still wins over the agents"
on A config-set vxlan_peers 10.99.0.9
[ "$(flood A vxlan-100)" = 10.99.0.9 ] || fail "host A floods to '$(flood A vxlan-100)'"
on A config-set vxlan_peers ""
[ "$(flood A vxlan-100)" = 10.99.0.2 ] || fail "learned peers not back: '$(flood A vxlan-100)'"

step "an agent administratively down is no peer"
on A agent-update hostB --admin-state-up False >/dev/null
[ "$(flood A vxlan-100)" = "" ] || fail "host A floods to a down agent: '$(flood A vxlan-100)'"
on A agent-update hostB --admin-state-up True >/dev/null
[ "$(flood A vxlan-100)" = 10.99.0.2 ] || fail "host B not a peer again: '$(flood A vxlan-100)'"
ping_ok a1 "$b1_ip"

step "a port moved to another host: its tap moves at the hosts' apply"
on A port-update a1 --binding:host_id hostB >/dev/null
! has_link A "$(tap_of a1)" || fail "host A kept a1's tap after the move"
on B apply 2>/dev/null
has_link B "$(tap_of a1)" || fail "host B did not plumb a1"
echo "PASS"

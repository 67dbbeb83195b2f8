# A network with two DHCP subnets (and one without DHCP): one dnsmasq serves both, each
# guest gets its own subnet's address, router and DNS servers; taking a subnet away restarts
# dnsmasq with the rest, taking the last one away stops it and removes its namespace.
source "$NP_LIB"

# Records what udhcpc was given: address, router, DNS servers.
cat > "$T/udhcpc-opts.sh" <<'SCRIPT'
#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "$ip|$router|$dns" > "$LEASE_FILE" ;;
esac
exit 0
SCRIPT
chmod +x "$T/udhcpc-opts.sh"
# lease NS: "ip|router|dns" as leased in guest namespace NS (fails without a lease).
lease() {  # lease NS [TRIES]
  rm -f "$T/lease-$1"
  in_ns "$1" env LEASE_FILE="$T/lease-$1" busybox udhcpc -i eth0 -n -q -t "${2:-6}" -T 1 \
    -s "$T/udhcpc-opts.sh" >/dev/null 2>&1 || return 1
  cat "$T/lease-$1"
}
dnsmasq_pids() {  # the dnsmasq processes serving network $1
  for p in /proc/[0-9]*; do
    tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q -- "--pid-file=$KILN_RUN_DIR/dhcp/$1/pid" &&
      echo "${p#/proc/}"
  done
  return 0
}
ranges() { tr '\0' '\n' < "/proc/$1/cmdline" | grep -c -- '--dhcp-range='; }

step "a network with two DHCP subnets and one without"
kiln-net net-create multi >/dev/null
kiln-net subnet-create multi 10.1.0.0/24 --name s1 --dns-nameserver 10.1.0.53 >/dev/null
kiln-net subnet-create multi 10.2.0.0/24 --name s2 --gateway 10.2.0.254 \
  --dns-nameserver 9.9.9.9 --dns-nameserver 9.9.9.10 >/dev/null
kiln-net subnet-create multi 10.3.0.0/24 --name s3 --disable-dhcp >/dev/null
kiln-net router-create r >/dev/null
kiln-net router-interface-add r s1 >/dev/null
kiln-net router-interface-add r s2 >/dev/null
net_id=$(kiln-net -f json net-show multi | json_field '["id"]')
dns=$KILN_RUN_DIR/netns/qdhcp-$net_id

# (The first free address of each: s2's gateway is .254, so its pool starts at .1.)
step "one DHCP port with an address in each DHCP subnet, one dnsmasq with a range for each"
dhcp_ips=$(kiln-net -f json port-list | python3 -c '
import json, sys
print(" ".join(f["ip_address"] for p in json.load(sys.stdin) if p["device_owner"] == "network:dhcp"
               for f in p["fixed_ips"]))')
[ "$dhcp_ips" = "10.1.0.2 10.2.0.1" ] || fail "DHCP port addresses: '$dhcp_ips'"
addrs=$(nsenter --net="$dns" ip -4 -o addr | awk '{print $4}' | sort | tr '\n' ' ')
[ "$addrs" = "10.1.0.2/24 10.2.0.1/24 127.0.0.1/8 " ] || fail "qdhcp addresses: '$addrs'"
pids=$(dnsmasq_pids "$net_id")
[ "$(echo "$pids" | wc -w)" = 1 ] || fail "expected one dnsmasq for the network, found: $pids"
[ "$(ranges "$pids")" = 2 ] || fail "dnsmasq does not have two ranges"
! tr '\0' ' ' < "/proc/$pids/cmdline" | grep -q 10.3.0.0 || fail "the subnet without DHCP is served"

step "a guest on each subnet gets its own address, router and DNS servers"
make_ns a
make_ns b
make_ns c
kiln-net port-create multi --name a --netns "$T/ns/a" >/dev/null
kiln-net port-create multi --name b --netns "$T/ns/b" --fixed-ip subnet=s2 >/dev/null
kiln-net port-create multi --name c --netns "$T/ns/c" --fixed-ip subnet=s3 >/dev/null
ipa=$(port_ip a)
ipb=$(port_ip b)
[[ $ipa == 10.1.0.* && $ipb == 10.2.0.* ]] || fail "port addresses $ipa $ipb"
got=$(lease a) || fail "a got no lease"
[ "$got" = "$ipa|10.1.0.1|10.1.0.53" ] || fail "a was given '$got'"
got=$(lease b) || fail "b got no lease"
[ "$got" = "$ipb|10.2.0.254|9.9.9.9 9.9.9.10" ] || fail "b was given '$got'"
! lease c 2 >/dev/null || fail "c got a lease on a subnet without DHCP"
! grep -q "$(port_ip c)" "$KILN_RUN_DIR/dhcp/$net_id/host" || fail "c is in the host file"
ping_ok a 10.1.0.1
ping_ok a "$ipb"   # across the router: both subnets are really in use
ping_ok b "$ipa"

step "a killed dnsmasq comes back with both subnets"
kill "$pids"
while kill -0 "$pids" 2>/dev/null; do sleep 0.05; done
kiln-net apply 2>/dev/null
pids=$(dnsmasq_pids "$net_id")
[ "$(echo "$pids" | wc -w)" = 1 ] && [ "$(ranges "$pids")" = 2 ] || fail "dnsmasq not back whole"
got=$(lease b) || fail "b got no lease from the new dnsmasq"
[ "$got" = "$ipb|10.2.0.254|9.9.9.9 9.9.9.10" ] || fail "b was given '$got'"

step "a subnet taken away: dnsmasq restarted with the other one"
kiln-net port-delete b >/dev/null
kiln-net router-interface-delete r s2 >/dev/null
kiln-net subnet-delete s2 >/dev/null
new=$(dnsmasq_pids "$net_id")
[ "$(echo "$new" | wc -w)" = 1 ] && [ "$new" != "$pids" ] || fail "dnsmasq not restarted"
[ "$(ranges "$new")" = 1 ] || fail "dnsmasq still has two ranges"
addrs=$(nsenter --net="$dns" ip -4 -o addr | awk '{print $4}' | sort | tr '\n' ' ')
[ "$addrs" = "10.1.0.2/24 127.0.0.1/8 " ] || fail "qdhcp addresses after s2 went: '$addrs'"
got=$(lease a) || fail "a got no lease after s2 went"
[ "$got" = "$ipa|10.1.0.1|10.1.0.53" ] || fail "a was given '$got'"
[ -z "$(kiln-net apply 2>&1)" ] || fail "apply not idempotent"

step "the last DHCP subnet taken away: dnsmasq stopped, its namespace gone"
kiln-net port-delete a >/dev/null
kiln-net router-interface-delete r s1 >/dev/null
kiln-net subnet-delete s1 >/dev/null
[ -z "$(dnsmasq_pids "$net_id")" ] || fail "dnsmasq still runs"
[ ! -e "$dns" ] || fail "the qdhcp namespace is still there"
[ ! -e "$KILN_RUN_DIR/dhcp/$net_id" ] || fail "the DHCP files are still there"
! kiln-net port-list | grep -q network:dhcp || fail "the DHCP port is still there"
[ -z "$(kiln-net apply 2>&1)" ] || fail "apply not idempotent at the end"
echo "PASS"

# The metadata service (issue 12): kiln-spawn metadata-serve on a socket in $T, the proxies that
# kiln-net runs in the network's DHCP namespace and in its router's namespace, and "guests"
# (namespaces on ports) asking http://169.254.169.254 for their own data, by the DHCP route or
# through their gateway - per port, unforgeable, gone with the network and the router.
source "$NP_LIB"
[ -d "${KILN_CLOUD_INIT_SITE:-}/cloudinit" ] || fail "KILN_CLOUD_INIT_SITE has no cloudinit package"
for v in KILN_SPAWN KILN_METADATA_PROXY KILN_METADATA_SEED; do
  [ -x "${!v:-}" ] || fail "$v must name the built binary"
done
command -v curl >/dev/null || fail "curl is missing"

step "an external network (a namespace behind ext0), the walkthrough, the metadata service"
make_ns external
ip link add ext0 type veth peer name eth0 netns "$T/ns/external"
in_ns external ip addr add 172.24.1.1/24 dev eth0
in_ns external ip link set eth0 up
kiln-net --no-plumb config-set physical_interface_mappings physnet1:ext0
source "$(dirname "$NP_LIB")/walkthrough.txt" >/dev/null
net=$(kiln-net --format json net-show demo-net | json_field '["id"]')
"$KILN_SPAWN" --state-dir "$T/spawn" metadata-serve --socket "$T/md.sock" 2>"$T/md.log" &
server=$!
# Up to a minute: under the sanitizers on a loaded machine, starting takes seconds.
for _ in $(seq 1200); do
  [ -S "$T/md.sock" ] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.05
done
[ -S "$T/md.sock" ] || fail "metadata-serve did not listen: $(cat "$T/md.log")"
# Straight to the socket without the proxy's headers: nobody to answer for.
code=$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$T/md.sock" http://x/openstack)
[ "$code" = 400 ] || fail "a request without the proxy's headers got $code"

step "kiln-net starts the proxy in qdhcp-$net once the service is configured"
expect_error "absolute path" kiln-net config-set metadata_socket relative.sock
kiln-net config-set metadata_socket "$T/md.sock" >/dev/null
kiln-net apply >/dev/null
pid_file=$KILN_RUN_DIR/metadata/$net/pid
proxy=$(cat "$pid_file") || fail "no proxy pid file"
kill -0 "$proxy" || fail "the proxy ($proxy) does not run"
[[ $(tr '\0' ' ' < "/proc/$proxy/cmdline") == *"--network-id=$net"* ]] || fail "not our proxy"
dhcp_ns=$KILN_RUN_DIR/netns/qdhcp-$net
nsenter --net="$dhcp_ns" ip -4 -o addr | grep -q ' 169.254.169.254/32 ' ||
  fail "169.254.169.254 is not on the DHCP namespace's interface"

step "two guests with their records (as a boot's config-drive step writes them)"
make_ns vm1
make_ns vm2
kiln-net --tenant-id demo port-create demo-net --name vm1 --netns "$T/ns/vm1" >/dev/null
kiln-net --tenant-id demo port-create demo-net --name vm2 --netns "$T/ns/vm2" >/dev/null
ip1=$(port_ip vm1)
ip2=$(port_ip vm2)
uuid1=11111111-aaaa-4bbb-8ccc-000000000001
uuid2=22222222-aaaa-4bbb-8ccc-000000000002
"$KILN_METADATA_SEED" "$T/spawn" $uuid1 vm-one "$net" "$ip1" "#cloud-config for vm-one"
"$KILN_METADATA_SEED" "$T/spawn" $uuid2 vm-two "$net" "$ip2"

step "DHCP: the route to 169.254.169.254 (option 121), the default route, the MTU"
cat > "$T/udhcpc-routes.sh" <<'SCRIPT'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    set -- $staticroutes
    while [ $# -ge 2 ]; do ip route replace "$1" via "$2" dev "$interface"; shift 2; done
    echo "$staticroutes" > "$ROUTES_FILE"
    echo "$mtu" > "$ROUTES_FILE.mtu" ;;
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
esac
exit 0
SCRIPT
chmod +x "$T/udhcpc-routes.sh"
for vm in vm1 vm2; do
  ROUTES_FILE=$T/routes-$vm in_ns $vm busybox udhcpc -i eth0 -n -q -t 6 -T 1 \
    -O staticroutes -O mtu -s "$T/udhcpc-routes.sh" >/dev/null 2>&1 ||
    fail "no DHCP lease in $vm"
  routes=$(cat "$T/routes-$vm")
  [[ $routes == "169.254.169.254/32 192.168.0."*" 0.0.0.0/0 192.168.0.1" ]] ||
    fail "$vm's option 121 routes: '$routes'"
  # The VXLAN network's MTU (option 26), as on the GRE network (net.walkthrough_gre).
  [ "$(cat "$T/routes-$vm.mtu")" = 1450 ] || fail "$vm's MTU: '$(cat "$T/routes-$vm.mtu")'"
done

# GET from a guest: the body, or "HTTP <code>" when it is not 200.
md() {
  local vm=$1 path=$2; shift 2
  in_ns "$vm" curl -s --max-time 5 -o "$T/body" -w '%{http_code}' "$@" \
    "http://169.254.169.254$path" > "$T/code" || true
  if [ "$(cat "$T/code")" = 200 ]; then cat "$T/body"; else echo "HTTP $(cat "$T/code")"; fi
}
uuid_of() { md "$1" /openstack/latest/meta_data.json "${@:2}" | json_field '["uuid"]'; }

step "each guest reads its own OpenStack tree"
[ "$(uuid_of vm1)" = $uuid1 ] || fail "vm1 got $(md vm1 /openstack/latest/meta_data.json)"
[ "$(uuid_of vm2)" = $uuid2 ] || fail "vm2 got $(md vm2 /openstack/latest/meta_data.json)"
[ "$(md vm1 /openstack/latest/meta_data.json | json_field '["hostname"]')" = vm-one ] ||
  fail "vm1's hostname"
[ "$(md vm1 /openstack/latest/user_data)" = "#cloud-config for vm-one" ] || fail "vm1's user data"
[ "$(md vm2 /openstack/latest/user_data)" = "HTTP 404" ] || fail "vm2 has no user data"
[[ $(md vm1 /openstack) == *"2012-08-10"*"latest" ]] || fail "version listing: $(md vm1 /openstack)"
md vm1 /openstack/latest/network_data.json | json_field '["networks"][0]["ip_address"]' |
  grep -qx "$ip1" || fail "vm1's network_data.json"
[ "$(md vm1 /openstack/2015-10-15/vendor_data.json)" = "{}" ] || fail "vendor_data.json"

step "the EC2 tree"
[ "$(md vm1 /latest/meta-data/instance-id)" = i-11111111 ] || fail "instance-id"
[ "$(md vm2 /latest/meta-data/instance-id)" = i-22222222 ] || fail "vm2's instance-id"
[ "$(md vm1 /latest/meta-data/local-ipv4)" = "$ip1" ] || fail "local-ipv4"
[ "$(md vm1 /latest/meta-data/hostname)" = vm-one ] || fail "hostname"
[ "$(md vm1 /latest/meta-data/public-keys/0/openssh-key)" = "ssh-ed25519 AAAAC3Nz vm-one@test" ] ||
  fail "openssh-key"
[ "$(md vm1 /latest/user-data)" = "#cloud-config for vm-one" ] || fail "EC2 user-data"
[ "$(md vm1 /2009-04-04/meta-data/placement/availability-zone)" = nova ] || fail "placement"

step "cloud-init's OpenStack datasource reads vm1's metadata over the network"
# cloud-init's own reader (Debian's cloud-init 22.4, unpacked by metadata-run.sh): the versions
# it picks, meta_data.json, user_data, vendor data, network_data.json and the EC2 tree.
cat > "$T/read_md.py" <<'PY'
import json
from cloudinit.sources.helpers import openstack
r = openstack.MetadataReader("http://169.254.169.254", retries=0).read_v2()
md = r["metadata"]
print(json.dumps({"version": r["version"], "uuid": md["uuid"], "hostname": md["hostname"],
                  "keys": md.get("public_keys"), "userdata": r["userdata"].decode(),
                  "ip": r["networkdata"]["networks"][0]["ip_address"],
                  "ec2": r["ec2-metadata"]["instance-id"]}))
PY
ci=$(in_ns vm1 env PYTHONPATH="$KILN_CLOUD_INIT_SITE" python3 "$T/read_md.py") ||
  fail "cloud-init's reader failed"
want="{\"version\": 2, \"uuid\": \"$uuid1\", \"hostname\": \"vm-one\", \"keys\": {\"key-vm-one\": \"ssh-ed25519 AAAAC3Nz vm-one@test\"}, \"userdata\": \"#cloud-config for vm-one\", \"ip\": \"$ip1\", \"ec2\": \"i-11111111\"}"
[ "$ci" = "$want" ] || fail "cloud-init read $ci"

step "a killed proxy is started again by the reconciler"
kill "$proxy"
for _ in $(seq 100); do kill -0 "$proxy" 2>/dev/null || break; sleep 0.05; done
[ "$(md vm1 /latest/meta-data/instance-id)" = "HTTP 000" ] || fail "answered without a proxy"
kiln-net apply >/dev/null
proxy=$(cat "$pid_file")
kill -0 "$proxy" || fail "no proxy after apply"
[ "$(md vm1 /latest/meta-data/instance-id)" = i-11111111 ] || fail "no answer after the restart"

step "unknown paths and methods"
[ "$(md vm1 /openstack/latest/nothing)" = "HTTP 404" ] || fail "unknown file"
[ "$(md vm1 /latest/meta-data/nothing)" = "HTTP 404" ] || fail "unknown EC2 key"
[ "$(md vm1 /nothing/at/all)" = "HTTP 404" ] || fail "unknown tree"
[ "$(md vm1 /openstack/latest/meta_data.json -X POST -d x)" = "HTTP 405" ] || fail "POST"

step "headers from the guest are not believed"
[ "$(uuid_of vm1 -H "X-Forwarded-For: $ip2" -H "X-Kiln-Network-ID: $net")" = $uuid1 ] ||
  fail "a forged X-Forwarded-For gave vm1 another instance's data"

step "a guest that takes another port's address gets nothing (port security)"
dhcp_ip=$(echo "$routes" | awk '{print $2}')
in_ns vm1 ip addr flush dev eth0
in_ns vm1 ip addr add "$ip2/24" dev eth0
in_ns vm1 ip route replace 169.254.169.254/32 via "$dhcp_ip" dev eth0
[ "$(md vm1 /openstack/latest/meta_data.json)" = "HTTP 000" ] ||
  fail "vm1 as $ip2 got an answer: $(md vm1 /openstack/latest/meta_data.json)"
[ "$(uuid_of vm2)" = $uuid2 ] || fail "vm2 lost its data"
# Back to its own address, the same route works again: it was the address that was refused.
in_ns vm1 ip addr flush dev eth0
in_ns vm1 ip addr add "$ip1/24" dev eth0
in_ns vm1 ip route replace 169.254.169.254/32 via "$dhcp_ip" dev eth0
[ "$(uuid_of vm1)" = $uuid1 ] || fail "vm1 at its own address: $(md vm1 /openstack/latest/meta_data.json)"

step "a port without a record gets 404"
make_ns vm3
kiln-net --tenant-id demo port-create demo-net --name vm3 --netns "$T/ns/vm3" >/dev/null
ip3=$(port_ip vm3)
in_ns vm3 ip link set eth0 up
in_ns vm3 ip addr add "$ip3/24" dev eth0
in_ns vm3 ip route add 169.254.169.254/32 via "$dhcp_ip"
[ "$(md vm3 /openstack/latest/meta_data.json)" = "HTTP 404" ] ||
  fail "vm3 got $(md vm3 /openstack/latest/meta_data.json)"

step "the router's proxy: 169.254.169.254 on the loopback of qrouter-, the router's id"
router=$(kiln-net --format json router-show demo-router | json_field '["id"]')
router_ns=$KILN_RUN_DIR/netns/qrouter-$router
router_pid_file=$KILN_RUN_DIR/metadata/qrouter-$router/pid
rproxy=$(cat "$router_pid_file") || fail "no router proxy pid file"
kill -0 "$rproxy" || fail "the router's proxy ($rproxy) does not run"
[[ $(tr '\0' ' ' < "/proc/$rproxy/cmdline") == *"--router-id=$router"* ]] ||
  fail "the router's proxy does not name the router"
nsenter --net="$router_ns" ip -4 -o addr show dev lo | grep -q ' 169.254.169.254/32 ' ||
  fail "169.254.169.254 is not on the router namespace's loopback"
changes=$(kiln-net apply)
[ -z "$changes" ] || fail "apply with both proxies running changed: $changes"

step "the router's proxy does not answer from the external network"
# The router's gateway address (the first of the public pool) answers; 169.254.169.254 behind it
# is dropped by the router's input rule on qg-.
in_ns external busybox ping -c 1 -W 2 172.24.1.100 >/dev/null || fail "the router's gateway"
in_ns external ip route add 169.254.169.254/32 via 172.24.1.100
code=$(in_ns external curl -s --max-time 3 -o /dev/null -w '%{http_code}' \
  http://169.254.169.254/openstack/latest/meta_data.json) || true
[ "$code" = 000 ] || fail "the external network got HTTP $code from the router's proxy"

step "static guests (a default route only, as network_data.json gives) ask the router"
for vm in vm1 vm2 vm3; do in_ns $vm ip route del 169.254.169.254/32; done
in_ns vm3 ip route add default via 192.168.0.1
in_ns vm1 ip route replace default via 192.168.0.1
in_ns vm2 ip route replace default via 192.168.0.1
[ "$(in_ns vm1 ip route get 169.254.169.254 | grep -o 'via [0-9.]*')" = "via 192.168.0.1" ] ||
  fail "vm1 does not route 169.254.169.254 to its gateway"
for vm in vm1 vm2; do
  uuid=uuid${vm#vm}
  [ "$(uuid_of $vm)" = "${!uuid}" ] ||
    fail "$vm through the router: $(md $vm /openstack/latest/meta_data.json)"
done
[ "$(md vm1 /latest/meta-data/local-ipv4)" = "$ip1" ] || fail "vm1's EC2 tree through the router"
[ "$(md vm1 /openstack/latest/user_data)" = "#cloud-config for vm-one" ] ||
  fail "vm1's user data through the router"
[ "$(md vm3 /openstack/latest/meta_data.json)" = "HTTP 404" ] || fail "vm3 has no record"
[ "$(uuid_of vm1 -H "X-Forwarded-For: $ip2" -H "X-Kiln-Router-ID: $router" \
      -H "X-Kiln-Network-ID: $net")" = $uuid1 ] ||
  fail "forged headers through the router gave vm1 another instance's data"
# Another address of the subnet taken by vm1: port security drops it before the router.
in_ns vm1 ip addr add "$ip2/32" dev eth0
[ "$(md vm1 /openstack/latest/meta_data.json --interface "$ip2")" = "HTTP 000" ] ||
  fail "vm1 as $ip2 got an answer from the router"
in_ns vm1 ip addr del "$ip2/32" dev eth0

step "a second network on the same router: its guest is found on its own subnet"
kiln-net --tenant-id demo net-create other-net >/dev/null
kiln-net --tenant-id demo subnet-create other-net 10.10.0.0/24 --name other-subnet \
  --disable-dhcp >/dev/null
kiln-net router-interface-add demo-router other-subnet >/dev/null
other=$(kiln-net --format json net-show other-net | json_field '["id"]')
make_ns vm4
kiln-net --tenant-id demo port-create other-net --name vm4 --netns "$T/ns/vm4" >/dev/null
ip4=$(port_ip vm4)
in_ns vm4 ip link set eth0 up
in_ns vm4 ip addr add "$ip4/24" dev eth0
in_ns vm4 ip route add default via 10.10.0.1
uuid4=44444444-aaaa-4bbb-8ccc-000000000004
# The same address on demo-net belongs to nobody: the record is found by (network, address).
"$KILN_METADATA_SEED" "$T/spawn" $uuid4 vm-four "$other" "$ip4"
[ "$(uuid_of vm4)" = $uuid4 ] ||
  fail "vm4 on other-net: $(md vm4 /openstack/latest/meta_data.json)"
[ "$(uuid_of vm1)" = $uuid1 ] || fail "vm1 after other-net came"
rproxy2=$(cat "$router_pid_file")
[ "$rproxy2" = "$rproxy" ] || fail "the router's proxy was restarted for a new interface"

step "the router's last interface gone: its proxy, address and files go"
kiln-net port-delete vm4 >/dev/null
kiln-net router-interface-delete demo-router other-subnet >/dev/null
kiln-net net-delete other-net >/dev/null
kill -0 "$rproxy" || fail "the router's proxy stopped while demo-subnet is still attached"

step "the network deleted: no proxy, no namespace, no files"
kiln-net port-delete vm1 vm2 vm3 >/dev/null
kiln-net router-interface-delete demo-router demo-subnet >/dev/null
if kill -0 "$rproxy" 2>/dev/null; then fail "the router's proxy $rproxy still runs"; fi
[ ! -e "$KILN_RUN_DIR/metadata/qrouter-$router" ] || fail "the router's proxy directory is left"
if nsenter --net="$router_ns" ip -4 -o addr show dev lo | grep -q 169.254.169.254; then
  fail "169.254.169.254 is left on the router namespace's loopback"
fi
kiln-net net-delete demo-net >/dev/null
if kill -0 "$proxy" 2>/dev/null; then fail "the proxy $proxy still runs"; fi
[ ! -e "$dhcp_ns" ] || fail "qdhcp-$net is still there"
[ ! -e "$KILN_RUN_DIR/metadata/$net" ] || fail "the proxy's directory is still there"

kill "$server"
wait "$server" || fail "metadata-serve did not stop cleanly on SIGTERM"
[ ! -e "$T/md.sock" ] || fail "metadata-serve left its socket"
echo "PASS"

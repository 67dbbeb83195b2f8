# Several kiln-net processes create plumbed ports at once: no IP or MAC is given twice and
# every port ends up plumbed (the plumbing lock keeps one process from undoing another).
source "$NP_LIB"

kiln-net net-create net >/dev/null
kiln-net subnet-create net 10.20.0.0/24 --name sub >/dev/null
for w in 1 2 3 4; do
  (for i in 1 2 3 4 5 6; do kiln-net -f json port-create net --name "w$w-$i" >/dev/null || exit 1; done) &
done
fails=0
for job in $(jobs -p); do wait "$job" || fails=$((fails + 1)); done
[ "$fails" = 0 ] || fail "$fails workers failed"

ports=$(kiln-net -f json port-list)
count() { python3 -c "import json,sys; p=json.loads(sys.argv[1]); print(len(p), len({$2 for x in p}))" "$ports"; }
read -r n ips <<<"$(count "" 'x["fixed_ips"][0]["ip_address"]')"
read -r _ macs <<<"$(count "" 'x["mac_address"]')"
[ "$n" = 25 ] || fail "$n ports, not 24 + DHCP"
[ "$ips" = 25 ] || fail "only $ips distinct IPs"
[ "$macs" = 25 ] || fail "only $macs distinct MACs"
for id in $(python3 -c "import json,sys; print(' '.join(x['id'] for x in json.loads(sys.argv[1])))" "$ports"); do
  ip link show "tap${id:0:11}" >/dev/null 2>&1 || fail "port $id is not plumbed"
done
[ -z "$(kiln-net apply 2>&1)" ] || fail "apply found work left"
echo "PASS"

// DHCP: per network, a qdhcp- namespace with the DHCP port's leg and one dnsmasq serving the
// ports' fixed addresses.
#include <set>

#include "plumb/reconciler.h"

namespace kiln::net {

const Port* Reconciler::dhcp_port(const Network& n) {
  const Port* dhcp = nullptr;
  for (auto& p : snap_.ports)
    if (p.network_id == n.id && p.device_owner == kOwnerDhcp) dhcp = &p;
  if (!dhcp || dhcp->fixed_ips.empty()) return nullptr;
  return dhcp;
}

// One dnsmasq per network (as Neutron's DHCP agent runs it), with a static range per DHCP
// subnet, tagged with the subnet's id so that each subnet gets its own options; see
// docs/netplumb.md for why not one per subnet.
DnsmasqConfig Reconciler::dhcp_config(const Network& n, const Port& dhcp) {
  DnsmasqConfig c;
  c.binary = cfg_.dnsmasq;
  c.dir = dhcp_dir_ + "/" + n.id;
  c.netns_path = ns_dir_ + "/" + dhcp_ns_name(n.id);
  c.interface = "ns-" + dhcp.id.substr(0, 11);
  std::string hosts, opts;
  std::set<std::string> served;
  for (auto& s : snap_.subnets) {
    if (s.network_id != n.id || !s.enable_dhcp) continue;
    std::string t = "subnet-" + s.id;
    served.insert(s.id);
    c.ranges.push_back("set:" + t + "," + s.cidr.network.str() + ",static," +
                       s.cidr.netmask().str() + ",86400s");
    opts += "tag:" + t + ",option:router" +
            (s.gateway_ip ? "," + s.gateway_ip->str() : std::string()) + "\n";
    if (!s.dns_nameservers.empty()) {
      opts += "tag:" + t + ",option:dns-server";
      for (auto& d : s.dns_nameservers) opts += "," + d.str();
      opts += "\n";
    }
    if (n.network_type == "vxlan") opts += "tag:" + t + ",option:mtu,1450\n";
  }
  for (auto& p : snap_.ports) {
    if (p.network_id != n.id || p.device_owner == kOwnerDhcp) continue;
    for (auto& f : p.fixed_ips) {
      if (!served.count(f.subnet_id)) continue;
      std::string host = "host-" + f.ip_address.str();
      for (char& ch : host)
        if (ch == '.') ch = '-';
      hosts += p.mac_address.str() + "," + host + "," + f.ip_address.str() + "\n";
    }
  }
  c.hosts = hosts;
  c.opts = opts;
  return c;
}

void Reconciler::ensure_dhcp(const Network& n) {
  const Port* dhcp = dhcp_port(n);
  if (!dhcp) return;
  Fd fd;
  std::string ns = dhcp_ns_name(n.id);
  auto nl = enter_ns(ns, fd);
  DnsmasqConfig c = dhcp_config(n, *dhcp);
  ensure_leg(*nl, fd.get(), port_device_name(*dhcp), c.interface, dhcp->mac_address,
             bridge_of(n.id), addresses_of(*dhcp));
  wanted_dhcp_.insert(n.id);
  if (c.ranges.empty()) return;
  ensure_dnsmasq(c, res_.changes);
}

// For run_ports(): new host and option files and a SIGHUP when the network's dnsmasq runs as
// it should; the whole of ensure_dhcp() when it does not (not started yet, killed, or its
// subnets changed).
void Reconciler::refresh_dhcp(const Network& n) {
  const Port* dhcp = dhcp_port(n);
  if (!dhcp) return;
  DnsmasqConfig c = dhcp_config(n, *dhcp);
  if (!c.ranges.empty() && dnsmasq_current(c))
    ensure_dnsmasq(c, res_.changes);
  else
    ensure_dhcp(n);
}

}  // namespace kiln::net

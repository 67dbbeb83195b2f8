// DHCP: per network, a qdhcp- namespace with the DHCP port's leg and one dnsmasq serving the
// ports' fixed addresses; and, when the host has a metadata service, the metadata proxy on
// 169.254.169.254 in that namespace (as Neutron's DHCP agent does for isolated networks).
#include <set>

#include "plumb/reconciler.h"

namespace kiln::net {

const Port* Reconciler::dhcp_port(const Network& n) {
  const Port* dhcp = nullptr;
  for (auto& p : snap_.ports)
    if (p.network_id == n.id && p.device_owner == kOwnerDhcp) dhcp = &p;
  if (!dhcp || dhcp->fixed_ips.empty() || !port_here(*dhcp)) return nullptr;
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
    // Appended piece by piece: GCC 12's -Wrestrict misfires on "," + std::string&&.
    opts += "tag:" + t + ",option:router";
    if (s.gateway_ip) opts.append(",").append(s.gateway_ip->str());
    opts += "\n";
    // The route to the metadata proxy: 169.254.169.254 via this namespace's address on the
    // subnet. A client that takes option 121 ignores option 3 (RFC 3442), so the default
    // route goes in it too.
    if (!cfg_.metadata_socket.empty())
      for (auto& f : dhcp.fixed_ips)
        if (f.subnet_id == s.id) {
          opts += "tag:" + t + ",option:classless-static-route," + kMetadataIp + "/32,";
          opts += f.ip_address.str();
          if (s.gateway_ip) opts.append(",0.0.0.0/0,").append(s.gateway_ip->str());
          opts += "\n";
        }
    if (!s.dns_nameservers.empty()) {
      opts += "tag:" + t + ",option:dns-server";
      for (auto& d : s.dns_nameservers) opts.append(",").append(d.str());
      opts += "\n";
    }
    // An overlay's MTU (VXLAN 1450, GRE 1458: network_mtu()) is less than the guest's default;
    // without the option a guest sends full-size frames that the tunnel cannot carry.
    if (network_mtu(n) != kPhysicalMtu)
      opts += "tag:" + t + ",option:mtu," + std::to_string(network_mtu(n)) + "\n";
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
  bool metadata = !cfg_.metadata_socket.empty();
  std::vector<Address> addrs = addresses_of(*dhcp);
  if (metadata) addrs.push_back({*Ipv4::parse(kMetadataIp), 32});
  ensure_leg(*nl, fd.get(), port_device_name(*dhcp), c.interface, dhcp->mac_address,
             bridge_of(n.id), addrs);
  wanted_dhcp_.insert(n.id);
  if (metadata) wanted_metadata_.insert(n.id);
  if (!c.ranges.empty()) ensure_dnsmasq(c, res_.changes);
  if (metadata)
    ensure_metadata_proxy({cfg_.metadata_proxy, metadata_dir_ + "/" + n.id,
                           ns_dir_ + "/" + dhcp_ns_name(n.id), cfg_.metadata_socket, n.id, ""},
                          res_.changes);
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

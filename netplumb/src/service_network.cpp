// NetService: networks and subnets.
#include <algorithm>
#include <set>

#include "kiln/net/error.h"
#include "kiln/net/ipam.h"
#include "kiln/net/service.h"
#include "service_util.h"

namespace kiln::net {

Network NetService::create_network(const NetworkSpec& spec) {
  check_name("network", spec.name);
  Network n;
  n.id = common::new_uuid();
  n.name = spec.name;
  n.tenant_id = spec.tenant_id;
  n.router_external = spec.router_external;
  n.shared = spec.shared;
  n.admin_state_up = spec.admin_state_up;
  n.network_type =
      spec.network_type.empty() ? (spec.router_external ? "flat" : "vxlan") : spec.network_type;
  const std::string& t = n.network_type;
  if (t != "flat" && t != "vlan" && t != "vxlan" && t != "gre")
    throw invalid("network type '" + t + "' is not one of flat, vlan, vxlan, gre");
  if (t == "flat" || t == "vlan") {
    n.physical_network = spec.physical_network.empty() ? kDefaultPhysnet : spec.physical_network;
  } else if (!spec.physical_network.empty()) {
    throw invalid(t + " networks have no physical network");
  }
  if (t == "flat" && spec.segmentation_id) throw invalid("flat networks have no segmentation id");
  uint32_t max_seg = t == "vlan" ? 4094 : t == "vxlan" ? 16777215 : 0xffffffff;
  if (spec.segmentation_id && (*spec.segmentation_id < 1 || *spec.segmentation_id > max_seg))
    throw invalid(t + " segmentation id must be between 1 and " + std::to_string(max_seg));
  if (t == "vlan" && !spec.segmentation_id)
    throw invalid("vlan networks need --provider:segmentation_id");

  store_.write([&] {
    auto nets = store_.networks();
    auto same_segment = [&](const Network& o) {
      return o.network_type == t && o.physical_network == n.physical_network &&
             o.segmentation_id == n.segmentation_id;
    };
    if (t == "vxlan" || t == "gre") {
      if (spec.segmentation_id) {
        n.segmentation_id = spec.segmentation_id;
      } else {
        // Allocate from 1000 up, leaving low ids to explicit requests.
        std::set<uint32_t> used;
        for (auto& o : nets)
          if (o.network_type == t && o.segmentation_id) used.insert(*o.segmentation_id);
        uint32_t id = 1000;
        while (used.count(id)) ++id;
        n.segmentation_id = id;
      }
    } else {
      n.segmentation_id = spec.segmentation_id;
    }
    for (auto& o : nets)
      if (same_segment(o))
        throw exists(
            t + " segment " +
            (n.segmentation_id ? std::to_string(*n.segmentation_id) : "on " + n.physical_network) +
            " is already used by network " + label(o.name, o.id));
    store_.put(n);
  });
  return n;
}

void NetService::delete_network(const std::string& ref) {
  store_.write([&] {
    Network n = network(ref);
    std::vector<std::string> users;
    for (auto& p : store_.ports(n.id))
      if (p.device_owner != kOwnerDhcp) users.push_back(describe_port_user(p));
    if (!users.empty())
      throw busy("network " + label(n.name, n.id) + " is in use by " + common::join(users, ", "));
    for (auto& r : store_.routers())
      if (r.gw_network_id == n.id)
        throw busy("network " + label(n.name, n.id) + " is the external gateway of router " +
                   label(r.name, r.id));
    for (auto& p : store_.ports(n.id)) store_.remove_port(p.id);
    for (auto& s : store_.subnets(n.id)) store_.remove_subnet(s.id);
    store_.remove_network(n.id);
  });
}

Subnet NetService::create_subnet(const SubnetSpec& spec) {
  check_name("subnet", spec.name);
  if (spec.ip_version != 4) throw invalid("only IPv4 subnets are supported (--ip-version 4)");
  auto cidr = Cidr::parse(spec.cidr);
  if (!cidr) throw invalid("'" + spec.cidr + "' is not an IPv4 CIDR like 192.168.0.0/24");
  Subnet s;
  s.id = common::new_uuid();
  s.name = spec.name;
  s.tenant_id = spec.tenant_id;
  s.cidr = *cidr;
  s.enable_dhcp = spec.enable_dhcp;
  s.ip_version = 4;
  if (!spec.gateway_ip) {
    s.gateway_ip = Ipv4(cidr->network.value() + 1);
  } else if (*spec.gateway_ip != "none") {
    auto gw = Ipv4::parse(*spec.gateway_ip);
    if (!gw) throw invalid("gateway '" + *spec.gateway_ip + "' is not an IPv4 address");
    s.gateway_ip = gw;
  }
  for (auto& p : spec.allocation_pools) {
    auto r = IpRange::parse(p);
    if (!r) throw invalid("allocation pool '" + p + "' is not start=IP,end=IP");
    s.allocation_pools.push_back(*r);
  }
  if (s.allocation_pools.empty()) s.allocation_pools = default_pools(s.cidr, s.gateway_ip);
  validate_subnet(s.cidr, s.gateway_ip, s.allocation_pools);
  for (auto& d : spec.dns_nameservers) {
    auto ip = Ipv4::parse(d);
    if (!ip) throw invalid("DNS nameserver '" + d + "' is not an IPv4 address");
    s.dns_nameservers.push_back(*ip);
  }
  store_.write([&] {
    Network n = network(spec.network);
    s.network_id = n.id;
    for (auto& o : store_.subnets(n.id))
      if (o.cidr.overlaps(s.cidr))
        throw exists("subnet " + s.cidr.str() + " overlaps subnet " + label(o.name, o.id) + " (" +
                     o.cidr.str() + ") of network " + label(n.name, n.id));
    store_.put(s);
    if (s.enable_dhcp) {
      // One DHCP port per network, with an address in each DHCP subnet (Neutron's layout).
      std::optional<Port> dhcp;
      for (auto& p : store_.ports(n.id))
        if (p.device_owner == kOwnerDhcp) dhcp = p;
      if (!dhcp) {
        PortSpec ps;
        ps.network = n.id;
        ps.tenant_id = n.tenant_id;
        ps.device_owner = kOwnerDhcp;
        ps.device_id = "dhcp-" + n.id;
        ps.fixed_ips.push_back({s.id, ""});
        ps.no_security_groups = true;
        ps.port_security_enabled = false;
        allocate_port(ps, n);
      } else {
        auto ip = first_free(s.allocation_pools, store_.used_ips(s.id));
        if (!ip) throw no_space("subnet " + label(s.name, s.id) + " has no free address for DHCP");
        dhcp->fixed_ips.push_back({s.id, *ip});
        store_.put(*dhcp);
      }
    }
  });
  return s;
}

void NetService::delete_subnet(const std::string& ref) {
  store_.write([&] {
    Subnet s = subnet(ref);
    std::vector<std::string> users;
    for (auto& p : store_.ports(s.network_id)) {
      bool uses = false;
      for (auto& f : p.fixed_ips) uses |= f.subnet_id == s.id;
      if (uses && p.device_owner != kOwnerDhcp) users.push_back(describe_port_user(p));
    }
    if (!users.empty())
      throw busy("subnet " + label(s.name, s.id) + " is in use by " + common::join(users, ", "));
    for (auto& p : store_.ports(s.network_id)) {
      if (p.device_owner != kOwnerDhcp) continue;
      std::erase_if(p.fixed_ips, [&](const FixedIp& f) { return f.subnet_id == s.id; });
      if (p.fixed_ips.empty())
        store_.remove_port(p.id);
      else
        store_.put(p);
    }
    store_.remove_subnet(s.id);
  });
}

}  // namespace kiln::net

// NetService: ports, with MAC and IP allocation.
#include <algorithm>
#include <set>

#include "kiln/common/host.h"
#include "kiln/net/error.h"
#include "kiln/net/ipam.h"
#include "kiln/net/service.h"
#include "service_util.h"

namespace kiln::net {

Port NetService::allocate_port(const PortSpec& spec, const Network& net) {
  Port p;
  p.id = common::new_uuid();
  p.name = spec.name;
  p.tenant_id = spec.tenant_id;
  p.network_id = net.id;
  p.device_owner = spec.device_owner;
  p.device_id = spec.device_id;
  p.vif_type = spec.vif_type;
  p.binding_netns = spec.binding_netns;
  p.binding_ifname = spec.binding_ifname;
  if (!spec.binding_host_id.empty()) common::check_host_name(spec.binding_host_id);
  p.binding_host_id = spec.binding_host_id;
  p.port_security_enabled = spec.port_security_enabled;
  if (p.vif_type != "tap" && p.vif_type != "veth")
    throw invalid("binding type '" + p.vif_type + "' is not tap or veth");
  if (p.vif_type == "veth" && p.binding_netns.empty())
    throw invalid("a veth port needs the namespace its far end goes into (--netns)");
  if (p.vif_type == "veth" && p.binding_ifname.empty()) p.binding_ifname = "eth0";
  if (p.binding_ifname.size() > 15) throw invalid("interface names are at most 15 characters");

  if (!spec.mac_address.empty()) {
    auto mac = Mac::parse(spec.mac_address);
    if (!mac || !mac->is_unicast() || mac->is_zero())
      throw invalid("'" + spec.mac_address + "' is not a unicast MAC address");
    if (store_.mac_in_use(net.id, *mac))
      throw exists("MAC address " + mac->str() + " is already used on network " +
                   label(net.name, net.id));
    p.mac_address = *mac;
  } else {
    auto prefix = mac_prefix();
    int tries = 0;
    do {
      if (++tries > 64) throw no_space("could not find a free MAC address on the network");
      p.mac_address = random_mac(prefix);
    } while (store_.mac_in_use(net.id, p.mac_address));
  }

  auto subnets = store_.subnets(net.id);
  auto subnet_of = [&](const std::string& ref) -> const Subnet& {
    Subnet s = subnet(ref);
    for (auto& x : subnets)
      if (x.id == s.id) return x;
    throw invalid("subnet " + label(s.name, s.id) + " is not on network " +
                  label(net.name, net.id));
  };
  std::vector<FixedIpRequest> reqs = spec.fixed_ips;
  if (reqs.empty()) {
    if (!subnets.empty()) reqs.push_back({"", ""});
  }
  bool router_port = spec.device_owner == kOwnerRouterInterface;
  for (auto& r : reqs) {
    const Subnet* s = nullptr;
    std::optional<Ipv4> ip;
    if (!r.ip_address.empty()) {
      ip = Ipv4::parse(r.ip_address);
      if (!ip) throw invalid("'" + r.ip_address + "' is not an IPv4 address");
    }
    if (!r.subnet.empty()) {
      s = &subnet_of(r.subnet);
    } else if (ip) {
      for (auto& x : subnets)
        if (x.cidr.contains(*ip)) s = &x;
      if (!s)
        throw invalid("IP address " + ip->str() + " is in no subnet of network " +
                      label(net.name, net.id));
    }
    if (ip) {
      auto used = store_.used_ips(s->id);
      for (auto& f : p.fixed_ips)
        if (f.subnet_id == s->id) used.push_back(f.ip_address);
      validate_fixed_ip(*s, *ip, used, router_port);
      p.fixed_ips.push_back({s->id, *ip});
      continue;
    }
    // No address given: the first subnet (or the named one) with a free address.
    std::vector<const Subnet*> candidates;
    if (s)
      candidates.push_back(s);
    else
      for (auto& x : subnets) candidates.push_back(&x);
    bool done = false;
    for (auto* c : candidates) {
      auto used = store_.used_ips(c->id);
      for (auto& f : p.fixed_ips)
        if (f.subnet_id == c->id) used.push_back(f.ip_address);
      if (auto free = first_free(c->allocation_pools, used)) {
        p.fixed_ips.push_back({c->id, *free});
        done = true;
        break;
      }
    }
    if (!done)
      throw no_space("no free IP address in " +
                     (s ? "subnet " + label(s->name, s->id)
                        : "the subnets of network " + label(net.name, net.id)));
  }

  if (!spec.no_security_groups && spec.port_security_enabled) {
    if (spec.security_groups.empty()) {
      p.security_groups.push_back(ensure_default_group(spec.tenant_id).id);
    } else {
      for (auto& g : spec.security_groups) {
        auto id = security_group(g, spec.tenant_id).id;
        if (std::find(p.security_groups.begin(), p.security_groups.end(), id) ==
            p.security_groups.end())
          p.security_groups.push_back(id);
      }
    }
  } else if (!spec.security_groups.empty()) {
    throw invalid("security groups need port security enabled");
  }
  p.tag = store_.next_port_tag();
  store_.put(p);
  return p;
}

Port NetService::create_port(const PortSpec& spec) {
  check_name("port", spec.name);
  Port probe;
  probe.device_owner = spec.device_owner;
  if (is_service_port(probe))
    throw invalid("device owner '" + spec.device_owner + "' is reserved for netplumb");
  Port out;
  store_.write([&] {
    Network n = network(spec.network);
    out = allocate_port(spec, n);
  });
  return out;
}

Port NetService::update_port(const std::string& ref, const PortUpdate& u) {
  if (u.name) check_name("port", *u.name);
  Port p;
  store_.write([&] {
    p = port(ref);
    // A service port (DHCP, a router's leg) may be placed on a host, and nothing else.
    bool only_binding = !u.name && !u.device_id && !u.port_security_enabled && !u.security_groups &&
                        u.binding_host_id;
    if (is_service_port(p) && !only_binding)
      throw invalid("port " + p.id + " belongs to " + p.device_owner);
    if (u.binding_host_id) {
      if (!u.binding_host_id->empty()) common::check_host_name(*u.binding_host_id);
      p.binding_host_id = *u.binding_host_id;
    }
    if (u.name) p.name = *u.name;
    if (u.device_id) p.device_id = *u.device_id;
    if (u.port_security_enabled) {
      p.port_security_enabled = *u.port_security_enabled;
      if (!p.port_security_enabled && !u.security_groups) p.security_groups.clear();
    }
    if (u.security_groups) {
      p.security_groups.clear();
      for (auto& g : *u.security_groups) {
        auto id = security_group(g, p.tenant_id).id;
        if (std::find(p.security_groups.begin(), p.security_groups.end(), id) ==
            p.security_groups.end())
          p.security_groups.push_back(id);
      }
    }
    if (!p.port_security_enabled && !p.security_groups.empty())
      throw invalid("security groups need port security enabled");
    store_.put(p);
  });
  return p;
}

void NetService::delete_port(const std::string& ref) {
  store_.write([&] {
    Port p = port(ref);
    if (p.device_owner == kOwnerRouterInterface)
      throw busy("port " + p.id + " is an interface of " + describe_port_user(p) +
                 "; use router-interface-delete");
    if (p.device_owner == kOwnerRouterGateway)
      throw busy("port " + p.id + " is the gateway of " + describe_port_user(p) +
                 "; use router-gateway-clear");
    if (p.device_owner == kOwnerDhcp || p.device_owner == kOwnerFloatingIp)
      throw busy("port " + p.id + " belongs to " + p.device_owner +
                 " and goes away with its owner");
    for (auto f : store_.floating_ips())
      if (f.port_id == p.id) {
        f.port_id.clear();
        f.fixed_ip_address.reset();
        f.router_id.clear();
        store_.put(f);
      }
    store_.remove_port(p.id);
  });
}

}  // namespace kiln::net

// NetService: routers and floating IPs.
#include <algorithm>
#include <set>

#include "kiln/net/error.h"
#include "kiln/net/ipam.h"
#include "kiln/net/service.h"
#include "service_util.h"

namespace kiln::net {

Router NetService::create_router(const std::string& name, const std::string& tenant_id) {
  check_name("router", name);
  Router r;
  r.id = common::new_uuid();
  r.name = name;
  r.tenant_id = tenant_id;
  store_.write([&] { store_.put(r); });
  return r;
}

void NetService::delete_router(const std::string& ref) {
  store_.write([&] {
    Router r = router(ref);
    std::vector<std::string> subnets;
    for (auto& p : store_.ports())
      if (p.device_owner == kOwnerRouterInterface && p.device_id == r.id)
        for (auto& f : p.fixed_ips) subnets.push_back(label(subnet(f.subnet_id).name, f.subnet_id));
    if (!subnets.empty())
      throw busy("router " + label(r.name, r.id) + " still has interfaces on subnet " +
                 common::join(subnets, ", ") + "; remove them with router-interface-delete");
    if (!r.gw_network_id.empty()) clear_router_gateway(r.id);
    store_.remove_router(r.id);
  });
}

Port NetService::add_router_interface(const std::string& router_ref,
                                      const std::string& subnet_ref) {
  Port out;
  store_.write([&] {
    Router r = router(router_ref);
    Subnet s = subnet(subnet_ref);
    Network n = network(s.network_id);
    if (n.router_external)
      throw invalid("subnet " + label(s.name, s.id) +
                    " is on an external network; use router-gateway-set");
    if (!s.gateway_ip) throw invalid("subnet " + label(s.name, s.id) + " has no gateway IP");
    for (auto& p : store_.ports(n.id)) {
      if (p.device_owner != kOwnerRouterInterface) continue;
      for (auto& f : p.fixed_ips)
        if (f.subnet_id == s.id)
          throw exists("subnet " + label(s.name, s.id) + " is already attached to " +
                       describe_port_user(p));
    }
    PortSpec ps;
    ps.network = n.id;
    ps.tenant_id = r.tenant_id;
    ps.device_owner = kOwnerRouterInterface;
    ps.device_id = r.id;
    ps.fixed_ips.push_back({s.id, s.gateway_ip->str()});
    ps.no_security_groups = true;
    ps.port_security_enabled = false;
    out = allocate_port(ps, n);
  });
  return out;
}

void NetService::remove_router_interface(const std::string& router_ref,
                                         const std::string& subnet_ref) {
  store_.write([&] {
    Router r = router(router_ref);
    Subnet s = subnet(subnet_ref);
    for (auto& f : store_.floating_ips()) {
      if (f.router_id != r.id || !f.fixed_ip_address || !s.cidr.contains(*f.fixed_ip_address))
        continue;
      throw busy("floating IP " + f.floating_ip_address.str() + " reaches port " + f.port_id +
                 " on subnet " + label(s.name, s.id) + " through router " + label(r.name, r.id) +
                 "; disassociate it first");
    }
    for (auto& p : store_.ports(s.network_id)) {
      if (p.device_owner != kOwnerRouterInterface || p.device_id != r.id) continue;
      for (auto& f : p.fixed_ips)
        if (f.subnet_id == s.id) {
          store_.remove_port(p.id);
          return;
        }
    }
    throw not_found("router " + label(r.name, r.id) + " has no interface on subnet " +
                    label(s.name, s.id));
  });
}

Router NetService::set_router_gateway(const std::string& router_ref, const std::string& network_ref,
                                      bool enable_snat) {
  Router r;
  store_.write([&] {
    r = router(router_ref);
    Network n = network(network_ref);
    if (!n.router_external)
      throw invalid("network " + label(n.name, n.id) +
                    " is not external (create it with --router:external=True)");
    if (r.gw_network_id == n.id) {
      r.enable_snat = enable_snat;
      store_.put(r);
      return;
    }
    if (!r.gw_network_id.empty()) clear_router_gateway(r.id);
    PortSpec ps;
    ps.network = n.id;
    ps.tenant_id = r.tenant_id;
    ps.device_owner = kOwnerRouterGateway;
    ps.device_id = r.id;
    ps.no_security_groups = true;
    ps.port_security_enabled = false;
    Port gw = allocate_port(ps, n);
    if (gw.fixed_ips.empty())
      throw invalid("external network " + label(n.name, n.id) + " has no subnet");
    r.gw_network_id = n.id;
    r.gw_port_id = gw.id;
    r.enable_snat = enable_snat;
    store_.put(r);
  });
  return r;
}

Router NetService::clear_router_gateway(const std::string& router_ref) {
  Router r;
  store_.write([&] {
    r = router(router_ref);
    for (auto& f : store_.floating_ips())
      if (f.router_id == r.id)
        throw busy("router " + label(r.name, r.id) + " carries floating IP " +
                   f.floating_ip_address.str() + "; disassociate it first");
    if (!r.gw_port_id.empty()) store_.remove_port(r.gw_port_id);
    r.gw_network_id.clear();
    r.gw_port_id.clear();
    store_.put(r);
  });
  return r;
}

FloatingIp NetService::create_floating_ip(const std::string& network_ref,
                                          const std::string& tenant_id, const std::string& port_ref,
                                          const std::string& floating_ip) {
  FloatingIp f;
  store_.write([&] {
    Network n = network(network_ref);
    if (!n.router_external)
      throw invalid("floating IPs come from external networks; " + label(n.name, n.id) +
                    " is not one");
    PortSpec ps;
    ps.network = n.id;
    ps.tenant_id = tenant_id;
    ps.device_owner = kOwnerFloatingIp;
    ps.no_security_groups = true;
    ps.port_security_enabled = false;
    if (!floating_ip.empty()) ps.fixed_ips.push_back({"", floating_ip});
    f.id = common::new_uuid();
    ps.device_id = f.id;
    Port p = allocate_port(ps, n);
    if (p.fixed_ips.empty())
      throw invalid("external network " + label(n.name, n.id) + " has no subnet");
    f.tenant_id = tenant_id;
    f.floating_network_id = n.id;
    f.floating_port_id = p.id;
    f.floating_ip_address = p.fixed_ips[0].ip_address;
    store_.put(f);
    if (!port_ref.empty()) f = associate_floating_ip(f.id, port_ref);
  });
  return f;
}

FloatingIp NetService::associate_floating_ip(const std::string& fip_ref,
                                             const std::string& port_ref,
                                             const std::string& fixed_ip) {
  FloatingIp f;
  store_.write([&] {
    f = floating_ip(fip_ref);
    Port p = port(port_ref);
    if (is_service_port(p)) throw invalid("port " + p.id + " belongs to " + p.device_owner);
    std::optional<FixedIp> chosen;
    for (auto& x : p.fixed_ips)
      if (fixed_ip.empty() || x.ip_address.str() == fixed_ip) {
        chosen = x;
        break;
      }
    if (!chosen)
      throw invalid(fixed_ip.empty() ? "port " + p.id + " has no IP address"
                                     : "port " + p.id + " has no IP address " + fixed_ip);
    // The router that joins the port's subnet to the floating IP's network.
    std::string router_id;
    for (auto& r : store_.routers()) {
      if (r.gw_network_id != f.floating_network_id) continue;
      for (auto& rp : store_.ports(p.network_id))
        if (rp.device_owner == kOwnerRouterInterface && rp.device_id == r.id)
          for (auto& x : rp.fixed_ips)
            if (x.subnet_id == chosen->subnet_id) router_id = r.id;
    }
    if (router_id.empty())
      throw invalid("no router joins the subnet of port " + p.id + " to the external network " +
                    label(network(f.floating_network_id).name, f.floating_network_id));
    for (auto& o : store_.floating_ips())
      if (o.id != f.id && o.port_id == p.id && o.fixed_ip_address == chosen->ip_address)
        throw exists("IP " + chosen->ip_address.str() + " of port " + p.id +
                     " already has floating IP " + o.floating_ip_address.str());
    f.port_id = p.id;
    f.fixed_ip_address = chosen->ip_address;
    f.router_id = router_id;
    store_.put(f);
  });
  return f;
}

FloatingIp NetService::disassociate_floating_ip(const std::string& fip_ref) {
  FloatingIp f;
  store_.write([&] {
    f = floating_ip(fip_ref);
    f.port_id.clear();
    f.fixed_ip_address.reset();
    f.router_id.clear();
    store_.put(f);
  });
  return f;
}

void NetService::delete_floating_ip(const std::string& ref) {
  store_.write([&] {
    FloatingIp f = floating_ip(ref);
    store_.remove_floating_ip(f.id);
    if (!f.floating_port_id.empty()) store_.remove_port(f.floating_port_id);
  });
}

}  // namespace kiln::net

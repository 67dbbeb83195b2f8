// Routers: a qrouter- namespace per router with a leg per interface and one on the external
// network (with the floating IPs), the default route, and the NAT table.
#include <unistd.h>

#include <set>

#include "plumb/nft.h"
#include "plumb/reconciler.h"

namespace kiln::net {

void Reconciler::ensure_router(const Router& r) {
  Fd fd;
  std::string ns = router_ns_name(r.id);
  auto nl = enter_ns(ns, fd);
  {
    NetnsGuard in(fd.get());
    write_sysctl("net/ipv4/ip_forward", "1");
  }
  std::set<std::string> legs;
  for (auto& p : snap_.ports) {
    if (p.device_id != r.id) continue;
    bool gw = p.device_owner == kOwnerRouterGateway;
    if (!gw && p.device_owner != kOwnerRouterInterface) continue;
    std::string inner = (gw ? "qg-" : "qr-") + p.id.substr(0, 11);
    legs.insert(inner);
    auto addrs = addresses_of(p);
    if (gw)
      for (auto& f : snap_.floating_ips)
        if (f.router_id == r.id && f.fixed_ip_address) addrs.push_back({f.floating_ip_address, 32});
    ensure_leg(*nl, fd.get(), port_device_name(p), inner, p.mac_address, bridge_of(p.network_id),
               addrs);
  }
  // The default route leads to the external subnet's gateway.
  std::optional<Ipv4> gw_ip;
  for (auto& p : snap_.ports)
    if (p.id == r.gw_port_id && !p.fixed_ips.empty())
      if (auto it = subnets_.find(p.fixed_ips[0].subnet_id); it != subnets_.end())
        gw_ip = it->second->gateway_ip;
  auto have = nl->default_gateway();
  if (gw_ip && have != gw_ip) {
    nl->replace_default_route(*gw_ip);
    changed("default route of " + ns + " via " + gw_ip->str());
  } else if (!gw_ip && have) {
    nl->del_default_route();
  }
  for (auto& l : nl->links())
    if ((l.name.starts_with("qr-") || l.name.starts_with("qg-")) && !legs.count(l.name)) {
      nl->del_link(l.index);
      changed("removed " + l.name + " from " + ns);
    }
  // The NAT table is small: reloaded whole, unless it is what this host applied last and
  // nothing touched the namespace's nftables since.
  std::string script =
      "table ip kiln_nat {}\ndelete table ip kiln_nat\n" + router_nat_ruleset(snap_, r);
  std::string cache = nat_dir_ + "/" + r.id;
  wanted_nat_.insert(r.id);
  NetnsGuard in(fd.get());
  std::string stamp = std::to_string(nft_generation()) + "\n";
  if (read_state_file(cache) == stamp + script) return;
  ::unlink(cache.c_str());
  run_nft(script);
  write_state_file(cache, std::to_string(nft_generation()) + "\n" + script);
  changed("loaded NAT rules of " + ns);
}

}  // namespace kiln::net

// Routers: a qrouter- namespace per router with a leg per interface and one on the external
// network (with the floating IPs), the default route, the NAT table, and (with a metadata
// service) the router's metadata proxy.
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
  bool interfaces = false;
  for (auto& p : snap_.ports) {
    if (p.device_id != r.id) continue;
    bool gw = p.device_owner == kOwnerRouterGateway;
    if (!gw && p.device_owner != kOwnerRouterInterface) continue;
    interfaces |= !gw;
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
  bool metadata = !cfg_.metadata_socket.empty() && interfaces;
  ensure_router_metadata(*nl, r, metadata);
  // The NAT table is small: reloaded whole, unless it is what this host applied last and
  // nothing touched the namespace's nftables since.
  std::string nat = router_nat_ruleset(snap_, r);
  // The metadata proxy is for the router's subnets: nothing from the external network reaches
  // it (the service would not find such an address anyway; this keeps the proxy out of reach).
  if (metadata && !nat.empty())
    nat += std::string("table ip kiln_nat {\n  chain metadata_input {\n") +
           "    type filter hook input priority filter; policy accept;\n" +
           "    iifname \"qg-*\" ip daddr " + kMetadataIp + " drop\n  }\n}\n";
  std::string script = "table ip kiln_nat {}\ndelete table ip kiln_nat\n" + nat;
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

// A guest whose network is configured statically (network_data.json has no route to
// 169.254.169.254, as Nova's has none) sends its metadata requests to its gateway: this
// namespace. With 169.254.169.254/32 on the namespace's loopback those packets are delivered
// here (an address of the namespace is local whichever device a packet comes in on), where the
// router's proxy listens; no NAT rule is needed. The proxy tells the service the router's id,
// and the service finds the guest among the router's subnets by its source address.
void Reconciler::ensure_router_metadata(Rtnl& nl, const Router& r, bool wanted) {
  auto lo = must_link(nl, "lo");
  Ipv4 ip = *Ipv4::parse(kMetadataIp);
  bool have = false;
  for (auto& a : nl.addresses(lo.index)) have |= a.ip == ip && a.prefix == 32;
  std::string ns = router_ns_name(r.id);
  if (wanted && !have) {
    nl.add_address(lo.index, ip, 32);
    changed("added " + std::string(kMetadataIp) + "/32 to lo of " + ns);
  } else if (!wanted && have) {
    nl.del_address(lo.index, ip, 32);
    changed("removed " + std::string(kMetadataIp) + "/32 from lo of " + ns);
  }
  if (!wanted) return;  // a proxy that runs is stopped by remove_stale()
  std::string dir = "qrouter-" + r.id;
  wanted_metadata_.insert(dir);
  ensure_metadata_proxy({cfg_.metadata_proxy, metadata_dir_ + "/" + dir, ns_dir_ + "/" + ns,
                         cfg_.metadata_socket, "", r.id},
                        res_.changes);
}

}  // namespace kiln::net

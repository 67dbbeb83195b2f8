// The nftables ruleset of a router namespace: SNAT and floating IPs.
#include <set>
#include <sstream>

#include "kiln/net/model.h"
#include "kiln/net/plumber.h"
#include "plumb/nft.h"

namespace kiln::net {

std::string router_nat_ruleset(const Snapshot& snap, const Router& r) {
  const Port* gw = nullptr;
  for (auto& p : snap.ports)
    if (p.id == r.gw_port_id) gw = &p;
  if (!gw || gw->fixed_ips.empty()) return "";
  std::string qg = "qg-" + gw->id.substr(0, 11);
  std::ostringstream pre, post;
  for (auto& f : snap.floating_ips) {
    if (f.router_id != r.id || !f.fixed_ip_address) continue;
    pre << "    ip daddr " << f.floating_ip_address.str() << " dnat to "
        << f.fixed_ip_address->str() << "\n";
    post << "    oifname \"" << qg << "\" ip saddr " << f.fixed_ip_address->str() << " snat to "
         << f.floating_ip_address.str() << "\n";
  }
  if (r.enable_snat) {
    std::set<std::string> cidrs;
    for (auto& p : snap.ports) {
      if (p.device_owner != kOwnerRouterInterface || p.device_id != r.id) continue;
      for (auto& f : p.fixed_ips)
        for (auto& s : snap.subnets)
          if (s.id == f.subnet_id) cidrs.insert(s.cidr.str());
    }
    if (!cidrs.empty())
      post << "    oifname \"" << qg << "\" ip saddr " << nft_set(cidrs) << " snat to "
           << gw->fixed_ips[0].ip_address.str() << "\n";
  }
  return "table ip kiln_nat {\n"
         "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n" +
         pre.str() +
         "  }\n"
         "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n" +
         post.str() + "  }\n}\n";
}

}  // namespace kiln::net

// Which guest a router's metadata proxy speaks for (metadata.h): the router's subnets, from
// netplumb's model, and the guest's source address.
#include "kiln/net/store.h"
#include "kiln/spawn/metadata.h"

namespace kiln::spawn {

std::optional<std::string> router_network(net::Store& net, const std::string& router_id,
                                          const std::string& ip) {
  auto addr = net::Ipv4::parse(ip);
  if (!addr) return std::nullopt;
  std::optional<std::string> found;
  int matches = 0;
  for (const auto& p : net.ports()) {
    if (p.device_owner != net::kOwnerRouterInterface || p.device_id != router_id) continue;
    for (const auto& f : p.fixed_ips)
      for (const auto& s : net.subnets(p.network_id))
        if (s.id == f.subnet_id && s.cidr.contains(*addr)) {
          found = p.network_id;
          ++matches;
        }
  }
  // Two of the router's subnets that both hold the address (overlapping subnets of different
  // networks on one router): the address does not say which guest asks, so nobody is answered.
  if (matches != 1) return std::nullopt;
  return found;
}

}  // namespace kiln::spawn

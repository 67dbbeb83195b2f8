#include "kiln/net/ipam.h"

#include <algorithm>
#include <set>

#include "kiln/common/random.h"
#include "kiln/common/text.h"
#include "kiln/net/error.h"

namespace kiln::net {

std::vector<IpRange> default_pools(const Cidr& cidr, std::optional<Ipv4> gateway) {
  uint32_t first = cidr.network.value() + 1, last = cidr.broadcast().value() - 1;
  if (cidr.prefix >= 31 || first > last) return {};
  std::vector<IpRange> out;
  if (gateway && cidr.contains(*gateway) && gateway->value() >= first && gateway->value() <= last) {
    uint32_t g = gateway->value();
    if (g > first) out.push_back({Ipv4(first), Ipv4(g - 1)});
    if (g < last) out.push_back({Ipv4(g + 1), Ipv4(last)});
  } else {
    out.push_back({Ipv4(first), Ipv4(last)});
  }
  return out;
}

void validate_subnet(const Cidr& cidr, std::optional<Ipv4> gateway,
                     const std::vector<IpRange>& pools) {
  if (cidr.prefix < 8 || cidr.prefix > 30)
    throw invalid("subnet " + cidr.str() + ": prefix length must be between /8 and /30");
  auto is_host = [&](Ipv4 ip) {
    return cidr.contains(ip) && ip != cidr.network && ip != cidr.broadcast();
  };
  if (gateway && !is_host(*gateway))
    throw invalid("gateway " + gateway->str() + " is not a host address of " + cidr.str());
  std::vector<IpRange> sorted = pools;
  std::sort(sorted.begin(), sorted.end(),
            [](const IpRange& a, const IpRange& b) { return a.start < b.start; });
  for (size_t i = 0; i < sorted.size(); ++i) {
    const IpRange& p = sorted[i];
    if (!is_host(p.start) || !is_host(p.end))
      throw invalid("allocation pool " + p.str() + " is not inside the host addresses of " +
                    cidr.str());
    if (gateway && p.contains(*gateway))
      throw invalid("allocation pool " + p.str() + " contains the gateway " + gateway->str());
    if (i > 0 && sorted[i - 1].end >= p.start)
      throw invalid("allocation pools " + sorted[i - 1].str() + " and " + p.str() + " overlap");
  }
}

std::optional<Ipv4> first_free(const std::vector<IpRange>& pools, const std::vector<Ipv4>& used) {
  std::set<uint32_t> taken;
  for (auto ip : used) taken.insert(ip.value());
  for (const IpRange& p : pools) {
    // Walk the used addresses inside the pool instead of every address of the pool.
    uint32_t candidate = p.start.value();
    for (auto it = taken.lower_bound(candidate); it != taken.end() && *it == candidate; ++it) {
      if (candidate == p.end.value()) {
        candidate = 0;
        break;
      }
      ++candidate;
    }
    if (candidate != 0 && candidate <= p.end.value() && !taken.count(candidate))
      return Ipv4(candidate);
  }
  return std::nullopt;
}

void validate_fixed_ip(const Subnet& subnet, Ipv4 ip, const std::vector<Ipv4>& used,
                       bool allow_gateway) {
  const Cidr& c = subnet.cidr;
  std::string where = "subnet " + (subnet.name.empty() ? subnet.id : subnet.name);
  if (!c.contains(ip))
    throw invalid("IP address " + ip.str() + " is not in " + where + " (" + c.str() + ")");
  if (ip == c.network || ip == c.broadcast())
    throw invalid("IP address " + ip.str() + " is the network or broadcast address of " + where);
  if (!allow_gateway && subnet.gateway_ip && *subnet.gateway_ip == ip)
    throw invalid("IP address " + ip.str() + " is the gateway of " + where);
  if (std::find(used.begin(), used.end(), ip) != used.end())
    throw exists("IP address " + ip.str() + " is already allocated in " + where);
}

Mac random_mac(const std::vector<uint8_t>& prefix) {
  Mac m;
  common::random_bytes(m.b.data(), m.b.size());
  std::copy(prefix.begin(), prefix.end(), m.b.begin());
  return m;
}

}  // namespace kiln::net

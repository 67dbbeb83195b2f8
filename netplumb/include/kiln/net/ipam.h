// IP address and MAC allocation rules, free of any storage.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "kiln/net/addr.h"
#include "kiln/net/model.h"

namespace kiln::net {

inline constexpr const char* kDefaultMacPrefix = "fa:16:3e";

// The CIDR less the network address, the broadcast address and the gateway.
std::vector<IpRange> default_pools(const Cidr& cidr, std::optional<Ipv4> gateway);

// Throws Error(kInvalidArgument) unless the subnet is usable: prefix /8../30, gateway a host
// address in the CIDR, pools inside the CIDR, not overlapping each other, covering neither the
// network nor the broadcast address nor the gateway.
void validate_subnet(const Cidr& cidr, std::optional<Ipv4> gateway,
                     const std::vector<IpRange>& pools);

// The lowest address of the pools that is not in `used`.
std::optional<Ipv4> first_free(const std::vector<IpRange>& pools, const std::vector<Ipv4>& used);

// Throws unless `ip` may be given to a port of `subnet`: inside the CIDR, neither network nor
// broadcast address, the gateway only when `allow_gateway`, and not in `used`.
void validate_fixed_ip(const Subnet& subnet, Ipv4 ip, const std::vector<Ipv4>& used,
                       bool allow_gateway);

// A locally administered unicast MAC: the prefix, then random octets.
Mac random_mac(const std::vector<uint8_t>& prefix);

}  // namespace kiln::net

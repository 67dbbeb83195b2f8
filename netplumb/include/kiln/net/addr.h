// IPv4 addresses, CIDR prefixes, address ranges and MAC addresses.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::net {

class Ipv4 {
 public:
  constexpr Ipv4() = default;
  constexpr explicit Ipv4(uint32_t host_order) : v_(host_order) {}
  static std::optional<Ipv4> parse(std::string_view s);
  uint32_t value() const { return v_; }  // host byte order
  std::string str() const;
  auto operator<=>(const Ipv4&) const = default;

 private:
  uint32_t v_ = 0;
};

struct Cidr {
  Ipv4 network;
  int prefix = 0;

  // Accepts "a.b.c.d/n" with no host bits set.
  static std::optional<Cidr> parse(std::string_view s);
  uint32_t mask() const { return prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix); }
  Ipv4 netmask() const { return Ipv4(mask()); }
  Ipv4 broadcast() const { return Ipv4(network.value() | ~mask()); }
  bool contains(Ipv4 ip) const { return (ip.value() & mask()) == network.value(); }
  bool overlaps(const Cidr& o) const {
    int p = prefix < o.prefix ? prefix : o.prefix;
    uint32_t m = p == 0 ? 0 : ~uint32_t{0} << (32 - p);
    return (network.value() & m) == (o.network.value() & m);
  }
  std::string str() const;
  bool operator==(const Cidr&) const = default;
};

struct IpRange {
  Ipv4 start;
  Ipv4 end;
  // "start-end" (the store's form) or "start=a,end=b" (the CLI's form).
  static std::optional<IpRange> parse(std::string_view s);
  std::string str() const { return start.str() + "-" + end.str(); }
  bool contains(Ipv4 ip) const { return start <= ip && ip <= end; }
  bool operator==(const IpRange&) const = default;
};

struct Mac {
  std::array<uint8_t, 6> b{};
  static std::optional<Mac> parse(std::string_view s);
  std::string str() const;
  bool is_unicast() const { return (b[0] & 1) == 0; }
  bool is_zero() const { return b == std::array<uint8_t, 6>{}; }
  bool operator==(const Mac&) const = default;
};

// A MAC prefix of 1 to 5 octets ("fa:16:3e").
std::optional<std::vector<uint8_t>> parse_mac_prefix(std::string_view s);

}  // namespace kiln::net

#include "kiln/net/addr.h"

#include <charconv>
#include <cstdio>

namespace kiln::net {
namespace {

std::optional<unsigned> parse_uint(std::string_view s, unsigned max, int base = 10) {
  if (s.empty() || s.size() > 10) return std::nullopt;
  unsigned v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
  if (ec != std::errc() || p != s.data() + s.size() || v > max) return std::nullopt;
  return v;
}

}  // namespace

std::optional<Ipv4> Ipv4::parse(std::string_view s) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) {
    size_t dot = s.find('.');
    if ((i < 3) != (dot != std::string_view::npos)) return std::nullopt;
    std::string_view part = s.substr(0, dot);
    if (part.size() > 1 && part[0] == '0') return std::nullopt;  // no octal-looking octets
    auto o = parse_uint(part, 255);
    if (!o) return std::nullopt;
    v = (v << 8) | *o;
    if (i < 3) s.remove_prefix(dot + 1);
  }
  return Ipv4(v);
}

std::string Ipv4::str() const {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%u.%u.%u.%u", v_ >> 24, (v_ >> 16) & 255, (v_ >> 8) & 255,
                v_ & 255);
  return buf;
}

std::optional<Cidr> Cidr::parse(std::string_view s) {
  size_t slash = s.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  auto ip = Ipv4::parse(s.substr(0, slash));
  auto p = parse_uint(s.substr(slash + 1), 32);
  if (!ip || !p) return std::nullopt;
  Cidr c{*ip, static_cast<int>(*p)};
  if ((ip->value() & c.mask()) != ip->value()) return std::nullopt;
  return c;
}

std::string Cidr::str() const { return network.str() + "/" + std::to_string(prefix); }

std::optional<IpRange> IpRange::parse(std::string_view s) {
  std::string_view a, b;
  if (s.starts_with("start=")) {
    size_t comma = s.find(",end=");
    if (comma == std::string_view::npos) return std::nullopt;
    a = s.substr(6, comma - 6);
    b = s.substr(comma + 5);
  } else {
    size_t dash = s.find('-');
    if (dash == std::string_view::npos) return std::nullopt;
    a = s.substr(0, dash);
    b = s.substr(dash + 1);
  }
  auto x = Ipv4::parse(a), y = Ipv4::parse(b);
  if (!x || !y || *y < *x) return std::nullopt;
  return IpRange{*x, *y};
}

std::optional<Mac> Mac::parse(std::string_view s) {
  if (s.size() != 17) return std::nullopt;
  Mac m;
  for (int i = 0; i < 6; ++i) {
    if (i < 5 && s[i * 3 + 2] != ':') return std::nullopt;
    auto o = parse_uint(s.substr(i * 3, 2), 255, 16);
    if (!o) return std::nullopt;
    m.b[i] = static_cast<uint8_t>(*o);
  }
  return m;
}

std::string Mac::str() const {
  char buf[18];
  std::snprintf(buf, sizeof buf, "%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4],
                b[5]);
  return buf;
}

std::optional<std::vector<uint8_t>> parse_mac_prefix(std::string_view s) {
  std::vector<uint8_t> out;
  while (!s.empty()) {
    if (s.size() < 2) return std::nullopt;
    auto o = parse_uint(s.substr(0, 2), 255, 16);
    if (!o) return std::nullopt;
    out.push_back(static_cast<uint8_t>(*o));
    s.remove_prefix(2);
    if (!s.empty()) {
      if (s[0] != ':') return std::nullopt;
      s.remove_prefix(1);
      if (s.empty()) return std::nullopt;
    }
  }
  if (out.empty() || out.size() > 5 || (out[0] & 1)) return std::nullopt;
  return out;
}

}  // namespace kiln::net

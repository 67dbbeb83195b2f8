// Helpers shared by the service_*.cpp files (private to netplumb).
#pragma once

#include <charconv>
#include <optional>
#include <string>
#include <vector>

#include "kiln/common/random.h"
#include "kiln/common/text.h"
#include "kiln/net/error.h"
#include "kiln/net/model.h"

namespace kiln::net {

constexpr size_t kMaxName = 255;

inline void check_name(const std::string& what, const std::string& name) {
  if (name.size() > kMaxName) throw invalid(what + " name is longer than 255 characters");
  for (char c : name)
    if (static_cast<unsigned char>(c) < 0x20) throw invalid(what + " name has control characters");
}

inline std::string label(const std::string& name, const std::string& id) {
  return "'" + (name.empty() ? id : name) + "'";
}

// Finds by exact id, then by name; a name shared by several objects is refused.
template <class T>
T find_ref(const std::vector<T>& all, const std::string& ref, const std::string& what) {
  if (ref.empty()) throw invalid(what + " not given");
  for (const T& x : all)
    if (x.id == ref) return x;
  std::vector<const T*> named;
  for (const T& x : all)
    if (x.name == ref) named.push_back(&x);
  if (named.size() == 1) return *named[0];
  if (named.size() > 1)
    throw invalid("several " + what + "s are named '" + ref + "'; give an id instead");
  throw not_found(what + " '" + ref + "' not found");
}

inline std::optional<uint32_t> parse_u32(const std::string& s) {
  uint32_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

inline bool is_service_port(const Port& p) {
  return p.device_owner == kOwnerDhcp || p.device_owner == kOwnerRouterInterface ||
         p.device_owner == kOwnerRouterGateway || p.device_owner == kOwnerFloatingIp;
}

// An any-protocol IPv4 rule of group g.
inline SecurityGroupRule new_rule(const SecurityGroup& g, const char* direction,
                                  const std::string& remote_group) {
  SecurityGroupRule r;
  r.id = common::new_uuid();
  r.security_group_id = g.id;
  r.tenant_id = g.tenant_id;
  r.direction = direction;
  r.remote_group_id = remote_group;
  return r;
}

}  // namespace kiln::net

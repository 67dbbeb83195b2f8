// NetService: settings and name-or-id lookups.
#include "kiln/net/service.h"

#include <algorithm>
#include <cstdlib>
#include <ctime>
#include <set>

#include "kiln/common/host.h"
#include "kiln/common/random.h"
#include "kiln/common/text.h"
#include "kiln/net/error.h"
#include "kiln/net/ipam.h"
#include "service_util.h"

namespace kiln::net {

const std::vector<std::pair<std::string, std::string>>& known_settings() {
  static const std::vector<std::pair<std::string, std::string>> k = {
      {"mac_prefix", kDefaultMacPrefix},   {"vxlan_local_ip", ""},  {"vxlan_peers", ""},
      {"physical_interface_mappings", ""}, {"metadata_socket", ""},
  };
  return k;
}

bool is_host_setting(const std::string& key) {
  return std::find(kHostSettings.begin(), kHostSettings.end(), key) != kHostSettings.end();
}

void NetService::set_setting(const std::string& key, const std::string& value,
                             const std::string& host) {
  bool known = false;
  for (auto& [k, d] : known_settings()) known |= k == key;
  if (!known) throw invalid("unknown setting '" + key + "'");
  if (!host.empty()) {
    common::check_host_name(host);
    if (!is_host_setting(key)) throw invalid("setting '" + key + "' is global, not per host");
  }
  if (key == "mac_prefix" && !parse_mac_prefix(value))
    throw invalid("mac_prefix must be 1 to 5 hex octets of a unicast MAC, like fa:16:3e");
  if (key == "vxlan_local_ip" && !value.empty() && !Ipv4::parse(value))
    throw invalid("vxlan_local_ip must be an IPv4 address");
  if (key == "vxlan_peers")
    for (auto& p : common::split(value, ','))
      if (!Ipv4::parse(p)) throw invalid("vxlan_peers: '" + p + "' is not an IPv4 address");
  if (key == "physical_interface_mappings")
    for (auto& m : common::split(value, ',')) {
      auto kv = common::split(m, ':');
      if (kv.size() != 2 || kv[0].empty() || kv[1].empty() || kv[1].size() > 15)
        throw invalid("physical_interface_mappings: '" + m + "' is not PHYSNET:INTERFACE");
    }
  if (key == "metadata_socket" && !value.empty() && (value[0] != '/' || value.size() > 107))
    throw invalid("metadata_socket must be an absolute path of at most 107 bytes");
  if (is_host_setting(key)) {
    std::string h = host.empty() ? common::this_host_name() : host;
    store_.write([&] { store_.set_host_setting(h, key, value); });
    return;
  }
  store_.write([&] { store_.set_setting(key, value); });
}

std::vector<std::pair<std::string, std::string>> NetService::settings(const std::string& host) {
  std::vector<std::pair<std::string, std::string>> out;
  std::string h;
  if (!host.empty()) common::check_host_name(host);
  store_.read([&] {
    for (auto& [k, d] : known_settings()) {
      if (!is_host_setting(k)) {
        out.emplace_back(k, store_.setting(k).value_or(d));
        continue;
      }
      if (h.empty()) h = host.empty() ? common::this_host_name() : host;
      out.emplace_back(k, store_.host_setting(h, k).value_or(d));
    }
  });
  return out;
}

Agent NetService::report_agent() {
  const std::string me = common::this_host_name();
  Agent out;
  store_.write([&] {
    const int64_t now = static_cast<int64_t>(std::time(nullptr));
    std::optional<Agent> a;
    for (auto& x : store_.agents())
      if (x.host == me) a = x;
    if (!a) {
      a = Agent{};
      a->id = common::new_uuid();
      a->host = me;
      a->created_at = now;
    }
    a->tunnel_ip = store_.host_setting(me, "vxlan_local_ip").value_or("");
    a->heartbeat_at = now;
    store_.put(*a);
    out = *a;
  });
  return out;
}

Agent NetService::agent(const std::string& ref) {
  for (auto& a : store_.agents())
    if (a.id == ref || a.host == ref) return a;
  throw not_found("agent '" + ref + "' not found");
}

void NetService::delete_agent(const std::string& ref) {
  store_.write([&] { store_.remove_agent(agent(ref).id); });
}

Agent NetService::update_agent(const std::string& ref, bool admin_state_up) {
  Agent a;
  store_.write([&] {
    a = agent(ref);
    a.admin_state_up = admin_state_up;
    store_.put(a);
  });
  return a;
}

std::vector<std::string> NetService::tunnel_peers(const std::string& host) {
  std::vector<std::string> out;
  store_.read([&] {
    const std::string h = host.empty() ? common::this_host_name() : host;
    if (auto v = store_.host_setting(h, "vxlan_peers"); v && !v->empty()) {
      out = common::split(*v, ',');
      return;
    }
    const std::string mine = store_.host_setting(h, "vxlan_local_ip").value_or("");
    std::set<std::string> seen;
    for (auto& a : store_.agents())
      if (a.host != h && a.admin_state_up && !a.tunnel_ip.empty() && a.tunnel_ip != mine &&
          Ipv4::parse(a.tunnel_ip) && seen.insert(a.tunnel_ip).second)
        out.push_back(a.tunnel_ip);
  });
  return out;
}

std::vector<uint8_t> NetService::mac_prefix() {
  auto s = store_.setting("mac_prefix").value_or(kDefaultMacPrefix);
  return parse_mac_prefix(s).value_or(std::vector<uint8_t>{0xfa, 0x16, 0x3e});
}

Network NetService::network(const std::string& ref) {
  return find_ref(store_.networks(), ref, "network");
}
Subnet NetService::subnet(const std::string& ref) {
  return find_ref(store_.subnets(), ref, "subnet");
}
Port NetService::port(const std::string& ref) { return find_ref(store_.ports(), ref, "port"); }
Router NetService::router(const std::string& ref) {
  return find_ref(store_.routers(), ref, "router");
}
FloatingIp NetService::floating_ip(const std::string& ref) {
  for (auto& f : store_.floating_ips())
    if (f.id == ref || f.floating_ip_address.str() == ref) return f;
  throw not_found("floating IP '" + ref + "' not found");
}
SecurityGroup NetService::security_group(const std::string& ref, const std::string& tenant_id) {
  auto all = store_.security_groups();
  if (!tenant_id.empty()) {
    // Every tenant has a group named "default": prefer the caller's.
    std::vector<SecurityGroup> mine;
    for (auto& g : all)
      if (g.tenant_id == tenant_id && g.name == ref) mine.push_back(g);
    if (mine.size() == 1) return mine[0];
  }
  return find_ref(all, ref, "security group");
}
SecurityGroupRule NetService::security_group_rule(const std::string& id) {
  for (auto& r : store_.security_group_rules())
    if (r.id == id) return r;
  throw not_found("security group rule '" + id + "' not found");
}

std::string NetService::describe_port_user(const Port& p) {
  std::string s = "port " + p.id;
  if (!p.name.empty()) s += " ('" + p.name + "')";
  if (p.device_owner == kOwnerRouterInterface || p.device_owner == kOwnerRouterGateway) {
    std::string rname = p.device_id;
    for (auto& r : store_.routers())
      if (r.id == p.device_id) rname = label(r.name, r.id);
    return "router " + rname +
           (p.device_owner == kOwnerRouterInterface ? " (interface " : " (gateway ") + p.id + ")";
  }
  if (!p.device_owner.empty() || !p.device_id.empty())
    s += " of " + (p.device_owner.empty() ? std::string("device") : p.device_owner) + " " +
         p.device_id;
  return s;
}

HostConfig host_config(NetService& svc) {
  HostConfig h;
  h.host = common::this_host_name();
  h.vxlan_peers = svc.tunnel_peers(h.host);
  for (auto& [k, v] : svc.settings(h.host)) {
    if (k == "vxlan_local_ip") h.vxlan_local_ip = v;
    if (k == "physical_interface_mappings")
      for (auto& m : common::split(v, ',')) {
        auto kv = common::split(m, ':');
        if (kv.size() == 2) h.physical_interface_mappings.emplace_back(kv[0], kv[1]);
      }
    if (k == "metadata_socket") h.metadata_socket = v;
  }
  if (const char* d = std::getenv("KILN_DNSMASQ"); d && *d) h.dnsmasq = d;
  if (const char* d = std::getenv("KILN_METADATA_PROXY"); d && *d) h.metadata_proxy = d;
  return h;
}

}  // namespace kiln::net

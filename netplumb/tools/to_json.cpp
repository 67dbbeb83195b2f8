// The model's objects as kiln-net prints them.
#include "to_json.h"

#include <ctime>

namespace kiln::net::cli {

using json = common::Json;

namespace {

json opt_ip(const std::optional<Ipv4>& ip) { return ip ? json(ip->str()) : json(nullptr); }

json fixed_ips(const std::vector<FixedIp>& ips) {
  json a = json::array();
  for (auto& f : ips) a.push_back({{"subnet_id", f.subnet_id}, {"ip_address", f.ip_address.str()}});
  return a;
}

}  // namespace

json to_json(const Network& n, const std::vector<Subnet>& subnets) {
  json sub = json::array();
  for (auto& s : subnets)
    if (s.network_id == n.id) sub.push_back(s.id);
  return {
      {"id", n.id},
      {"name", n.name},
      {"tenant_id", n.tenant_id},
      {"admin_state_up", n.admin_state_up},
      {"provider:network_type", n.network_type},
      {"provider:physical_network",
       n.physical_network.empty() ? json(nullptr) : json(n.physical_network)},
      {"provider:segmentation_id", n.segmentation_id ? json(*n.segmentation_id) : json(nullptr)},
      {"router:external", n.router_external},
      {"shared", n.shared},
      {"mtu", network_mtu(n)},
      {"subnets", sub}};
}

json to_json(const Subnet& s) {
  json pools = json::array(), dns = json::array();
  for (auto& p : s.allocation_pools)
    pools.push_back({{"start", p.start.str()}, {"end", p.end.str()}});
  for (auto& d : s.dns_nameservers) dns.push_back(d.str());
  return {{"id", s.id},
          {"name", s.name},
          {"tenant_id", s.tenant_id},
          {"network_id", s.network_id},
          {"ip_version", s.ip_version},
          {"cidr", s.cidr.str()},
          {"gateway_ip", opt_ip(s.gateway_ip)},
          {"allocation_pools", pools},
          {"dns_nameservers", dns},
          {"enable_dhcp", s.enable_dhcp}};
}

json to_json(const Port& p) {
  json binding = {{"vif_type", p.vif_type}};
  if (p.vif_type == "veth") {
    binding["netns"] = p.binding_netns;
    binding["ifname"] = p.binding_ifname;
  }
  return {{"id", p.id},
          {"name", p.name},
          {"tenant_id", p.tenant_id},
          {"network_id", p.network_id},
          {"mac_address", p.mac_address.str()},
          {"fixed_ips", fixed_ips(p.fixed_ips)},
          {"security_groups", p.security_groups},
          {"device_owner", p.device_owner},
          {"device_id", p.device_id},
          {"port_security_enabled", p.port_security_enabled},
          {"binding:vif_details", binding},
          {"binding:host_id", p.binding_host_id},
          {"admin_state_up", p.admin_state_up}};
}

json to_json(const Router& r, const Port* gw_port) {
  json gw = nullptr;
  if (!r.gw_network_id.empty()) {
    gw = {{"network_id", r.gw_network_id}, {"enable_snat", r.enable_snat}};
    if (gw_port) gw["external_fixed_ips"] = fixed_ips(gw_port->fixed_ips);
  }
  return {{"id", r.id},
          {"name", r.name},
          {"tenant_id", r.tenant_id},
          {"admin_state_up", r.admin_state_up},
          {"external_gateway_info", gw}};
}

json to_json(const FloatingIp& f) {
  return {{"id", f.id},
          {"tenant_id", f.tenant_id},
          {"floating_network_id", f.floating_network_id},
          {"floating_ip_address", f.floating_ip_address.str()},
          {"port_id", f.port_id.empty() ? json(nullptr) : json(f.port_id)},
          {"fixed_ip_address", opt_ip(f.fixed_ip_address)},
          {"router_id", f.router_id.empty() ? json(nullptr) : json(f.router_id)}};
}

json to_json(const SecurityGroupRule& r) {
  auto opt_int = [](const std::optional<int>& v) { return v ? json(*v) : json(nullptr); };
  auto opt_str = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
  return {{"id", r.id},
          {"security_group_id", r.security_group_id},
          {"tenant_id", r.tenant_id},
          {"direction", r.direction},
          {"ethertype", r.ethertype},
          {"protocol", opt_str(r.protocol)},
          {"port_range_min", opt_int(r.port_range_min)},
          {"port_range_max", opt_int(r.port_range_max)},
          {"remote_ip_prefix", opt_str(r.remote_ip_prefix)},
          {"remote_group_id", opt_str(r.remote_group_id)}};
}

json to_json(const SecurityGroup& g, const std::vector<SecurityGroupRule>& rules) {
  json rs = json::array();
  for (auto& r : rules)
    if (r.security_group_id == g.id) rs.push_back(to_json(r));
  return {{"id", g.id},
          {"name", g.name},
          {"tenant_id", g.tenant_id},
          {"description", g.description},
          {"security_group_rules", rs}};
}

json to_json(const Agent& a) {
  auto when = [](int64_t t) {
    std::time_t tt = static_cast<std::time_t>(t);
    std::tm tm{};
    ::gmtime_r(&tt, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
    return std::string(buf);
  };
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  json conf = {{"tunnel_types", json::array({"vxlan", "gre"})},
               {"tunneling_ip", a.tunnel_ip.empty() ? json(nullptr) : json(a.tunnel_ip)}};
  return {{"id", a.id},
          {"agent_type", a.agent_type},
          {"binary", a.binary},
          {"host", a.host},
          {"alive", now - a.heartbeat_at <= kAgentDownTime},
          {"admin_state_up", a.admin_state_up},
          {"configurations", conf},
          {"created_at", when(a.created_at)},
          {"heartbeat_timestamp", when(a.heartbeat_at)}};
}

}  // namespace kiln::net::cli

#include "cli/output.h"

#include <iostream>

namespace kiln::net::cli {

using json = nlohmann::ordered_json;

namespace {

json opt_ip(const std::optional<Ipv4>& ip) { return ip ? json(ip->str()) : json(nullptr); }

json fixed_ips(const std::vector<FixedIp>& ips) {
  json a = json::array();
  for (auto& f : ips) a.push_back({{"subnet_id", f.subnet_id}, {"ip_address", f.ip_address.str()}});
  return a;
}

// A cell: strings as they are, arrays one item per line, objects as compact JSON.
std::vector<std::string> cell_lines(const json& v) {
  if (v.is_null()) return {""};
  if (v.is_string()) return {v.get<std::string>()};
  if (v.is_boolean()) return {v.get<bool>() ? "True" : "False"};
  if (v.is_array()) {
    std::vector<std::string> out;
    for (auto& x : v) out.push_back(x.is_string() ? x.get<std::string>() : x.dump());
    if (out.empty()) out.push_back("");
    return out;
  }
  return {v.dump()};
}

void print_table(const std::vector<std::string>& header,
                 const std::vector<std::vector<json>>& rows) {
  std::vector<size_t> width(header.size());
  for (size_t c = 0; c < header.size(); ++c) width[c] = header[c].size();
  for (auto& r : rows)
    for (size_t c = 0; c < r.size(); ++c)
      for (auto& l : cell_lines(r[c])) width[c] = std::max(width[c], l.size());
  auto rule = [&] {
    std::string s = "+";
    for (auto w : width) s += std::string(w + 2, '-') + "+";
    std::cout << s << "\n";
  };
  auto line = [&](const std::vector<std::string>& cells) {
    std::string s = "|";
    for (size_t c = 0; c < cells.size(); ++c)
      s += " " + cells[c] + std::string(width[c] - cells[c].size(), ' ') + " |";
    std::cout << s << "\n";
  };
  rule();
  line(header);
  rule();
  for (auto& r : rows) {
    std::vector<std::vector<std::string>> cols;
    size_t height = 1;
    for (auto& v : r) {
      cols.push_back(cell_lines(v));
      height = std::max(height, cols.back().size());
    }
    for (size_t h = 0; h < height; ++h) {
      std::vector<std::string> cells;
      for (auto& c : cols) cells.push_back(h < c.size() ? c[h] : "");
      line(cells);
    }
  }
  rule();
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

void print_object(const json& obj, Format f) {
  if (f == Format::kJson) {
    std::cout << obj.dump(2) << "\n";
    return;
  }
  std::vector<std::vector<json>> rows;
  for (auto& [k, v] : obj.items()) rows.push_back({k, v});
  print_table({"Field", "Value"}, rows);
}

void print_list(const std::vector<json>& objs, const std::vector<std::string>& columns, Format f) {
  if (f == Format::kJson) {
    std::cout << json(objs).dump(2) << "\n";
    return;
  }
  std::vector<std::vector<json>> rows;
  for (auto& o : objs) {
    std::vector<json> r;
    for (auto& c : columns) r.push_back(o.contains(c) ? o[c] : json(nullptr));
    rows.push_back(r);
  }
  print_table(columns, rows);
}

}  // namespace kiln::net::cli

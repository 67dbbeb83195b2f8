#include "plumb/sg_rules.h"

#include <nlohmann/json.hpp>
#include <sstream>

#include "kiln/net/plumber.h"

namespace kiln::net {
namespace {

std::string hex(uint32_t v) {
  std::ostringstream s;
  s << "0x" << std::hex << v;
  return s.str();
}

std::string set_name(const std::string& group_id) {
  std::string s = "rg_" + group_id;
  for (char& c : s)
    if (c == '-') c = '_';
  return s;
}

std::string ip_list(const std::set<std::string>& ips) {
  std::string s;
  for (auto& ip : ips) {
    if (!s.empty()) s += ", ";
    s += ip;
  }
  return "{ " + s + " }";
}

bool filtered(const Port& p) {
  return p.port_security_enabled && p.device_owner != kOwnerDhcp &&
         p.device_owner != kOwnerRouterInterface && p.device_owner != kOwnerRouterGateway &&
         p.device_owner != kOwnerFloatingIp;
}

// One rule as nft expressions, or "" when it cannot apply (IPv6: ports are IPv4 only).
std::string render_rule(const SecurityGroupRule& r, bool ingress) {
  if (r.ethertype != "IPv4") return "";
  // A stream, not string concatenation: GCC 12 at -O3 warns falsely (-Wrestrict) on the latter.
  std::ostringstream s;
  s << "meta nfproto ipv4";
  const char* peer = ingress ? " ip saddr " : " ip daddr ";
  if (!r.remote_ip_prefix.empty()) s << peer << r.remote_ip_prefix;
  if (!r.remote_group_id.empty()) s << peer << "@" << set_name(r.remote_group_id);
  if (r.protocol == "tcp" || r.protocol == "udp") {
    s << " meta l4proto " << r.protocol;
    if (r.port_range_min) {
      s << " " << r.protocol << " dport " << *r.port_range_min;
      if (r.port_range_max && *r.port_range_max != *r.port_range_min) s << "-" << *r.port_range_max;
    }
  } else if (r.protocol == "icmp") {
    s << " meta l4proto icmp";
    if (r.port_range_min) s << " icmp type " << *r.port_range_min;
    if (r.port_range_max) s << " icmp code " << *r.port_range_max;
  } else if (!r.protocol.empty()) {
    s << " meta l4proto " << r.protocol;
  }
  return s.str();
}

SgPortRules port_rules(const Port& p, const Snapshot& snap) {
  SgPortRules pr;
  pr.dev = port_device_name(p);
  std::set<std::string> ips;
  for (auto& f : p.fixed_ips) ips.insert(f.ip_address.str());
  std::set<std::string> arp_ips = ips;
  arp_ips.insert("0.0.0.0");  // address probes
  std::string mac = p.mac_address.str();
  std::ostringstream from, egress, ingress;
  from << "ether saddr != " << mac << " drop\n"
       << "ether type arp arp saddr ether != " << mac << " drop\n"
       << "ether type arp arp saddr ip != " << ip_list(arp_ips) << " drop\n"
       << "ether type != { ip, arp } drop\n"
       << "meta mark set " << hex(p.tag << 16) << "\n";
  pr.from = from.str();
  pr.to = "meta mark set meta mark or " + hex(p.tag) + "\n";

  egress << "meta nfproto ipv6 drop\n"
         << "udp sport 68 udp dport 67 return\n"
         << "udp sport 67 udp dport 68 drop\n";
  if (ips.empty())
    egress << "drop\n";
  else
    egress << "ip saddr != " << ip_list(ips) << " drop\n";
  egress << "ct state invalid drop\nct state established,related return\n";
  ingress << "meta nfproto ipv6 drop\n"
          << "ct state invalid drop\nct state established,related accept\n"
          << "udp sport 67 udp dport 68 accept\n";
  for (auto& r : snap.security_group_rules) {
    bool member = false;
    for (auto& g : p.security_groups) member |= g == r.security_group_id;
    if (!member) continue;
    bool in = r.direction == "ingress";
    std::string expr = render_rule(r, in);
    if (expr.empty()) continue;
    (in ? ingress : egress) << expr << (in ? " accept\n" : " return\n");
  }
  egress << "drop\n";
  ingress << "drop\n";
  pr.egress = egress.str();
  pr.ingress = ingress.str();
  return pr;
}

void chain_block(std::ostringstream& o, const char* family, const std::string& chain,
                 const std::string& body) {
  o << "table " << family << " kiln_sg {\n  chain " << chain << " {\n";
  std::istringstream lines(body);
  for (std::string line; std::getline(lines, line);) o << "    " << line << "\n";
  o << "  }\n}\n";
}

void add_set(std::ostringstream& o, const std::string& name, const std::set<std::string>& ips) {
  o << "add set inet kiln_sg " << name << " { type ipv4_addr; }\n"
    << "flush set inet kiln_sg " << name << "\n";
  if (!ips.empty()) o << "add element inet kiln_sg " << name << " " << ip_list(ips) << "\n";
}

void add_port_chains(std::ostringstream& o, uint32_t tag, const SgPortRules& p, bool flush) {
  std::string t = std::to_string(tag);
  const std::pair<const char*, std::string> chains[] = {{"bridge", "from_" + t},
                                                        {"bridge", "to_" + t},
                                                        {"inet", "egress_" + t},
                                                        {"inet", "ingress_" + t}};
  const std::string* bodies[] = {&p.from, &p.to, &p.egress, &p.ingress};
  for (int i = 0; i < 4; ++i) {
    if (!flush) {
      chain_block(o, chains[i].first, chains[i].second, *bodies[i]);
      continue;
    }
    // Into live tables: "add rule" lines make libnftables fetch far less state than a block.
    std::string prefix = std::string(chains[i].first) + " kiln_sg " + chains[i].second;
    o << "add chain " << prefix << "\nflush chain " << prefix << "\n";
    std::istringstream lines(*bodies[i]);
    for (std::string line; std::getline(lines, line);)
      o << "add rule " << prefix << " " << line << "\n";
  }
}

void add_port_elements(std::ostringstream& o, uint32_t tag, const SgPortRules& p) {
  std::string t = std::to_string(tag);
  o << "add element bridge kiln_sg from_port { \"" << p.dev << "\" : jump from_" << t << " }\n"
    << "add element bridge kiln_sg to_port { \"" << p.dev << "\" : jump to_" << t << " }\n"
    << "add element inet kiln_sg egress_by_mark { " << hex(tag << 16) << " : jump egress_" << t
    << " }\n"
    << "add element inet kiln_sg ingress_by_mark { " << hex(tag) << " : jump ingress_" << t
    << " }\n";
}

void delete_port_elements(std::ostringstream& o, uint32_t tag, const SgPortRules& p) {
  o << "delete element bridge kiln_sg from_port { \"" << p.dev << "\" }\n"
    << "delete element bridge kiln_sg to_port { \"" << p.dev << "\" }\n"
    << "delete element inet kiln_sg egress_by_mark { " << hex(tag << 16) << " }\n"
    << "delete element inet kiln_sg ingress_by_mark { " << hex(tag) << " }\n";
}

void delete_port_chains(std::ostringstream& o, uint32_t tag) {
  std::string t = std::to_string(tag);
  for (auto [family, chain] : {std::pair<const char*, std::string>{"bridge", "from_" + t},
                               {"bridge", "to_" + t},
                               {"inet", "egress_" + t},
                               {"inet", "ingress_" + t}})
    o << "flush chain " << family << " kiln_sg " << chain << "\n"
      << "delete chain " << family << " kiln_sg " << chain << "\n";
}

}  // namespace

SgState security_group_state(const Snapshot& snap) {
  SgState s;
  std::vector<const Port*> ports;
  for (auto& p : snap.ports)
    if (filtered(p)) ports.push_back(&p);
  if (ports.empty()) return s;
  // Remote groups are sets of the member ports' addresses.
  for (auto& r : snap.security_group_rules)
    if (!r.remote_group_id.empty()) s.sets[set_name(r.remote_group_id)];
  for (auto* p : ports) {
    for (auto& g : p->security_groups)
      if (auto it = s.sets.find(set_name(g)); it != s.sets.end())
        for (auto& f : p->fixed_ips) it->second.insert(f.ip_address.str());
    s.ports[p->tag] = port_rules(*p, snap);
  }
  return s;
}

std::string sg_full_script(const SgState& s) {
  std::ostringstream o;
  o << "table bridge kiln_sg {}\ndelete table bridge kiln_sg\n"
    << "table inet kiln_sg {}\ndelete table inet kiln_sg\n";
  if (s.ports.empty()) return o.str();
  // Bridge family: anti-spoofing of MAC and ARP, and the marks that say which ports a frame
  // leaves (high 16 bits) and enters (low 16 bits), read by the inet table below.
  o << "table bridge kiln_sg {\n"
    << "  map from_port {\n    type ifname : verdict\n  }\n"
    << "  map to_port {\n    type ifname : verdict\n  }\n"
    << "  chain ports {\n    type filter hook forward priority -10; policy accept;\n"
    << "    meta mark set 0x0\n    iifname vmap @from_port\n    oifname vmap @to_port\n  }\n"
    << "}\n";
  // Inet family (bridged IPv4 reaches it through br_netfilter): stateful per-port chains.
  o << "table inet kiln_sg {\n"
    << "  map egress_by_mark {\n    type mark : verdict\n  }\n"
    << "  map ingress_by_mark {\n    type mark : verdict\n  }\n"
    << "  chain forward {\n    type filter hook forward priority 0; policy accept;\n"
    << "    meta mark & 0xffff0000 vmap @egress_by_mark\n"
    << "    meta mark & 0x0000ffff vmap @ingress_by_mark\n  }\n"
    << "}\n";
  for (auto& [name, ips] : s.sets) add_set(o, name, ips);
  for (auto& [tag, p] : s.ports) add_port_chains(o, tag, p, false);
  for (auto& [tag, p] : s.ports) add_port_elements(o, tag, p);
  return o.str();
}

std::string sg_incremental_script(const SgState& old, const SgState& now) {
  std::ostringstream o;
  for (auto& [name, ips] : now.sets) {
    auto it = old.sets.find(name);
    if (it == old.sets.end() || it->second != ips) add_set(o, name, ips);
  }
  // Elements first, so that no map points at a chain that goes.
  for (auto& [tag, p] : old.ports) {
    auto it = now.ports.find(tag);
    if (it == now.ports.end() || it->second.dev != p.dev) delete_port_elements(o, tag, p);
  }
  for (auto& [tag, p] : old.ports)
    if (!now.ports.count(tag)) delete_port_chains(o, tag);
  for (auto& [tag, p] : now.ports) {
    auto it = old.ports.find(tag);
    if (it == old.ports.end()) {
      add_port_chains(o, tag, p, true);
      add_port_elements(o, tag, p);
    } else if (it->second != p) {
      add_port_chains(o, tag, p, true);
      if (it->second.dev != p.dev) add_port_elements(o, tag, p);
    }
  }
  for (auto& [name, ips] : old.sets)
    if (!now.sets.count(name)) o << "delete set inet kiln_sg " << name << "\n";
  return o.str();
}

std::string sg_serialize(const SgState& s) {
  nlohmann::json j;
  j["ports"] = nlohmann::json::object();
  for (auto& [tag, p] : s.ports)
    j["ports"][std::to_string(tag)] = {{"dev", p.dev},
                                       {"from", p.from},
                                       {"to", p.to},
                                       {"egress", p.egress},
                                       {"ingress", p.ingress}};
  j["sets"] = nlohmann::json::object();
  for (auto& [name, ips] : s.sets) j["sets"][name] = ips;
  return j.dump();
}

bool sg_deserialize(const std::string& text, SgState& out) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("ports") || !j.contains("sets"))
    return false;
  try {
    SgState s;
    for (auto& [tag, p] : j["ports"].items())
      s.ports[static_cast<uint32_t>(std::stoul(tag))] = {
          p.at("dev").get<std::string>(), p.at("from").get<std::string>(),
          p.at("to").get<std::string>(), p.at("egress").get<std::string>(),
          p.at("ingress").get<std::string>()};
    for (auto& [name, ips] : j["sets"].items()) s.sets[name] = ips.get<std::set<std::string>>();
    out = std::move(s);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

std::string security_group_ruleset(const Snapshot& snap) {
  SgState s = security_group_state(snap);
  if (s.ports.empty()) return "";
  return sg_full_script(s);
}

}  // namespace kiln::net

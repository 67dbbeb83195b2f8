#include "plumb/sg_rules.h"

#include <charconv>
#include <optional>
#include <sstream>
#include <vector>

#include "kiln/net/plumber.h"
#include "plumb/nft.h"

namespace kiln::net {
namespace {

std::string hex(uint64_t v) {
  char buf[2 + 16] = {'0', 'x'};
  auto end = std::to_chars(buf + 2, buf + sizeof buf, v, 16).ptr;
  return std::string(buf, end);
}

std::string set_name(const std::string& group_id) {
  std::string s = "rg_" + group_id;
  for (char& c : s)
    if (c == '-') c = '_';
  return s;
}

// "EXPR != a EXPR != b ...", which matches what EXPR != { a, b } matches, without an anonymous
// set: the kernel keeps one per rule that has one, and every libnftables transaction lists them
// all to fill its cache (three per port would make each port's plumbing slower).
std::string none_of(const std::string& expr, const std::set<std::string>& values) {
  std::string s;
  for (auto& v : values) s += (s.empty() ? "" : " ") + expr + " != " + v;
  return s;
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

// The rules of the snapshot, each rendered once (not once per member port): the rule's
// expression and verdict line, or "" when it cannot apply.
struct RenderedRule {
  const SecurityGroupRule* rule;
  bool ingress;
  std::string line;
};

std::vector<RenderedRule> render_rules(const Snapshot& snap) {
  std::vector<RenderedRule> out;
  for (auto& r : snap.security_group_rules) {
    bool in = r.direction == "ingress";
    std::string expr = render_rule(r, in);
    out.push_back({&r, in, expr.empty() ? "" : expr + (in ? " accept\n" : " return\n")});
  }
  return out;
}

SgPortRules port_rules(const Port& p, const std::vector<RenderedRule>& rules) {
  SgPortRules pr;
  pr.dev = port_device_name(p);
  std::set<std::string> ips;
  for (auto& f : p.fixed_ips) ips.insert(f.ip_address.str());
  std::set<std::string> arp_ips = ips;
  arp_ips.insert("0.0.0.0");  // address probes
  std::string mac = p.mac_address.str();
  // Plain appends: this runs for every filtered port on every plumbing command.
  std::string& from = pr.from;
  from = "ether saddr != " + mac + " drop\n";
  from += "ether type arp arp saddr ether != " + mac + " drop\n";
  from += "ether type arp " + none_of("arp saddr ip", arp_ips) + " drop\n";
  from += "ether type != ip ether type != arp drop\n";
  from += "meta mark set " + hex(p.tag << 16) + "\n";
  pr.to = "meta mark set meta mark or " + hex(p.tag) + "\n";
  std::string& egress = pr.egress;
  std::string& ingress = pr.ingress;
  egress =
      "meta nfproto ipv6 drop\n"
      "udp sport 68 udp dport 67 return\n"
      "udp sport 67 udp dport 68 drop\n";
  egress += ips.empty() ? std::string("drop\n") : none_of("ip saddr", ips) + " drop\n";
  egress += "ct state invalid drop\nct state established,related return\n";
  ingress =
      "meta nfproto ipv6 drop\n"
      "ct state invalid drop\nct state established,related accept\n"
      "udp sport 67 udp dport 68 accept\n";
  for (auto& r : rules) {
    if (r.line.empty()) continue;
    bool member = false;
    for (auto& g : p.security_groups) member |= g == r.rule->security_group_id;
    if (member) (r.ingress ? ingress : egress) += r.line;
  }
  egress += "drop\n";
  ingress += "drop\n";
  pr.digest = pr.digest_of_bodies();
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
  o << "add set inet kiln_sg " << name << " { type ipv4_addr; }\n";
  if (!ips.empty()) o << "add element inet kiln_sg " << name << " " << nft_set(ips) << "\n";
}

// Only the members that came or went. A transaction that deletes anything (a flush, a deleted
// element, rule or chain) makes the kernel free the old objects after an RCU grace period, and
// the process that closes its nftables socket next waits for that (10-15 ms here): a new port
// must cost additions only.
void update_set(std::ostringstream& o, const std::string& name, const std::set<std::string>& old,
                const std::set<std::string>& now) {
  std::set<std::string> gone, added;
  for (auto& ip : old)
    if (!now.count(ip)) gone.insert(ip);
  for (auto& ip : now)
    if (!old.count(ip)) added.insert(ip);
  if (!gone.empty()) o << "delete element inet kiln_sg " << name << " " << nft_set(gone) << "\n";
  if (!added.empty()) o << "add element inet kiln_sg " << name << " " << nft_set(added) << "\n";
}

// `mode`: kBlock inside a full script; kNew for a chain that does not exist yet; kReplace for
// one whose rules change.
enum class ChainMode { kBlock, kNew, kReplace };

void add_port_chains(std::ostringstream& o, uint32_t tag, const SgPortRules& p, ChainMode mode) {
  std::string t = std::to_string(tag);
  const std::pair<const char*, std::string> chains[] = {{"bridge", "from_" + t},
                                                        {"bridge", "to_" + t},
                                                        {"inet", "egress_" + t},
                                                        {"inet", "ingress_" + t}};
  const std::string* bodies[] = {&p.from, &p.to, &p.egress, &p.ingress};
  for (int i = 0; i < 4; ++i) {
    if (mode == ChainMode::kBlock) {
      chain_block(o, chains[i].first, chains[i].second, *bodies[i]);
      continue;
    }
    // Into live tables: "add rule" lines make libnftables fetch far less state than a block.
    std::string prefix = std::string(chains[i].first) + " kiln_sg " + chains[i].second;
    o << "add chain " << prefix << "\n";
    if (mode == ChainMode::kReplace) o << "flush chain " << prefix << "\n";
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

void delete_port_elements(std::ostringstream& o, uint32_t tag, const std::string& dev) {
  o << "delete element bridge kiln_sg from_port { \"" << dev << "\" }\n"
    << "delete element bridge kiln_sg to_port { \"" << dev << "\" }\n"
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
  auto rules = render_rules(snap);
  for (auto* p : ports) {
    for (auto& g : p->security_groups)
      if (auto it = s.sets.find(set_name(g)); it != s.sets.end())
        for (auto& f : p->fixed_ips) it->second.insert(f.ip_address.str());
    s.ports[p->tag] = port_rules(*p, rules);
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
  for (auto& [tag, p] : s.ports) add_port_chains(o, tag, p, ChainMode::kBlock);
  for (auto& [tag, p] : s.ports) add_port_elements(o, tag, p);
  return o.str();
}

std::string sg_incremental_script(const SgApplied& old, const SgState& now) {
  std::ostringstream o;
  for (auto& [name, ips] : now.sets) {
    auto it = old.sets.find(name);
    if (it == old.sets.end())
      add_set(o, name, ips);
    else
      update_set(o, name, it->second, ips);
  }
  // Elements first, so that no map points at a chain that goes.
  for (auto& [tag, p] : old.ports) {
    auto it = now.ports.find(tag);
    if (it == now.ports.end() || it->second.dev != p.dev) delete_port_elements(o, tag, p.dev);
  }
  for (auto& [tag, p] : old.ports)
    if (!now.ports.count(tag)) delete_port_chains(o, tag);
  for (auto& [tag, p] : now.ports) {
    auto it = old.ports.find(tag);
    if (it == old.ports.end()) {
      add_port_chains(o, tag, p, ChainMode::kNew);
      add_port_elements(o, tag, p);
    } else if (it->second.digest != p.digest || it->second.dev != p.dev) {
      if (it->second.digest != p.digest) add_port_chains(o, tag, p, ChainMode::kReplace);
      if (it->second.dev != p.dev) add_port_elements(o, tag, p);
    }
  }
  for (auto& [name, ips] : old.sets)
    if (!now.sets.count(name)) o << "delete set inet kiln_sg " << name << "\n";
  return o.str();
}

uint64_t SgPortRules::digest_of_bodies() const {
  uint64_t h = 1469598103934665603ull;  // FNV-1a, 64 bits
  for (const std::string* body : {&from, &to, &egress, &ingress}) {
    for (unsigned char c : *body) {
      h ^= c;
      h *= 1099511628211ull;
    }
    h ^= 0xff;  // a separator no body contains, so moving a line between chains changes it
    h *= 1099511628211ull;
  }
  return h;
}

SgApplied sg_applied(const SgState& s) {
  SgApplied a;
  for (auto& [tag, p] : s.ports) a.ports[tag] = {p.dev, p.digest};
  a.sets = s.sets;
  return a;
}

// One line per port ("port TAG DEV DIGEST") and per set ("set NAME IP..."), after a version line.
std::string sg_serialize(const SgApplied& s) {
  std::ostringstream o;
  o << "kiln-sg 1\n";
  for (auto& [tag, p] : s.ports)
    o << "port " << tag << " " << p.dev << " " << hex(p.digest) << "\n";
  for (auto& [name, ips] : s.sets) {
    o << "set " << name;
    for (auto& ip : ips) o << " " << ip;
    o << "\n";
  }
  return o.str();
}

namespace {

// A decimal number of at most `digits` digits, or nullopt.
std::optional<uint64_t> decimal(const std::string& s, size_t digits) {
  if (s.empty() || s.size() > digits || s.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  return std::stoull(s);
}

// "0x" and 1 to 16 lowercase hex digits, or nullopt.
std::optional<uint64_t> hex_number(const std::string& s) {
  if (s.size() < 3 || s.size() > 18 || !s.starts_with("0x") ||
      s.find_first_not_of("0123456789abcdef", 2) != std::string::npos)
    return std::nullopt;
  return std::stoull(s.substr(2), nullptr, 16);
}

}  // namespace

bool sg_deserialize(const std::string& text, SgApplied& out) {
  constexpr size_t kMaxText = 64u << 20;  // far beyond 65535 ports with their sets
  if (text.size() > kMaxText) return false;
  std::istringstream in(text);
  std::string line;
  if (!std::getline(in, line) || line != "kiln-sg 1") return false;
  SgApplied s;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string kind, name, dev, digest, extra;
    f >> kind >> name;
    if (kind == "port") {  // port TAG DEV DIGEST
      f >> dev >> digest;
      auto tag = decimal(name, 5);
      auto d = hex_number(digest);
      if (f.fail() || (f >> extra) || !tag || *tag == 0 || *tag > 0xffff || !d || dev.empty() ||
          dev.size() > 15)
        return false;
      s.ports[static_cast<uint32_t>(*tag)] = {dev, *d};
    } else if (kind == "set") {  // set NAME IP...
      if (f.fail() || !name.starts_with("rg_")) return false;
      auto& ips = s.sets[name];
      for (std::string ip; f >> ip;) {
        if (!Ipv4::parse(ip)) return false;
        ips.insert(ip);
      }
    } else {
      return false;
    }
  }
  out = std::move(s);
  return true;
}

std::string security_group_ruleset(const Snapshot& snap) {
  SgState s = security_group_state(snap);
  if (s.ports.empty()) return "";
  return sg_full_script(s);
}

}  // namespace kiln::net

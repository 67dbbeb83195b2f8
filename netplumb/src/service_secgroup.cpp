// NetService: security groups and their rules.
#include <algorithm>
#include <set>

#include "kiln/net/error.h"
#include "kiln/net/ipam.h"
#include "kiln/net/service.h"
#include "service_util.h"

namespace kiln::net {

SecurityGroup NetService::ensure_default_group(const std::string& tenant_id) {
  for (auto& g : store_.security_groups())
    if (g.tenant_id == tenant_id && g.name == "default") return g;
  SecurityGroup g{common::new_uuid(), "default", tenant_id, "Default security group"};
  store_.put(g);
  store_.put(new_rule(g, "egress", ""));
  store_.put(new_rule(g, "ingress", g.id));
  return g;
}

SecurityGroup NetService::create_security_group(const std::string& name,
                                                const std::string& tenant_id,
                                                const std::string& description) {
  check_name("security group", name);
  if (name.empty()) throw invalid("a security group needs a name");
  SecurityGroup g;
  store_.write([&] {
    if (name == "default") {
      for (auto& o : store_.security_groups())
        if (o.tenant_id == tenant_id && o.name == "default")
          throw exists("tenant '" + tenant_id + "' already has a default security group");
      g = ensure_default_group(tenant_id);
      return;
    }
    g = {common::new_uuid(), name, tenant_id, description};
    store_.put(g);
    // Like Neutron: a new group lets everything out and nothing in.
    store_.put(new_rule(g, "egress", ""));
  });
  return g;
}

void NetService::delete_security_group(const std::string& ref) {
  store_.write([&] {
    SecurityGroup g = security_group(ref);
    for (auto& p : store_.ports())
      if (std::find(p.security_groups.begin(), p.security_groups.end(), g.id) !=
          p.security_groups.end())
        throw busy("security group " + label(g.name, g.id) + " is in use by " +
                   describe_port_user(p));
    for (auto& r : store_.security_group_rules())
      if (r.remote_group_id == g.id && r.security_group_id != g.id)
        throw busy("security group " + label(g.name, g.id) + " is the remote group of rule " +
                   r.id + " in group " +
                   label(security_group(r.security_group_id).name, r.security_group_id));
    store_.remove_security_group(g.id);
  });
}

SecurityGroupRule NetService::create_security_group_rule(const RuleSpec& spec) {
  SecurityGroupRule r;
  r.id = common::new_uuid();
  r.tenant_id = spec.tenant_id;
  r.direction = spec.direction;
  r.ethertype = spec.ethertype;
  if (r.direction != "ingress" && r.direction != "egress")
    throw invalid("direction must be ingress or egress");
  if (r.ethertype != "IPv4" && r.ethertype != "IPv6")
    throw invalid("ethertype must be IPv4 or IPv6");
  std::string proto = spec.protocol;
  std::transform(proto.begin(), proto.end(), proto.begin(), ::tolower);
  if (proto == "any") proto.clear();
  if (auto num = parse_u32(proto)) {
    if (*num > 255) throw invalid("protocol numbers go from 0 to 255");
    if (*num == 6) proto = "tcp";
    if (*num == 17) proto = "udp";
    if (*num == 1) proto = "icmp";
  } else if (!proto.empty() && proto != "tcp" && proto != "udp" && proto != "icmp") {
    throw invalid("protocol '" + spec.protocol + "' is not tcp, udp, icmp or a number");
  }
  r.protocol = proto;
  r.port_range_min = spec.port_range_min;
  r.port_range_max = spec.port_range_max;
  if (r.port_range_max && !r.port_range_min)
    throw invalid("--port-range-max needs --port-range-min");
  if (r.port_range_min && proto != "tcp" && proto != "udp" && proto != "icmp")
    throw invalid("port ranges need protocol tcp, udp or icmp");
  if (r.port_range_min && !r.port_range_max && proto != "icmp") r.port_range_max = r.port_range_min;
  if (proto == "tcp" || proto == "udp") {
    if (r.port_range_min && (*r.port_range_min < 1 || *r.port_range_max > 65535 ||
                             *r.port_range_min > *r.port_range_max))
      throw invalid("port range must satisfy 1 <= min <= max <= 65535");
  } else if (proto == "icmp") {
    if ((r.port_range_min && (*r.port_range_min < 0 || *r.port_range_min > 255)) ||
        (r.port_range_max && (*r.port_range_max < 0 || *r.port_range_max > 255)))
      throw invalid("ICMP type and code go from 0 to 255");
  }
  if (!spec.remote_ip_prefix.empty() && !spec.remote_group.empty())
    throw invalid("give --remote-ip-prefix or --remote-group-id, not both");
  if (!spec.remote_ip_prefix.empty()) {
    if (r.ethertype != "IPv4") throw invalid("only IPv4 remote prefixes are supported");
    std::string s = spec.remote_ip_prefix;
    if (s.find('/') == std::string::npos) s += "/32";
    auto slash = s.find('/');
    auto ip = Ipv4::parse(s.substr(0, slash));
    auto c = Cidr::parse(s);
    if (!c && ip) {
      // Normalize host bits away, as Neutron does.
      auto plen = Cidr::parse("0.0.0.0/" + s.substr(slash + 1));
      if (plen) c = Cidr{Ipv4(ip->value() & plen->mask()), plen->prefix};
    }
    if (!c) throw invalid("'" + spec.remote_ip_prefix + "' is not an IPv4 CIDR");
    r.remote_ip_prefix = c->str();
  }
  store_.write([&] {
    SecurityGroup g = security_group(spec.security_group, spec.tenant_id);
    r.security_group_id = g.id;
    if (!spec.remote_group.empty()) r.remote_group_id = security_group(spec.remote_group).id;
    for (auto& o : store_.security_group_rules(g.id)) {
      if (o.direction == r.direction && o.ethertype == r.ethertype && o.protocol == r.protocol &&
          o.port_range_min == r.port_range_min && o.port_range_max == r.port_range_max &&
          o.remote_ip_prefix == r.remote_ip_prefix && o.remote_group_id == r.remote_group_id)
        throw exists("security group " + label(g.name, g.id) + " already has this rule (" + o.id +
                     ")");
    }
    store_.put(r);
  });
  return r;
}

void NetService::delete_security_group_rule(const std::string& id) {
  store_.write([&] {
    security_group_rule(id);
    store_.remove_security_group_rule(id);
  });
}

}  // namespace kiln::net

// kiln-net security-group-* and security-group-rule-*: security groups and their rules.
#include "context.h"

namespace kiln::net::cli {

namespace {

void show_group(Context& c, const SecurityGroup& g) {
  c.show(to_json(g, c.svc.store().security_group_rules(g.id)));
}

int group_create(Context& c) {
  c.args.max_positional(1);
  show_group(c, c.svc.create_security_group(c.args.positional(0, "NAME"), c.tenant(),
                                            c.args.get_or("--description", "")));
  return 0;
}

int group_list(Context& c) {
  c.args.max_positional(0);
  auto rules = c.svc.store().security_group_rules();
  std::vector<Json> rows;
  for (auto& g : c.svc.store().security_groups()) rows.push_back(to_json(g, rules));
  c.list(rows, {"id", "name", "tenant_id", "description"});
  return 0;
}

int group_show(Context& c) {
  c.args.max_positional(1);
  show_group(c, c.svc.security_group(c.args.positional(0, "GROUP"), c.tenant()));
  return 0;
}

int group_delete(Context& c) {
  c.args.positional(0, "GROUP");
  for (auto& r : c.args.positional()) {
    c.svc.delete_security_group(r);
    c.deleted("security_group", r);
  }
  return 0;
}

int rule_create(Context& c) {
  c.args.max_positional(1);
  RuleSpec r;
  r.security_group = c.args.positional(0, "GROUP");
  r.tenant_id = c.tenant();
  r.direction = c.args.get_or("--direction", "ingress");
  r.ethertype = c.args.get_or("--ethertype", "IPv4");
  r.protocol = c.args.get_or("--protocol", "");
  // Ports (tcp, udp) or ICMP type and code: the service checks which applies.
  if (auto v = c.args.number("--port-range-min", 0, 65535)) r.port_range_min = static_cast<int>(*v);
  if (auto v = c.args.number("--port-range-max", 0, 65535)) r.port_range_max = static_cast<int>(*v);
  r.remote_ip_prefix = c.args.get_or("--remote-ip-prefix", "");
  r.remote_group = c.args.get_or("--remote-group-id", "");
  c.show(to_json(c.svc.create_security_group_rule(r)));
  return 0;
}

int rule_list(Context& c) {
  c.args.max_positional(0);
  std::vector<Json> rows;
  for (auto& r : c.svc.store().security_group_rules()) rows.push_back(to_json(r));
  c.list(rows, {"id", "security_group_id", "direction", "ethertype", "protocol", "port_range_min",
                "port_range_max", "remote_ip_prefix", "remote_group_id"});
  return 0;
}

int rule_show(Context& c) {
  c.args.max_positional(1);
  c.show(to_json(c.svc.security_group_rule(c.args.positional(0, "RULE"))));
  return 0;
}

int rule_delete(Context& c) {
  c.args.positional(0, "RULE");
  for (auto& r : c.args.positional()) {
    c.svc.delete_security_group_rule(r);
    c.deleted("security_group_rule", r);
  }
  return 0;
}

}  // namespace

CommandTable security_group_commands() {
  return {
      changing({"security-group-create",
                "NAME [--description TEXT]",
                {{"--description", kValue}},
                group_create}),
      {"security-group-list", "", {}, group_list},
      {"security-group-show", "GROUP", {}, group_show},
      changing({"security-group-delete", "GROUP...", {}, group_delete}),
      changing({"security-group-rule-create",
                "GROUP [--direction ingress|egress] [--ethertype IPv4] "
                "[--protocol tcp|udp|icmp|N] [--port-range-min N] [--port-range-max N] "
                "[--remote-ip-prefix CIDR | --remote-group-id GROUP]",
                {{"--direction", kValue},
                 {"--ethertype", kValue},
                 {"--protocol", kValue},
                 {"--port-range-min", kValue},
                 {"--port-range-max", kValue},
                 {"--remote-ip-prefix", kValue},
                 {"--remote-group-id", kValue}},
                rule_create}),
      {"security-group-rule-list", "", {}, rule_list},
      {"security-group-rule-show", "RULE", {}, rule_show},
      changing({"security-group-rule-delete", "RULE...", {}, rule_delete}),
  };
}

}  // namespace kiln::net::cli

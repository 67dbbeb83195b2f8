// kiln-net subnet-*: subnets.
#include "context.h"

namespace kiln::net::cli {

namespace {

int subnet_create(Context& c) {
  c.args.max_positional(2);
  SubnetSpec s;
  s.network = c.args.positional(0, "NETWORK");
  s.cidr = c.args.positional(1, "CIDR");
  s.name = c.args.get_or("--name", "");
  s.tenant_id = c.tenant();
  if (c.args.flag("--no-gateway"))
    s.gateway_ip = "none";
  else if (auto g = c.args.get("--gateway"))
    s.gateway_ip = *g;
  s.allocation_pools = c.args.all("--allocation-pool");
  s.dns_nameservers = c.args.all("--dns-nameserver");
  s.enable_dhcp = !c.args.flag("--disable-dhcp");
  s.ip_version = static_cast<int>(c.args.number("--ip-version", 4, 6).value_or(4));
  if (s.ip_version == 5) throw invalid("--ip-version: 5 is not an IP version (4 or 6)");
  c.show(to_json(c.svc.create_subnet(s)));
  return 0;
}

int subnet_list(Context& c) {
  c.args.max_positional(0);
  std::vector<Json> rows;
  for (auto& s : c.svc.store().subnets()) rows.push_back(to_json(s));
  c.list(rows, {"id", "name", "cidr", "gateway_ip", "allocation_pools"});
  return 0;
}

int subnet_show(Context& c) {
  c.args.max_positional(1);
  c.show(to_json(c.svc.subnet(c.args.positional(0, "SUBNET"))));
  return 0;
}

int subnet_delete(Context& c) {
  c.args.positional(0, "SUBNET");
  for (auto& r : c.args.positional()) {
    c.svc.delete_subnet(r);
    c.deleted("subnet", r);
  }
  return 0;
}

}  // namespace

CommandTable subnet_commands() {
  return {
      changing({"subnet-create",
                "NETWORK CIDR [--name NAME] [--gateway IP | --no-gateway] "
                "[--allocation-pool start=IP,end=IP]... [--dns-nameserver IP]... "
                "[--dns-nameservers list=true IP...] [--disable-dhcp]",
                {{"--disable-dhcp"},
                 {"--enable-dhcp"},
                 {"--no-gateway"},
                 {"--name", kValue},
                 {"--gateway", kValue},
                 {"--allocation-pool", kValue},
                 {"--dns-nameservers|--dns-nameserver", kValue},
                 {"--ip-version", kValue}},
                subnet_create}),
      {"subnet-list", "", {}, subnet_list},
      {"subnet-show", "SUBNET", {}, subnet_show},
      changing({"subnet-delete", "SUBNET...", {}, subnet_delete}),
  };
}

}  // namespace kiln::net::cli

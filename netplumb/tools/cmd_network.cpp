// kiln-net net-*: networks.
#include "context.h"

namespace kiln::net::cli {

namespace {

void show_network(Context& c, const Network& n) { c.show(to_json(n, c.svc.store().subnets(n.id))); }

int net_create(Context& c) {
  c.args.max_positional(1);
  NetworkSpec s;
  s.name = c.args.positional(0, "NAME");
  s.tenant_id = c.tenant();
  s.network_type = c.args.get_or("--provider:network-type", "");
  s.physical_network = c.args.get_or("--provider:physical-network", "");
  // The type's own range (VLAN 1-4094, VXLAN 24 bits) is the service's to check.
  if (auto id = c.args.number("--provider:segmentation-id", 1, 0xffffffff))
    s.segmentation_id = static_cast<uint32_t>(*id);
  s.router_external = c.args.flag("--router:external");
  s.shared = c.args.flag("--shared");
  s.admin_state_up = !c.args.flag("--admin-state-down");
  show_network(c, c.svc.create_network(s));
  return 0;
}

int net_list(Context& c) {
  c.args.max_positional(0);
  auto subnets = c.svc.store().subnets();
  std::vector<Json> rows;
  for (auto& n : c.svc.store().networks()) rows.push_back(to_json(n, subnets));
  c.list(rows, {"id", "name", "provider:network_type", "provider:segmentation_id",
                "router:external", "subnets"});
  return 0;
}

int net_show(Context& c) {
  c.args.max_positional(1);
  show_network(c, c.svc.network(c.args.positional(0, "NETWORK")));
  return 0;
}

int net_delete(Context& c) {
  c.args.positional(0, "NETWORK");
  for (auto& r : c.args.positional()) {
    c.svc.delete_network(r);
    c.deleted("network", r);
  }
  return 0;
}

}  // namespace

CommandTable network_commands() {
  return {
      changing({"net-create",
                "NAME [--provider:network_type flat|vlan|vxlan|gre] "
                "[--provider:segmentation_id ID] [--provider:physical_network NET] "
                "[--router:external[=True]] [--shared]",
                {{"--router:external"},
                 {"--shared"},
                 {"--admin-state-down"},
                 {"--provider:network-type", kValue},
                 {"--provider:segmentation-id", kValue},
                 {"--provider:physical-network", kValue}},
                net_create}),
      {"net-list", "", {}, net_list},
      {"net-show", "NETWORK", {}, net_show},
      changing({"net-delete", "NETWORK...", {}, net_delete}),
  };
}

}  // namespace kiln::net::cli

// kiln-net floatingip-*: floating IPs.
#include <iostream>

#include "context.h"

namespace kiln::net::cli {

namespace {

int fip_create(Context& c) {
  c.args.max_positional(1);
  c.show(to_json(c.svc.create_floating_ip(c.args.positional(0, "EXTERNAL-NETWORK"), c.tenant(),
                                          c.args.get_or("--port-id", ""),
                                          c.args.get_or("--floating-ip-address", ""))));
  return 0;
}

int fip_associate(Context& c) {
  c.args.max_positional(2);
  FloatingIp f =
      c.svc.associate_floating_ip(c.args.positional(0, "FLOATINGIP"), c.args.positional(1, "PORT"),
                                  c.args.get_or("--fixed-ip-address", ""));
  if (c.format == Format::kJson)
    c.show(to_json(f));
  else
    std::cout << "Associated floating IP " << f.floating_ip_address.str() << "\n";
  return 0;
}

int fip_disassociate(Context& c) {
  c.args.max_positional(1);
  FloatingIp f = c.svc.disassociate_floating_ip(c.args.positional(0, "FLOATINGIP"));
  if (c.format == Format::kJson)
    c.show(to_json(f));
  else
    std::cout << "Disassociated floating IP " << f.floating_ip_address.str() << "\n";
  return 0;
}

int fip_list(Context& c) {
  c.args.max_positional(0);
  std::vector<Json> rows;
  for (auto& f : c.svc.store().floating_ips()) rows.push_back(to_json(f));
  c.list(rows, {"id", "fixed_ip_address", "floating_ip_address", "port_id"});
  return 0;
}

int fip_show(Context& c) {
  c.args.max_positional(1);
  c.show(to_json(c.svc.floating_ip(c.args.positional(0, "FLOATINGIP"))));
  return 0;
}

int fip_delete(Context& c) {
  c.args.positional(0, "FLOATINGIP");
  for (auto& r : c.args.positional()) {
    c.svc.delete_floating_ip(r);
    c.deleted("floatingip", r);
  }
  return 0;
}

}  // namespace

CommandTable floatingip_commands() {
  return {
      changing({"floatingip-create",
                "EXTERNAL-NETWORK [--port-id PORT] [--floating-ip-address IP]",
                {{"--port-id", kValue}, {"--floating-ip-address", kValue}},
                fip_create}),
      changing({"floatingip-associate",
                "FLOATINGIP PORT [--fixed-ip-address IP]",
                {{"--fixed-ip-address", kValue}},
                fip_associate}),
      changing({"floatingip-disassociate", "FLOATINGIP", {}, fip_disassociate}),
      {"floatingip-list", "", {}, fip_list},
      {"floatingip-show", "FLOATINGIP", {}, fip_show},
      changing({"floatingip-delete", "FLOATINGIP...", {}, fip_delete}),
  };
}

}  // namespace kiln::net::cli

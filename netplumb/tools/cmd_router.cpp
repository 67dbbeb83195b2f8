// kiln-net router-*: routers, their interfaces and gateways.
#include <iostream>

#include "context.h"

namespace kiln::net::cli {

namespace {

void show_router(Context& c, const Router& r) {
  std::optional<Port> gw;
  if (!r.gw_port_id.empty()) gw = c.svc.port(r.gw_port_id);
  c.show(to_json(r, gw ? &*gw : nullptr));
}

// "subnet=x" or "x" for router-interface-add.
std::string strip_key(const std::string& s, const std::string& key) {
  return s.starts_with(key + "=") ? s.substr(key.size() + 1) : s;
}

int router_create(Context& c) {
  c.args.max_positional(1);
  show_router(c, c.svc.create_router(c.args.positional(0, "NAME"), c.tenant()));
  return 0;
}

int router_list(Context& c) {
  c.args.max_positional(0);
  std::vector<Json> rows;
  for (auto& r : c.svc.store().routers()) rows.push_back(to_json(r, nullptr));
  c.list(rows, {"id", "name", "external_gateway_info"});
  return 0;
}

int router_show(Context& c) {
  c.args.max_positional(1);
  show_router(c, c.svc.router(c.args.positional(0, "ROUTER")));
  return 0;
}

int router_delete(Context& c) {
  c.args.positional(0, "ROUTER");
  for (auto& r : c.args.positional()) {
    c.svc.delete_router(r);
    c.deleted("router", r);
  }
  return 0;
}

int interface_add(Context& c) {
  c.args.max_positional(2);
  std::string r = c.args.positional(0, "ROUTER");
  std::string s = strip_key(c.args.positional(1, "SUBNET"), "subnet");
  Port p = c.svc.add_router_interface(r, s);
  if (c.format == Format::kJson)
    c.show({{"id", c.svc.router(r).id},
            {"port_id", p.id},
            {"subnet_id", p.fixed_ips.at(0).subnet_id}});
  else
    std::cout << "Added interface " << p.id << " to router " << r << ".\n";
  return 0;
}

int interface_delete(Context& c) {
  c.args.max_positional(2);
  std::string r = c.args.positional(0, "ROUTER");
  c.svc.remove_router_interface(r, strip_key(c.args.positional(1, "SUBNET"), "subnet"));
  if (c.format == Format::kTable) std::cout << "Removed interface from router " << r << ".\n";
  return 0;
}

int gateway_set(Context& c) {
  c.args.max_positional(2);
  std::string r = c.args.positional(0, "ROUTER");
  Router out = c.svc.set_router_gateway(r, c.args.positional(1, "EXTERNAL-NETWORK"),
                                        !c.args.flag("--disable-snat"));
  if (c.format == Format::kJson)
    show_router(c, out);
  else
    std::cout << "Set gateway for router " << r << "\n";
  return 0;
}

int gateway_clear(Context& c) {
  c.args.max_positional(1);
  std::string r = c.args.positional(0, "ROUTER");
  c.svc.clear_router_gateway(r);
  if (c.format == Format::kTable) std::cout << "Removed gateway from router " << r << "\n";
  return 0;
}

}  // namespace

CommandTable router_commands() {
  return {
      changing({"router-create", "NAME", {}, router_create}),
      {"router-list", "", {}, router_list},
      {"router-show", "ROUTER", {}, router_show},
      changing({"router-delete", "ROUTER...", {}, router_delete}),
      changing({"router-interface-add", "ROUTER [subnet=]SUBNET", {}, interface_add}),
      changing({"router-interface-delete", "ROUTER [subnet=]SUBNET", {}, interface_delete}),
      changing({"router-gateway-set",
                "ROUTER EXTERNAL-NETWORK [--disable-snat]",
                {{"--disable-snat"}},
                gateway_set}),
      changing({"router-gateway-clear", "ROUTER", {}, gateway_clear}),
  };
}

}  // namespace kiln::net::cli

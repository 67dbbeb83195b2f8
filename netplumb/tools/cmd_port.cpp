// kiln-net port-*: ports. They plumb only the ports they touch, not the whole model.
#include "context.h"
#include "kiln/common/text.h"

namespace kiln::net::cli {

namespace {

// "subnet=x,ip_address=y" (also subnet_id=) into a request.
FixedIpRequest parse_fixed_ip(const std::string& s) {
  FixedIpRequest r;
  for (auto& kv : common::split(s, ',')) {
    auto eq = kv.find('=');
    if (eq == std::string::npos) throw invalid("--fixed-ip wants subnet=SUBNET,ip_address=IP");
    std::string k = kv.substr(0, eq), v = kv.substr(eq + 1);
    if (k == "subnet" || k == "subnet_id")
      r.subnet = v;
    else if (k == "ip_address")
      r.ip_address = v;
    else
      throw invalid("--fixed-ip: unknown key '" + k + "'");
  }
  return r;
}

int port_create(Context& c) {
  c.args.max_positional(1);
  PortSpec p;
  p.network = c.args.positional(0, "NETWORK");
  p.name = c.args.get_or("--name", "");
  p.tenant_id = c.tenant();
  p.mac_address = c.args.get_or("--mac-address", "");
  for (auto& f : c.args.all("--fixed-ip")) p.fixed_ips.push_back(parse_fixed_ip(f));
  p.security_groups = c.args.all("--security-group");
  p.no_security_groups = c.args.flag("--no-security-groups");
  p.port_security_enabled = !c.args.flag("--disable-port-security");
  p.device_owner = c.args.get_or("--device-owner", "");
  p.device_id = c.args.get_or("--device-id", "");
  p.binding_netns = c.args.get_or("--netns", "");
  p.binding_ifname = c.args.get_or("--ifname", "");
  p.vif_type = c.args.get_or("--binding:vif-type", p.binding_netns.empty() ? "tap" : "veth");
  p.binding_host_id = c.args.get_or("--binding:host-id", "");
  Port created = c.svc.create_port(p);
  c.plumb_ports = std::vector<std::string>{created.id};
  c.show(to_json(created));
  return 0;
}

int port_update(Context& c) {
  c.args.max_positional(1);
  PortUpdate u;
  u.name = c.args.get("--name");
  u.device_id = c.args.get("--device-id");
  u.binding_host_id = c.args.get("--binding:host-id");
  if (auto v = c.args.get("--port-security-enabled"))
    u.port_security_enabled = common::cli::parse_bool(*v, "--port-security-enabled");
  auto groups = c.args.all("--security-group");
  if (!groups.empty() && c.args.flag("--no-security-groups"))
    throw invalid("give --security-group or --no-security-groups, not both");
  if (!groups.empty()) u.security_groups = groups;
  if (c.args.flag("--no-security-groups")) u.security_groups = std::vector<std::string>{};
  Port updated = c.svc.update_port(c.args.positional(0, "PORT"), u);
  // A port that moves host may be a DHCP port or a router's leg: reconcile everything.
  if (!u.binding_host_id) c.plumb_ports = std::vector<std::string>{updated.id};
  c.show(to_json(updated));
  return 0;
}

int port_list(Context& c) {
  c.args.max_positional(0);
  std::string net;
  if (auto n = c.args.get("--network")) net = c.svc.network(*n).id;
  std::vector<Json> rows;
  for (auto& p : c.svc.store().ports(net)) rows.push_back(to_json(p));
  c.list(rows, {"id", "name", "mac_address", "fixed_ips", "device_owner", "binding:host_id"});
  return 0;
}

int port_show(Context& c) {
  c.args.max_positional(1);
  c.show(to_json(c.svc.port(c.args.positional(0, "PORT"))));
  return 0;
}

int port_delete(Context& c) {
  c.args.positional(0, "PORT");
  std::vector<std::string> ids;
  bool floating = false;  // its NAT changes: plumb everything
  for (auto& r : c.args.positional()) {
    Port p = c.svc.port(r);
    for (auto& f : c.svc.store().floating_ips()) floating |= f.port_id == p.id;
    c.svc.delete_port(p.id);
    ids.push_back(p.id);
    c.deleted("port", r);
  }
  if (!floating) c.plumb_ports = ids;
  return 0;
}

}  // namespace

CommandTable port_commands() {
  return {
      changing({"port-create",
                "NETWORK [--name NAME] [--mac-address MAC] "
                "[--fixed-ip subnet=SUBNET,ip_address=IP]... [--security-group GROUP]... "
                "[--no-security-groups] [--device-id ID] [--netns NS [--ifname NAME]] "
                "[--binding:host_id HOST]",
                {{"--no-security-groups"},
                 {"--disable-port-security"},
                 {"--name", kValue},
                 {"--mac-address", kValue},
                 {"--fixed-ip", kValue},
                 {"--security-group", kValue},
                 {"--device-owner", kValue},
                 {"--device-id", kValue},
                 {"--binding:vif-type", kValue},
                 {"--netns", kValue},
                 {"--ifname", kValue},
                 {"--binding:host-id", kValue}},
                port_create}),
      changing({"port-update",
                "PORT [--name NAME] [--security-group GROUP]... [--no-security-groups] "
                "[--port-security-enabled True|False] [--device-id ID] "
                "[--binding:host_id HOST]  (\"\": unbound, every host)",
                {{"--no-security-groups"},
                 {"--binding:host-id", kValue},
                 {"--name", kValue},
                 {"--security-group", kValue},
                 {"--port-security-enabled", kValue},
                 {"--device-id", kValue}},
                port_update}),
      {"port-list", "[--network NETWORK]", {{"--network", kValue}}, port_list},
      {"port-show", "PORT", {}, port_show},
      changing({"port-delete", "PORT...", {}, port_delete}),
  };
}

}  // namespace kiln::net::cli

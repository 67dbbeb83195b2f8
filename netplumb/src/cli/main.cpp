// kiln-net: the Neutron-style command line of netplumb.
#include <algorithm>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <vector>

#include "cli/args.h"
#include "cli/output.h"
#include "kiln/common/random.h"
#include "kiln/common/text.h"
#include "kiln/net/error.h"
#include "kiln/net/plumber.h"
#include "kiln/net/service.h"
#include "kiln/version.h"

namespace kiln::net::cli {
namespace {

using json = nlohmann::ordered_json;

const std::set<std::string> kGlobalFlags = {"--no-plumb", "--help"};
const std::set<std::string> kGlobalValued = {"--format", "-f", "--tenant-id", "--os-tenant-name"};

struct Context {
  Args args;
  NetService& svc;
  Format format = Format::kTable;
  // Set by the port commands: plumb just these ports instead of reconciling everything.
  std::optional<std::vector<std::string>> plumb_ports;
  std::string tenant() const {
    return args.get("--tenant-id").value_or(args.get_or("--os-tenant-name", kDefaultTenant));
  }
};

struct Command {
  std::set<std::string> flags;
  std::set<std::string> valued;
  bool changes = false;  // plumb afterwards
  std::string usage;
  std::function<void(Context&)> run;
};

void show_network(Context& c, const Network& n) {
  print_object(to_json(n, c.svc.store().subnets(n.id)), c.format);
}
void show_router(Context& c, const Router& r) {
  std::optional<Port> gw;
  if (!r.gw_port_id.empty()) gw = c.svc.port(r.gw_port_id);
  print_object(to_json(r, gw ? &*gw : nullptr), c.format);
}
void show_group(Context& c, const SecurityGroup& g) {
  print_object(to_json(g, c.svc.store().security_group_rules(g.id)), c.format);
}
void deleted(Context& c, const std::string& what, const std::string& ref) {
  if (c.format == Format::kTable) std::cout << "Deleted " << what << ": " << ref << "\n";
}

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

// "subnet=x" or "x" for router-interface-add.
std::string strip_key(const std::string& s, const std::string& key) {
  return s.starts_with(key + "=") ? s.substr(key.size() + 1) : s;
}

std::map<std::string, Command> commands() {
  std::map<std::string, Command> m;

  // ---- networks ----
  m["net-create"] = {
      {"--router:external", "--shared", "--admin-state-down"},
      {"--provider:network-type", "--provider:segmentation-id", "--provider:physical-network"},
      true,
      "net-create NAME [--provider:network_type flat|vlan|vxlan|gre] "
      "[--provider:segmentation_id ID] [--provider:physical_network NET] "
      "[--router:external[=True]] [--shared]",
      [](Context& c) {
        c.args.max_positional(1);
        NetworkSpec s;
        s.name = c.args.positional(0, "NAME");
        s.tenant_id = c.tenant();
        s.network_type = c.args.get_or("--provider:network-type", "");
        s.physical_network = c.args.get_or("--provider:physical-network", "");
        // The type's own range (VLAN 1-4094, VXLAN 24 bits) is the service's to check.
        if (auto id = c.args.integer("--provider:segmentation-id", 1, 0xffffffff))
          s.segmentation_id = static_cast<uint32_t>(*id);
        s.router_external = c.args.flag("--router:external");
        s.shared = c.args.flag("--shared");
        s.admin_state_up = !c.args.flag("--admin-state-down");
        show_network(c, c.svc.create_network(s));
      }};
  m["net-list"] = {{}, {}, false, "net-list", [](Context& c) {
                     c.args.max_positional(0);
                     auto subnets = c.svc.store().subnets();
                     std::vector<json> rows;
                     for (auto& n : c.svc.store().networks()) rows.push_back(to_json(n, subnets));
                     print_list(rows,
                                {"id", "name", "provider:network_type", "provider:segmentation_id",
                                 "router:external", "subnets"},
                                c.format);
                   }};
  m["net-show"] = {{}, {}, false, "net-show NETWORK", [](Context& c) {
                     c.args.max_positional(1);
                     show_network(c, c.svc.network(c.args.positional(0, "NETWORK")));
                   }};
  m["net-delete"] = {{}, {}, true, "net-delete NETWORK...", [](Context& c) {
                       c.args.positional(0, "NETWORK");
                       for (auto& r : c.args.positional()) {
                         c.svc.delete_network(r);
                         deleted(c, "network", r);
                       }
                     }};

  // ---- subnets ----
  m["subnet-create"] = {
      {"--disable-dhcp", "--enable-dhcp", "--no-gateway"},
      {"--name", "--gateway", "--allocation-pool", "--dns-nameserver", "--ip-version"},
      true,
      "subnet-create NETWORK CIDR [--name NAME] [--gateway IP | --no-gateway] "
      "[--allocation-pool start=IP,end=IP]... [--dns-nameserver IP]... [--disable-dhcp]",
      [](Context& c) {
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
        s.ip_version = static_cast<int>(c.args.integer("--ip-version", 4, 6).value_or(4));
        if (s.ip_version == 5) throw invalid("--ip-version: 5 is not an IP version (4 or 6)");
        print_object(to_json(c.svc.create_subnet(s)), c.format);
      }};
  m["subnet-list"] = {
      {}, {}, false, "subnet-list", [](Context& c) {
        c.args.max_positional(0);
        std::vector<json> rows;
        for (auto& s : c.svc.store().subnets()) rows.push_back(to_json(s));
        print_list(rows, {"id", "name", "cidr", "gateway_ip", "allocation_pools"}, c.format);
      }};
  m["subnet-show"] = {{}, {}, false, "subnet-show SUBNET", [](Context& c) {
                        c.args.max_positional(1);
                        print_object(to_json(c.svc.subnet(c.args.positional(0, "SUBNET"))),
                                     c.format);
                      }};
  m["subnet-delete"] = {{}, {}, true, "subnet-delete SUBNET...", [](Context& c) {
                          c.args.positional(0, "SUBNET");
                          for (auto& r : c.args.positional()) {
                            c.svc.delete_subnet(r);
                            deleted(c, "subnet", r);
                          }
                        }};

  // ---- ports ----
  m["port-create"] = {
      {"--no-security-groups", "--disable-port-security"},
      {"--name", "--mac-address", "--fixed-ip", "--security-group", "--device-owner", "--device-id",
       "--binding:vif-type", "--netns", "--ifname"},
      true,
      "port-create NETWORK [--name NAME] [--mac-address MAC] "
      "[--fixed-ip subnet=SUBNET,ip_address=IP]... [--security-group GROUP]... "
      "[--no-security-groups] [--device-id ID] [--netns NS [--ifname NAME]]",
      [](Context& c) {
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
        Port created = c.svc.create_port(p);
        c.plumb_ports = std::vector<std::string>{created.id};
        print_object(to_json(created), c.format);
      }};
  m["port-update"] = {
      {"--no-security-groups"},
      {"--name", "--security-group", "--port-security-enabled", "--device-id"},
      true,
      "port-update PORT [--name NAME] [--security-group GROUP]... [--no-security-groups] "
      "[--port-security-enabled True|False] [--device-id ID]",
      [](Context& c) {
        c.args.max_positional(1);
        PortUpdate u;
        u.name = c.args.get("--name");
        u.device_id = c.args.get("--device-id");
        if (auto v = c.args.get("--port-security-enabled"))
          u.port_security_enabled = parse_bool(*v, "--port-security-enabled");
        auto groups = c.args.all("--security-group");
        if (!groups.empty() && c.args.flag("--no-security-groups"))
          throw invalid("give --security-group or --no-security-groups, not both");
        if (!groups.empty()) u.security_groups = groups;
        if (c.args.flag("--no-security-groups")) u.security_groups = std::vector<std::string>{};
        Port updated = c.svc.update_port(c.args.positional(0, "PORT"), u);
        c.plumb_ports = std::vector<std::string>{updated.id};
        print_object(to_json(updated), c.format);
      }};
  m["port-list"] = {
      {}, {"--network"}, false, "port-list [--network NETWORK]", [](Context& c) {
        c.args.max_positional(0);
        std::string net;
        if (auto n = c.args.get("--network")) net = c.svc.network(*n).id;
        std::vector<json> rows;
        for (auto& p : c.svc.store().ports(net)) rows.push_back(to_json(p));
        print_list(rows, {"id", "name", "mac_address", "fixed_ips", "device_owner"}, c.format);
      }};
  m["port-show"] = {{}, {}, false, "port-show PORT", [](Context& c) {
                      c.args.max_positional(1);
                      print_object(to_json(c.svc.port(c.args.positional(0, "PORT"))), c.format);
                    }};
  m["port-delete"] = {{}, {}, true, "port-delete PORT...", [](Context& c) {
                        c.args.positional(0, "PORT");
                        std::vector<std::string> ids;
                        bool floating = false;  // its NAT changes: plumb everything
                        for (auto& r : c.args.positional()) {
                          Port p = c.svc.port(r);
                          for (auto& f : c.svc.store().floating_ips())
                            floating |= f.port_id == p.id;
                          c.svc.delete_port(p.id);
                          ids.push_back(p.id);
                          deleted(c, "port", r);
                        }
                        if (!floating) c.plumb_ports = ids;
                      }};

  // ---- routers ----
  m["router-create"] = {{}, {}, true, "router-create NAME", [](Context& c) {
                          c.args.max_positional(1);
                          show_router(
                              c, c.svc.create_router(c.args.positional(0, "NAME"), c.tenant()));
                        }};
  m["router-list"] = {{}, {}, false, "router-list", [](Context& c) {
                        c.args.max_positional(0);
                        std::vector<json> rows;
                        for (auto& r : c.svc.store().routers()) rows.push_back(to_json(r, nullptr));
                        print_list(rows, {"id", "name", "external_gateway_info"}, c.format);
                      }};
  m["router-show"] = {{}, {}, false, "router-show ROUTER", [](Context& c) {
                        c.args.max_positional(1);
                        show_router(c, c.svc.router(c.args.positional(0, "ROUTER")));
                      }};
  m["router-delete"] = {{}, {}, true, "router-delete ROUTER...", [](Context& c) {
                          c.args.positional(0, "ROUTER");
                          for (auto& r : c.args.positional()) {
                            c.svc.delete_router(r);
                            deleted(c, "router", r);
                          }
                        }};
  m["router-interface-add"] = {
      {}, {}, true, "router-interface-add ROUTER [subnet=]SUBNET", [](Context& c) {
        c.args.max_positional(2);
        std::string r = c.args.positional(0, "ROUTER");
        std::string s = strip_key(c.args.positional(1, "SUBNET"), "subnet");
        Port p = c.svc.add_router_interface(r, s);
        if (c.format == Format::kJson)
          print_object({{"id", c.svc.router(r).id},
                        {"port_id", p.id},
                        {"subnet_id", p.fixed_ips.at(0).subnet_id}},
                       c.format);
        else
          std::cout << "Added interface " << p.id << " to router " << r << ".\n";
      }};
  m["router-interface-delete"] = {
      {}, {}, true, "router-interface-delete ROUTER [subnet=]SUBNET", [](Context& c) {
        c.args.max_positional(2);
        std::string r = c.args.positional(0, "ROUTER");
        c.svc.remove_router_interface(r, strip_key(c.args.positional(1, "SUBNET"), "subnet"));
        if (c.format == Format::kTable) std::cout << "Removed interface from router " << r << ".\n";
      }};
  m["router-gateway-set"] = {{"--disable-snat"},
                             {},
                             true,
                             "router-gateway-set ROUTER EXTERNAL-NETWORK [--disable-snat]",
                             [](Context& c) {
                               c.args.max_positional(2);
                               std::string r = c.args.positional(0, "ROUTER");
                               Router out = c.svc.set_router_gateway(
                                   r, c.args.positional(1, "EXTERNAL-NETWORK"),
                                   !c.args.flag("--disable-snat"));
                               if (c.format == Format::kJson)
                                 show_router(c, out);
                               else
                                 std::cout << "Set gateway for router " << r << "\n";
                             }};
  m["router-gateway-clear"] = {{}, {}, true, "router-gateway-clear ROUTER", [](Context& c) {
                                 c.args.max_positional(1);
                                 std::string r = c.args.positional(0, "ROUTER");
                                 c.svc.clear_router_gateway(r);
                                 if (c.format == Format::kTable)
                                   std::cout << "Removed gateway from router " << r << "\n";
                               }};

  // ---- floating IPs ----
  m["floatingip-create"] = {
      {},
      {"--port-id", "--floating-ip-address"},
      true,
      "floatingip-create EXTERNAL-NETWORK [--port-id PORT] [--floating-ip-address IP]",
      [](Context& c) {
        c.args.max_positional(1);
        print_object(to_json(c.svc.create_floating_ip(c.args.positional(0, "EXTERNAL-NETWORK"),
                                                      c.tenant(), c.args.get_or("--port-id", ""),
                                                      c.args.get_or("--floating-ip-address", ""))),
                     c.format);
      }};
  m["floatingip-associate"] = {
      {},
      {"--fixed-ip-address"},
      true,
      "floatingip-associate FLOATINGIP PORT [--fixed-ip-address IP]",
      [](Context& c) {
        c.args.max_positional(2);
        FloatingIp f = c.svc.associate_floating_ip(c.args.positional(0, "FLOATINGIP"),
                                                   c.args.positional(1, "PORT"),
                                                   c.args.get_or("--fixed-ip-address", ""));
        if (c.format == Format::kJson)
          print_object(to_json(f), c.format);
        else
          std::cout << "Associated floating IP " << f.floating_ip_address.str() << "\n";
      }};
  m["floatingip-disassociate"] = {
      {}, {}, true, "floatingip-disassociate FLOATINGIP", [](Context& c) {
        c.args.max_positional(1);
        FloatingIp f = c.svc.disassociate_floating_ip(c.args.positional(0, "FLOATINGIP"));
        if (c.format == Format::kJson)
          print_object(to_json(f), c.format);
        else
          std::cout << "Disassociated floating IP " << f.floating_ip_address.str() << "\n";
      }};
  m["floatingip-list"] = {
      {}, {}, false, "floatingip-list", [](Context& c) {
        c.args.max_positional(0);
        std::vector<json> rows;
        for (auto& f : c.svc.store().floating_ips()) rows.push_back(to_json(f));
        print_list(rows, {"id", "fixed_ip_address", "floating_ip_address", "port_id"}, c.format);
      }};
  m["floatingip-show"] = {
      {}, {}, false, "floatingip-show FLOATINGIP", [](Context& c) {
        c.args.max_positional(1);
        print_object(to_json(c.svc.floating_ip(c.args.positional(0, "FLOATINGIP"))), c.format);
      }};
  m["floatingip-delete"] = {{}, {}, true, "floatingip-delete FLOATINGIP...", [](Context& c) {
                              c.args.positional(0, "FLOATINGIP");
                              for (auto& r : c.args.positional()) {
                                c.svc.delete_floating_ip(r);
                                deleted(c, "floatingip", r);
                              }
                            }};

  // ---- security groups ----
  m["security-group-create"] = {
      {},
      {"--description"},
      true,
      "security-group-create NAME [--description TEXT]",
      [](Context& c) {
        c.args.max_positional(1);
        show_group(c, c.svc.create_security_group(c.args.positional(0, "NAME"), c.tenant(),
                                                  c.args.get_or("--description", "")));
      }};
  m["security-group-list"] = {
      {}, {}, false, "security-group-list", [](Context& c) {
        c.args.max_positional(0);
        auto rules = c.svc.store().security_group_rules();
        std::vector<json> rows;
        for (auto& g : c.svc.store().security_groups()) rows.push_back(to_json(g, rules));
        print_list(rows, {"id", "name", "tenant_id", "description"}, c.format);
      }};
  m["security-group-show"] = {
      {}, {}, false, "security-group-show GROUP", [](Context& c) {
        c.args.max_positional(1);
        show_group(c, c.svc.security_group(c.args.positional(0, "GROUP"), c.tenant()));
      }};
  m["security-group-delete"] = {{}, {}, true, "security-group-delete GROUP...", [](Context& c) {
                                  c.args.positional(0, "GROUP");
                                  for (auto& r : c.args.positional()) {
                                    c.svc.delete_security_group(r);
                                    deleted(c, "security_group", r);
                                  }
                                }};
  m["security-group-rule-create"] = {
      {},
      {"--direction", "--ethertype", "--protocol", "--port-range-min", "--port-range-max",
       "--remote-ip-prefix", "--remote-group-id"},
      true,
      "security-group-rule-create GROUP [--direction ingress|egress] [--ethertype IPv4] "
      "[--protocol tcp|udp|icmp|N] [--port-range-min N] [--port-range-max N] "
      "[--remote-ip-prefix CIDR | --remote-group-id GROUP]",
      [](Context& c) {
        c.args.max_positional(1);
        RuleSpec r;
        r.security_group = c.args.positional(0, "GROUP");
        r.tenant_id = c.tenant();
        r.direction = c.args.get_or("--direction", "ingress");
        r.ethertype = c.args.get_or("--ethertype", "IPv4");
        r.protocol = c.args.get_or("--protocol", "");
        // Ports (tcp, udp) or ICMP type and code: the service checks which applies.
        if (auto v = c.args.integer("--port-range-min", 0, 65535))
          r.port_range_min = static_cast<int>(*v);
        if (auto v = c.args.integer("--port-range-max", 0, 65535))
          r.port_range_max = static_cast<int>(*v);
        r.remote_ip_prefix = c.args.get_or("--remote-ip-prefix", "");
        r.remote_group = c.args.get_or("--remote-group-id", "");
        print_object(to_json(c.svc.create_security_group_rule(r)), c.format);
      }};
  m["security-group-rule-list"] = {
      {}, {}, false, "security-group-rule-list", [](Context& c) {
        c.args.max_positional(0);
        std::vector<json> rows;
        for (auto& r : c.svc.store().security_group_rules()) rows.push_back(to_json(r));
        print_list(rows,
                   {"id", "security_group_id", "direction", "ethertype", "protocol",
                    "port_range_min", "port_range_max", "remote_ip_prefix", "remote_group_id"},
                   c.format);
      }};
  m["security-group-rule-show"] = {
      {}, {}, false, "security-group-rule-show RULE", [](Context& c) {
        c.args.max_positional(1);
        print_object(to_json(c.svc.security_group_rule(c.args.positional(0, "RULE"))), c.format);
      }};
  m["security-group-rule-delete"] = {
      {}, {}, true, "security-group-rule-delete RULE...", [](Context& c) {
        c.args.positional(0, "RULE");
        for (auto& r : c.args.positional()) {
          c.svc.delete_security_group_rule(r);
          deleted(c, "security_group_rule", r);
        }
      }};

  // ---- host ----
  m["config-set"] = {{}, {}, true, "config-set KEY VALUE", [](Context& c) {
                       c.args.max_positional(2);
                       c.svc.set_setting(c.args.positional(0, "KEY"),
                                         c.args.positional(1, "VALUE"));
                     }};
  m["config-show"] = {{}, {}, false, "config-show", [](Context& c) {
                        c.args.max_positional(0);
                        json o = json::object();
                        for (auto& [k, v] : c.svc.settings()) o[k] = v;
                        print_object(o, c.format);
                      }};
  m["apply"] = {{}, {}, true, "apply   (plumb the whole model; repairs drift)", [](Context& c) {
                  c.args.max_positional(0);
                }};
  return m;
}

// Returns the exit code.
int plumb(Plumber& plumber, Store& store, const Context& ctx, bool verbose) {
  ApplyResult r =
      ctx.plumb_ports ? plumber.plumb_ports(store, *ctx.plumb_ports) : plumber.apply(store);
  if (verbose)
    for (auto& c : r.changes) std::cerr << "kiln-net: " << c << "\n";
  for (auto& e : r.errors) std::cerr << "kiln-net: plumbing: " << e << "\n";
  return r.errors.empty() ? 0 : 1;
}

void usage(const std::map<std::string, Command>& cmds) {
  std::cout << "usage: kiln-net [--format table|json] [--no-plumb] [--tenant-id ID] COMMAND ...\n"
               "       kiln-net --version\n"
               "State: $KILN_STATE_DIR/netplumb.db (default /var/lib/kiln); runtime: "
               "$KILN_RUN_DIR (default /run/kiln).\n\nCommands:\n";
  for (auto& [name, c] : cmds) std::cout << "  " << c.usage << "\n";
  std::cout << "  teardown   (remove everything kiln-net plumbed; the model stays)\n";
}

int run(int argc, char** argv) {
  auto cmds = commands();
  std::vector<std::string> rest(argv + 1, argv + argc);
  // The command is the first argument that is not a global option (or its value).
  std::string name;
  std::vector<std::string> cmd_args;
  for (size_t i = 0; i < rest.size(); ++i) {
    const std::string& a = rest[i];
    if (name.empty() && (a == "--format" || a == "-f" || a == "--tenant-id") &&
        i + 1 < rest.size()) {
      cmd_args.push_back(a);
      cmd_args.push_back(rest[++i]);
    } else if (name.empty() && a.size() > 1 && a[0] == '-') {
      cmd_args.push_back(a);
    } else if (name.empty()) {
      name = a;
    } else {
      cmd_args.push_back(a);
    }
  }
  if (name.empty() || name == "help") {
    // `help` and `--help` print the usage and succeed; no command at all is a usage error.
    const bool asked = name == "help" || std::any_of(cmd_args.begin(), cmd_args.end(),
                                                     [](auto& a) { return a == "--help"; });
    usage(cmds);
    return asked ? 0 : 2;
  }
  bool teardown = name == "teardown";
  auto it = cmds.find(name);
  if (it == cmds.end() && !teardown)
    throw invalid("unknown command '" + name + "' (see kiln-net help)");

  std::set<std::string> flags = kGlobalFlags, valued = kGlobalValued;
  if (!teardown) {
    flags.insert(it->second.flags.begin(), it->second.flags.end());
    valued.insert(it->second.valued.begin(), it->second.valued.end());
  }
  Args args = Args::parse(cmd_args, flags, valued);
  if (args.flag("--help")) {
    std::cout << "usage: kiln-net " << (teardown ? "teardown" : it->second.usage) << "\n";
    return 0;
  }
  auto store = Store::open_default();
  NetService svc(*store);
  Context ctx{args, svc, Format::kTable, std::nullopt};
  std::string fmt = args.get("--format").value_or(args.get_or("-f", "table"));
  if (fmt == "json")
    ctx.format = Format::kJson;
  else if (fmt != "table")
    throw invalid("--format must be table or json");

  if (teardown) {
    args.max_positional(0);
    Plumber plumber(host_config(svc));
    ApplyResult r = plumber.teardown();
    for (auto& e : r.errors) std::cerr << "kiln-net: teardown: " << e << "\n";
    return r.errors.empty() ? 0 : 1;
  }
  it->second.run(ctx);
  if (it->second.changes && !args.flag("--no-plumb")) {
    Plumber plumber(host_config(svc));  // after the command: config-set changes it
    return plumb(plumber, *store, ctx, name == "apply");
  }
  return 0;
}

}  // namespace
}  // namespace kiln::net::cli

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "--version") {
    std::cout << "kiln-net " << KILN_VERSION << "\n";
    return 0;
  }
  try {
    return kiln::net::cli::run(argc, argv);
  } catch (const kiln::net::Error& e) {
    std::cerr << "kiln-net: " << e.what() << "\n";
    return kiln::common::exit_code(e);
  } catch (const std::exception& e) {
    std::cerr << "kiln-net: " << e.what() << "\n";
    return 1;
  }
}

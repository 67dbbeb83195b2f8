// kiln-net: the Neutron-style command line of netplumb. The commands are in cmd_<resource>.cpp;
// this file reads the global options, finds the command, runs it and plumbs the host after a
// change.
#include <algorithm>
#include <iostream>

#include "context.h"
#include "kiln/net/plumber.h"

namespace kiln::net::cli {
namespace {

using common::cli::Option;

const std::vector<Option> kGlobalOptions = {
    {"--no-plumb"},          {"--db", kValue},        {"--help"},
    {"-f|--format", kValue}, {"--tenant-id", kValue}, {"--os-tenant-name", kValue}};

common::cli::Rules rules() {
  common::cli::Rules r;
  r.neutron = true;
  return r;
}

CommandTable all_commands() {
  CommandTable all;
  for (auto table : {network_commands(), subnet_commands(), port_commands(), router_commands(),
                     floatingip_commands(), security_group_commands(), host_commands()})
    all.insert(all.end(), table.begin(), table.end());
  std::sort(all.begin(), all.end(), [](auto& a, auto& b) { return a.name < b.name; });
  return all;
}

void help(std::ostream& out) {
  out << "Usage: kiln-net [--format table|json] [--no-plumb] [--tenant-id ID] [--db URL] "
         "COMMAND ...\n"
         "       kiln-net --version\n"
         "State: --db or $KILN_DB_URL (a PostgreSQL URI shared by several hosts), else "
         "$KILN_STATE_DIR/netplumb.db (default /var/lib/kiln); runtime: $KILN_RUN_DIR (default "
         "/run/kiln).\n\nCommands:\n";
  common::cli::print_commands(out, all_commands());
}

// Plumbs the host after a change; returns the exit code.
int plumb(NetService& svc, Store& store, const Context& ctx) {
  Plumber plumber(host_config(svc));  // after the command: config-set changes it
  ApplyResult r =
      ctx.plumb_ports ? plumber.plumb_ports(store, *ctx.plumb_ports) : plumber.apply(store);
  if (ctx.verbose_plumb)
    for (auto& c : r.changes) std::cerr << "kiln-net: " << c << "\n";
  for (auto& e : r.errors) std::cerr << "kiln-net: plumbing: " << e << "\n";
  return r.errors.empty() ? 0 : 1;
}

int run(const std::vector<std::string>& argv) {
  const CommandTable cmds = all_commands();
  auto [cmd, args] = common::cli::parse_invocation(argv, kGlobalOptions, rules(), cmds, "kiln-net");
  if (!cmd) {
    // `help` and `--help` print the usage and succeed; no command at all is a usage error.
    help(std::cout);
    return !args.rest().empty() || args.flag("--help") ? 0 : 2;
  }
  if (args.flag("--help")) {
    std::cout << "Usage: kiln-net " << cmd->name << " " << cmd->usage << "\n";
    return 0;
  }
  const Format format = common::cli::parse_format(args.get_or("--format", "table"));
  auto store = Store::open_default(args.get_or("--db", ""));
  NetService svc(*store);
  Context ctx{args, svc, format, false, std::nullopt, false, false};
  int rc = cmd->run(ctx);
  if (rc == 0 && ctx.changed && !ctx.skip_plumb && !args.flag("--no-plumb"))
    rc = plumb(svc, *store, ctx);
  return rc;
}

}  // namespace
}  // namespace kiln::net::cli

int main(int argc, char** argv) {
  return kiln::common::cli::run_main({"kiln-net", kiln::net::cli::help, 1}, argc, argv,
                                     kiln::net::cli::run);
}

// kiln-spawn: the command line of the compute path. The commands are in cmd_<resource>.cpp;
// this file reads the global options into ComputeOptions, finds the command and runs it.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <memory>

#include "context.h"
#include "perms.h"

namespace kiln::spawn::cli {
namespace {

using common::cli::Option;

const std::vector<Option> kGlobalOptions = {{"--no-plumb"},
                                            {"-h|--help"},
                                            {"--state-dir", kValue},
                                            {"--net-db", kValue},
                                            {"--db", kValue},
                                            {"--libvirt-uri", kValue},
                                            {"--nbd-control", kValue},
                                            {"--nbd-socket", kValue},
                                            {"--nbd-socket-dir", kValue},
                                            {"--qemu-user", kValue},
                                            {"--virt-type", kValue},
                                            {"-f|--format", kValue},
                                            {"--tenant-id", kValue},
                                            {"--wait-timeout", kValue},
                                            {"--overlay-cluster-size", kValue},
                                            {"--overlay-extended-l2", kValue}};

common::cli::Rules rules() {
  common::cli::Rules r;
  r.negative_numbers_are_positional = true;  // config-set KEY -1 is the setting's to refuse
  return r;
}

CommandTable all_commands() {
  CommandTable all;
  for (auto table : {image_commands(), flavor_commands(), instance_commands(), host_commands(),
                     ssh_commands(), metadata_commands(), host_registry_commands()})
    all.insert(all.end(), table.begin(), table.end());
  std::sort(all.begin(), all.end(), [](auto& a, auto& b) { return a.name < b.name; });
  return all;
}

void help(std::ostream& out) {
  out << "Usage: kiln-spawn [--state-dir DIR] [--db URL | --net-db FILE] [--libvirt-uri URI]\n"
         "                  [--nbd-control SOCK] [--nbd-socket-dir DIR | --nbd-socket SOCK]\n"
         "                  [--qemu-user USER[:GROUP]] [--virt-type kvm|qemu]\n"
         "                  [--no-plumb] [--tenant-id ID] [--wait-timeout S]\n"
         "                  [--overlay-cluster-size BYTES] [--overlay-extended-l2 on|off]\n"
         "                  [--format table|json] COMMAND ...\n"
         "       kiln-spawn --version\n"
         "State: --db or $KILN_DB_URL (a PostgreSQL URI shared by several hosts: schemas "
         "kiln_spawn and kiln_net), else DIR/spawn.db and --net-db (default "
         "$KILN_STATE_DIR/netplumb.db).\n\nCommands:\n";
  common::cli::print_commands(out, all_commands());
  out << "\nTest hook: " << kFailAtEnv << "=STEP makes boot fail at STEP (";
  for (size_t i = 0; i < build_steps().size(); ++i) out << (i ? ", " : "") << build_steps()[i];
  out << "); " << kPauseAtEnv << "=STEP stops it there until killed.\n";
}

ComputeOptions compute_options(const Args& args) {
  ComputeOptions opt;
  opt.libvirt_uri = args.get_or("--libvirt-uri", "qemu:///system");
  opt.nbd_control = args.get_or("--nbd-control", net::run_dir() + "/nbd-control.sock");
  opt.nbd_socket_dir = args.get_or("--nbd-socket-dir", net::run_dir() + "/nbd");
  opt.nbd_socket = args.get_or("--nbd-socket", "");
  if (args.has("--nbd-socket") && args.has("--nbd-socket-dir"))
    throw invalid("give --nbd-socket (one shared socket) or --nbd-socket-dir, not both");
  if (args.has("--nbd-socket") && opt.nbd_socket.empty())
    throw invalid("--nbd-socket needs a path");
  opt.qemu_user = args.get_or("--qemu-user", "");
  if (args.has("--qemu-user")) parse_host_user(opt.qemu_user, "--qemu-user");
  opt.virt_type = args.get_or("--virt-type", "");
  if (!opt.virt_type.empty() && opt.virt_type != "kvm" && opt.virt_type != "qemu")
    throw invalid("--virt-type must be kvm or qemu");
  opt.plumb = !args.flag("--no-plumb");
  opt.tenant_id = args.get_or("--tenant-id", "admin");
  opt.wait_timeout_s =
      static_cast<int>(args.number("--wait-timeout", 1, kMaxWaitTimeout).value_or(60));
  opt.progress = ::isatty(STDERR_FILENO) == 1;
  const std::string ext = args.get_or("--overlay-extended-l2", "on");
  if (ext != "on" && ext != "off") throw invalid("--overlay-extended-l2 must be on or off");
  opt.overlay_extended_l2 = ext == "on";
  // qcow2's limits: a power of two up to 2 MiB, at least 16 KiB with subclusters (512 bytes).
  const uint64_t min_cs = opt.overlay_extended_l2 ? 16384 : 512;
  const uint64_t cs =
      args.number("--overlay-cluster-size", min_cs, 2u << 20).value_or(opt.overlay_cluster_size);
  if (cs & (cs - 1)) throw invalid("--overlay-cluster-size must be a power of two");
  opt.overlay_cluster_size = static_cast<uint32_t>(cs);
  return opt;
}

void on_signal(int) { interrupt_boot(); }

int run(const std::vector<std::string>& argv) {
  const CommandTable cmds = all_commands();
  auto [cmd, args] =
      common::cli::parse_invocation(argv, kGlobalOptions, rules(), cmds, "kiln-spawn");
  if (!cmd) {
    // `help` and `--help` print the usage and succeed; no command at all is a usage error.
    help(std::cout);
    return !args.rest().empty() || args.flag("--help") ? 0 : 2;
  }
  if (args.flag("--help")) {
    std::cout << "Usage: kiln-spawn " << cmd->name << " " << cmd->usage << "\n";
    return 0;
  }
  const Format format = common::cli::parse_format(args.get_or("--format", "table"));
  const std::string state_dir = args.get_or("--state-dir", net::state_dir() + "/spawn");
  // One shared database for both models, or the two SQLite files. kiln-net, when it runs as a
  // child (plumbing), finds the same database through KILN_DB_URL.
  const std::string db_url = args.get_or("--db", net::database_url());
  if (!db_url.empty()) ::setenv("KILN_DB_URL", db_url.c_str(), 1);
  // --net-db, or kiln-net's own default (the shared database, else netplumb.db in its state
  // directory, which it creates: on a fresh host kiln-spawn may be the first to open it).
  const std::string net_db = args.get_or("--net-db", "");
  const ComputeOptions opt = compute_options(args);

  std::unique_ptr<Store> store;
  std::unique_ptr<net::Store> net_store;
  std::unique_ptr<Compute> compute;
  Context ctx{args,
              format,
              [&]() -> Store& {
                if (!store) store = std::make_unique<Store>(state_dir, db_url);
                return *store;
              },
              [&]() -> net::Store& {
                if (!net_store) {
                  try {
                    net_store = net_db.empty() ? net::Store::open_default(db_url)
                                               : std::make_unique<net::Store>(net_db);
                  } catch (const std::exception& e) {
                    throw system_error(std::string("netplumb database: ") + e.what());
                  }
                }
                return *net_store;
              },
              {},
              opt.progress};
  ctx.compute = [&]() -> Compute& {
    if (!compute) compute = std::make_unique<Compute>(ctx.store(), ctx.net_store(), opt);
    return *compute;
  };
  if (cmd->name == "boot" || cmd->name == "image-create" || cmd->name == "agent") {
    // Ctrl-C or SIGTERM during a boot: stop at the next step and roll back; during a
    // download: abort it and remove the partial file; an agent: stop after the row it runs
    // (a build fails at its next step and rolls back).
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
  }
  return cmd->run(ctx);
}

}  // namespace
}  // namespace kiln::spawn::cli

int main(int argc, char** argv) {
  return kiln::common::cli::run_main({"kiln-spawn", kiln::spawn::cli::help, 1}, argc, argv,
                                     kiln::spawn::cli::run);
}

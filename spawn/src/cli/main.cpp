// kiln-spawn: the command line of the compute path.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "args.h"
#include "kiln/net/store.h"
#include "kiln/spawn/compute.h"
#include "kiln/spawn/error.h"
#include "kiln/spawn/images.h"
#include "kiln/spawn/resources.h"
#include "kiln/spawn/store.h"
#include "kiln/version.h"
#include "perms.h"

namespace kiln::spawn::cli {
namespace {

using json = nlohmann::json;

enum class Format { kTable, kJson };

const std::set<std::string> kGlobalFlags = {"--no-plumb", "--help", "-h"};
const std::set<std::string> kGlobalValued = {
    "--state-dir",      "--net-db",      "--libvirt-uri", "--nbd-control", "--nbd-socket",
    "--nbd-socket-dir", "--qemu-user",   "--virt-type",   "--format",      "-f",
    "--tenant-id",      "--wait-timeout"};

// Settings of kiln-spawn itself, next to the resource tracker's.
constexpr const char* kQemuUserSetting = "qemu_user";

struct Context {
  Args& args;
  Format format;
  std::function<Store&()> store;
  std::function<net::Store&()> net_store;
  std::function<Compute&()> compute;
  bool progress;
};

struct Command {
  std::set<std::string> flags, valued;
  std::string usage;
  std::function<void(Context&)> run;
};

std::string cell(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "";
  if (v.is_array()) {
    std::string out;
    for (const auto& e : v) out += (out.empty() ? "" : ", ") + cell(e);
    return out;
  }
  return v.dump();
}

void print_table(const std::vector<std::string>& cols,
                 const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w(cols.size());
  for (size_t i = 0; i < cols.size(); ++i) w[i] = cols[i].size();
  for (const auto& r : rows)
    for (size_t i = 0; i < cols.size(); ++i) w[i] = std::max(w[i], r[i].size());
  auto line = [&] {
    std::string s = "+";
    for (size_t x : w) s += std::string(x + 2, '-') + "+";
    std::cout << s << "\n";
  };
  auto row = [&](const std::vector<std::string>& r) {
    std::string s = "|";
    for (size_t i = 0; i < cols.size(); ++i)
      s += " " + r[i] + std::string(w[i] - r[i].size(), ' ') + " |";
    std::cout << s << "\n";
  };
  line();
  row(cols);
  line();
  for (const auto& r : rows) row(r);
  line();
}

// A listing: JSON array of objects, or a table of `cols` (keys of the objects).
void print_list(const json& items, const std::vector<std::string>& cols, Format f) {
  if (f == Format::kJson) {
    std::cout << items.dump(2) << "\n";
    return;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& it : items) {
    std::vector<std::string> r;
    for (const auto& c : cols) r.push_back(it.contains(c) ? cell(it[c]) : "");
    rows.push_back(r);
  }
  print_table(cols, rows);
}

void print_object(const json& o, Format f) {
  if (f == Format::kJson) {
    std::cout << o.dump(2) << "\n";
    return;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& [k, v] : o.items()) rows.push_back({k, cell(v)});
  print_table({"Field", "Value"}, rows);
}

json to_json(const Image& i) {
  return {{"id", i.id},
          {"name", i.name},
          {"disk_format", i.disk_format},
          {"size", i.size},
          {"virtual_size", i.virtual_size},
          {"checksum", i.digest},
          {"checksum_algo", "xxh3-128"},
          {"created_at", i.created_at}};
}

json to_json(const Flavor& f) {
  return {{"name", f.name},
          {"vcpus", f.vcpus},
          {"ram", f.ram_mb},
          {"disk", f.disk_gb},
          {"builtin", f.builtin}};
}

json to_json(const Instance& i) {
  return {{"id", i.id},
          {"name", i.name},
          {"status", i.status},
          {"task_state", i.task_state},
          {"fault", i.fault},
          {"image", i.image_id},
          {"flavor", i.flavor},
          {"vcpus", i.vcpus},
          {"ram", i.ram_mb},
          {"disk", i.disk_gb},
          {"network", i.network},
          {"network_id", i.network_id},
          {"port_id", i.port_id},
          {"mac_address", i.mac},
          {"ip_address", i.ip},
          {"tap", i.tap},
          {"export", i.export_name},
          {"domain", i.domain_name},
          {"instance_dir", i.dir},
          {"steps", i.steps_done},
          {"base_filled", i.base_filled},
          {"created_at", i.created_at},
          {"updated_at", i.updated_at}};
}

std::map<std::string, Command> commands() {
  std::map<std::string, Command> m;
  m["image-create"] = {
      {}, {"--disk-format"}, "image-create NAME FILE [--disk-format qcow2|raw]", [](Context& c) {
        c.args.max_positional(2);
        ImageStore images(c.store());
        Image i = images.create(c.args.positional(0, "NAME"), c.args.positional(1, "FILE"),
                                c.args.get_or("--disk-format", ""), c.progress);
        print_object(to_json(i), c.format);
      }};
  m["image-list"] = {
      {}, {}, "image-list", [](Context& c) {
        c.args.max_positional(0);
        json a = json::array();
        for (const auto& i : c.store().images()) a.push_back(to_json(i));
        print_list(a, {"id", "name", "disk_format", "size", "virtual_size", "checksum"}, c.format);
      }};
  m["image-show"] = {
      {}, {}, "image-show IMAGE", [](Context& c) {
        c.args.max_positional(1);
        print_object(to_json(ImageStore(c.store()).get(c.args.positional(0, "IMAGE"))), c.format);
      }};
  m["image-delete"] = {{}, {}, "image-delete IMAGE...", [](Context& c) {
                         c.args.positional(0, "IMAGE");
                         ImageStore images(c.store());
                         for (const auto& r : c.args.positional()) images.remove(r);
                       }};
  m["flavor-create"] = {{},
                        {"--vcpus", "--ram", "--disk"},
                        "flavor-create NAME --vcpus N --ram MiB --disk GiB",
                        [](Context& c) {
                          c.args.max_positional(1);
                          Flavor f;
                          f.name = c.args.positional(0, "NAME");
                          check_name("flavor", f.name);
                          auto need = [&](const char* o) {
                            auto v = c.args.get(o);
                            if (!v) throw invalid(std::string("flavor-create needs ") + o);
                            return *v;
                          };
                          f.vcpus = static_cast<int>(parse_int("--vcpus", need("--vcpus"), 1024));
                          f.ram_mb = parse_int("--ram", need("--ram"), int64_t{1} << 30);
                          f.disk_gb = parse_int("--disk", need("--disk"), int64_t{1} << 20);
                          if (f.vcpus < 1 || f.ram_mb < 1)
                            throw invalid("a flavor needs at least 1 vCPU and 1 MiB of memory");
                          Store& s = c.store();
                          s.write([&] {
                            if (s.find_flavor(f.name))
                              throw exists("flavor '" + f.name + "' already exists");
                            s.put(f);
                          });
                          print_object(to_json(f), c.format);
                        }};
  m["flavor-list"] = {{}, {}, "flavor-list", [](Context& c) {
                        c.args.max_positional(0);
                        json a = json::array();
                        for (const auto& f : c.store().flavors()) a.push_back(to_json(f));
                        print_list(a, {"name", "vcpus", "ram", "disk"}, c.format);
                      }};
  m["flavor-show"] = {{}, {}, "flavor-show FLAVOR", [](Context& c) {
                        c.args.max_positional(1);
                        auto f = c.store().find_flavor(c.args.positional(0, "FLAVOR"));
                        if (!f)
                          throw not_found("flavor '" + c.args.positional(0, "") + "' not found");
                        print_object(to_json(*f), c.format);
                      }};
  m["flavor-delete"] = {{}, {}, "flavor-delete FLAVOR...", [](Context& c) {
                          c.args.positional(0, "FLAVOR");
                          Store& s = c.store();
                          for (const auto& r : c.args.positional())
                            s.write([&] {
                              if (!s.find_flavor(r))
                                throw not_found("flavor '" + r + "' not found");
                              s.remove_flavor(r);
                            });
                        }};
  m["hypervisor-stats"] = {{}, {}, "hypervisor-stats", [](Context& c) {
                             c.args.max_positional(0);
                             ResourceTracker t(c.store());
                             json o = json::object();
                             for (const auto& s : t.stats()) {
                               o[s.resource] = s.total;
                               o[s.resource + "_reserved"] = s.reserved;
                               o[s.resource + "_allocation_ratio"] = s.ratio;
                               o[s.resource + "_capacity"] = s.capacity;
                               o[s.resource + "_used"] = s.used;
                               o[s.resource + "_free"] = s.free();
                             }
                             o["running_vms"] = t.instances();
                             print_object(o, c.format);
                           }};
  m["config-set"] = {
      {}, {}, "config-set KEY VALUE   (VALUE '' restores the default)", [](Context& c) {
        c.args.max_positional(2);
        const std::string& key = c.args.positional(0, "KEY");
        const std::string& value = c.args.positional(1, "VALUE");
        bool known = key == kQemuUserSetting;
        for (const auto& [k, d] : resource_settings()) known |= k == key;
        if (!known) throw invalid("unknown setting '" + key + "'");
        if (key == kQemuUserSetting && !value.empty()) parse_host_user(value, key);
        Store& s = c.store();
        // Checked inside the transaction that stores it: a bad value is rolled back.
        s.write([&] {
          s.set_setting(key, value);
          ResourceTracker(s).config();
        });
      }};
  m["config-show"] = {{}, {}, "config-show", [](Context& c) {
                        c.args.max_positional(0);
                        json o = json::object();
                        for (const auto& [k, d] : resource_settings())
                          o[k] = c.store().setting(k).value_or(d);
                        o[kQemuUserSetting] =
                            c.store().setting(kQemuUserSetting).value_or("(libvirt's)");
                        print_object(o, c.format);
                      }};
  m["boot"] = {{"--inject"},
               {"--image", "--flavor", "--net", "--key-file", "--user-data", "--file",
                "--security-group", "--availability-zone", "--kernel", "--initrd", "--cmdline"},
               "boot NAME --image I --flavor F --net N [--key-file F] [--user-data F] "
               "[--file PATH=SRC]... [--security-group G]... [--inject] [--kernel K [--initrd I] "
               "[--cmdline C]]",
               [](Context& c) {
                 c.args.max_positional(1);
                 BootRequest r;
                 r.name = c.args.positional(0, "NAME");
                 r.image = c.args.get_or("--image", "");
                 r.flavor = c.args.get_or("--flavor", "");
                 r.network = c.args.get_or("--net", "");
                 r.key_file = c.args.get_or("--key-file", "");
                 r.user_data_file = c.args.get_or("--user-data", "");
                 for (const auto& f : c.args.all("--file")) {
                   auto eq = f.find('=');
                   if (eq == std::string::npos || eq == 0 || eq + 1 == f.size())
                     throw invalid("--file needs PATH=SRC, not '" + f + "'");
                   r.files.emplace_back(f.substr(0, eq), f.substr(eq + 1));
                 }
                 r.security_groups = c.args.all("--security-group");
                 r.inject = c.args.flag("--inject");
                 r.availability_zone = c.args.get_or("--availability-zone", "nova");
                 r.kernel = c.args.get_or("--kernel", "");
                 r.initrd = c.args.get_or("--initrd", "");
                 r.cmdline = c.args.get_or("--cmdline", "");
                 print_object(to_json(c.compute().boot(r)), c.format);
               }};
  m["list"] = {
      {}, {}, "list", [](Context& c) {
        c.args.max_positional(0);
        json a = json::array();
        for (const auto& i : c.store().instances()) {
          json o = to_json(i);
          o["networks"] = i.ip.empty() ? "" : i.network + "=" + i.ip;
          a.push_back(o);
        }
        print_list(a, {"id", "name", "status", "task_state", "networks", "flavor"}, c.format);
      }};
  m["show"] = {{}, {}, "show INSTANCE", [](Context& c) {
                 c.args.max_positional(1);
                 Store& s = c.store();
                 auto i = s.find_instance(c.args.positional(0, "INSTANCE"));
                 if (!i) throw not_found("instance '" + c.args.positional(0, "") + "' not found");
                 json o = to_json(*i);
                 o["power_state"] = c.compute().power_state(*i);
                 json ev = json::array();
                 for (const auto& e : s.events(i->id))
                   ev.push_back({{"at", e.at},
                                 {"status", e.status},
                                 {"task_state", e.task_state},
                                 {"message", e.message}});
                 if (c.format == Format::kJson) {
                   o["events"] = ev;
                   o["domain_xml"] = i->domain_xml;
                 }
                 print_object(o, c.format);
               }};
  m["console-log"] = {{}, {}, "console-log INSTANCE", [](Context& c) {
                        c.args.max_positional(1);
                        std::cout << c.compute().console_log(c.args.positional(0, "INSTANCE"));
                      }};
  m["stop"] = {{}, {}, "stop INSTANCE...", [](Context& c) {
                 c.args.positional(0, "INSTANCE");
                 for (const auto& r : c.args.positional()) c.compute().stop(r);
               }};
  m["start"] = {{}, {}, "start INSTANCE...", [](Context& c) {
                  c.args.positional(0, "INSTANCE");
                  for (const auto& r : c.args.positional()) c.compute().start(r);
                }};
  m["delete"] = {{}, {}, "delete INSTANCE...", [](Context& c) {
                   c.args.positional(0, "INSTANCE");
                   for (const auto& r : c.args.positional()) c.compute().remove(r);
                 }};
  return m;
}

void usage(const std::map<std::string, Command>& cmds) {
  std::cout << "usage: kiln-spawn [--state-dir DIR] [--net-db FILE] [--libvirt-uri URI]\n"
               "                  [--nbd-control SOCK] [--nbd-socket-dir DIR | --nbd-socket SOCK]\n"
               "                  [--qemu-user USER[:GROUP]] [--virt-type kvm|qemu]\n"
               "                  [--no-plumb] [--tenant-id ID] [--wait-timeout S]\n"
               "                  [--format table|json] COMMAND ...\n"
               "       kiln-spawn --version\n\nCommands:\n";
  for (const auto& [name, c] : cmds) std::cout << "  " << c.usage << "\n";
  std::cout << "\nFile injection (--inject): "
            << (injection_available() ? "available" : "not available in this build") << "\n";
  std::cout << "Test hook: " << kFailAtEnv << "=STEP makes boot fail at STEP (";
  for (size_t i = 0; i < build_steps().size(); ++i)
    std::cout << (i ? ", " : "") << build_steps()[i];
  std::cout << "); " << kPauseAtEnv << "=STEP stops it there until killed.\n";
}

void on_signal(int) { interrupt_boot(); }

int run(int argc, char** argv) {
  auto cmds = commands();
  std::vector<std::string> rest(argv + 1, argv + argc);
  std::string name;
  std::vector<std::string> cmd_args;
  for (size_t i = 0; i < rest.size(); ++i) {
    const std::string& a = rest[i];
    if (name.empty() && kGlobalValued.count(a) && i + 1 < rest.size()) {
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
    const bool asked = name == "help" || std::any_of(cmd_args.begin(), cmd_args.end(), [](auto& a) {
                         return a == "--help" || a == "-h";
                       });
    usage(cmds);
    return asked ? 0 : 2;
  }
  auto it = cmds.find(name);
  if (it == cmds.end()) throw invalid("unknown command '" + name + "' (see kiln-spawn help)");
  std::set<std::string> flags = kGlobalFlags, valued = kGlobalValued;
  flags.insert(it->second.flags.begin(), it->second.flags.end());
  valued.insert(it->second.valued.begin(), it->second.valued.end());
  Args args = Args::parse(cmd_args, flags, valued);
  if (args.flag("--help") || args.flag("-h")) {
    std::cout << "usage: kiln-spawn " << it->second.usage << "\n";
    return 0;
  }
  std::string fmt = args.get("--format").value_or(args.get_or("-f", "table"));
  if (fmt != "table" && fmt != "json") throw invalid("--format must be table or json");

  const std::string state_dir = args.get_or("--state-dir", net::state_dir() + "/spawn");
  const std::string net_db = args.get_or("--net-db", net::state_dir() + "/netplumb.db");
  ComputeOptions opt;
  opt.libvirt_uri = args.get_or("--libvirt-uri", "qemu:///system");
  opt.nbd_control = args.get_or("--nbd-control", net::run_dir() + "/nbd-control.sock");
  opt.nbd_socket_dir = args.get_or("--nbd-socket-dir", net::run_dir() + "/nbd");
  opt.nbd_socket = args.get_or("--nbd-socket", "");
  if (args.get("--nbd-socket") && args.get("--nbd-socket-dir"))
    throw invalid("give --nbd-socket (one shared socket) or --nbd-socket-dir, not both");
  if (args.get("--nbd-socket") && opt.nbd_socket.empty())
    throw invalid("--nbd-socket needs a path");
  opt.qemu_user = args.get_or("--qemu-user", "");
  if (args.get("--qemu-user")) parse_host_user(opt.qemu_user, "--qemu-user");
  opt.virt_type = args.get_or("--virt-type", "");
  if (!opt.virt_type.empty() && opt.virt_type != "kvm" && opt.virt_type != "qemu")
    throw invalid("--virt-type must be kvm or qemu");
  opt.plumb = !args.flag("--no-plumb");
  opt.tenant_id = args.get_or("--tenant-id", "admin");
  opt.wait_timeout_s =
      static_cast<int>(parse_int("--wait-timeout", args.get_or("--wait-timeout", "60"), 86400));
  if (opt.wait_timeout_s < 1) throw invalid("--wait-timeout is at least 1 (seconds)");
  opt.progress = ::isatty(STDERR_FILENO) == 1;

  std::unique_ptr<Store> store;
  std::unique_ptr<net::Store> net_store;
  std::unique_ptr<Compute> compute;
  Context ctx{args,
              fmt == "json" ? Format::kJson : Format::kTable,
              [&]() -> Store& {
                if (!store) store = std::make_unique<Store>(state_dir);
                return *store;
              },
              [&]() -> net::Store& {
                if (!net_store) {
                  try {
                    net_store = std::make_unique<net::Store>(net_db);
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
  if (name == "boot") {
    // Ctrl-C or SIGTERM during a boot: stop at the next step and roll back.
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
  }
  it->second.run(ctx);
  return 0;
}

}  // namespace
}  // namespace kiln::spawn::cli

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "--version") {
    std::cout << "kiln-spawn " << KILN_VERSION << "\n";
    return 0;
  }
  try {
    return kiln::spawn::cli::run(argc, argv);
  } catch (const kiln::spawn::Error& e) {
    std::cerr << "kiln-spawn: " << e.what() << "\n";
    return kiln::common::exit_code(e);
  } catch (const std::exception& e) {
    std::cerr << "kiln-spawn: " << e.what() << "\n";
    return 1;
  }
}

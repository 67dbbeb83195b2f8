// kiln-spawn ssh: a login to an instance over its tenant network, the way `nova ssh` did it,
// but from where the network is reachable on this host. A tenant network lives in namespaces:
// its DHCP namespace (qdhcp-NET) has a leg on it; without DHCP, the namespace of a router
// with an interface on it (qrouter-ROUTER). ssh runs inside that network namespace (only the
// network: files, keys and the terminal are the caller's), with a known_hosts file of the
// instance's own, trusted on first use and removed with the instance.
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "context.h"
#include "kiln/common/fd.h"
#include "kiln/net/plumber.h"

namespace kiln::spawn::cli {

namespace {

namespace fs = std::filesystem;

// The namespace file of a namespace that has a leg on `network_id`, or "".
std::string reaching_namespace(net::Store& net, const std::string& network_id) {
  const std::string dir = net::run_dir() + "/netns/";
  if (fs::exists(dir + net::dhcp_ns_name(network_id))) return dir + net::dhcp_ns_name(network_id);
  for (const auto& p : net.ports(network_id))
    if (p.device_owner == "network:router_interface" &&
        fs::exists(dir + net::router_ns_name(p.device_id)))
      return dir + net::router_ns_name(p.device_id);
  return "";
}

// -l, else the image's `os_admin_user` property (Glance's, which Nova's documentation names
// as the default user of an image), else root.
std::string login_of(Context& c, const Instance& i) {
  if (c.args.has("--login")) return c.args.get_or("--login", "");
  if (auto image = c.store().find_image(i.image_id)) {
    auto it = image->properties.find("os_admin_user");
    if (it != image->properties.end() && !it->second.empty()) return it->second;
  }
  return "root";
}

int ssh(Context& c) {
  const std::string ref = c.args.positional(0, "INSTANCE");
  const auto found = c.store().find_instance(ref);
  if (!found) throw not_found("instance '" + ref + "' not found");
  const Instance& i = *found;
  if (i.status != kStatusActive)
    throw busy("instance '" + i.name + "' is " + i.status + ", not active");
  if (i.ip.empty() || i.network_id.empty())
    throw invalid("instance '" + i.name + "' has no address on a tenant network");
  const std::string ns = reaching_namespace(c.net_store(), i.network_id);
  if (ns.empty())
    throw not_found("no namespace on this host reaches network " + i.network_id +
                    " (no DHCP and no router interface plumbed): run kiln-net apply");

  std::vector<std::string> argv = {"ssh",
                                   "-o",
                                   "UserKnownHostsFile=" + i.dir + "/known_hosts",
                                   "-o",
                                   "StrictHostKeyChecking=accept-new",
                                   "-l",
                                   login_of(c, i)};
  for (const auto& o : c.args.all("-o")) {
    argv.push_back("-o");
    argv.push_back(o);
  }
  if (c.args.has("--identity")) {
    argv.push_back("-i");
    argv.push_back(c.args.get_or("--identity", ""));
  }
  argv.push_back("--");
  argv.push_back(i.ip);
  const auto& rest = c.args.positional();
  argv.insert(argv.end(), rest.begin() + 1, rest.end());

  common::Fd fd(::open(ns.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0 || ::setns(fd.get(), CLONE_NEWNET) < 0)
    throw system_error("cannot enter " + ns + ": " + std::strerror(errno));
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  ::execvp("ssh", cargv.data());
  throw system_error(std::string("cannot run ssh: ") + std::strerror(errno));
}

}  // namespace

CommandTable ssh_commands() {
  return {
      {"ssh",
       "INSTANCE [-l|--login USER] [-i|--identity KEYFILE] [-o SSH_OPTION]... [--] [COMMAND...]",
       {{"-l|--login", kValue}, {"-i|--identity", kValue}, {"-o", kValue}},
       ssh},
  };
}

}  // namespace kiln::spawn::cli

// The Plumber: the order in which one pass plumbs the resources (the Reconciler, split by
// resource in reconciler.h), under the run directory's lock.
#include "kiln/net/plumber.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

#include "kiln/net/error.h"
#include "kiln/net/store.h"
#include "plumb/netns.h"
#include "plumb/reconciler.h"

namespace kiln::net {

std::string bridge_name(const Network& n) { return "brq" + n.id.substr(0, 11); }
std::string port_device_name(const Port& p) { return "tap" + p.id.substr(0, 11); }
std::string router_ns_name(const std::string& router_id) { return "qrouter-" + router_id; }
std::string dhcp_ns_name(const std::string& network_id) { return "qdhcp-" + network_id; }

void Reconciler::place() {
  auto router_port = [](const Port& p) {
    return p.device_owner == kOwnerRouterInterface || p.device_owner == kOwnerRouterGateway;
  };
  for (auto& p : snap_.ports)
    if (cfg_.host.empty() || p.binding_host_id.empty() || p.binding_host_id == cfg_.host)
      here_ports_.insert(p.id);
  for (auto& r : snap_.routers) {
    bool any = false, here = false;
    for (auto& p : snap_.ports)
      if (p.device_id == r.id && router_port(p)) {
        any = true;
        here |= here_ports_.count(p.id) > 0;
      }
    if (!any || here) here_routers_.insert(r.id);
  }
  std::set<std::string> with_ports;
  for (auto& p : snap_.ports) {
    with_ports.insert(p.network_id);
    if (router_port(p) && here_routers_.count(p.device_id)) here_ports_.insert(p.id);
    if (here_ports_.count(p.id)) here_nets_.insert(p.network_id);
  }
  for (auto& n : snap_.networks)
    if (!with_ports.count(n.id)) here_nets_.insert(n.id);
}

void Reconciler::run() {
  make_run_dirs();
  for (auto& n : snap_.networks)
    if (here_nets_.count(n.id))
      attempt("network " + label(n), [&] {
        int br = ensure_bridge(n);
        ensure_segment(n, br);
      });
  for (auto& p : snap_.ports) {
    if (!p.device_owner.empty() && p.device_owner.starts_with("network:")) continue;
    if (port_here(p)) attempt("port " + p.id, [&] { ensure_port(p); });
  }
  for (auto& n : snap_.networks)
    if (here_nets_.count(n.id)) attempt("DHCP of network " + label(n), [&] { ensure_dhcp(n); });
  for (auto& r : snap_.routers)
    if (here_routers_.count(r.id))
      attempt("router " + (r.name.empty() ? r.id : r.name), [&] { ensure_router(r); });
  attempt("security groups", [&] { ensure_security_groups(); });
  attempt("cleanup", [&] { remove_stale(); });
}

bool Reconciler::run_ports(const std::vector<std::string>& ids) {
  std::vector<const Port*> ports;
  std::vector<std::string> gone;
  for (auto& id : ids) {
    const Port* p = nullptr;
    for (auto& x : snap_.ports)
      if (x.id == id) p = &x;
    if (!p || !port_here(*p)) {  // deleted, or bound to another host
      gone.push_back(id);
      continue;
    }
    if (!hlink(bridge_name(network_of(p->network_id)))) return false;
    ports.push_back(p);
  }
  make_run_dirs();
  for (auto& id : gone) attempt("port " + id, [&] { remove_port_device(id); });
  std::set<std::string> dhcp_nets;
  for (auto* p : ports) {
    dhcp_nets.insert(p->network_id);
    if (p->device_owner.starts_with("network:")) continue;  // plumbed with its owner
    attempt("port " + p->id, [&] { ensure_port(*p); });
  }
  // A deleted port's network is not known any more: every network's host file is checked
  // (a read and a comparison each; dnsmasq is only signalled where it changed).
  for (auto& n : snap_.networks)
    if (!gone.empty() || dhcp_nets.count(n.id))
      attempt("DHCP of network " + label(n), [&] { refresh_dhcp(n); });
  attempt("security groups", [&] { ensure_security_groups(); });
  return true;
}

namespace {

// An exclusive lock on the run directory's plumb.lock, released when the guard goes.
class PlumbLock {
 public:
  PlumbLock() {
    std::filesystem::create_directories(run_dir());
    std::string path = run_dir() + "/plumb.lock";
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) throw system_error("open " + path + ": " + std::strerror(errno));
    fd_ = Fd(fd);
    while (::flock(fd, LOCK_EX) < 0)
      if (errno != EINTR) throw system_error("lock " + path + ": " + std::strerror(errno));
  }

 private:
  Fd fd_;
};

}  // namespace

ApplyResult Plumber::apply(Store& store) {
  try {
    PlumbLock lock;
    return apply(store.snapshot());
  } catch (const std::exception& e) {
    return ApplyResult{{}, {e.what()}};
  }
}

ApplyResult Plumber::plumb_ports(Store& store, const std::vector<std::string>& port_ids) {
  ApplyResult res;
  try {
    PlumbLock lock;
    Snapshot snap = store.snapshot();
    if (!Reconciler(snap, config_, res, false).run_ports(port_ids))
      Reconciler(snap, config_, res, true).run();
  } catch (const std::exception& e) {
    res.errors.push_back(e.what());
  }
  return res;
}

ApplyResult Plumber::teardown() {
  try {
    PlumbLock lock;
    return apply(Snapshot{});
  } catch (const std::exception& e) {
    return ApplyResult{{}, {e.what()}};
  }
}

ApplyResult Plumber::apply(const Snapshot& snap) {
  ApplyResult res;
  try {
    Reconciler(snap, config_, res, true).run();
  } catch (const std::exception& e) {
    res.errors.push_back(e.what());
  }
  return res;
}

}  // namespace kiln::net

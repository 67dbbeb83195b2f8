// What the Reconciler's resources share: the host's links (one dump, or one lookup each),
// attaching to bridges, namespaces and the veth legs into them, the run directory's state files.
#include "plumb/reconciler.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "kiln/net/error.h"

namespace kiln::net {

std::string read_state_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

void write_state_file(const std::string& path, const std::string& data) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << data;
    if (!f) throw system_error("write " + tmp + " failed");
  }
  if (::rename(tmp.c_str(), path.c_str()) < 0)
    throw system_error("rename " + tmp + ": " + std::strerror(errno));
}

// The host end of a tap must not carry the guest's MAC, or the bridge would learn it there.
Mac tap_mac(const Mac& guest) {
  Mac m = guest;
  m.b[0] = 0xfe;
  return m;
}

Reconciler::Reconciler(const Snapshot& snap, const HostConfig& cfg, ApplyResult& res, bool full)
    : snap_(snap), cfg_(cfg), res_(res), full_(full) {
  if (full_)
    for (auto& l : host_.links()) links_[l.name] = l;
  for (auto& n : snap.networks) nets_[n.id] = &n;
  for (auto& s : snap.subnets) subnets_[s.id] = &s;
  ns_dir_ = run_dir() + "/netns";
  dhcp_dir_ = run_dir() + "/dhcp";
  metadata_dir_ = run_dir() + "/metadata";
  nat_dir_ = run_dir() + "/nat";
  place();
}

void Reconciler::make_run_dirs() {
  if (snap_.networks.empty()) return;
  std::filesystem::create_directories(ns_dir_);
  std::filesystem::create_directories(dhcp_dir_);
  std::filesystem::create_directories(nat_dir_);
  ::chmod(run_dir().c_str(), 0755);
  ::chmod(dhcp_dir_.c_str(), 0755);
}

void Reconciler::attempt(const std::string& what, const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    res_.errors.push_back(what + ": " + e.what());
  }
}

Link Reconciler::must_link(Rtnl& nl, const std::string& name) {
  auto l = nl.link(name);
  if (!l) throw system_error("device " + name + " vanished");
  return *l;
}

// Host links come from one dump at the start (or, for run_ports(), from one lookup each),
// refreshed one by one as they change.
std::optional<Link> Reconciler::hlink(const std::string& name) {
  auto it = links_.find(name);
  if (it != links_.end()) return it->second;
  if (full_) return std::nullopt;
  auto l = host_.link(name);
  if (l) links_[name] = *l;
  return l;
}

Link Reconciler::refresh(const std::string& name) {
  Link l = must_link(host_, name);
  links_[name] = l;
  return l;
}

void Reconciler::host_del(const Link& l) {
  host_.del_link(l.index);
  links_.erase(l.name);
}

void Reconciler::attach(Rtnl& nl, const Link& l, int master) {
  if (l.master != master) {
    nl.set_master(l.index, master);
    changed("attached " + l.name);
  }
  if (!l.up) nl.set_up(l.index);
}

Network Reconciler::network_of(const std::string& id) {
  auto it = nets_.find(id);
  if (it == nets_.end()) throw system_error("unknown network " + id);
  return *it->second;
}

int Reconciler::bridge_of(const std::string& network_id) {
  auto l = hlink(bridge_name(network_of(network_id)));
  if (!l) throw system_error("the bridge of network " + network_id + " is missing");
  return l->index;
}

// A veth with one end on a bridge here and the other in a namespace, with addresses.
void Reconciler::ensure_leg(Rtnl& ns_nl, int ns_fd, const std::string& host_name,
                            const std::string& ns_name, const Mac& mac, int br,
                            const std::vector<Address>& addrs) {
  wanted_.insert(host_name);
  auto h = hlink(host_name);
  auto inner = ns_nl.link(ns_name);
  if (h && (h->kind != "veth" || !inner)) {
    host_del(*h);
    h.reset();
  }
  if (!h) {
    if (inner) ns_nl.del_link(inner->index);
    host_.add_veth(host_name, tap_mac(mac), ns_name, mac, ns_fd);
    changed("created veth " + host_name + " / " + ns_name);
    h = refresh(host_name);
    inner = must_link(ns_nl, ns_name);
  }
  attach(host_, *h, br);
  if (!inner->up) ns_nl.set_up(inner->index);
  auto have = ns_nl.addresses(inner->index);
  for (auto& a : addrs) {
    bool present = false;
    for (auto& x : have) present |= x.ip == a.ip && x.prefix == a.prefix;
    if (!present) {
      ns_nl.add_address(inner->index, a.ip, a.prefix);
      changed("added " + a.ip.str() + "/" + std::to_string(a.prefix) + " to " + ns_name);
    }
  }
  for (auto& x : have) {
    bool keep = false;
    for (auto& a : addrs) keep |= x.ip == a.ip && x.prefix == a.prefix;
    if (!keep) ns_nl.del_address(inner->index, x.ip, x.prefix);
  }
}

// Creates the namespace if needed, brings lo up, and returns an rtnetlink socket in it.
std::unique_ptr<Rtnl> Reconciler::enter_ns(const std::string& name, Fd& fd) {
  std::string path = ns_dir_ + "/" + name;
  wanted_ns_.insert(name);
  if (!is_netns_file(path)) {
    create_named_netns(path);
    changed("created namespace " + name);
  }
  fd = open_netns(path);
  NetnsGuard in(fd.get());
  auto nl = std::make_unique<Rtnl>();
  if (auto lo = nl->link("lo"); lo && !lo->up) nl->set_up(lo->index);
  return nl;
}

std::vector<Address> Reconciler::addresses_of(const Port& p) {
  std::vector<Address> out;
  for (auto& f : p.fixed_ips)
    if (auto it = subnets_.find(f.subnet_id); it != subnets_.end())
      out.push_back({f.ip_address, it->second->cidr.prefix});
  return out;
}

}  // namespace kiln::net

// Reconciles the kernel with the model. Each object is plumbed on its own: a failure is
// reported and the rest still goes through.
#include "kiln/net/plumber.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "kiln/net/error.h"
#include "kiln/net/store.h"
#include "plumb/dnsmasq.h"
#include "plumb/netlink.h"
#include "plumb/netns.h"
#include "plumb/nft.h"
#include "plumb/sg_rules.h"

namespace kiln::net {

std::string bridge_name(const Network& n) { return "brq" + n.id.substr(0, 11); }
std::string port_device_name(const Port& p) { return "tap" + p.id.substr(0, 11); }
std::string router_ns_name(const std::string& router_id) { return "qrouter-" + router_id; }
std::string dhcp_ns_name(const std::string& network_id) { return "qdhcp-" + network_id; }

namespace {

bool is_hex_id_prefix(const std::string& s) {
  // The first 11 characters of a UUID: 8 hex digits, '-', 2 hex digits.
  if (s.size() != 11 || s[8] != '-') return false;
  for (size_t i = 0; i < s.size(); ++i)
    if (i != 8 && !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  return true;
}

bool is_number(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

// Devices of the host namespace that netplumb names (and so may remove).
bool is_ours(const std::string& name) {
  if ((name.starts_with("brq") || name.starts_with("tap")) && is_hex_id_prefix(name.substr(3)))
    return true;
  if (name.starts_with("vxlan-") && is_number(name.substr(6))) return true;
  if (name.starts_with("gre-") && is_number(name.substr(4))) return true;
  return false;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

void write_file(const std::string& path, const std::string& data) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << data;
    if (!f) throw system_error("write " + tmp + " failed");
  }
  if (::rename(tmp.c_str(), path.c_str()) < 0)
    throw system_error("rename " + tmp + ": " + std::strerror(errno));
}

Mac tap_mac(const Mac& guest) {
  // The host end of a tap must not carry the guest's MAC, or the bridge would learn it there.
  Mac m = guest;
  m.b[0] = 0xfe;
  return m;
}

class Reconciler {
 public:
  // `full`: the whole host is reconciled (run()), so one dump of the host's links is cheaper
  // than asking for each; otherwise (run_ports()) links are looked up one by one.
  Reconciler(const Snapshot& snap, const HostConfig& cfg, ApplyResult& res, bool full)
      : snap_(snap), cfg_(cfg), res_(res), full_(full) {
    if (full_)
      for (auto& l : host_.links()) links_[l.name] = l;
    for (auto& n : snap.networks) nets_[n.id] = &n;
    for (auto& s : snap.subnets) subnets_[s.id] = &s;
    ns_dir_ = run_dir() + "/netns";
    dhcp_dir_ = run_dir() + "/dhcp";
    nat_dir_ = run_dir() + "/nat";
  }

  void run() {
    make_run_dirs();
    for (auto& n : snap_.networks)
      attempt("network " + label(n), [&] {
        int br = ensure_bridge(n);
        ensure_segment(n, br);
      });
    for (auto& p : snap_.ports) {
      if (!p.device_owner.empty() && p.device_owner.starts_with("network:")) continue;
      attempt("port " + p.id, [&] { ensure_port(p); });
    }
    for (auto& n : snap_.networks) attempt("DHCP of network " + label(n), [&] { ensure_dhcp(n); });
    for (auto& r : snap_.routers)
      attempt("router " + (r.name.empty() ? r.id : r.name), [&] { ensure_router(r); });
    attempt("security groups", [&] { ensure_security_groups(); });
    attempt("cleanup", [&] { remove_stale(); });
  }

  // Plumbs what the given ports need and nothing else: the port's device, the DHCP host
  // entries of its network, and the security-group changes. A port no longer in the model
  // loses its device. Stale objects and drift elsewhere are left to run(). Returns false,
  // having done nothing, if a port's network is not plumbed (its bridge is missing: a new
  // network, or one whose bridge was deleted with everything on it): that takes run().
  bool run_ports(const std::vector<std::string>& ids) {
    std::vector<const Port*> ports;
    std::vector<std::string> gone;
    for (auto& id : ids) {
      const Port* p = nullptr;
      for (auto& x : snap_.ports)
        if (x.id == id) p = &x;
      if (!p) {
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

 private:
  void make_run_dirs() {
    if (snap_.networks.empty()) return;
    std::filesystem::create_directories(ns_dir_);
    std::filesystem::create_directories(dhcp_dir_);
    std::filesystem::create_directories(nat_dir_);
    ::chmod(run_dir().c_str(), 0755);
    ::chmod(dhcp_dir_.c_str(), 0755);
  }

  static std::string label(const Network& n) { return n.name.empty() ? n.id : n.name; }

  void attempt(const std::string& what, const std::function<void()>& fn) {
    try {
      fn();
    } catch (const std::exception& e) {
      res_.errors.push_back(what + ": " + e.what());
    }
  }

  void changed(const std::string& what) { res_.changes.push_back(what); }

  Link must_link(Rtnl& nl, const std::string& name) {
    auto l = nl.link(name);
    if (!l) throw system_error("device " + name + " vanished");
    return *l;
  }

  // Host links come from one dump at the start (or, for run_ports(), from one lookup each),
  // refreshed one by one as they change.
  std::optional<Link> hlink(const std::string& name) {
    auto it = links_.find(name);
    if (it != links_.end()) return it->second;
    if (full_) return std::nullopt;
    auto l = host_.link(name);
    if (l) links_[name] = *l;
    return l;
  }
  Link refresh(const std::string& name) {
    Link l = must_link(host_, name);
    links_[name] = l;
    return l;
  }
  void host_del(const Link& l) {
    host_.del_link(l.index);
    links_.erase(l.name);
  }

  void attach(Rtnl& nl, const Link& l, int master) {
    if (l.master != master) {
      nl.set_master(l.index, master);
      changed("attached " + l.name);
    }
    if (!l.up) nl.set_up(l.index);
  }

  Network network_of(const std::string& id) {
    auto it = nets_.find(id);
    if (it == nets_.end()) throw system_error("unknown network " + id);
    return *it->second;
  }

  int bridge_of(const std::string& network_id) {
    auto l = hlink(bridge_name(network_of(network_id)));
    if (!l) throw system_error("the bridge of network " + network_id + " is missing");
    return l->index;
  }

  int ensure_bridge(const Network& n) {
    std::string name = bridge_name(n);
    wanted_.insert(name);
    auto l = hlink(name);
    if (l && l->kind != "bridge") {
      host_del(*l);
      l.reset();
    }
    if (!l) {
      host_.add_bridge(name);
      changed("created bridge " + name);
      l = refresh(name);
    }
    if (!l->up) host_.set_up(l->index);
    return l->index;
  }

  std::string physical_interface(const std::string& physnet) {
    for (auto& [net, dev] : cfg_.physical_interface_mappings)
      if (net == physnet) return dev;
    return "";
  }

  void ensure_segment(const Network& n, int br) {
    std::optional<Ipv4> local;
    if (!cfg_.vxlan_local_ip.empty()) local = Ipv4::parse(cfg_.vxlan_local_ip);
    if (n.network_type == "vxlan") {
      std::string name = "vxlan-" + std::to_string(n.segmentation_id.value_or(0));
      wanted_.insert(name);
      auto l = hlink(name);
      if (l && (l->kind != "vxlan" || l->vxlan_id != n.segmentation_id.value_or(0))) {
        host_del(*l);
        l.reset();
      }
      if (!l) {
        host_.add_vxlan(name, n.segmentation_id.value_or(0), local);
        changed("created VXLAN device " + name);
        l = refresh(name);
      }
      std::set<Ipv4> want_peers, have_peers;
      for (auto& peer : cfg_.vxlan_peers)
        if (auto ip = Ipv4::parse(peer)) want_peers.insert(*ip);
      for (auto ip : host_.fdb_flood_entries(l->index)) have_peers.insert(ip);
      for (auto ip : want_peers)
        if (!have_peers.count(ip)) {
          host_.append_fdb_flood(l->index, ip);
          changed("flooding " + name + " to " + ip.str());
        }
      for (auto ip : have_peers)
        if (!want_peers.count(ip)) {
          host_.del_fdb_flood(l->index, ip);
          changed("stopped flooding " + name + " to " + ip.str());
        }
      attach(host_, *l, br);
    } else if (n.network_type == "gre") {
      std::string name = "gre-" + std::to_string(n.segmentation_id.value_or(0));
      wanted_.insert(name);
      auto l = hlink(name);
      if (!l) {
        std::optional<Ipv4> remote;
        if (!cfg_.vxlan_peers.empty()) remote = Ipv4::parse(cfg_.vxlan_peers[0]);
        host_.add_gretap(name, n.segmentation_id.value_or(0), local, remote);
        changed("created GRE device " + name);
        l = refresh(name);
      }
      attach(host_, *l, br);
    } else {
      std::string dev = physical_interface(n.physical_network);
      if (dev.empty()) return;  // no uplink: the network stays local to this host
      auto phys = hlink(dev);
      if (!phys)
        throw system_error("interface " + dev + " of physical network " + n.physical_network +
                           " does not exist");
      if (n.network_type == "flat") {
        wanted_.insert(dev);
        attach(host_, *phys, br);
        return;
      }
      std::string name = dev.substr(0, 10) + "." + std::to_string(n.segmentation_id.value_or(0));
      wanted_.insert(name);
      auto l = hlink(name);
      if (!l) {
        if (!phys->up) host_.set_up(phys->index);
        host_.add_vlan(name, phys->index, static_cast<uint16_t>(n.segmentation_id.value_or(0)));
        changed("created VLAN device " + name);
        l = refresh(name);
      }
      attach(host_, *l, br);
    }
  }

  void ensure_port(const Port& p) {
    int br = bridge_of(p.network_id);
    std::string name = port_device_name(p);
    wanted_.insert(name);
    auto l = hlink(name);
    std::string want_kind = p.vif_type == "veth" ? "veth" : "tun";
    if (l && l->kind != want_kind) {
      host_del(*l);
      l.reset();
    }
    if (!l) {
      if (p.vif_type == "veth") {
        Fd ns = open_netns(p.binding_netns);
        host_.add_veth(name, tap_mac(p.mac_address), p.binding_ifname, p.mac_address, ns.get());
        NetnsGuard in(ns.get());
        Rtnl guest;
        if (auto g = guest.link(p.binding_ifname)) guest.set_up(g->index);
      } else {
        create_persistent_tap(name);
        l = must_link(host_, name);
        host_.set_mac(l->index, tap_mac(p.mac_address));
      }
      changed("created " + p.vif_type + " " + name);
      l = refresh(name);
    }
    attach(host_, *l, br);
  }

  void remove_port_device(const std::string& port_id) {
    std::string name = "tap" + port_id.substr(0, 11);
    if (auto l = hlink(name); l && is_ours(name)) {
      host_del(*l);
      changed("removed " + name);
    }
  }

  // A veth with one end on a bridge here and the other in a namespace, with addresses.
  void ensure_leg(Rtnl& ns_nl, int ns_fd, const std::string& host_name, const std::string& ns_name,
                  const Mac& mac, int br, const std::vector<Address>& addrs) {
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
  std::unique_ptr<Rtnl> enter_ns(const std::string& name, Fd& fd) {
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

  std::vector<Address> addresses_of(const Port& p) {
    std::vector<Address> out;
    for (auto& f : p.fixed_ips)
      if (auto it = subnets_.find(f.subnet_id); it != subnets_.end())
        out.push_back({f.ip_address, it->second->cidr.prefix});
    return out;
  }

  const Port* dhcp_port(const Network& n) {
    const Port* dhcp = nullptr;
    for (auto& p : snap_.ports)
      if (p.network_id == n.id && p.device_owner == kOwnerDhcp) dhcp = &p;
    if (!dhcp || dhcp->fixed_ips.empty()) return nullptr;
    return dhcp;
  }

  // One dnsmasq per network (as Neutron's DHCP agent runs it), with a static range per DHCP
  // subnet, tagged with the subnet's id so that each subnet gets its own options; see
  // docs/netplumb.md for why not one per subnet.
  DnsmasqConfig dhcp_config(const Network& n, const Port& dhcp) {
    DnsmasqConfig c;
    c.binary = cfg_.dnsmasq;
    c.dir = dhcp_dir_ + "/" + n.id;
    c.netns_path = ns_dir_ + "/" + dhcp_ns_name(n.id);
    c.interface = "ns-" + dhcp.id.substr(0, 11);
    std::string hosts, opts;
    std::set<std::string> served;
    for (auto& s : snap_.subnets) {
      if (s.network_id != n.id || !s.enable_dhcp) continue;
      std::string t = "subnet-" + s.id;
      served.insert(s.id);
      c.ranges.push_back("set:" + t + "," + s.cidr.network.str() + ",static," +
                         s.cidr.netmask().str() + ",86400s");
      opts += "tag:" + t + ",option:router" +
              (s.gateway_ip ? "," + s.gateway_ip->str() : std::string()) + "\n";
      if (!s.dns_nameservers.empty()) {
        opts += "tag:" + t + ",option:dns-server";
        for (auto& d : s.dns_nameservers) opts += "," + d.str();
        opts += "\n";
      }
      if (n.network_type == "vxlan") opts += "tag:" + t + ",option:mtu,1450\n";
    }
    for (auto& p : snap_.ports) {
      if (p.network_id != n.id || p.device_owner == kOwnerDhcp) continue;
      for (auto& f : p.fixed_ips) {
        if (!served.count(f.subnet_id)) continue;
        std::string host = "host-" + f.ip_address.str();
        for (char& ch : host)
          if (ch == '.') ch = '-';
        hosts += p.mac_address.str() + "," + host + "," + f.ip_address.str() + "\n";
      }
    }
    c.hosts = hosts;
    c.opts = opts;
    return c;
  }

  void ensure_dhcp(const Network& n) {
    const Port* dhcp = dhcp_port(n);
    if (!dhcp) return;
    Fd fd;
    std::string ns = dhcp_ns_name(n.id);
    auto nl = enter_ns(ns, fd);
    DnsmasqConfig c = dhcp_config(n, *dhcp);
    ensure_leg(*nl, fd.get(), port_device_name(*dhcp), c.interface, dhcp->mac_address,
               bridge_of(n.id), addresses_of(*dhcp));
    wanted_dhcp_.insert(n.id);
    if (c.ranges.empty()) return;
    ensure_dnsmasq(c, res_.changes);
  }

  // For run_ports(): new host and option files and a SIGHUP when the network's dnsmasq runs as
  // it should; the whole of ensure_dhcp() when it does not (not started yet, killed, or its
  // subnets changed).
  void refresh_dhcp(const Network& n) {
    const Port* dhcp = dhcp_port(n);
    if (!dhcp) return;
    DnsmasqConfig c = dhcp_config(n, *dhcp);
    if (!c.ranges.empty() && dnsmasq_current(c))
      ensure_dnsmasq(c, res_.changes);
    else
      ensure_dhcp(n);
  }

  void ensure_router(const Router& r) {
    Fd fd;
    std::string ns = router_ns_name(r.id);
    auto nl = enter_ns(ns, fd);
    {
      NetnsGuard in(fd.get());
      write_sysctl("net/ipv4/ip_forward", "1");
    }
    std::set<std::string> legs;
    for (auto& p : snap_.ports) {
      if (p.device_id != r.id) continue;
      bool gw = p.device_owner == kOwnerRouterGateway;
      if (!gw && p.device_owner != kOwnerRouterInterface) continue;
      std::string inner = (gw ? "qg-" : "qr-") + p.id.substr(0, 11);
      legs.insert(inner);
      auto addrs = addresses_of(p);
      if (gw)
        for (auto& f : snap_.floating_ips)
          if (f.router_id == r.id && f.fixed_ip_address)
            addrs.push_back({f.floating_ip_address, 32});
      ensure_leg(*nl, fd.get(), port_device_name(p), inner, p.mac_address, bridge_of(p.network_id),
                 addrs);
    }
    // The default route leads to the external subnet's gateway.
    std::optional<Ipv4> gw_ip;
    for (auto& p : snap_.ports)
      if (p.id == r.gw_port_id && !p.fixed_ips.empty())
        if (auto it = subnets_.find(p.fixed_ips[0].subnet_id); it != subnets_.end())
          gw_ip = it->second->gateway_ip;
    auto have = nl->default_gateway();
    if (gw_ip && have != gw_ip) {
      nl->replace_default_route(*gw_ip);
      changed("default route of " + ns + " via " + gw_ip->str());
    } else if (!gw_ip && have) {
      nl->del_default_route();
    }
    for (auto& l : nl->links())
      if ((l.name.starts_with("qr-") || l.name.starts_with("qg-")) && !legs.count(l.name)) {
        nl->del_link(l.index);
        changed("removed " + l.name + " from " + ns);
      }
    // The NAT table is small: reloaded whole, unless it is what this host applied last and
    // nothing touched the namespace's nftables since.
    std::string script =
        "table ip kiln_nat {}\ndelete table ip kiln_nat\n" + router_nat_ruleset(snap_, r);
    std::string cache = nat_dir_ + "/" + r.id;
    wanted_nat_.insert(r.id);
    NetnsGuard in(fd.get());
    std::string stamp = std::to_string(nft_generation()) + "\n";
    if (read_file(cache) == stamp + script) return;
    ::unlink(cache.c_str());
    run_nft(script);
    write_file(cache, std::to_string(nft_generation()) + "\n" + script);
    changed("loaded NAT rules of " + ns);
  }

  void ensure_security_groups() {
    SgState want = security_group_state(snap_);
    std::string cache = run_dir() + "/security-groups";
    if (want.ports.empty()) {
      std::string tables = nft_output("list tables");
      if (tables.find("table inet kiln_sg") != std::string::npos ||
          tables.find("table bridge kiln_sg") != std::string::npos) {
        run_nft(sg_full_script(want));
        changed("removed security group tables");
      }
      ::unlink(cache.c_str());
      return;
    }
    try {
      write_sysctl("net/bridge/bridge-nf-call-iptables", "1");
    } catch (const Error&) {
      throw system_error("security groups need br_netfilter (net.bridge.bridge-nf-call-iptables)");
    }
    // The cache holds the nftables generation after our last change, then the state we
    // applied. It is trusted only if no one changed this namespace's nftables since.
    std::string text = read_file(cache);
    size_t nl = text.find('\n');
    SgApplied have;
    bool trusted = nl != std::string::npos &&
                   text.substr(0, nl) == std::to_string(nft_generation()) &&
                   sg_deserialize(text.substr(nl + 1), have);
    if (trusted && have == sg_applied(want)) return;
    ::unlink(cache.c_str());  // until the kernel matches `want` again
    bool done = false;
    if (trusted) {
      try {
        run_nft(sg_incremental_script(have, want));
        done = true;
        changed("updated security group rules");
      } catch (const Error&) {
        // The tables are not what the cache says: reload them whole below.
      }
    }
    if (!done) {
      run_nft(sg_full_script(want));
      changed("loaded security group rules");
    }
    write_file(cache, std::to_string(nft_generation()) + "\n" + sg_serialize(sg_applied(want)));
  }

  void remove_stale() {
    // Devices that are not ours on our bridges (an uplink whose mapping went) are let go.
    std::map<int, std::string> bridges;
    auto links = host_.links();
    for (auto& l : links)
      if (l.kind == "bridge" && is_ours(l.name)) bridges[l.index] = l.name;
    for (auto& l : links)
      if (bridges.count(l.master) && !is_ours(l.name) && !wanted_.count(l.name)) {
        host_.set_master(l.index, 0);
        changed("detached " + l.name + " from " + bridges[l.master]);
      }
    if (DIR* d = ::opendir(nat_dir_.c_str())) {
      std::vector<std::string> stale;
      while (dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (n != "." && n != ".." && !wanted_nat_.count(n)) stale.push_back(n);
      }
      ::closedir(d);
      for (auto& n : stale) ::unlink((nat_dir_ + "/" + n).c_str());
    }
    for (auto& l : host_.links())
      if (is_ours(l.name) && !wanted_.count(l.name)) {
        host_.del_link(l.index);
        changed("removed " + l.name);
      }
    if (DIR* d = ::opendir(dhcp_dir_.c_str())) {
      std::vector<std::string> stale;
      while (dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (n != "." && n != ".." && !wanted_dhcp_.count(n)) stale.push_back(n);
      }
      ::closedir(d);
      for (auto& n : stale) {
        stop_dnsmasq(dhcp_dir_ + "/" + n);
        changed("stopped dnsmasq of network " + n);
      }
    }
    if (DIR* d = ::opendir(ns_dir_.c_str())) {
      std::vector<std::string> stale;
      while (dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        if ((n.starts_with("qrouter-") || n.starts_with("qdhcp-")) && !wanted_ns_.count(n))
          stale.push_back(n);
      }
      ::closedir(d);
      for (auto& n : stale) {
        delete_named_netns(ns_dir_ + "/" + n);
        changed("removed namespace " + n);
      }
    }
  }

  const Snapshot& snap_;
  const HostConfig& cfg_;
  ApplyResult& res_;
  bool full_;
  Rtnl host_;
  std::map<std::string, const Network*> nets_;
  std::map<std::string, const Subnet*> subnets_;
  std::string ns_dir_, dhcp_dir_;
  std::set<std::string> wanted_, wanted_ns_, wanted_dhcp_, wanted_nat_;
  std::map<std::string, Link> links_;
  std::string nat_dir_;
};

}  // namespace

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

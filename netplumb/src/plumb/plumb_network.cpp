// Networks on the host: a bridge per network, its segment device (VXLAN, GRE, VLAN or a flat
// uplink), and a tap or veth per port on it.
#include <set>

#include "kiln/net/error.h"
#include "plumb/reconciler.h"

namespace kiln::net {

int Reconciler::ensure_bridge(const Network& n) {
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

std::string Reconciler::physical_interface(const std::string& physnet) {
  for (auto& [net, dev] : cfg_.physical_interface_mappings)
    if (net == physnet) return dev;
  return "";
}

void Reconciler::ensure_segment(const Network& n, int br) {
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
    ensure_gre(n, br, local);
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

// GRE is point to point: one gretap per peer (gre-SEG-K, K the peer's place in the sorted list
// of peers), all on the network's bridge, so that broadcasts reach every peer (head-end
// replication, as VXLAN's flood entries do). The tunnel ports are isolated from each other: a
// frame that came in from one peer is not sent on to the others, which in a full mesh would
// loop. Without peers, one gretap with no remote (gre-SEG) keeps the network local.
void Reconciler::ensure_gre(const Network& n, int br, std::optional<Ipv4> local) {
  const uint32_t key = n.segmentation_id.value_or(0);
  std::set<Ipv4> peer_set;
  for (auto& peer : cfg_.vxlan_peers)
    if (auto ip = Ipv4::parse(peer)) peer_set.insert(*ip);
  std::vector<std::optional<Ipv4>> remotes(peer_set.begin(), peer_set.end());
  const bool mesh = !remotes.empty();
  if (!mesh) remotes.push_back(std::nullopt);
  for (size_t k = 0; k < remotes.size(); ++k) {
    std::string name = "gre-";
    name += std::to_string(key);
    if (mesh) {
      name += '-';
      name += std::to_string(k);
    }
    if (name.size() > kMaxIfname)
      throw invalid("GRE segment " + std::to_string(key) + " with " +
                    std::to_string(remotes.size()) + " peers: device name " + name +
                    " is longer than " + std::to_string(kMaxIfname) + " characters");
    wanted_.insert(name);
    auto l = hlink(name);
    if (l && (l->kind != "gretap" || l->gre_key != key || l->gre_remote != remotes[k])) {
      host_del(*l);
      l.reset();
    }
    if (!l) {
      host_.add_gretap(name, key, local, remotes[k]);
      changed("created GRE device " + name +
              (remotes[k] ? " to " + remotes[k]->str() : std::string(" (no peers)")));
      l = refresh(name);
    }
    if (l->mtu != network_mtu(n)) host_.set_mtu(l->index, network_mtu(n));
    attach(host_, *l, br);
    if (mesh && !l->bridge_port_isolated) host_.set_bridge_port_isolated(l->index);
  }
}

void Reconciler::ensure_port(const Port& p) {
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

void Reconciler::remove_port_device(const std::string& port_id) {
  std::string name = "tap" + port_id.substr(0, 11);
  if (auto l = hlink(name); l && is_ours(name)) {
    host_del(*l);
    changed("removed " + name);
  }
}

}  // namespace kiln::net

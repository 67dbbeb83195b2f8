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

// The Reconciler: one pass that makes the kernel match a Snapshot. Each object is plumbed on its
// own: a failure is reported in the ApplyResult and the rest still goes through. Split by
// resource, one file each:
//   plumber.cpp          the order of a pass (run, run_ports) and the Plumber entry points;
//   reconciler.cpp       what the resources share: the host's links, namespaces, veth legs;
//   plumb_network.cpp    bridges, segment devices (VXLAN, GRE, VLAN, flat uplinks), port devices;
//   plumb_dhcp.cpp       the DHCP namespace, dnsmasq and metadata proxy of each network;
//   plumb_router.cpp     router namespaces: legs, default route, NAT and floating IPs, the
//                        router's metadata proxy;
//   plumb_secgroup.cpp   the security-group tables;
//   plumb_cleanup.cpp    what the model no longer has.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "kiln/net/plumber.h"
#include "plumb/dnsmasq.h"
#include "plumb/metadata_proxy.h"
#include "plumb/netlink.h"
#include "plumb/netns.h"

namespace kiln::net {

// The longest network device name (IFNAMSIZ less the terminating NUL).
inline constexpr size_t kMaxIfname = 15;

// Devices of the host namespace that netplumb names (and so may remove).
bool is_ours(const std::string& name);
// The host end of a tap or veth: the guest's MAC with another first byte.
Mac tap_mac(const Mac& guest);
// A state file of the run directory: "" if it cannot be read; replaced atomically.
std::string read_state_file(const std::string& path);
void write_state_file(const std::string& path, const std::string& data);

class Reconciler {
 public:
  // `full`: the whole host is reconciled (run()), so one dump of the host's links is cheaper
  // than asking for each; otherwise (run_ports()) links are looked up one by one.
  Reconciler(const Snapshot& snap, const HostConfig& cfg, ApplyResult& res, bool full);

  // Everything: networks, ports, DHCP, routers, security groups, then what is stale.
  void run();
  // Plumbs what the given ports need and nothing else: the port's device, the DHCP host
  // entries of its network, and the security-group changes. A port no longer in the model
  // loses its device. Stale objects and drift elsewhere are left to run(). Returns false,
  // having done nothing, if a port's network is not plumbed (its bridge is missing: a new
  // network, or one whose bridge was deleted with everything on it): that takes run().
  bool run_ports(const std::vector<std::string>& ids);

 private:
  // reconciler.cpp
  void make_run_dirs();
  static std::string label(const Network& n) { return n.name.empty() ? n.id : n.name; }
  void attempt(const std::string& what, const std::function<void()>& fn);
  void changed(const std::string& what) { res_.changes.push_back(what); }
  Link must_link(Rtnl& nl, const std::string& name);
  std::optional<Link> hlink(const std::string& name);
  Link refresh(const std::string& name);
  void host_del(const Link& l);
  void attach(Rtnl& nl, const Link& l, int master);
  Network network_of(const std::string& id);
  int bridge_of(const std::string& network_id);
  void ensure_leg(Rtnl& ns_nl, int ns_fd, const std::string& host_name, const std::string& ns_name,
                  const Mac& mac, int br, const std::vector<Address>& addrs);
  std::unique_ptr<Rtnl> enter_ns(const std::string& name, Fd& fd);
  std::vector<Address> addresses_of(const Port& p);

  // plumb_network.cpp
  int ensure_bridge(const Network& n);
  std::string physical_interface(const std::string& physnet);
  void ensure_segment(const Network& n, int br);
  void ensure_gre(const Network& n, int br, std::optional<Ipv4> local);
  void ensure_port(const Port& p);
  void remove_port_device(const std::string& port_id);

  // plumb_dhcp.cpp
  const Port* dhcp_port(const Network& n);
  DnsmasqConfig dhcp_config(const Network& n, const Port& dhcp);
  void ensure_dhcp(const Network& n);
  void refresh_dhcp(const Network& n);

  // plumb_router.cpp
  void ensure_router(const Router& r);
  void ensure_router_metadata(Rtnl& nl, const Router& r, bool wanted);

  // Placement (plumber.cpp): what of the model this host plumbs. A port bound to this host or
  // to none (binding:host_id); a router with a port here or with no ports (and then all its
  // legs); a network with a port here, a leg of a router here, or no ports at all. DHCP goes
  // with the network's DHCP port. Everything when the host has no name (cfg_.host empty).
  void place();
  bool port_here(const Port& p) const { return here_ports_.count(p.id) > 0; }

  // plumb_secgroup.cpp
  void ensure_security_groups();

  // plumb_cleanup.cpp
  void remove_stale();

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
  std::string metadata_dir_;
  std::set<std::string> wanted_metadata_;
  std::set<std::string> here_ports_, here_nets_, here_routers_;
};

}  // namespace kiln::net

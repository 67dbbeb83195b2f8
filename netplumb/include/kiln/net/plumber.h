// Linux plumbing for the netplumb model: reconciles the kernel with a Snapshot.
//
// Host namespace (the one the process runs in): a bridge brq<net> per network with its segment
// device (vxlan-<vni>, <phys>.<vlan>, or the mapped physical interface for flat), a tap<port>
// per port (a tap, or a veth whose far end is moved into the port's namespace), and the
// security-group tables "bridge kiln_sg" and "inet kiln_sg".
// Namespaces under $KILN_RUN_DIR/netns: qdhcp-<net> with dnsmasq, qrouter-<router> with one
// qr- leg per subnet, a qg- leg on the external network, and table "ip kiln_nat".
#pragma once

#include <string>
#include <vector>

#include "kiln/net/model.h"
#include "kiln/net/store.h"

namespace kiln::net {

struct HostConfig {
  // This host's name: only ports bound to it (binding:host_id) or to no host are plumbed here,
  // and the networks, DHCP and routers they need (see Placement in reconciler.h). Empty: every
  // port.
  std::string host;
  std::string vxlan_local_ip;            // empty: the kernel picks
  std::vector<std::string> vxlan_peers;  // head-end replication targets
  std::vector<std::pair<std::string, std::string>> physical_interface_mappings;  // physnet, dev
  std::string dnsmasq = "/usr/sbin/dnsmasq";
  // The metadata service's socket (setting metadata_socket): when set, every network with a
  // DHCP port gets a metadata proxy (binary: KILN_METADATA_PROXY) on 169.254.169.254:80 in
  // its DHCP namespace, and its DHCP subnets a route to it (option 121).
  std::string metadata_socket;
  std::string metadata_proxy = "/usr/sbin/kiln-net-metadata-proxy";
};

struct ApplyResult {
  std::vector<std::string> changes;  // what was created, repaired or removed
  std::vector<std::string> errors;   // what could not be plumbed; the rest still was
};

// Kernel device names derived from ids (at most 15 characters).
std::string bridge_name(const Network& n);
std::string port_device_name(const Port& p);
std::string router_ns_name(const std::string& router_id);
std::string dhcp_ns_name(const std::string& network_id);

class Plumber {
 public:
  explicit Plumber(HostConfig config) : config_(std::move(config)) {}

  // Makes the kernel match the snapshot: creates what is missing, repairs what drifted, and
  // removes netplumb's devices, namespaces, dnsmasq processes and rules that the model no
  // longer has. Idempotent.
  //
  // nftables rulesets are changed incrementally from what this host applied last (kept in
  // $KILN_RUN_DIR with the namespace's nftables generation id); if anything else changed the
  // namespace's ruleset since, they are reloaded whole.
  ApplyResult apply(const Snapshot& snap);

  // Applies the store's current model. Holds $KILN_RUN_DIR/plumb.lock while it reads the
  // model and plumbs it, so that concurrent kiln-net processes never plumb a stale model
  // (which would remove a port that another process just created).
  ApplyResult apply(Store& store);

  // Plumbs only what the given ports need, for ports just created, updated or deleted: the
  // port's device, its network's DHCP host entries (files rewritten, dnsmasq reloaded with
  // SIGHUP; started if it does not run), and the security-group changes (one nftables
  // transaction: the port's chains and map elements, its address in remote-group sets). A port
  // id that is no longer in the model has its device removed. Nothing else is compared or
  // repaired: stale devices, routers and floating IPs (deleting a port with a floating IP
  // changes its router's NAT) and drift elsewhere are apply()'s job. If a port's network is not
  // plumbed yet (no bridge), this is apply(store). Holds plumb.lock like apply(Store&); never
  // throws.
  ApplyResult plumb_ports(Store& store, const std::vector<std::string>& port_ids);

  // Removes everything netplumb plumbed (same as applying an empty model).
  ApplyResult teardown();

 private:
  HostConfig config_;
};

// The nftables scripts, exposed for unit tests.
std::string security_group_ruleset(const Snapshot& snap);
std::string router_nat_ruleset(const Snapshot& snap, const Router& r);

}  // namespace kiln::net

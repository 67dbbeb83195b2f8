// rtnetlink through libmnl: links, addresses, routes and bridge FDB entries of the network
// namespace that was current when the Rtnl object was made.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kiln/net/addr.h"

struct mnl_socket;
struct nlmsghdr;

namespace kiln::net {

struct Link {
  int index = 0;
  std::string name, kind;  // kind: "bridge", "vxlan", "veth", "tun", ... ("" for plain devices)
  int master = 0;
  bool up = false;
  Mac mac;
  uint32_t vxlan_id = 0;
  uint32_t mtu = 0;
  // gretap devices: the key (input side) and the remote end, if any.
  uint32_t gre_key = 0;
  std::optional<Ipv4> gre_remote;
  bool bridge_port_isolated = false;  // a bridge port with the "isolated" flag
};

struct Address {
  Ipv4 ip;
  int prefix = 0;
};

class Rtnl {
 public:
  Rtnl();
  ~Rtnl();
  Rtnl(const Rtnl&) = delete;
  Rtnl& operator=(const Rtnl&) = delete;

  std::vector<Link> links();
  std::optional<Link> link(const std::string& name);

  void add_bridge(const std::string& name);
  void add_vxlan(const std::string& name, uint32_t vni, std::optional<Ipv4> local);
  void add_vlan(const std::string& name, int parent_index, uint16_t vid);
  void add_gretap(const std::string& name, uint32_t key, std::optional<Ipv4> local,
                  std::optional<Ipv4> remote);
  // A veth pair; the peer is created directly in the namespace `peer_netns_fd` (if >= 0).
  void add_veth(const std::string& name, const std::optional<Mac>& mac,
                const std::string& peer_name, const std::optional<Mac>& peer_mac,
                int peer_netns_fd);
  void del_link(int index);

  void set_master(int index, int master_index);
  void set_up(int index);
  void set_mac(int index, const Mac& mac);
  void set_mtu(int index, uint32_t mtu);
  // Marks a bridge port isolated: it forwards only to ports that are not isolated (split
  // horizon between tunnel ports, so a full mesh of tunnels does not loop).
  void set_bridge_port_isolated(int index);

  std::vector<Address> addresses(int index);
  void add_address(int index, Ipv4 ip, int prefix);
  void del_address(int index, Ipv4 ip, int prefix);
  std::optional<Ipv4> default_gateway();
  void replace_default_route(Ipv4 gateway);
  void del_default_route();
  // An all-zeros FDB entry on a VXLAN device: flood unknown and broadcast frames to `dst`.
  void append_fdb_flood(int index, Ipv4 dst);
  void del_fdb_flood(int index, Ipv4 dst);
  // The destinations of the all-zeros FDB entries of a VXLAN device.
  std::vector<Ipv4> fdb_flood_entries(int index);

 private:
  // Sends one request and waits for its ack; returns 0 or -errno.
  int request(nlmsghdr* nlh);
  void check(int rc, const std::string& what);
  mnl_socket* nl_ = nullptr;
  uint32_t portid_ = 0;
  uint32_t seq_ = 0;
};

// A tap device that outlives this process (TUNSETPERSIST); no-op if it exists already as a tap.
void create_persistent_tap(const std::string& name);

}  // namespace kiln::net

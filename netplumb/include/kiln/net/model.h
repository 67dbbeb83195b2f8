// The netplumb model: Neutron's objects, as plain structs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kiln/net/addr.h"

namespace kiln::net {

// Device owners of ports that netplumb itself creates.
inline constexpr const char* kOwnerDhcp = "network:dhcp";
inline constexpr const char* kOwnerRouterInterface = "network:router_interface";
inline constexpr const char* kOwnerRouterGateway = "network:router_gateway";
inline constexpr const char* kOwnerFloatingIp = "network:floatingip";

struct Network {
  std::string id, name, tenant_id;
  std::string network_type;      // flat, vlan, vxlan, gre
  std::string physical_network;  // flat and vlan only
  std::optional<uint32_t> segmentation_id;
  bool router_external = false;
  bool admin_state_up = true;
  bool shared = false;
};

// The MTU a network offers its ports, as Neutron computes it from a 1500-byte physical
// network: VXLAN loses 50 bytes (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14), GRE 42
// (outer IPv4 20, GRE with a key 8, inner Ethernet 14); flat and VLAN carry the full 1500.
inline constexpr uint32_t kPhysicalMtu = 1500;
inline constexpr uint32_t kVxlanOverhead = 50;
inline constexpr uint32_t kGreOverhead = 42;
inline uint32_t network_mtu(const Network& n) {
  if (n.network_type == "vxlan") return kPhysicalMtu - kVxlanOverhead;
  if (n.network_type == "gre") return kPhysicalMtu - kGreOverhead;
  return kPhysicalMtu;
}

struct Subnet {
  std::string id, name, tenant_id, network_id;
  Cidr cidr;
  std::optional<Ipv4> gateway_ip;
  std::vector<IpRange> allocation_pools;
  std::vector<Ipv4> dns_nameservers;
  bool enable_dhcp = true;
  int ip_version = 4;
};

struct FixedIp {
  std::string subnet_id;
  Ipv4 ip_address;
};

struct Port {
  std::string id, name, tenant_id, network_id;
  Mac mac_address;
  std::vector<FixedIp> fixed_ips;
  std::vector<std::string> security_groups;  // ids
  std::string device_owner, device_id;
  // Binding: "tap" (a tap device named tap<id>) or "veth" (far end moved into binding_netns).
  std::string vif_type = "tap";
  std::string binding_netns;   // path or name under /run/netns, veth only
  std::string binding_ifname;  // name of the far end, veth only
  // binding:host_id: the host (common::this_host_name) whose kiln-net plumbs the port; empty:
  // every host that applies the model (one host, as before hosts were known).
  std::string binding_host_id;
  bool port_security_enabled = true;
  bool admin_state_up = true;
  uint32_t tag = 0;  // small per-store number used to tag the port's packets in nftables
};

struct Router {
  std::string id, name, tenant_id;
  std::string gw_network_id;  // empty without an external gateway
  std::string gw_port_id;
  bool enable_snat = true;
  bool admin_state_up = true;
};

struct FloatingIp {
  std::string id, tenant_id, floating_network_id, floating_port_id;
  Ipv4 floating_ip_address;
  std::string port_id;  // empty when not associated
  std::optional<Ipv4> fixed_ip_address;
  std::string router_id;
};

struct SecurityGroup {
  std::string id, name, tenant_id, description;
};

struct SecurityGroupRule {
  std::string id, security_group_id, tenant_id;
  std::string direction = "ingress";  // ingress or egress
  std::string ethertype = "IPv4";     // IPv4 or IPv6
  std::string protocol;               // empty (any), tcp, udp, icmp, or a number 0-255
  std::optional<int> port_range_min, port_range_max;  // icmp: type and code
  std::string remote_ip_prefix;                       // CIDR, or empty
  std::string remote_group_id;                        // or empty
};

// A host's kiln-net, as Neutron's agents table has its L2 agents: recorded by `kiln-net apply`
// (and agent-register) with the host's tunnel address, which the other hosts flood VXLAN and
// GRE traffic to when their vxlan_peers is not set.
inline constexpr const char* kAgentType = "Linux bridge agent";
inline constexpr const char* kAgentBinary = "kiln-net";
// An agent is alive while its last report is at most this old (Neutron's agent_down_time).
inline constexpr int64_t kAgentDownTime = 75;

struct Agent {
  std::string id, host;
  std::string agent_type = kAgentType, binary = kAgentBinary;
  std::string tunnel_ip;  // vxlan_local_ip of the host when it reported; empty: none
  bool admin_state_up = true;
  int64_t created_at = 0, heartbeat_at = 0;  // Unix seconds
};

// Everything at once: what the plumbing reconciles against.
struct Snapshot {
  std::vector<Network> networks;
  std::vector<Subnet> subnets;
  std::vector<Port> ports;
  std::vector<Router> routers;
  std::vector<FloatingIp> floating_ips;
  std::vector<SecurityGroup> security_groups;
  std::vector<SecurityGroupRule> security_group_rules;
};

}  // namespace kiln::net

// The netplumb API: Neutron's operations on the model, with validation and IPAM.
// Every change runs in one store transaction; the plumbing is separate (see plumber.h).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "kiln/net/model.h"
#include "kiln/net/plumber.h"
#include "kiln/net/store.h"

namespace kiln::net {

inline constexpr const char* kDefaultTenant = "admin";
inline constexpr const char* kDefaultPhysnet = "physnet1";

struct NetworkSpec {
  std::string name, tenant_id = kDefaultTenant;
  std::string network_type;  // empty: vxlan for tenant networks, flat for external ones
  std::string physical_network;
  std::optional<uint32_t> segmentation_id;  // empty: allocated (vxlan, gre)
  bool router_external = false;
  bool shared = false;
  bool admin_state_up = true;
};

struct SubnetSpec {
  std::string name, tenant_id = kDefaultTenant;
  std::string network;  // name or id
  std::string cidr;
  std::optional<std::string> gateway_ip;      // empty: the first host; "none": no gateway
  std::vector<std::string> allocation_pools;  // "start=a,end=b" or "a-b"
  std::vector<std::string> dns_nameservers;
  bool enable_dhcp = true;
  int ip_version = 4;
};

struct FixedIpRequest {
  std::string subnet;      // name or id; empty: any subnet of the network
  std::string ip_address;  // empty: allocated
};

struct PortSpec {
  std::string network;  // name or id
  std::string name, tenant_id = kDefaultTenant;
  std::string mac_address;  // empty: generated
  std::vector<FixedIpRequest> fixed_ips;
  std::vector<std::string> security_groups;  // names or ids; empty: the tenant's default group
  bool no_security_groups = false;
  bool port_security_enabled = true;
  std::string device_owner, device_id;
  std::string vif_type = "tap";  // tap or veth
  std::string binding_netns, binding_ifname;
  std::string binding_host_id;  // binding:host_id; empty: every host
};

// What port-update changes; unset fields stay as they are.
struct PortUpdate {
  std::optional<std::string> name;
  std::optional<std::vector<std::string>> security_groups;  // names or ids; empty: none
  std::optional<bool> port_security_enabled;
  std::optional<std::string> device_id;
  std::optional<std::string> binding_host_id;  // "": unbound (every host)
};

struct RuleSpec {
  std::string security_group;  // name or id
  std::string tenant_id = kDefaultTenant;
  std::string direction = "ingress", ethertype = "IPv4", protocol;
  std::optional<int> port_range_min, port_range_max;
  std::string remote_ip_prefix, remote_group;
};

class NetService {
 public:
  explicit NetService(Store& store) : store_(store) {}

  Network create_network(const NetworkSpec& spec);
  void delete_network(const std::string& ref);

  Subnet create_subnet(const SubnetSpec& spec);
  void delete_subnet(const std::string& ref);

  Port create_port(const PortSpec& spec);
  Port update_port(const std::string& ref, const PortUpdate& update);
  void delete_port(const std::string& ref);

  Router create_router(const std::string& name, const std::string& tenant_id);
  void delete_router(const std::string& ref);
  Port add_router_interface(const std::string& router_ref, const std::string& subnet_ref);
  void remove_router_interface(const std::string& router_ref, const std::string& subnet_ref);
  Router set_router_gateway(const std::string& router_ref, const std::string& network_ref,
                            bool enable_snat = true);
  Router clear_router_gateway(const std::string& router_ref);

  FloatingIp create_floating_ip(const std::string& network_ref, const std::string& tenant_id,
                                const std::string& port_ref = "",
                                const std::string& floating_ip = "");
  FloatingIp associate_floating_ip(const std::string& fip_ref, const std::string& port_ref,
                                   const std::string& fixed_ip = "");
  FloatingIp disassociate_floating_ip(const std::string& fip_ref);
  void delete_floating_ip(const std::string& ref);

  SecurityGroup create_security_group(const std::string& name, const std::string& tenant_id,
                                      const std::string& description = "");
  void delete_security_group(const std::string& ref);
  SecurityGroupRule create_security_group_rule(const RuleSpec& spec);
  void delete_security_group_rule(const std::string& id);

  // Name-or-id lookups; throw Error(kNotFound) or, for an ambiguous name, Error(kInvalidArgument).
  Network network(const std::string& ref);
  Subnet subnet(const std::string& ref);
  Port port(const std::string& ref);
  Router router(const std::string& ref);
  FloatingIp floating_ip(const std::string& ref);  // id or floating IP address
  SecurityGroup security_group(const std::string& ref, const std::string& tenant_id = "");
  SecurityGroupRule security_group_rule(const std::string& id);

  // Settings: mac_prefix (global) and the host settings (kHostSettings: vxlan_local_ip,
  // vxlan_peers, physical_interface_mappings, metadata_socket) of `host`, "" for this host
  // (common::this_host_name). A host setting set to "" is unset.
  void set_setting(const std::string& key, const std::string& value, const std::string& host = "");
  // The global settings and those of `host` ("" for this host), with their defaults.
  std::vector<std::pair<std::string, std::string>> settings(const std::string& host = "");

  // This host's agent: created or refreshed with the time and this host's vxlan_local_ip.
  Agent report_agent();
  std::vector<Agent> agents() { return store_.agents(); }
  // By id or host name.
  Agent agent(const std::string& ref);
  void delete_agent(const std::string& ref);
  // An agent administratively down is no host's peer (Neutron's agent-update
  // --admin-state-down).
  Agent update_agent(const std::string& ref, bool admin_state_up);
  // The VXLAN and GRE peers of `host`: its vxlan_peers when set, else the tunnel IPs of the
  // other hosts' agents (administratively up), without the host's own vxlan_local_ip.
  std::vector<std::string> tunnel_peers(const std::string& host = "");

  Store& store() { return store_; }

 private:
  SecurityGroup ensure_default_group(const std::string& tenant_id);
  Port allocate_port(const PortSpec& spec, const Network& net);
  std::vector<uint8_t> mac_prefix();
  std::string describe_port_user(const Port& p);

  Store& store_;
};

// Settings that set_setting accepts, with their defaults ("" when none).
const std::vector<std::pair<std::string, std::string>>& known_settings();

// Whether a known setting is per host (kHostSettings).
bool is_host_setting(const std::string& key);

// The plumbing's settings for this host (common::this_host_name): its name, its
// vxlan_local_ip, physical_interface_mappings and metadata_socket, its tunnel_peers(); the
// binaries from KILN_DNSMASQ and KILN_METADATA_PROXY; as kiln-net and kiln-spawn plumb with
// them.
HostConfig host_config(NetService& svc);

}  // namespace kiln::net

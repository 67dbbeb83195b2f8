// The store of the netplumb model on the common store base (kiln/common/store.h): one SQLite
// file under the state directory, or the schema kiln_net of a PostgreSQL database that several
// hosts share; reads without the write lock, every change inside a write transaction so
// concurrent writers (processes, hosts) serialise.
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kiln/common/store.h"
#include "kiln/net/model.h"

namespace kiln::net {

// $KILN_STATE_DIR (default /var/lib/kiln) and $KILN_RUN_DIR (default /run/kiln).
std::string state_dir();
std::string run_dir();
// $KILN_DB_URL: a PostgreSQL connection URI for the shared store, or "" (the SQLite file).
std::string database_url();

// The settings that belong to one host (rows of host_settings, by host name); the others
// (mac_prefix) are global.
inline constexpr std::array<const char*, 4> kHostSettings = {
    "vxlan_local_ip", "vxlan_peers", "physical_interface_mappings", "metadata_socket"};

class Store {
 public:
  // Opens (creating if needed) the database at `location`: an SQLite file (its directory must
  // exist) or a PostgreSQL URI, where the tables live in `schema`.
  explicit Store(const std::string& location, const std::string& schema = "kiln_net");
  // The default database: `url` if given, else $KILN_DB_URL, else state_dir()/netplumb.db (the
  // directory is created).
  static std::unique_ptr<Store> open_default(const std::string& url = "");
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Runs `fn` in BEGIN IMMEDIATE .. COMMIT, rolling back if it throws.
  // Nested calls join the outer transaction.
  void write(const std::function<void()>& fn) { db_.write(fn); }
  // Runs `fn` in a read transaction (one consistent view); joins an outer transaction.
  void read(const std::function<void()>& fn) { db_.read(fn); }

  void put(const Network& n);
  void put(const Subnet& s);
  void put(const Port& p);  // with its fixed IPs and security groups
  void put(const Router& r);
  void put(const FloatingIp& f);
  void put(const SecurityGroup& g);
  void put(const SecurityGroupRule& r);

  // Deletes one row (and the rows that belong to it: a port's IPs, a group's rules).
  void remove_network(const std::string& id);
  void remove_subnet(const std::string& id);
  void remove_port(const std::string& id);
  void remove_router(const std::string& id);
  void remove_floating_ip(const std::string& id);
  void remove_security_group(const std::string& id);
  void remove_security_group_rule(const std::string& id);

  std::vector<Network> networks();
  std::vector<Subnet> subnets(const std::string& network_id = "");
  std::vector<Port> ports(const std::string& network_id = "");
  std::vector<Router> routers();
  std::vector<FloatingIp> floating_ips();
  std::vector<SecurityGroup> security_groups();
  std::vector<SecurityGroupRule> security_group_rules(const std::string& group_id = "");
  Snapshot snapshot();

  // Allocation queries (call inside write()).
  std::vector<Ipv4> used_ips(const std::string& subnet_id);
  bool mac_in_use(const std::string& network_id, const Mac& mac);
  uint32_t next_port_tag();

  // Global settings (mac_prefix).
  std::optional<std::string> setting(const std::string& key);
  void set_setting(const std::string& key, const std::string& value);
  // Settings of one host (vxlan_local_ip, ...); an empty value removes the row.
  std::optional<std::string> host_setting(const std::string& host, const std::string& key);
  void set_host_setting(const std::string& host, const std::string& key, const std::string& value);

  // Agents, one per host.
  void put(const Agent& a);
  std::vector<Agent> agents();
  void remove_agent(const std::string& id);

 private:
  common::Database db_;
};

}  // namespace kiln::net

#include "kiln/net/store.h"

#include <sys/stat.h>

#include <cstdlib>
#include <map>

#include "kiln/common/host.h"
#include "kiln/common/random.h"
#include "kiln/common/text.h"
#include "kiln/net/error.h"

namespace kiln::net {

std::string state_dir() {
  const char* e = std::getenv("KILN_STATE_DIR");
  return e && *e ? e : "/var/lib/kiln";
}

std::string run_dir() {
  const char* e = std::getenv("KILN_RUN_DIR");
  return e && *e ? e : "/run/kiln";
}

namespace {

const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS networks (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, tenant_id TEXT NOT NULL,
  network_type TEXT NOT NULL, physical_network TEXT NOT NULL, segmentation_id INTEGER,
  router_external INTEGER NOT NULL, admin_state_up INTEGER NOT NULL, shared INTEGER NOT NULL{{rowid}});
CREATE TABLE IF NOT EXISTS subnets (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, tenant_id TEXT NOT NULL,
  network_id TEXT NOT NULL REFERENCES networks(id), cidr TEXT NOT NULL, gateway_ip TEXT,
  allocation_pools TEXT NOT NULL, dns_nameservers TEXT NOT NULL, enable_dhcp INTEGER NOT NULL,
  ip_version INTEGER NOT NULL{{rowid}});
CREATE TABLE IF NOT EXISTS ports (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, tenant_id TEXT NOT NULL,
  network_id TEXT NOT NULL REFERENCES networks(id), mac_address TEXT NOT NULL,
  device_owner TEXT NOT NULL, device_id TEXT NOT NULL, vif_type TEXT NOT NULL,
  binding_netns TEXT NOT NULL, binding_ifname TEXT NOT NULL,
  port_security_enabled INTEGER NOT NULL, admin_state_up INTEGER NOT NULL,
  tag INTEGER NOT NULL UNIQUE,
  UNIQUE (network_id, mac_address){{rowid}});
CREATE TABLE IF NOT EXISTS ip_allocations (
  subnet_id TEXT NOT NULL REFERENCES subnets(id), ip_address TEXT NOT NULL,
  port_id TEXT NOT NULL REFERENCES ports(id), position INTEGER NOT NULL,
  PRIMARY KEY (subnet_id, ip_address));
CREATE TABLE IF NOT EXISTS port_security_groups (
  port_id TEXT NOT NULL REFERENCES ports(id), security_group_id TEXT NOT NULL,
  position INTEGER NOT NULL, PRIMARY KEY (port_id, security_group_id));
CREATE TABLE IF NOT EXISTS routers (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, tenant_id TEXT NOT NULL, gw_network_id TEXT NOT NULL,
  gw_port_id TEXT NOT NULL, enable_snat INTEGER NOT NULL, admin_state_up INTEGER NOT NULL{{rowid}});
CREATE TABLE IF NOT EXISTS floating_ips (
  id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, floating_network_id TEXT NOT NULL,
  floating_port_id TEXT NOT NULL, floating_ip_address TEXT NOT NULL, port_id TEXT NOT NULL,
  fixed_ip_address TEXT, router_id TEXT NOT NULL{{rowid}});
CREATE TABLE IF NOT EXISTS security_groups (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, tenant_id TEXT NOT NULL, description TEXT NOT NULL{{rowid}});
CREATE TABLE IF NOT EXISTS security_group_rules (
  id TEXT PRIMARY KEY, security_group_id TEXT NOT NULL REFERENCES security_groups(id),
  tenant_id TEXT NOT NULL, direction TEXT NOT NULL, ethertype TEXT NOT NULL,
  protocol TEXT NOT NULL, port_range_min INTEGER, port_range_max INTEGER,
  remote_ip_prefix TEXT NOT NULL, remote_group_id TEXT NOT NULL{{rowid}});
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
)sql";

using common::Stmt;

// An address column (NULL: none).
std::optional<Ipv4> ip_column(common::Stmt& s, int col) {
  if (s.null(col)) return std::nullopt;
  return Ipv4::parse(s.text(col));
}

// Version 2: several hosts on one database. The host-scoped settings move to host_settings,
// keyed by host name (the values a database had become this host's); agents, one row per
// host's kiln-net; and ports get binding:host_id (empty: every host, as before).
const char* kSchemaHosts = R"sql(
CREATE TABLE IF NOT EXISTS host_settings (
  host TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (host, key));
CREATE TABLE IF NOT EXISTS agents (
  id TEXT PRIMARY KEY, host TEXT NOT NULL UNIQUE, agent_type TEXT NOT NULL,
  agent_binary TEXT NOT NULL, tunnel_ip TEXT NOT NULL, admin_state_up INTEGER NOT NULL,
  created_at BIGINT NOT NULL, heartbeat_at BIGINT NOT NULL{{rowid}});
ALTER TABLE ports ADD COLUMN binding_host_id TEXT NOT NULL DEFAULT '';
)sql";

void migrate_to_hosts(common::Database& db) {
  db.exec(db.schema_sql(kSchemaHosts));
  const std::string keys = "key IN (" + [] {
    std::string k;
    for (auto* key : kHostSettings) k += std::string(k.empty() ? "" : ",") + "'" + key + "'";
    return k;
  }() + ")";
  Stmt any(db, "SELECT COUNT(*) FROM settings WHERE " + keys);
  any.step();
  if (any.integer(0) == 0) return;
  // Only a database with host settings needs this host's name (KILN_HOST, else the hostname).
  Stmt(db,
       "INSERT INTO host_settings (host, key, value) SELECT ?, key, value FROM settings "
       "WHERE value <> '' AND " +
           keys)
      .bind(common::this_host_name())
      .run();
  db.exec("DELETE FROM settings WHERE " + keys);
}

// Schema versions: migration i takes the database from version i to i+1 (append, never edit).
std::vector<common::Database::Migration> migrations() {
  return {[](common::Database& db) { db.exec(db.schema_sql(kSchema)); }, migrate_to_hosts};
}

}  // namespace

namespace {

common::Database::Options in_schema(const std::string& schema) {
  common::Database::Options o;
  o.schema = schema;
  return o;
}

}  // namespace

Store::Store(const std::string& location, const std::string& schema)
    : db_(location, migrations(), in_schema(schema)) {}

std::string database_url() {
  const char* e = std::getenv("KILN_DB_URL");
  return e && *e ? e : "";
}

std::unique_ptr<Store> Store::open_default(const std::string& url) {
  // A shared database: nothing is written under the state directory.
  if (!url.empty()) return std::make_unique<Store>(url);
  if (std::string env = database_url(); !env.empty()) return std::make_unique<Store>(env);
  std::string dir = state_dir();
  ::mkdir(dir.c_str(), 0755);
  return std::make_unique<Store>(dir + "/netplumb.db");
}

void Store::put(const Network& n) {
  Stmt(db_, common::upsert_sql("networks",
                               {"id", "name", "tenant_id", "network_type", "physical_network",
                                "segmentation_id", "router_external", "admin_state_up", "shared"},
                               "id"))
      .bind(n.id)
      .bind(n.name)
      .bind(n.tenant_id)
      .bind(n.network_type)
      .bind(n.physical_network)
      .bind(n.segmentation_id)
      .bind(n.router_external)
      .bind(n.admin_state_up)
      .bind(n.shared)
      .run();
}

void Store::put(const Subnet& s) {
  std::vector<std::string> pools, dns;
  for (auto& p : s.allocation_pools) pools.push_back(p.str());
  for (auto& d : s.dns_nameservers) dns.push_back(d.str());
  Stmt(db_, common::upsert_sql("subnets",
                               {"id", "name", "tenant_id", "network_id", "cidr", "gateway_ip",
                                "allocation_pools", "dns_nameservers", "enable_dhcp", "ip_version"},
                               "id"))
      .bind(s.id)
      .bind(s.name)
      .bind(s.tenant_id)
      .bind(s.network_id)
      .bind(s.cidr.str())
      .bind(s.gateway_ip ? std::optional<std::string>(s.gateway_ip->str()) : std::nullopt)
      .bind(common::join(pools, ","))
      .bind(common::join(dns, ","))
      .bind(s.enable_dhcp)
      .bind(s.ip_version)
      .run();
}

void Store::put(const Port& p) {
  write([&] {
    Stmt(db_, "DELETE FROM ip_allocations WHERE port_id=?").bind(p.id).run();
    Stmt(db_, "DELETE FROM port_security_groups WHERE port_id=?").bind(p.id).run();
    Stmt(db_,
         common::upsert_sql("ports",
                            {"id", "name", "tenant_id", "network_id", "mac_address", "device_owner",
                             "device_id", "vif_type", "binding_netns", "binding_ifname",
                             "port_security_enabled", "admin_state_up", "tag", "binding_host_id"},
                            "id"))
        .bind(p.id)
        .bind(p.name)
        .bind(p.tenant_id)
        .bind(p.network_id)
        .bind(p.mac_address.str())
        .bind(p.device_owner)
        .bind(p.device_id)
        .bind(p.vif_type)
        .bind(p.binding_netns)
        .bind(p.binding_ifname)
        .bind(p.port_security_enabled)
        .bind(p.admin_state_up)
        .bind(p.tag)
        .bind(p.binding_host_id)
        .run();
    int pos = 0;
    for (auto& f : p.fixed_ips)
      Stmt(db_, "INSERT INTO ip_allocations VALUES (?,?,?,?)")
          .bind(f.subnet_id)
          .bind(f.ip_address)
          .bind(p.id)
          .bind(pos++)
          .run();
    pos = 0;
    for (auto& g : p.security_groups)
      Stmt(db_, "INSERT INTO port_security_groups VALUES (?,?,?)")
          .bind(p.id)
          .bind(g)
          .bind(pos++)
          .run();
  });
}

void Store::put(const Router& r) {
  Stmt(db_, common::upsert_sql("routers",
                               {"id", "name", "tenant_id", "gw_network_id", "gw_port_id",
                                "enable_snat", "admin_state_up"},
                               "id"))
      .bind(r.id)
      .bind(r.name)
      .bind(r.tenant_id)
      .bind(r.gw_network_id)
      .bind(r.gw_port_id)
      .bind(r.enable_snat)
      .bind(r.admin_state_up)
      .run();
}

void Store::put(const FloatingIp& f) {
  Stmt(db_, common::upsert_sql("floating_ips",
                               {"id", "tenant_id", "floating_network_id", "floating_port_id",
                                "floating_ip_address", "port_id", "fixed_ip_address", "router_id"},
                               "id"))
      .bind(f.id)
      .bind(f.tenant_id)
      .bind(f.floating_network_id)
      .bind(f.floating_port_id)
      .bind(f.floating_ip_address)
      .bind(f.port_id)
      .bind(f.fixed_ip_address)
      .bind(f.router_id)
      .run();
}

void Store::put(const SecurityGroup& g) {
  Stmt(db_, common::upsert_sql("security_groups", {"id", "name", "tenant_id", "description"}, "id"))
      .bind(g.id)
      .bind(g.name)
      .bind(g.tenant_id)
      .bind(g.description)
      .run();
}

void Store::put(const SecurityGroupRule& r) {
  Stmt(db_, common::upsert_sql(
                "security_group_rules",
                {"id", "security_group_id", "tenant_id", "direction", "ethertype", "protocol",
                 "port_range_min", "port_range_max", "remote_ip_prefix", "remote_group_id"},
                "id"))
      .bind(r.id)
      .bind(r.security_group_id)
      .bind(r.tenant_id)
      .bind(r.direction)
      .bind(r.ethertype)
      .bind(r.protocol)
      .bind(r.port_range_min)
      .bind(r.port_range_max)
      .bind(r.remote_ip_prefix)
      .bind(r.remote_group_id)
      .run();
}

void Store::remove_network(const std::string& id) {
  Stmt(db_, "DELETE FROM networks WHERE id=?").bind(id).run();
}
void Store::remove_subnet(const std::string& id) {
  Stmt(db_, "DELETE FROM subnets WHERE id=?").bind(id).run();
}
void Store::remove_port(const std::string& id) {
  write([&] {
    Stmt(db_, "DELETE FROM ip_allocations WHERE port_id=?").bind(id).run();
    Stmt(db_, "DELETE FROM port_security_groups WHERE port_id=?").bind(id).run();
    Stmt(db_, "DELETE FROM ports WHERE id=?").bind(id).run();
  });
}
void Store::remove_router(const std::string& id) {
  Stmt(db_, "DELETE FROM routers WHERE id=?").bind(id).run();
}
void Store::remove_floating_ip(const std::string& id) {
  Stmt(db_, "DELETE FROM floating_ips WHERE id=?").bind(id).run();
}
void Store::remove_security_group(const std::string& id) {
  write([&] {
    Stmt(db_, "DELETE FROM security_group_rules WHERE security_group_id=?").bind(id).run();
    Stmt(db_, "DELETE FROM security_groups WHERE id=?").bind(id).run();
  });
}
void Store::remove_security_group_rule(const std::string& id) {
  Stmt(db_, "DELETE FROM security_group_rules WHERE id=?").bind(id).run();
}

std::vector<Network> Store::networks() {
  Stmt s(db_, "SELECT * FROM networks ORDER BY rowid");
  std::vector<Network> out;
  while (s.step()) {
    Network n;
    n.id = s.text(0);
    n.name = s.text(1);
    n.tenant_id = s.text(2);
    n.network_type = s.text(3);
    n.physical_network = s.text(4);
    if (!s.null(5)) n.segmentation_id = static_cast<uint32_t>(s.integer(5));
    n.router_external = s.integer(6);
    n.admin_state_up = s.integer(7);
    n.shared = s.integer(8);
    out.push_back(std::move(n));
  }
  return out;
}

std::vector<Subnet> Store::subnets(const std::string& network_id) {
  Stmt s(db_, "SELECT * FROM subnets WHERE ?='' OR network_id=? ORDER BY rowid");
  s.bind(network_id).bind(network_id);
  std::vector<Subnet> out;
  while (s.step()) {
    Subnet n;
    n.id = s.text(0);
    n.name = s.text(1);
    n.tenant_id = s.text(2);
    n.network_id = s.text(3);
    n.cidr = Cidr::parse(s.text(4)).value_or(Cidr{});
    n.gateway_ip = ip_column(s, 5);
    for (auto& p : common::split(s.text(6), ','))
      if (auto r = IpRange::parse(p)) n.allocation_pools.push_back(*r);
    for (auto& d : common::split(s.text(7), ','))
      if (auto ip = Ipv4::parse(d)) n.dns_nameservers.push_back(*ip);
    n.enable_dhcp = s.integer(8);
    n.ip_version = static_cast<int>(s.integer(9));
    out.push_back(std::move(n));
  }
  return out;
}

std::vector<Port> Store::ports(const std::string& network_id) {
  // Columns by name: a column added by a migration is not in the same place on both engines.
  Stmt s(db_,
         "SELECT id, name, tenant_id, network_id, mac_address, device_owner, device_id, "
         "vif_type, binding_netns, binding_ifname, port_security_enabled, admin_state_up, tag, "
         "binding_host_id FROM ports WHERE ?='' OR network_id=? ORDER BY rowid");
  s.bind(network_id).bind(network_id);
  std::vector<Port> out;
  while (s.step()) {
    Port p;
    p.id = s.text(0);
    p.name = s.text(1);
    p.tenant_id = s.text(2);
    p.network_id = s.text(3);
    p.mac_address = Mac::parse(s.text(4)).value_or(Mac{});
    p.device_owner = s.text(5);
    p.device_id = s.text(6);
    p.vif_type = s.text(7);
    p.binding_netns = s.text(8);
    p.binding_ifname = s.text(9);
    p.port_security_enabled = s.integer(10);
    p.admin_state_up = s.integer(11);
    p.tag = static_cast<uint32_t>(s.integer(12));
    p.binding_host_id = s.text(13);
    out.push_back(std::move(p));
  }
  // Two queries in all, not two per port: plumbing reads every port for each command.
  std::map<std::string, Port*> by_id;
  for (auto& p : out) by_id[p.id] = &p;
  Stmt a(db_,
         "SELECT port_id, subnet_id, ip_address FROM ip_allocations ORDER BY port_id, position");
  while (a.step())
    if (auto it = by_id.find(a.text(0)); it != by_id.end())
      it->second->fixed_ips.push_back({a.text(1), ip_column(a, 2).value_or(Ipv4{})});
  Stmt g(db_,
         "SELECT port_id, security_group_id FROM port_security_groups "
         "ORDER BY port_id, position");
  while (g.step())
    if (auto it = by_id.find(g.text(0)); it != by_id.end())
      it->second->security_groups.push_back(g.text(1));
  return out;
}

std::vector<Router> Store::routers() {
  Stmt s(db_, "SELECT * FROM routers ORDER BY rowid");
  std::vector<Router> out;
  while (s.step()) {
    Router r;
    r.id = s.text(0);
    r.name = s.text(1);
    r.tenant_id = s.text(2);
    r.gw_network_id = s.text(3);
    r.gw_port_id = s.text(4);
    r.enable_snat = s.integer(5);
    r.admin_state_up = s.integer(6);
    out.push_back(std::move(r));
  }
  return out;
}

std::vector<FloatingIp> Store::floating_ips() {
  Stmt s(db_, "SELECT * FROM floating_ips ORDER BY rowid");
  std::vector<FloatingIp> out;
  while (s.step()) {
    FloatingIp f;
    f.id = s.text(0);
    f.tenant_id = s.text(1);
    f.floating_network_id = s.text(2);
    f.floating_port_id = s.text(3);
    f.floating_ip_address = ip_column(s, 4).value_or(Ipv4{});
    f.port_id = s.text(5);
    f.fixed_ip_address = ip_column(s, 6);
    f.router_id = s.text(7);
    out.push_back(std::move(f));
  }
  return out;
}

std::vector<SecurityGroup> Store::security_groups() {
  Stmt s(db_, "SELECT * FROM security_groups ORDER BY rowid");
  std::vector<SecurityGroup> out;
  while (s.step()) out.push_back({s.text(0), s.text(1), s.text(2), s.text(3)});
  return out;
}

std::vector<SecurityGroupRule> Store::security_group_rules(const std::string& group_id) {
  Stmt s(db_,
         "SELECT * FROM security_group_rules WHERE ?='' OR security_group_id=? ORDER BY rowid");
  s.bind(group_id).bind(group_id);
  std::vector<SecurityGroupRule> out;
  while (s.step()) {
    SecurityGroupRule r;
    r.id = s.text(0);
    r.security_group_id = s.text(1);
    r.tenant_id = s.text(2);
    r.direction = s.text(3);
    r.ethertype = s.text(4);
    r.protocol = s.text(5);
    if (!s.null(6)) r.port_range_min = static_cast<int>(s.integer(6));
    if (!s.null(7)) r.port_range_max = static_cast<int>(s.integer(7));
    r.remote_ip_prefix = s.text(8);
    r.remote_group_id = s.text(9);
    out.push_back(std::move(r));
  }
  return out;
}

Snapshot Store::snapshot() {
  Snapshot snap;
  // A read transaction gives one consistent view across the tables.
  db_.read([&] {
    snap.networks = networks();
    snap.subnets = subnets();
    snap.ports = ports();
    snap.routers = routers();
    snap.floating_ips = floating_ips();
    snap.security_groups = security_groups();
    snap.security_group_rules = security_group_rules();
  });
  return snap;
}

std::vector<Ipv4> Store::used_ips(const std::string& subnet_id) {
  Stmt s(db_, "SELECT ip_address FROM ip_allocations WHERE subnet_id=?");
  s.bind(subnet_id);
  std::vector<Ipv4> out;
  while (s.step())
    if (auto ip = ip_column(s, 0)) out.push_back(*ip);
  return out;
}

bool Store::mac_in_use(const std::string& network_id, const Mac& mac) {
  Stmt s(db_, "SELECT 1 FROM ports WHERE network_id=? AND mac_address=?");
  s.bind(network_id).bind(mac.str());
  return s.step();
}

uint32_t Store::next_port_tag() {
  // Lowest free tag >= 1: tags end up in 16-bit packet marks.
  Stmt one(db_, "SELECT 1 FROM ports WHERE tag=1");
  if (!one.step()) return 1;
  Stmt gap(db_,
           "SELECT MIN(t.tag)+1 FROM ports t WHERE NOT EXISTS "
           "(SELECT 1 FROM ports u WHERE u.tag=t.tag+1)");
  gap.step();
  int64_t tag = gap.integer(0);
  if (tag > 0xffff) throw no_space("no free port tags (65535 ports on this host)");
  return static_cast<uint32_t>(tag);
}

std::optional<std::string> Store::setting(const std::string& key) {
  Stmt s(db_, "SELECT value FROM settings WHERE key=?");
  s.bind(key);
  if (!s.step()) return std::nullopt;
  return s.text(0);
}

void Store::set_setting(const std::string& key, const std::string& value) {
  Stmt(db_, common::upsert_sql("settings", {"key", "value"}, "key")).bind(key).bind(value).run();
}

std::optional<std::string> Store::host_setting(const std::string& host, const std::string& key) {
  Stmt s(db_, "SELECT value FROM host_settings WHERE host=? AND key=?");
  s.bind(host).bind(key);
  if (!s.step()) return std::nullopt;
  return s.text(0);
}

void Store::set_host_setting(const std::string& host, const std::string& key,
                             const std::string& value) {
  if (value.empty()) {
    Stmt(db_, "DELETE FROM host_settings WHERE host=? AND key=?").bind(host).bind(key).run();
    return;
  }
  Stmt(db_,
       "INSERT INTO host_settings (host, key, value) VALUES (?,?,?) "
       "ON CONFLICT(host, key) DO UPDATE SET value=excluded.value")
      .bind(host)
      .bind(key)
      .bind(value)
      .run();
}

void Store::put(const Agent& a) {
  Stmt(db_, common::upsert_sql("agents",
                               {"id", "host", "agent_type", "agent_binary", "tunnel_ip",
                                "admin_state_up", "created_at", "heartbeat_at"},
                               "id"))
      .bind(a.id)
      .bind(a.host)
      .bind(a.agent_type)
      .bind(a.binary)
      .bind(a.tunnel_ip)
      .bind(a.admin_state_up)
      .bind(a.created_at)
      .bind(a.heartbeat_at)
      .run();
}

std::vector<Agent> Store::agents() {
  Stmt s(db_,
         "SELECT id, host, agent_type, agent_binary, tunnel_ip, admin_state_up, created_at, "
         "heartbeat_at FROM agents ORDER BY host");
  std::vector<Agent> out;
  while (s.step()) {
    Agent a;
    a.id = s.text(0);
    a.host = s.text(1);
    a.agent_type = s.text(2);
    a.binary = s.text(3);
    a.tunnel_ip = s.text(4);
    a.admin_state_up = s.integer(5);
    a.created_at = s.integer(6);
    a.heartbeat_at = s.integer(7);
    out.push_back(std::move(a));
  }
  return out;
}

void Store::remove_agent(const std::string& id) {
  Stmt(db_, "DELETE FROM agents WHERE id=?").bind(id).run();
}

}  // namespace kiln::net

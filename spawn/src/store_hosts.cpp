// Compute hosts in spawn's store (store.h): the hosts table, its migration, and the claims and
// instances per host.
#include "store_hosts.h"

#include <cmath>

#include "kiln/spawn/error.h"
#include "kiln/spawn/resources.h"
#include "kiln/spawn/store.h"

namespace kiln::spawn {

using common::Stmt;

namespace {

// Ratios are kept as millionths: a whole number both engines compare exactly (the settings
// allow at most six decimals, so nothing is lost).
int64_t to_ppm(double ratio) { return std::llround(ratio * 1e6); }
double from_ppm(int64_t ppm) { return static_cast<double>(ppm) / 1e6; }

const char* kHostCols =
    "name, libvirt_uri, nbd_endpoint, availability_zone, vcpus, memory_mb, disk_gb, "
    "cpu_ratio_ppm, ram_ratio_ppm, disk_ratio_ppm, reserved_vcpus, reserved_memory_mb, "
    "reserved_disk_mb, enabled, disabled_reason, from_settings, heartbeat_at, created_at, "
    "updated_at";

void insert_host(common::Database& db, const Host& h) {
  static const std::string sql = std::string("INSERT INTO hosts(") + kHostCols +
                                 ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                                 "?, ?) ON CONFLICT(name) DO UPDATE SET "
                                 "libvirt_uri = excluded.libvirt_uri, "
                                 "nbd_endpoint = excluded.nbd_endpoint, "
                                 "availability_zone = excluded.availability_zone, "
                                 "vcpus = excluded.vcpus, memory_mb = excluded.memory_mb, "
                                 "disk_gb = excluded.disk_gb, "
                                 "cpu_ratio_ppm = excluded.cpu_ratio_ppm, "
                                 "ram_ratio_ppm = excluded.ram_ratio_ppm, "
                                 "disk_ratio_ppm = excluded.disk_ratio_ppm, "
                                 "reserved_vcpus = excluded.reserved_vcpus, "
                                 "reserved_memory_mb = excluded.reserved_memory_mb, "
                                 "reserved_disk_mb = excluded.reserved_disk_mb, "
                                 "enabled = excluded.enabled, "
                                 "disabled_reason = excluded.disabled_reason, "
                                 "from_settings = excluded.from_settings, "
                                 "heartbeat_at = excluded.heartbeat_at, "
                                 "updated_at = excluded.updated_at";
  const std::string now = utc_now();
  Stmt(db, sql)
      .bind(h.name)
      .bind(h.libvirt_uri)
      .bind(h.nbd_endpoint)
      .bind(h.availability_zone)
      .bind(h.vcpus)
      .bind(h.memory_mb)
      .bind(h.disk_gb)
      .bind(to_ppm(h.cpu_allocation_ratio))
      .bind(to_ppm(h.ram_allocation_ratio))
      .bind(to_ppm(h.disk_allocation_ratio))
      .bind(h.reserved_vcpus)
      .bind(h.reserved_memory_mb)
      .bind(h.reserved_disk_mb)
      .bind(h.enabled)
      .bind(h.disabled_reason)
      .bind(h.from_settings)
      .bind(h.heartbeat_at)
      .bind(h.created_at.empty() ? now : h.created_at)
      .bind(now)
      .run();
}

Host read_host(Stmt& s) {
  Host h;
  int c = 0;
  h.name = s.text(c++);
  h.libvirt_uri = s.text(c++);
  h.nbd_endpoint = s.text(c++);
  h.availability_zone = s.text(c++);
  h.vcpus = s.integer(c++);
  h.memory_mb = s.integer(c++);
  h.disk_gb = s.integer(c++);
  h.cpu_allocation_ratio = from_ppm(s.integer(c++));
  h.ram_allocation_ratio = from_ppm(s.integer(c++));
  h.disk_allocation_ratio = from_ppm(s.integer(c++));
  h.reserved_vcpus = s.integer(c++);
  h.reserved_memory_mb = s.integer(c++);
  h.reserved_disk_mb = s.integer(c++);
  h.enabled = s.integer(c++) != 0;
  h.disabled_reason = s.text(c++);
  h.from_settings = s.integer(c++) != 0;
  h.heartbeat_at = s.text(c++);
  h.created_at = s.text(c++);
  h.updated_at = s.text(c++);
  return h;
}

}  // namespace

void hosts_v4(common::Database& db, const std::string& dir) {
  db.exec(
      "CREATE TABLE hosts ("
      "name TEXT PRIMARY KEY, libvirt_uri TEXT NOT NULL DEFAULT '', "
      "nbd_endpoint TEXT NOT NULL DEFAULT '', availability_zone TEXT NOT NULL DEFAULT 'nova', "
      "vcpus BIGINT NOT NULL, memory_mb BIGINT NOT NULL, disk_gb BIGINT NOT NULL, "
      "cpu_ratio_ppm BIGINT NOT NULL, ram_ratio_ppm BIGINT NOT NULL, "
      "disk_ratio_ppm BIGINT NOT NULL, reserved_vcpus BIGINT NOT NULL, "
      "reserved_memory_mb BIGINT NOT NULL, reserved_disk_mb BIGINT NOT NULL, "
      "enabled INTEGER NOT NULL DEFAULT 1, disabled_reason TEXT NOT NULL DEFAULT '', "
      "from_settings INTEGER NOT NULL DEFAULT 0, heartbeat_at TEXT NOT NULL DEFAULT '', "
      "created_at TEXT NOT NULL, updated_at TEXT NOT NULL);"
      "ALTER TABLE claims ADD COLUMN host TEXT NOT NULL DEFAULT '';"
      "ALTER TABLE instances ADD COLUMN host TEXT NOT NULL DEFAULT '';"
      "CREATE INDEX claims_host ON claims(host);"
      "CREATE INDEX instances_host ON instances(host);");
  // This machine, from the settings it has been using. A setting that a hand edit made
  // unreadable must not make the store impossible to open: Nova's defaults stand in.
  auto setting = [&](const std::string& key) -> std::optional<std::string> {
    Stmt s(db, "SELECT value FROM settings WHERE key = ?");
    s.bind(key);
    if (!s.step()) return std::nullopt;
    return s.text(0);
  };
  ResourceConfig config;
  try {
    config = resource_config(setting, dir);
  } catch (const Error&) {
    config = resource_config([](const std::string&) { return std::nullopt; }, dir);
  }
  Host me = host_from_config(this_host(), config);
  me.heartbeat_at = utc_now();
  insert_host(db, me);
  Stmt(db, "UPDATE claims SET host = ?").bind(me.name).run();
  Stmt(db, "UPDATE instances SET host = ?").bind(me.name).run();
}

void Store::put(const Host& h) { insert_host(db_, h); }

std::optional<Host> Store::find_host(const std::string& name) {
  Stmt s(db_, std::string("SELECT ") + kHostCols + " FROM hosts WHERE name = ?");
  s.bind(name);
  if (!s.step()) return std::nullopt;
  return read_host(s);
}

std::vector<Host> Store::hosts() {
  Stmt s(db_, std::string("SELECT ") + kHostCols + " FROM hosts ORDER BY name");
  std::vector<Host> out;
  while (s.step()) out.push_back(read_host(s));
  return out;
}

void Store::remove_host(const std::string& name) {
  Stmt(db_, "DELETE FROM hosts WHERE name = ?").bind(name).run();
}

std::vector<std::string> Store::instances_on(const std::string& host) {
  Stmt s(db_, "SELECT name FROM instances WHERE host = ? ORDER BY created_at, name");
  s.bind(host);
  std::vector<std::string> out;
  while (s.step()) out.push_back(s.text(0));
  return out;
}

Usage Store::usage_of(const std::string& host) {
  Stmt s(db_,
         "SELECT COALESCE(SUM(vcpus), 0), COALESCE(SUM(ram_mb), 0), COALESCE(SUM(disk_gb), 0), "
         "COUNT(*) FROM claims WHERE host = ?");
  s.bind(host);
  s.step();
  return {s.integer(0), s.integer(1), s.integer(2), s.integer(3)};
}

std::map<std::string, Usage> Store::usage_by_host() {
  Stmt s(db_,
         "SELECT host, SUM(vcpus), SUM(ram_mb), SUM(disk_gb), COUNT(*) FROM claims "
         "GROUP BY host");
  std::map<std::string, Usage> out;
  while (s.step()) out[s.text(0)] = {s.integer(1), s.integer(2), s.integer(3), s.integer(4)};
  return out;
}

}  // namespace kiln::spawn

#include "kiln/spawn/store.h"

#include <cstdio>
#include <ctime>

#include "kiln/common/host.h"
#include "kiln/common/json.h"
#include "kiln/common/text.h"
#include "kiln/spawn/error.h"
#include "perms.h"
#include "store_hosts.h"
#include "util.h"

namespace kiln::spawn {

namespace {

const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS images (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, disk_format TEXT NOT NULL,
  digest TEXT NOT NULL, size BIGINT NOT NULL, virtual_size BIGINT NOT NULL,
  created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS flavors (
  name TEXT PRIMARY KEY, vcpus INTEGER NOT NULL, ram_mb INTEGER NOT NULL,
  disk_gb INTEGER NOT NULL, builtin INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS instances (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
  image_id TEXT NOT NULL, image_digest TEXT NOT NULL, image_format TEXT NOT NULL,
  flavor TEXT NOT NULL, vcpus INTEGER NOT NULL, ram_mb INTEGER NOT NULL, disk_gb INTEGER NOT NULL,
  network TEXT NOT NULL, network_id TEXT NOT NULL DEFAULT '',
  status TEXT NOT NULL, task_state TEXT NOT NULL DEFAULT '', fault TEXT NOT NULL DEFAULT '',
  port_id TEXT NOT NULL DEFAULT '', mac TEXT NOT NULL DEFAULT '', ip TEXT NOT NULL DEFAULT '',
  tap TEXT NOT NULL DEFAULT '', dir TEXT NOT NULL DEFAULT '',
  export_name TEXT NOT NULL DEFAULT '', domain_name TEXT NOT NULL DEFAULT '',
  domain_xml TEXT NOT NULL DEFAULT '', steps_done TEXT NOT NULL DEFAULT '',
  base_filled INTEGER NOT NULL DEFAULT 0,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
  nbd_socket TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS instances_image ON instances(image_id);
CREATE INDEX IF NOT EXISTS instances_digest ON instances(image_digest);
CREATE TABLE IF NOT EXISTS claims (
  instance_id TEXT PRIMARY KEY, vcpus INTEGER NOT NULL, ram_mb INTEGER NOT NULL,
  disk_gb INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  seq {{serial}}, instance_id TEXT NOT NULL, at TEXT NOT NULL,
  status TEXT NOT NULL, task_state TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_instance ON events(instance_id);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
)sql";

}  // namespace

using common::Stmt;

namespace {

const char* kImageCols =
    "id, name, disk_format, digest, size, virtual_size, created_at, checksum, os_hash_algo, "
    "os_hash_value, min_disk, min_ram, properties";

const char* kInstanceCols =
    "id, name, image_id, image_digest, image_format, flavor, vcpus, ram_mb, disk_gb, network, "
    "network_id, status, task_state, fault, port_id, mac, ip, tap, dir, export_name, "
    "domain_name, domain_xml, steps_done, base_filled, created_at, updated_at, nbd_socket, host";

// Schema versions: migration i takes the database from version i to i+1 (append, never edit).
// Version 1 is the schema of the kiln-spawn that had no versions: its databases (user_version
// 0, maybe without nbd_socket) are brought to it on their first open.
void schema_v1(common::Database& db) {
  db.exec(db.schema_sql(kSchema));
  // Only an SQLite file can predate versions (and the nbd_socket column).
  if (db.dialect() == common::Dialect::kSqlite) {
    bool has_socket = false;
    for (Stmt t(db, "PRAGMA table_info(instances)"); t.step();)
      has_socket |= t.text(1) == "nbd_socket";
    if (!has_socket)
      db.exec("ALTER TABLE instances ADD COLUMN nbd_socket TEXT NOT NULL DEFAULT ''");
  }
  for (const Flavor& f : builtin_flavors()) {
    Stmt s(db,
           "INSERT INTO flavors(name, vcpus, ram_mb, disk_gb, builtin) "
           "VALUES (?, ?, ?, ?, 1) ON CONFLICT(name) DO NOTHING");
    s.bind(f.name).bind(f.vcpus).bind(f.ram_mb).bind(f.disk_gb).run();
  }
}

// Version 2: Glance's image fields (image-create --url); images from before keep "" and 0.
void glance_image_fields_v2(common::Database& db) {
  db.exec(
      "ALTER TABLE images ADD COLUMN checksum TEXT NOT NULL DEFAULT '';"
      "ALTER TABLE images ADD COLUMN os_hash_algo TEXT NOT NULL DEFAULT '';"
      "ALTER TABLE images ADD COLUMN os_hash_value TEXT NOT NULL DEFAULT '';"
      "ALTER TABLE images ADD COLUMN min_disk INTEGER NOT NULL DEFAULT 0;"
      "ALTER TABLE images ADD COLUMN min_ram INTEGER NOT NULL DEFAULT 0;"
      "ALTER TABLE images ADD COLUMN properties TEXT NOT NULL DEFAULT '{}';");
}

// Version 3: the metadata service's records (metadata.h), one per instance, and the addresses
// they are looked up by: the instance's fixed IPs on their networks.
// The record is CBOR (bytes): SQLite keeps them in its TEXT column as written (a blob);
// PostgreSQL's text would refuse them, so there it is BYTEA.
void metadata_tables_v3(common::Database& db) {
  const bool sqlite = db.dialect() == common::Dialect::kSqlite;
  db.exec(std::string("CREATE TABLE metadata (instance_id TEXT PRIMARY KEY, record ") +
          (sqlite ? "TEXT" : "BYTEA") +
          " NOT NULL);"
          "CREATE TABLE metadata_addresses (network_id TEXT NOT NULL, ip TEXT NOT NULL, "
          "instance_id TEXT NOT NULL, PRIMARY KEY (network_id, ip));"
          "CREATE INDEX metadata_addresses_instance ON metadata_addresses(instance_id);");
}

// The settings that are one for every host sharing the database; every other setting
// describes the machine it is set on (its capacity and ratios, QEMU's user, its disk transport
// and kiln-nbd endpoint), as nova.conf is per compute host.
constexpr const char* kGlobalSettingsSql = "('scheduler_weigher', 'storage_host')";

bool is_host_setting(const std::string& key) {
  return key != "scheduler_weigher" && key != "storage_host";
}

// Version 6: per-host settings. Before, a shared database gave every host the first host's
// nbd_tcp_address, certificate directory and capacity; what a database had becomes this host's.
void host_settings_v6(common::Database& db) {
  db.exec(
      "CREATE TABLE host_settings (host TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, "
      "PRIMARY KEY (host, key))");
  Stmt(db, std::string("INSERT INTO host_settings(host, key, value) SELECT ?, key, value FROM "
                       "settings WHERE key NOT IN ") +
               kGlobalSettingsSql)
      .bind(common::this_host_name())
      .run();
  db.exec(std::string("DELETE FROM settings WHERE key NOT IN ") + kGlobalSettingsSql);
}

}  // namespace

// (`dir`: version 4 registers this host, whose disk is discovered there.)
std::vector<common::Database::Migration> store_migrations(const std::string& dir) {
  return {schema_v1,          glance_image_fields_v2,
          metadata_tables_v3, [dir](common::Database& db) { hosts_v4(db, dir); },
          work_queue_v5,      host_settings_v6};
}

namespace {

// Creates the state directory (instances, images and bases live there whatever the database)
// and returns where the database is: `db_url` if given, else the SQLite file in the directory.
std::string database_location(const std::string& dir, const std::string& db_url) {
  // Instances live below: QEMU passes through on its way to their config drives (perms.h).
  try {
    make_dir(dir, kPassageDir);
  } catch (const Error& e) {
    throw system_error(std::string("state directory: ") + e.what());
  }
  return db_url.empty() ? dir + "/spawn.db" : db_url;
}

common::Database::Options in_schema(const std::string& schema) {
  common::Database::Options o;
  o.schema = schema;
  return o;
}

}  // namespace

// Opening writes nothing when the schema is current, so a listing never waits for the write
// lock that a boot in another process holds.
Store::Store(const std::string& dir, const std::string& db_url, const std::string& schema)
    : dir_(dir), db_(database_location(dir, db_url), store_migrations(dir), in_schema(schema)) {}

void Store::put(const Image& i) {
  Stmt s(db_, common::upsert_sql("images",
                                 {"id", "name", "disk_format", "digest", "size", "virtual_size",
                                  "created_at", "checksum", "os_hash_algo", "os_hash_value",
                                  "min_disk", "min_ram", "properties"},
                                 "id"));
  common::Json props = common::Json::object();
  for (const auto& [k, v] : i.properties) props[k] = v;
  s.bind(i.id)
      .bind(i.name)
      .bind(i.disk_format)
      .bind(i.digest)
      .bind(i.size)
      .bind(i.virtual_size)
      .bind(i.created_at)
      .bind(i.checksum)
      .bind(i.os_hash_algo)
      .bind(i.os_hash_value)
      .bind(i.min_disk)
      .bind(i.min_ram)
      .bind(common::dump(props))
      .run();
}

void Store::put(const Flavor& f) {
  Stmt s(db_,
         common::upsert_sql("flavors", {"name", "vcpus", "ram_mb", "disk_gb", "builtin"}, "name"));
  s.bind(f.name).bind(f.vcpus).bind(f.ram_mb).bind(f.disk_gb).bind(f.builtin).run();
}

void Store::put(const Instance& i) {
  static const std::string sql = [] {
    std::vector<std::string> names;
    for (const std::string& c : common::split(kInstanceCols, ',')) names.push_back(common::trim(c));
    return common::upsert_sql("instances", {names.begin(), names.end()}, "id");
  }();
  Stmt s(db_, sql);
  s.bind(i.id)
      .bind(i.name)
      .bind(i.image_id)
      .bind(i.image_digest)
      .bind(i.image_format)
      .bind(i.flavor)
      .bind(i.vcpus)
      .bind(i.ram_mb)
      .bind(i.disk_gb)
      .bind(i.network)
      .bind(i.network_id)
      .bind(i.status)
      .bind(i.task_state)
      .bind(i.fault)
      .bind(i.port_id)
      .bind(i.mac)
      .bind(i.ip)
      .bind(i.tap)
      .bind(i.dir)
      .bind(i.export_name)
      .bind(i.domain_name)
      .bind(i.domain_xml)
      .bind(common::join(i.steps_done, ","))
      .bind(i.base_filled)
      .bind(i.created_at.empty() ? utc_now() : i.created_at)
      .bind(i.updated_at.empty() ? utc_now() : i.updated_at)
      .bind(i.nbd_socket)
      .bind(i.host)
      .run();
}

void Store::remove_image(const std::string& id) {
  Stmt(db_, "DELETE FROM images WHERE id = ?").bind(id).run();
}

void Store::remove_flavor(const std::string& name) {
  Stmt(db_, "DELETE FROM flavors WHERE name = ?").bind(name).run();
}

void Store::remove_instance(const std::string& id) {
  write([&] {
    Stmt(db_, "DELETE FROM claims WHERE instance_id = ?").bind(id).run();
    Stmt(db_, "DELETE FROM events WHERE instance_id = ?").bind(id).run();
    Stmt(db_, "DELETE FROM instances WHERE id = ?").bind(id).run();
    Stmt(db_, "DELETE FROM work_queue WHERE instance_id = ?").bind(id).run();
    remove_metadata(id);
  });
}

void Store::put_metadata(const std::string& instance_id, const std::string& record,
                         const std::vector<std::pair<std::string, std::string>>& addresses) {
  write([&] {
    remove_metadata(instance_id);
    Stmt(db_, "INSERT INTO metadata(instance_id, record) VALUES (?, ?)")
        .bind(instance_id)
        .bind_blob(record)
        .run();
    for (const auto& [network_id, ip] : addresses)
      Stmt(db_, common::upsert_sql("metadata_addresses", {"network_id", "ip", "instance_id"},
                                   "network_id, ip"))
          .bind(network_id)
          .bind(ip)
          .bind(instance_id)
          .run();
  });
}

void Store::remove_metadata(const std::string& instance_id) {
  write([&] {
    Stmt(db_, "DELETE FROM metadata WHERE instance_id = ?").bind(instance_id).run();
    Stmt(db_, "DELETE FROM metadata_addresses WHERE instance_id = ?").bind(instance_id).run();
  });
}

std::optional<std::string> Store::metadata_of(const std::string& instance_id) {
  Stmt s(db_, "SELECT record FROM metadata WHERE instance_id = ?");
  s.bind(instance_id);
  if (!s.step()) return std::nullopt;
  return s.blob(0);
}

std::optional<std::string> Store::metadata_for(const std::string& network_id,
                                               const std::string& ip) {
  Stmt s(db_,
         "SELECT m.record FROM metadata_addresses a JOIN metadata m "
         "ON m.instance_id = a.instance_id WHERE a.network_id = ? AND a.ip = ?");
  s.bind(network_id).bind(ip);
  if (!s.step()) return std::nullopt;
  return s.blob(0);
}

namespace {

// Written by put() only, so well-formed; the limit guards against a hand-edited database.
std::map<std::string, std::string> parse_properties(const std::string& text) {
  std::map<std::string, std::string> out;
  common::Json props = common::parse_json(text, 1 << 20, "image properties");
  if (props.is_object())
    for (const auto& [k, v] : props.items())
      if (v.is_string()) out[k] = v.get<std::string>();
  return out;
}

template <typename StmtT>
Image read_image(StmtT& s) {
  Image i;
  i.id = s.text(0);
  i.name = s.text(1);
  i.disk_format = s.text(2);
  i.digest = s.text(3);
  i.size = static_cast<uint64_t>(s.integer(4));
  i.virtual_size = static_cast<uint64_t>(s.integer(5));
  i.created_at = s.text(6);
  i.checksum = s.text(7);
  i.os_hash_algo = s.text(8);
  i.os_hash_value = s.text(9);
  i.min_disk = s.integer(10);
  i.min_ram = s.integer(11);
  i.properties = parse_properties(s.text(12));
  return i;
}

template <typename StmtT>
Instance read_instance(StmtT& s) {
  Instance i;
  int c = 0;
  i.id = s.text(c++);
  i.name = s.text(c++);
  i.image_id = s.text(c++);
  i.image_digest = s.text(c++);
  i.image_format = s.text(c++);
  i.flavor = s.text(c++);
  i.vcpus = static_cast<int>(s.integer(c++));
  i.ram_mb = s.integer(c++);
  i.disk_gb = s.integer(c++);
  i.network = s.text(c++);
  i.network_id = s.text(c++);
  i.status = s.text(c++);
  i.task_state = s.text(c++);
  i.fault = s.text(c++);
  i.port_id = s.text(c++);
  i.mac = s.text(c++);
  i.ip = s.text(c++);
  i.tap = s.text(c++);
  i.dir = s.text(c++);
  i.export_name = s.text(c++);
  i.domain_name = s.text(c++);
  i.domain_xml = s.text(c++);
  i.steps_done = common::split_nonempty(s.text(c++), ',');
  i.base_filled = s.integer(c++) != 0;
  i.created_at = s.text(c++);
  i.updated_at = s.text(c++);
  i.nbd_socket = s.text(c++);
  i.host = s.text(c++);
  return i;
}

}  // namespace

std::optional<Image> Store::find_image(const std::string& ref) {
  std::string sql = std::string("SELECT ") + kImageCols +
                    " FROM images WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1";
  Stmt s(db_, sql.c_str());
  s.bind(ref);
  if (!s.step()) return std::nullopt;
  return read_image(s);
}

std::vector<Image> Store::images() {
  std::string sql = std::string("SELECT ") + kImageCols + " FROM images ORDER BY name";
  Stmt s(db_, sql.c_str());
  std::vector<Image> out;
  while (s.step()) out.push_back(read_image(s));
  return out;
}

std::optional<Flavor> Store::find_flavor(const std::string& name) {
  Stmt s(db_, "SELECT name, vcpus, ram_mb, disk_gb, builtin FROM flavors WHERE name = ?");
  s.bind(name);
  if (!s.step()) return std::nullopt;
  return Flavor{s.text(0), static_cast<int>(s.integer(1)), s.integer(2), s.integer(3),
                s.integer(4) != 0};
}

std::vector<Flavor> Store::flavors() {
  Stmt s(db_, "SELECT name, vcpus, ram_mb, disk_gb, builtin FROM flavors ORDER BY ram_mb, name");
  std::vector<Flavor> out;
  while (s.step())
    out.push_back(
        {s.text(0), static_cast<int>(s.integer(1)), s.integer(2), s.integer(3), s.integer(4) != 0});
  return out;
}

std::optional<Instance> Store::find_instance(const std::string& ref) {
  std::string sql = std::string("SELECT ") + kInstanceCols +
                    " FROM instances WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1";
  Stmt s(db_, sql.c_str());
  s.bind(ref);
  if (!s.step()) return std::nullopt;
  return read_instance(s);
}

std::vector<Instance> Store::instances() {
  std::string sql =
      std::string("SELECT ") + kInstanceCols + " FROM instances ORDER BY created_at, name";
  Stmt s(db_, sql.c_str());
  std::vector<Instance> out;
  while (s.step()) out.push_back(read_instance(s));
  return out;
}

std::vector<Instance> Store::instances_of_image(const std::string& image_id) {
  std::string sql = std::string("SELECT ") + kInstanceCols +
                    " FROM instances WHERE image_id = ? ORDER BY created_at, name";
  Stmt s(db_, sql.c_str());
  s.bind(image_id);
  std::vector<Instance> out;
  while (s.step()) out.push_back(read_instance(s));
  return out;
}

std::vector<Instance> Store::instances_of_digest(const std::string& digest) {
  std::string sql = std::string("SELECT ") + kInstanceCols +
                    " FROM instances WHERE image_digest = ? ORDER BY created_at, name";
  Stmt s(db_, sql.c_str());
  s.bind(digest);
  std::vector<Instance> out;
  while (s.step()) out.push_back(read_instance(s));
  return out;
}

void Store::add_event(const std::string& instance_id, const std::string& status,
                      const std::string& task_state, const std::string& message) {
  Stmt s(db_,
         "INSERT INTO events(instance_id, at, status, task_state, message) VALUES (?, ?, ?, ?, ?)");
  s.bind(instance_id).bind(utc_now()).bind(status).bind(task_state).bind(message).run();
}

std::vector<Event> Store::events(const std::string& instance_id) {
  Stmt s(db_,
         "SELECT at, status, task_state, message FROM events WHERE instance_id = ? ORDER BY seq");
  s.bind(instance_id);
  std::vector<Event> out;
  while (s.step()) out.push_back({s.text(0), s.text(1), s.text(2), s.text(3)});
  return out;
}

void Store::put_claim(const std::string& instance_id, int vcpus, int64_t ram_mb, int64_t disk_gb,
                      const std::string& host) {
  Stmt s(db_,
         "INSERT INTO claims(instance_id, vcpus, ram_mb, disk_gb, host) VALUES (?, ?, ?, ?, ?)");
  s.bind(instance_id).bind(vcpus).bind(ram_mb).bind(disk_gb).bind(host).run();
}

void Store::remove_claim(const std::string& instance_id) {
  Stmt(db_, "DELETE FROM claims WHERE instance_id = ?").bind(instance_id).run();
}

bool Store::has_claim(const std::string& instance_id) {
  Stmt s(db_, "SELECT 1 FROM claims WHERE instance_id = ?");
  s.bind(instance_id);
  return s.step();
}

Usage Store::usage() {
  Stmt s(db_,
         "SELECT COALESCE(SUM(vcpus), 0), COALESCE(SUM(ram_mb), 0), COALESCE(SUM(disk_gb), 0), "
         "COUNT(*) FROM claims");
  s.step();
  return {s.integer(0), s.integer(1), s.integer(2), s.integer(3)};
}

std::optional<std::string> Store::setting(const std::string& key) {
  return setting_of(common::this_host_name(), key);
}

std::optional<std::string> Store::setting_of(const std::string& host, const std::string& key) {
  if (is_host_setting(key)) return host_setting(host, key);
  Stmt s(db_, "SELECT value FROM settings WHERE key = ?");
  s.bind(key);
  if (!s.step()) return std::nullopt;
  return s.text(0);
}

std::optional<std::string> Store::host_setting(const std::string& host, const std::string& key) {
  Stmt s(db_, "SELECT value FROM host_settings WHERE host = ? AND key = ?");
  s.bind(host).bind(key);
  if (!s.step()) return std::nullopt;
  return s.text(0);
}

void Store::set_setting(const std::string& key, const std::string& value) {
  write([&] {
    const bool per_host = is_host_setting(key);
    const std::string host = per_host ? common::this_host_name() : "";
    if (value.empty() && per_host)
      Stmt(db_, "DELETE FROM host_settings WHERE host = ? AND key = ?").bind(host).bind(key).run();
    else if (value.empty())
      Stmt(db_, "DELETE FROM settings WHERE key = ?").bind(key).run();
    else if (per_host)
      Stmt(db_, common::upsert_sql("host_settings", {"host", "key", "value"}, "host, key"))
          .bind(host)
          .bind(key)
          .bind(value)
          .run();
    else
      Stmt(db_, common::upsert_sql("settings", {"key", "value"}, "key"))
          .bind(key)
          .bind(value)
          .run();
  });
}

// The global settings and this host's, by key.
std::vector<std::pair<std::string, std::string>> Store::settings() {
  Stmt s(db_,
         "SELECT key, value FROM settings UNION ALL SELECT key, value FROM host_settings WHERE "
         "host = ? ORDER BY 1");
  s.bind(common::this_host_name());
  std::vector<std::pair<std::string, std::string>> out;
  while (s.step()) out.emplace_back(s.text(0), s.text(1));
  return out;
}

const std::vector<Flavor>& builtin_flavors() {
  static const std::vector<Flavor> kFlavors = {
      {"m1.tiny", 1, 512, 1, true},       {"m1.small", 1, 2048, 20, true},
      {"m1.medium", 2, 4096, 40, true},   {"m1.large", 4, 8192, 80, true},
      {"m1.xlarge", 8, 16384, 160, true},
  };
  return kFlavors;
}

std::string utc_now() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  std::tm tm{};
  gmtime_r(&ts.tv_sec, &tm);
  char buf[40];
  size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%03dZ", static_cast<int>(ts.tv_nsec / 1000000));
  return buf;
}

}  // namespace kiln::spawn

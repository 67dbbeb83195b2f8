#include "kiln/spawn/store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/random.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "kiln/spawn/error.h"
#include "perms.h"
#include "util.h"

namespace kiln::spawn {

Error errno_error(const std::string& what, int err) {
  return system_error(what + ": " + std::strerror(err));
}

namespace {

const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS images (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, disk_format TEXT NOT NULL,
  digest TEXT NOT NULL, size INTEGER NOT NULL, virtual_size INTEGER NOT NULL,
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
  seq INTEGER PRIMARY KEY AUTOINCREMENT, instance_id TEXT NOT NULL, at TEXT NOT NULL,
  status TEXT NOT NULL, task_state TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_instance ON events(instance_id);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
)sql";

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ",") + s;
  return out;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t comma = s.find(',', pos);
    if (comma == std::string::npos) comma = s.size();
    if (comma > pos) out.push_back(s.substr(pos, comma - pos));
    pos = comma + 1;
  }
  return out;
}

}  // namespace

class Store::Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &st_, nullptr) != SQLITE_OK)
      throw system_error(std::string("database: ") + sqlite3_errmsg(db));
  }
  ~Stmt() { sqlite3_finalize(st_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& bind(const std::string& v) {
    sqlite3_bind_text(st_, ++n_, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& bind(const char* v) { return bind(std::string(v)); }
  Stmt& bind(int64_t v) {
    sqlite3_bind_int64(st_, ++n_, v);
    return *this;
  }
  Stmt& bind(int v) { return bind(static_cast<int64_t>(v)); }
  Stmt& bind(uint64_t v) { return bind(static_cast<int64_t>(v)); }
  Stmt& bind(bool v) { return bind(static_cast<int64_t>(v ? 1 : 0)); }

  // True while there is a row.
  bool step() {
    int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    if (rc == SQLITE_CONSTRAINT)
      throw conflict(std::string("database constraint: ") + sqlite3_errmsg(db_));
    throw system_error(std::string("database: ") + sqlite3_errmsg(db_));
  }
  void run() {
    while (step()) {
    }
  }
  std::string text(int col) {
    auto* p = sqlite3_column_text(st_, col);
    return p ? std::string(reinterpret_cast<const char*>(p),
                           static_cast<size_t>(sqlite3_column_bytes(st_, col)))
             : std::string();
  }
  int64_t i64(int col) { return sqlite3_column_int64(st_, col); }

 private:
  sqlite3* db_;
  sqlite3_stmt* st_ = nullptr;
  int n_ = 0;
};

namespace {

const char* kInstanceCols =
    "id, name, image_id, image_digest, image_format, flavor, vcpus, ram_mb, disk_gb, network, "
    "network_id, status, task_state, fault, port_id, mac, ip, tap, dir, export_name, "
    "domain_name, domain_xml, steps_done, base_filled, created_at, updated_at, nbd_socket";

}  // namespace

Store::Store(const std::string& dir) : dir_(dir) {
  // Instances live below: QEMU passes through on its way to their config drives (perms.h).
  try {
    make_dir(dir, kPassageDir);
  } catch (const Error& e) {
    throw system_error(std::string("state directory: ") + e.what());
  }
  std::string path = dir + "/spawn.db";
  // Tenant data: 0600 whatever the umask. SQLite gives its -wal and -shm files the database
  // file's mode.
  {
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, kPrivateFile));
    if (fd.get() < 0) throw errno_error("cannot create " + path, errno);
    if (::fchmod(fd.get(), kPrivateFile) != 0) throw errno_error("cannot chmod " + path, errno);
  }
  if (sqlite3_open_v2(path.c_str(), &db_,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    throw system_error("cannot open " + path + ": " + msg);
  }
  sqlite3_busy_timeout(db_, 30000);
  exec("PRAGMA journal_mode=WAL");
  exec("PRAGMA synchronous=NORMAL");
  exec("PRAGMA foreign_keys=ON");
  // An existing -wal or -shm of an older kiln-spawn keeps the mode it was made with.
  for (const char* suffix : {"-wal", "-shm"})
    if (::chmod((path + suffix).c_str(), kPrivateFile) != 0 && errno != ENOENT)
      throw errno_error("cannot chmod " + path + suffix, errno);
  write([&] {
    exec(kSchema);
    // Databases made before the column existed (their instances use the shared socket).
    bool has_socket = false;
    for (Stmt t(db_, "PRAGMA table_info(instances)"); t.step();)
      has_socket |= t.text(1) == "nbd_socket";
    if (!has_socket) exec("ALTER TABLE instances ADD COLUMN nbd_socket TEXT NOT NULL DEFAULT ''");
    for (const Flavor& f : builtin_flavors()) {
      Stmt s(db_,
             "INSERT OR IGNORE INTO flavors(name, vcpus, ram_mb, disk_gb, builtin) "
             "VALUES (?, ?, ?, ?, 1)");
      s.bind(f.name).bind(f.vcpus).bind(f.ram_mb).bind(f.disk_gb).run();
    }
  });
}

Store::~Store() { sqlite3_close(db_); }

void Store::exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    throw system_error("database: " + msg);
  }
}

void Store::write(const std::function<void()>& fn) {
  if (txn_depth_ > 0) {
    ++txn_depth_;
    try {
      fn();
    } catch (...) {
      --txn_depth_;
      throw;
    }
    --txn_depth_;
    return;
  }
  exec("BEGIN IMMEDIATE");
  txn_depth_ = 1;
  try {
    fn();
    exec("COMMIT");
    txn_depth_ = 0;
  } catch (...) {
    txn_depth_ = 0;
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

void Store::put(const Image& i) {
  Stmt s(db_,
         "INSERT OR REPLACE INTO images(id, name, disk_format, digest, size, virtual_size, "
         "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)");
  s.bind(i.id)
      .bind(i.name)
      .bind(i.disk_format)
      .bind(i.digest)
      .bind(i.size)
      .bind(i.virtual_size)
      .bind(i.created_at)
      .run();
}

void Store::put(const Flavor& f) {
  Stmt s(db_,
         "INSERT OR REPLACE INTO flavors(name, vcpus, ram_mb, disk_gb, builtin) "
         "VALUES (?, ?, ?, ?, ?)");
  s.bind(f.name).bind(f.vcpus).bind(f.ram_mb).bind(f.disk_gb).bind(f.builtin).run();
}

void Store::put(const Instance& i) {
  std::string sql = std::string("INSERT OR REPLACE INTO instances(") + kInstanceCols +
                    ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                    "?, ?, ?, ?, ?)";
  Stmt s(db_, sql.c_str());
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
      .bind(join(i.steps_done))
      .bind(i.base_filled)
      .bind(i.created_at.empty() ? utc_now() : i.created_at)
      .bind(i.updated_at.empty() ? utc_now() : i.updated_at)
      .bind(i.nbd_socket)
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
  });
}

namespace {

template <typename StmtT>
Image read_image(StmtT& s) {
  Image i;
  i.id = s.text(0);
  i.name = s.text(1);
  i.disk_format = s.text(2);
  i.digest = s.text(3);
  i.size = static_cast<uint64_t>(s.i64(4));
  i.virtual_size = static_cast<uint64_t>(s.i64(5));
  i.created_at = s.text(6);
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
  i.vcpus = static_cast<int>(s.i64(c++));
  i.ram_mb = s.i64(c++);
  i.disk_gb = s.i64(c++);
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
  i.steps_done = split(s.text(c++));
  i.base_filled = s.i64(c++) != 0;
  i.created_at = s.text(c++);
  i.updated_at = s.text(c++);
  i.nbd_socket = s.text(c++);
  return i;
}

}  // namespace

std::optional<Image> Store::find_image(const std::string& ref) {
  Stmt s(db_,
         "SELECT id, name, disk_format, digest, size, virtual_size, created_at FROM images "
         "WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1");
  s.bind(ref);
  if (!s.step()) return std::nullopt;
  return read_image(s);
}

std::vector<Image> Store::images() {
  Stmt s(db_,
         "SELECT id, name, disk_format, digest, size, virtual_size, created_at FROM images "
         "ORDER BY name");
  std::vector<Image> out;
  while (s.step()) out.push_back(read_image(s));
  return out;
}

std::optional<Flavor> Store::find_flavor(const std::string& name) {
  Stmt s(db_, "SELECT name, vcpus, ram_mb, disk_gb, builtin FROM flavors WHERE name = ?");
  s.bind(name);
  if (!s.step()) return std::nullopt;
  return Flavor{s.text(0), static_cast<int>(s.i64(1)), s.i64(2), s.i64(3), s.i64(4) != 0};
}

std::vector<Flavor> Store::flavors() {
  Stmt s(db_, "SELECT name, vcpus, ram_mb, disk_gb, builtin FROM flavors ORDER BY ram_mb, name");
  std::vector<Flavor> out;
  while (s.step())
    out.push_back({s.text(0), static_cast<int>(s.i64(1)), s.i64(2), s.i64(3), s.i64(4) != 0});
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

void Store::put_claim(const std::string& instance_id, int vcpus, int64_t ram_mb, int64_t disk_gb) {
  Stmt s(db_, "INSERT INTO claims(instance_id, vcpus, ram_mb, disk_gb) VALUES (?, ?, ?, ?)");
  s.bind(instance_id).bind(vcpus).bind(ram_mb).bind(disk_gb).run();
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
  return {s.i64(0), s.i64(1), s.i64(2), s.i64(3)};
}

std::optional<std::string> Store::setting(const std::string& key) {
  Stmt s(db_, "SELECT value FROM settings WHERE key = ?");
  s.bind(key);
  if (!s.step()) return std::nullopt;
  return s.text(0);
}

void Store::set_setting(const std::string& key, const std::string& value) {
  write([&] {
    if (value.empty())
      Stmt(db_, "DELETE FROM settings WHERE key = ?").bind(key).run();
    else
      Stmt(db_, "INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)")
          .bind(key)
          .bind(value)
          .run();
  });
}

std::vector<std::pair<std::string, std::string>> Store::settings() {
  Stmt s(db_, "SELECT key, value FROM settings ORDER BY key");
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

std::string new_uuid() {
  uint8_t b[16];
  size_t got = 0;
  while (got < sizeof b) {
    ssize_t n = getrandom(b + got, sizeof b - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw errno_error("getrandom", errno);
    }
    got += static_cast<size_t>(n);
  }
  b[6] = static_cast<uint8_t>((b[6] & 0x0f) | 0x40);
  b[8] = static_cast<uint8_t>((b[8] & 0x3f) | 0x80);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += kHex[b[i] >> 4];
    out += kHex[b[i] & 15];
  }
  return out;
}

}  // namespace kiln::spawn

// The SQLite store base of every Kiln module that keeps state (netplumb, spawn): one database
// file; the modules keep their schemas and queries, this keeps the guarantees.
//
// - Durable: WAL with synchronous=FULL, so a write is on disk when write() returns.
// - Reads never take the write lock: only write() starts a write transaction (BEGIN IMMEDIATE),
//   and opening a database whose schema is current writes nothing. A reader sees the last
//   committed state while another process is in the middle of a write.
// - Writers serialise: BEGIN IMMEDIATE takes the lock up front, a second writer waits for it
//   (busy timeout, 30 s) instead of failing halfway through its transaction.
// - Bounded WAL: a commit that leaves the WAL at `checkpoint_pages` or more checkpoints and
//   truncates it (skipped, not waited for, while another connection is busy).
// - Schema versions: PRAGMA user_version counts the migrations applied; opening runs the missing
//   ones, in order, in one write transaction. A database newer than the code is refused.
// - The file (and its -wal and -shm) is mode 0600 whatever the umask: tenant data.
#pragma once

#include <concepts>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct sqlite3;
struct sqlite3_stmt;

namespace kiln::common {

class Database;

// One prepared statement; bind() in order, step() for each row. Errors throw common::Error:
// a UNIQUE or PRIMARY KEY violation kExists, another constraint kBusy, the rest kIo.
class Stmt {
 public:
  Stmt(sqlite3* db, std::string_view sql);
  Stmt(Database& db, std::string_view sql);
  ~Stmt();
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& bind(std::string_view v);
  Stmt& bind(const std::string& v) { return bind(std::string_view(v)); }
  Stmt& bind(const char* v) { return bind(std::string_view(v)); }
  Stmt& bind(int64_t v);
  Stmt& bind(int v) { return bind(int64_t{v}); }
  Stmt& bind(uint32_t v) { return bind(int64_t{v}); }
  Stmt& bind(uint64_t v) { return bind(static_cast<int64_t>(v)); }
  Stmt& bind(bool v) { return bind(int64_t{v ? 1 : 0}); }
  Stmt& bind(std::nullopt_t);
  template <class T>
  Stmt& bind(const std::optional<T>& v) {
    return v ? bind(*v) : bind(std::nullopt);
  }
  // Value types that print themselves (addresses, prefixes) are stored as that text.
  template <class T>
  requires requires(const T& t) {
    { t.str() } -> std::convertible_to<std::string>;
  }
  Stmt& bind(const T& v) { return bind(std::string(v.str())); }

  // True while there is a row.
  bool step();
  // Steps to the end (statements without rows).
  void run();

  std::string text(int col);
  int64_t integer(int col);
  bool null(int col);

 private:
  sqlite3* db_;
  sqlite3_stmt* st_ = nullptr;
  int n_ = 0;
};

class Database {
 public:
  // Migration i takes the schema from version i to i+1; it runs inside the write transaction
  // that also sets user_version, so a crash leaves the database at i or at i+1.
  using Migration = std::function<void(Database&)>;

  struct Options {
    int busy_timeout_ms = 30000;
    int checkpoint_pages = 100;
  };

  // Opens `path` (creating it 0600; its directory must exist) and migrates it.
  Database(const std::string& path, std::vector<Migration> migrations, Options options);
  Database(const std::string& path, std::vector<Migration> migrations)
      : Database(path, std::move(migrations), Options{}) {}
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  // Runs `fn` in BEGIN IMMEDIATE .. COMMIT, rolled back if it throws; nested calls join the
  // outer transaction.
  void write(const std::function<void()>& fn);
  // Runs `fn` in a read transaction (one consistent view across several queries); joins an
  // outer transaction. Takes no write lock.
  void read(const std::function<void()>& fn);

  void exec(const std::string& sql);
  int schema_version();
  const std::string& path() const { return path_; }
  sqlite3* handle() { return db_; }

 private:
  void migrate(const std::vector<Migration>& migrations);
  std::string path_;
  sqlite3* db_ = nullptr;
  Options options_;  // read by the WAL hook
  int txn_depth_ = 0;
};

}  // namespace kiln::common

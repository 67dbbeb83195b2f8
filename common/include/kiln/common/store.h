// The store base of every Kiln module that keeps state (netplumb, spawn): SQLite in one file (the
// embedded default) or a PostgreSQL database shared by several hosts; the modules keep their
// schemas and queries, this keeps the guarantees, the same on both engines.
//
// - Durable: a write is on disk when write() returns (SQLite: WAL with synchronous=FULL;
//   PostgreSQL: its commit).
// - Reads never take the write lock: only write() starts a write transaction, and opening a
//   database whose schema is current writes nothing. A reader sees the last committed state
//   while another process is in the middle of a write.
// - Writers serialise: a write transaction takes the writers' lock up front (SQLite: BEGIN
//   IMMEDIATE; PostgreSQL: a transaction-scoped advisory lock per schema), and a second writer,
//   on this host or another, waits for it (30 s) instead of failing halfway through. So every
//   allocation (addresses, MACs, claims) is as atomic across hosts as within one.
// - A failed statement inside a transaction is undone alone and the transaction goes on (as
//   SQLite does; on PostgreSQL through a savepoint per statement), so callers may try an insert
//   and handle kExists.
// - Bounded WAL (SQLite): a commit that leaves the WAL at `checkpoint_pages` or more checkpoints
//   and truncates it (skipped, not waited for, while another connection is busy).
// - Schema versions: a counter of the migrations applied (SQLite: PRAGMA user_version;
//   PostgreSQL: a one-row table in the module's schema); opening runs the missing ones, in
//   order, in one write transaction. A database newer than the code is refused.
// - SQLite's file (and its -wal and -shm) is mode 0600 whatever the umask: tenant data.
//
// SQL that both engines run: `?` (or SQLite's `?NNN`) placeholders, BIGINT for 64-bit integers, ON
// CONFLICT(...) DO UPDATE for upserts; where the dialects differ, migrations ask dialect().
#pragma once

#include <concepts>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::common {

class Database;

namespace store_detail {
class Backend;
class Cursor;
}  // namespace store_detail

enum class Dialect { kSqlite, kPostgres };

// One prepared statement; bind() in order, step() for each row. Errors throw common::Error:
// a UNIQUE or PRIMARY KEY violation kExists, another constraint kBusy, the rest kIo.
class Stmt {
 public:
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

  // Bytes that need not be text (NULs, not UTF-8): a {{blob}} column.
  Stmt& bind_blob(std::string_view bytes);

  // True while there is a row.
  bool step();
  // Steps to the end (statements without rows).
  void run();

  std::string text(int col);
  int64_t integer(int col);
  bool null(int col);
  std::string blob(int col);

 private:
  std::unique_ptr<store_detail::Cursor> c_;
};

class Database {
 public:
  // Migration i takes the schema from version i to i+1; it runs inside the write transaction
  // that also sets user_version, so a crash leaves the database at i or at i+1.
  using Migration = std::function<void(Database&)>;

  struct Options {
    int busy_timeout_ms = 30000;
    int checkpoint_pages = 100;  // SQLite
    // PostgreSQL: the schema (namespace) that holds this module's tables, so that modules can
    // share one database. Created by the first migration.
    std::string schema = "kiln";
  };

  // Opens `location` and migrates it: a libpq connection URI ("postgresql://..." or
  // "postgres://...", e.g. "postgresql:///kiln?host=/run/postgresql"), or else the path of an
  // SQLite file (created 0600; its directory must exist).
  Database(const std::string& location, std::vector<Migration> migrations, Options options);
  Database(const std::string& location, std::vector<Migration> migrations)
      : Database(location, std::move(migrations), Options{}) {}
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  // Runs `fn` in BEGIN IMMEDIATE .. COMMIT, rolled back if it throws; nested calls join the
  // outer transaction.
  void write(const std::function<void()>& fn);
  // Runs `fn` in a read transaction (one consistent view across several queries); joins an
  // outer transaction. Takes no write lock.
  void read(const std::function<void()>& fn);

  // Runs one or more statements without parameters.
  void exec(const std::string& sql);
  int schema_version();
  // The SQLite path, or the URI with any password removed (for messages).
  const std::string& path() const { return path_; }
  Dialect dialect() const;
  // PostgreSQL: the server dropped the connection (a restart, a failover). The next statement
  // or transaction opens it again (and fails, kIo, while the server cannot be reached); a
  // transaction that was open when it dropped is lost with it. Always false for SQLite.
  bool connection_lost() const;

  // Whether `location` names a PostgreSQL database rather than a file.
  static bool is_url(std::string_view location);

  // Table definitions written once for both engines, with two words for what differs:
  //   {{serial}}  an auto-numbered 64-bit primary key column type
  //               (SQLite: INTEGER PRIMARY KEY AUTOINCREMENT; PostgreSQL: an identity column)
  //   {{rowid}}   before a table's closing parenthesis: nothing on SQLite, where every table
  //               has a rowid, and an identity column named rowid on PostgreSQL, so that
  //               "ORDER BY rowid" lists rows in the order they were made on both.
  //   {{blob}}    a column of bytes (bind_blob, blob): BLOB, or PostgreSQL's BYTEA
  std::string schema_sql(std::string_view text) const;

 private:
  friend class Stmt;
  enum class Txn { kNone, kRead, kWrite };
  void migrate(const std::vector<Migration>& migrations);
  void in_transaction(Txn kind, const std::function<void()>& fn);
  std::string path_;
  std::unique_ptr<store_detail::Backend> backend_;
  Txn txn_ = Txn::kNone;
  int txn_depth_ = 0;
};

// "INSERT INTO table(c1, c2, ...) VALUES (?, ?, ...) ON CONFLICT(key) DO UPDATE SET
// c2 = excluded.c2, ...": insert or update one row by its key, on both engines. (SQLite's
// INSERT OR REPLACE would also delete any other row that clashes on another unique column,
// and renumber the row; this fails kExists instead and keeps the row's place.)
std::string upsert_sql(std::string_view table, const std::vector<std::string_view>& columns,
                       std::string_view key);

}  // namespace kiln::common

// The embedded engine: one SQLite file, WAL, synchronous=FULL, writers serialised by BEGIN
// IMMEDIATE and the busy timeout.
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include <cerrno>

#include "kiln/common/error.h"
#include "kiln/common/fd.h"
#include "store_backend.h"

namespace kiln::common::store_detail {

namespace {

constexpr mode_t kPrivateFile = 0600;

// A lock wait that ran out (SQLITE_BUSY after the busy timeout) is kBusy, as on PostgreSQL;
// the rest kIo.
Error sqlite_error(sqlite3* db) {
  const std::string msg = std::string("database: ") + sqlite3_errmsg(db);
  return (sqlite3_errcode(db) & 0xff) == SQLITE_BUSY ? busy(msg) : system_error(msg);
}

// Creates the file before SQLite does, to give it its mode: SQLite creates it with 0644 minus
// the umask, and gives the -wal and -shm files the database file's mode.
void create_private(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, kPrivateFile));
  if (!fd) throw errno_error("cannot create " + path, errno);
  if (::fchmod(fd.get(), kPrivateFile) != 0) throw errno_error("cannot chmod " + path, errno);
  // A -wal or -shm made by an older binary keeps the mode it was made with.
  for (const char* suffix : {"-wal", "-shm"})
    if (::chmod((path + suffix).c_str(), kPrivateFile) != 0 && errno != ENOENT)
      throw errno_error("cannot chmod " + path + suffix, errno);
}

class SqliteCursor final : public Cursor {
 public:
  SqliteCursor(sqlite3* db, std::string_view sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &st_, nullptr) !=
        SQLITE_OK)
      throw sqlite_error(db);
  }
  ~SqliteCursor() override { sqlite3_finalize(st_); }

  void bind_text(std::string_view v) override {
    sqlite3_bind_text(st_, ++n_, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }
  void bind_int(int64_t v) override { sqlite3_bind_int64(st_, ++n_, v); }
  void bind_null() override { sqlite3_bind_null(st_, ++n_); }
  void bind_blob(std::string_view v) override {
    sqlite3_bind_blob(st_, ++n_, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }

  bool step() override {
    int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    if ((rc & 0xff) == SQLITE_CONSTRAINT) {
      int ext = sqlite3_extended_errcode(db_);
      std::string msg = std::string("database constraint: ") + sqlite3_errmsg(db_);
      if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY) throw exists(msg);
      throw busy(msg);
    }
    throw sqlite_error(db_);
  }

  std::string text(int col) override {
    auto* p = sqlite3_column_text(st_, col);
    if (!p) return {};
    return std::string(reinterpret_cast<const char*>(p),
                       static_cast<size_t>(sqlite3_column_bytes(st_, col)));
  }
  int64_t integer(int col) override { return sqlite3_column_int64(st_, col); }
  bool null(int col) override { return sqlite3_column_type(st_, col) == SQLITE_NULL; }
  std::string blob(int col) override {
    const void* p = sqlite3_column_blob(st_, col);
    if (!p) return {};
    return std::string(static_cast<const char*>(p),
                       static_cast<size_t>(sqlite3_column_bytes(st_, col)));
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* st_ = nullptr;
  int n_ = 0;
};

class Sqlite final : public Backend {
 public:
  Sqlite(const std::string& path, const Database::Options& options) : options_(options) {
    create_private(path);
    if (sqlite3_open_v2(path.c_str(), &db_,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                        nullptr) != SQLITE_OK) {
      std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      throw system_error("cannot open " + path + ": " + msg);
    }
    try {
      configure();
    } catch (...) {
      sqlite3_close(db_);
      throw;
    }
  }
  ~Sqlite() override { sqlite3_close(db_); }

  Dialect dialect() const override { return Dialect::kSqlite; }
  std::unique_ptr<Cursor> prepare(std::string_view sql) override {
    return std::make_unique<SqliteCursor>(db_, sql);
  }
  void exec(const std::string& sql) override {
    char* err = nullptr;
    if (int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err); rc != SQLITE_OK) {
      std::string msg = "database: " + std::string(err ? err : sqlite3_errmsg(db_));
      sqlite3_free(err);
      throw(rc & 0xff) == SQLITE_BUSY ? busy(msg) : system_error(msg);
    }
  }
  // BEGIN IMMEDIATE takes the write lock up front; the busy timeout waits for other writers.
  void begin_write() override { exec("BEGIN IMMEDIATE"); }
  // A deferred transaction that only reads stays a read transaction: in WAL mode it reads the
  // last commit and never waits for a writer.
  void begin_read() override { exec("BEGIN"); }
  // The first write of a deferred transaction takes the lock (or fails with SQLITE_BUSY if
  // another writer committed since its snapshot).
  void upgrade() override {}
  void commit() override { exec("COMMIT"); }
  void rollback() noexcept override { sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr); }
  int schema_version() override {
    SqliteCursor s(db_, "PRAGMA user_version");
    return s.step() ? static_cast<int>(s.integer(0)) : 0;
  }
  void set_schema_version(int version) override {
    exec("PRAGMA user_version=" + std::to_string(version));
  }

 private:
  void configure() {
    sqlite3_busy_timeout(db_, options_.busy_timeout_ms);
    // Kiln's commands are short processes. By default the last connection to close checkpoints
    // the WAL into the database and deletes it (two fsyncs and an unlink), and the next one
    // creates it again (two more fsyncs, one of the directory): most of a command's time.
    // Instead the WAL stays, and each commit syncs it (synchronous=FULL), so a change is on disk
    // when write() returns, in a long-lived process as in a CLI command.
    sqlite3_db_config(db_, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
    exec("PRAGMA journal_mode=WAL");
    exec("PRAGMA synchronous=FULL");
    // A process that opens the database while no other has it open rebuilds the WAL index by
    // reading every frame of the WAL and forgets what was already checkpointed, so the WAL is
    // never restarted by the next writer: SQLite's automatic (passive) checkpoint would let it
    // grow without end. So a commit that leaves checkpoint_pages or more in the WAL
    // checkpoints and truncates it; if another connection is busy, a later commit does it.
    struct Hook {
      static int run(void* arg, sqlite3* db, const char* name, int pages) {
        const auto* o = static_cast<const Database::Options*>(arg);
        if (pages >= o->checkpoint_pages) {
          sqlite3_busy_timeout(db, 0);
          sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr);
          sqlite3_busy_timeout(db, o->busy_timeout_ms);
        }
        return SQLITE_OK;
      }
    };
    sqlite3_wal_hook(db_, &Hook::run, &options_);
    exec("PRAGMA foreign_keys=ON");
  }

  sqlite3* db_ = nullptr;
  Database::Options options_;  // read by the WAL hook
};

}  // namespace

std::unique_ptr<Backend> open_sqlite(const std::string& path, const Database::Options& options) {
  return std::make_unique<Sqlite>(path, options);
}

}  // namespace kiln::common::store_detail

#include "kiln/common/store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include <cerrno>

#include "kiln/common/error.h"
#include "kiln/common/fd.h"

namespace kiln::common {

namespace {

constexpr mode_t kPrivateFile = 0600;

Error sqlite_error(sqlite3* db) {
  return system_error(std::string("database: ") + sqlite3_errmsg(db));
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

}  // namespace

Stmt::Stmt(sqlite3* db, std::string_view sql) : db_(db) {
  if (sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &st_, nullptr) != SQLITE_OK)
    throw sqlite_error(db);
}

Stmt::Stmt(Database& db, std::string_view sql) : Stmt(db.handle(), sql) {}

Stmt::~Stmt() { sqlite3_finalize(st_); }

Stmt& Stmt::bind(std::string_view v) {
  sqlite3_bind_text(st_, ++n_, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  return *this;
}

Stmt& Stmt::bind(int64_t v) {
  sqlite3_bind_int64(st_, ++n_, v);
  return *this;
}

Stmt& Stmt::bind(std::nullopt_t) {
  sqlite3_bind_null(st_, ++n_);
  return *this;
}

bool Stmt::step() {
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

void Stmt::run() {
  while (step()) {
  }
}

std::string Stmt::text(int col) {
  auto* p = sqlite3_column_text(st_, col);
  if (!p) return {};
  return std::string(reinterpret_cast<const char*>(p),
                     static_cast<size_t>(sqlite3_column_bytes(st_, col)));
}

int64_t Stmt::integer(int col) { return sqlite3_column_int64(st_, col); }

bool Stmt::null(int col) { return sqlite3_column_type(st_, col) == SQLITE_NULL; }

Database::Database(const std::string& path, std::vector<Migration> migrations, Options options)
    : path_(path) {
  create_private(path);
  if (sqlite3_open_v2(path.c_str(), &db_,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    throw system_error("cannot open " + path + ": " + msg);
  }
  try {
    sqlite3_busy_timeout(db_, options.busy_timeout_ms);
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
        const auto* o = static_cast<const Options*>(arg);
        if (pages >= o->checkpoint_pages) {
          sqlite3_busy_timeout(db, 0);
          sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr);
          sqlite3_busy_timeout(db, o->busy_timeout_ms);
        }
        return SQLITE_OK;
      }
    };
    options_ = options;
    sqlite3_wal_hook(db_, &Hook::run, &options_);
    exec("PRAGMA foreign_keys=ON");
    migrate(migrations);
  } catch (...) {
    sqlite3_close(db_);
    throw;
  }
}

Database::~Database() { sqlite3_close(db_); }

int Database::schema_version() {
  Stmt s(db_, "PRAGMA user_version");
  return s.step() ? static_cast<int>(s.integer(0)) : 0;
}

void Database::migrate(const std::vector<Migration>& migrations) {
  const int target = static_cast<int>(migrations.size());
  // Read first, without the write lock: a database that is current is opened without writing,
  // so opening never waits for another process's write transaction.
  int version = schema_version();
  if (version == target) return;
  auto too_new = [&](int v) {
    return Error(Reason::kUnsupported, "database " + path_ + " has schema version " +
                                           std::to_string(v) + ", newer than this program (" +
                                           std::to_string(target) + ")");
  };
  if (version > target) throw too_new(version);
  write([&] {
    // Another process may have migrated between the read and the lock.
    int v = schema_version();
    if (v > target) throw too_new(v);
    for (; v < target; ++v) migrations[static_cast<size_t>(v)](*this);
    exec("PRAGMA user_version=" + std::to_string(target));
  });
}

void Database::exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errmsg(db_);
    sqlite3_free(err);
    throw system_error("database: " + msg);
  }
}

namespace {

// Runs `fn` between `begin` and COMMIT at depth 0, or joins the transaction already open.
void in_transaction(Database& db, int& depth, const char* begin, const std::function<void()>& fn) {
  if (depth > 0) {
    ++depth;
    try {
      fn();
    } catch (...) {
      --depth;
      throw;
    }
    --depth;
    return;
  }
  db.exec(begin);
  depth = 1;
  try {
    fn();
    db.exec("COMMIT");
    depth = 0;
  } catch (...) {
    depth = 0;
    sqlite3_exec(db.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

}  // namespace

void Database::write(const std::function<void()>& fn) {
  // BEGIN IMMEDIATE takes the write lock up front; the busy timeout waits for other writers.
  in_transaction(*this, txn_depth_, "BEGIN IMMEDIATE", fn);
}

void Database::read(const std::function<void()>& fn) {
  // A deferred transaction that only reads stays a read transaction: in WAL mode it reads the
  // last commit and never waits for a writer.
  in_transaction(*this, txn_depth_, "BEGIN", fn);
}

}  // namespace kiln::common

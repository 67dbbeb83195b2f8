// The store base, tested once for both of its users (netplumb, spawn) and on both engines
// (SQLite files; PostgreSQL through the server ctest starts, tests/common/pg_server.sh):
// migrations, readers that do not wait for a writer, writers that serialise, commits that
// survive a crash; then what only one engine has (file modes and the WAL; schemas, secrets).
#include "kiln/common/store.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <functional>

#include "kiln/common/error.h"
#include "kiln/common/fd.h"
#include "kiln/common/temp.h"

namespace kiln::common {
namespace {

std::vector<Database::Migration> v1() {
  return {[](Database& db) {
    db.exec("CREATE TABLE items (name TEXT PRIMARY KEY, n BIGINT NOT NULL)");
  }};
}

std::vector<Database::Migration> v2(int* runs = nullptr) {
  auto m = v1();
  m.push_back([runs](Database& db) {
    if (runs) ++*runs;
    db.exec("ALTER TABLE items ADD COLUMN note TEXT NOT NULL DEFAULT 'none'");
  });
  return m;
}

int64_t count(Database& db) {
  Stmt s(db, "SELECT COUNT(*) FROM items");
  s.step();
  return s.integer(0);
}

void put(Database& db, const std::string& name, int64_t n) {
  Stmt(db, "INSERT INTO items(name, n) VALUES (?, ?)").bind(name).bind(n).run();
}

// The counter row of the concurrency tests: read it, set it.
int64_t counter(Database& db) {
  Stmt s(db, "SELECT n FROM items WHERE name = 'counter'");
  if (!s.step()) throw std::runtime_error("no counter row");
  return s.integer(0);
}

void set_counter(Database& db, int64_t n) {
  Stmt(db, "UPDATE items SET n = ? WHERE name = 'counter'").bind(n).run();
}

// A pipe the two processes of a test signal each other through: one byte is one event.
struct Pipe {
  Fd r, w;
  Pipe() {
    int fds[2];
    if (::pipe(fds) != 0) throw std::runtime_error("pipe");
    r.reset(fds[0]);
    w.reset(fds[1]);
  }
  void signal() const { (void)!::write(w.get(), "x", 1); }
  // Waits for one byte for at most `ms`; false on timeout or EOF.
  bool wait(int ms) const {
    pollfd p{r.get(), POLLIN, 0};
    if (::poll(&p, 1, ms) != 1) return false;
    char c;
    return ::read(r.get(), &c, 1) == 1;
  }
};

// Runs `fn` in a child process; the child ends with _exit (no destructors, no atexit), so what
// it committed is all that is left of it.
pid_t in_child(const std::function<int()>& fn) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int rc = 98;
    try {
      rc = fn();
    } catch (...) {
      rc = 97;
    }
    ::_exit(rc);
  }
  return pid;
}

int wait_child(pid_t pid) {
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

}  // namespace

// For gtest's test names (found by argument-dependent lookup, so outside the anonymous namespace).
void PrintTo(Dialect d, std::ostream* os) {
  *os << (d == Dialect::kSqlite ? "sqlite" : "postgres");
}

namespace {

// One database per test on the engine of the test's parameter: a file in a temporary directory,
// or a schema of its own in the test server's database.
class Engine : public ::testing::TestWithParam<Dialect> {
 protected:
  void SetUp() override {
    if (GetParam() == Dialect::kSqlite) {
      location_ = dir_.file("t.db");
      return;
    }
    const char* url = std::getenv("KILN_TEST_PG_URL");
    // ctest always sets it (fixture kiln_pg); a hand-run binary must too, or the PostgreSQL
    // half fails rather than passing unrun.
    if (!url || !*url) GTEST_FAIL() << "KILN_TEST_PG_URL is not set (run through ctest)";
    location_ = url;
    static std::atomic<int> serial{0};
    options_.schema = "t" + std::to_string(::getpid()) + "_" + std::to_string(serial++);
  }
  std::unique_ptr<Database> open(std::vector<Database::Migration> m, Database::Options o = {}) {
    o.schema = options_.schema;
    return std::make_unique<Database>(location_, std::move(m), o);
  }
  bool postgres() const { return GetParam() == Dialect::kPostgres; }

  TempDir dir_;
  std::string location_;
  Database::Options options_;
};

INSTANTIATE_TEST_SUITE_P(Both, Engine, ::testing::Values(Dialect::kSqlite, Dialect::kPostgres),
                         [](const auto& info) {
                           return info.param == Dialect::kSqlite ? "sqlite" : "postgres";
                         });

TEST_P(Engine, OpensTheEngineItsLocationNames) {
  auto db = open(v1());
  EXPECT_EQ(db->dialect(), GetParam());
  EXPECT_EQ(db->schema_version(), 1);
}

TEST_P(Engine, MigratesFromVersionNToNPlusOneKeepingTheRows) {
  {
    auto db = open(v1());
    EXPECT_EQ(db->schema_version(), 1);
    put(*db, "kept", 7);
  }
  int runs = 0;
  {
    auto db = open(v2(&runs));
    EXPECT_EQ(runs, 1);
    EXPECT_EQ(db->schema_version(), 2);
    Stmt s(*db, "SELECT name, n, note FROM items");
    ASSERT_TRUE(s.step());
    EXPECT_EQ(s.text(0), "kept");
    EXPECT_EQ(s.integer(1), 7);
    EXPECT_EQ(s.text(2), "none");
  }
  auto again = open(v2(&runs));
  EXPECT_EQ(runs, 1) << "a migration ran twice";
}

TEST_P(Engine, FailedMigrationLeavesTheOldVersion) {
  put(*open(v1()), "a", 1);
  auto bad = v1();
  bad.push_back([](Database& db) {
    db.exec("ALTER TABLE items ADD COLUMN half BIGINT");
    throw system_error("migration failed halfway");
  });
  EXPECT_THROW(open(bad), Error);
  auto db = open(v1());
  EXPECT_EQ(db->schema_version(), 1);
  EXPECT_EQ(count(*db), 1);
  // The half-done step was rolled back with the version: the next try can add the column.
  EXPECT_NO_THROW(open(v2()));
}

TEST_P(Engine, DatabaseNewerThanTheCodeIsRefused) {
  open(v2());
  try {
    open(v1());
    FAIL() << "opened a database of a newer schema";
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("schema version 2, newer than this program (1)"),
              std::string::npos)
        << e.what();
  }
}

TEST_P(Engine, WriteRollsBackOnErrorAndNestedWritesJoin) {
  auto db = open(v1());
  EXPECT_THROW(db->write([&] {
    put(*db, "a", 1);
    db->write([&] { put(*db, "b", 2); });
    throw invalid("no");
  }),
               Error);
  EXPECT_EQ(count(*db), 0);
  db->write([&] {
    put(*db, "a", 1);
    db->write([&] { put(*db, "b", 2); });
  });
  EXPECT_EQ(count(*db), 2);
}

TEST_P(Engine, ConstraintErrorsHaveReasons) {
  auto db = open(v1());
  put(*db, "a", 1);
  try {
    put(*db, "a", 2);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kExists);
    EXPECT_NE(std::string(e.what()).find("database constraint: "), std::string::npos) << e.what();
  }
  try {
    Stmt(*db, "INSERT INTO items(name) VALUES ('x')").run();  // n NOT NULL
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kBusy);
  }
}

// Callers try an insert and handle kExists inside a write (an address taken meanwhile): the
// failed statement is undone alone, the transaction goes on and commits the rest.
TEST_P(Engine, AFailedStatementDoesNotEndItsTransaction) {
  auto db = open(v1());
  put(*db, "taken", 1);
  db->write([&] {
    put(*db, "first", 2);
    EXPECT_THROW(put(*db, "taken", 3), Error);
    put(*db, "second", 4);
  });
  EXPECT_EQ(count(*db), 3);
}

// Placeholders inside literals are text, not parameters; NULLs and 64-bit values round-trip.
TEST_P(Engine, ValuesRoundTrip) {
  auto db = open(v2());
  const int64_t big = int64_t{1} << 42;
  Stmt(*db, "INSERT INTO items(name, n, note) VALUES (?, ?, 'what?')").bind("q").bind(big).run();
  Stmt s(*db, "SELECT n, note, NULL FROM items WHERE name = ? AND n > ?");
  s.bind("q").bind(int64_t{-1});
  ASSERT_TRUE(s.step());
  EXPECT_EQ(s.integer(0), big);
  EXPECT_EQ(s.text(1), "what?");
  EXPECT_TRUE(s.null(2));
  EXPECT_FALSE(s.null(0));
  EXPECT_FALSE(s.step());
}

// Bytes that are not text (CBOR records: NULs, not UTF-8) round-trip through a {{blob}}
// column; SQLite's numbered "?1" names one parameter however often it appears.
TEST_P(Engine, BytesAndNumberedPlaceholders) {
  auto db = open(v1());
  db->exec(db->schema_sql("CREATE TABLE b (k TEXT PRIMARY KEY, v {{blob}} NOT NULL)"));
  const std::string bytes("\x1f\x8b\0\xff\xae", 5);
  Stmt(*db, "INSERT INTO b(k, v) VALUES (?, ?)").bind("x").bind_blob(bytes).run();
  Stmt s(*db, "SELECT v, k FROM b WHERE k = ?1 OR k = ?1 || 'y' ORDER BY k = ?1 DESC");
  s.bind("x");
  ASSERT_TRUE(s.step());
  EXPECT_EQ(s.blob(0), bytes);
  EXPECT_EQ(s.text(1), "x");
}

// upsert_sql: one row per key, updated in place (creation order kept); a clash on another
// unique column is kExists, not a silent delete of the other row.
TEST_P(Engine, UpsertUpdatesByKeyAndKeepsOtherRows) {
  auto db = open(v1());
  db->exec(db->schema_sql(
      "CREATE TABLE u (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, n BIGINT NOT NULL"
      "{{rowid}})"));
  const std::string up = upsert_sql("u", {"id", "name", "n"}, "id");
  Stmt(*db, up).bind("1").bind("one").bind(1).run();
  Stmt(*db, up).bind("2").bind("two").bind(2).run();
  Stmt(*db, up).bind("1").bind("uno").bind(11).run();
  try {
    Stmt(*db, up).bind("3").bind("two").bind(3).run();
    FAIL() << "a clash on name replaced a row";
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kExists);
  }
  std::vector<std::string> rows;
  for (Stmt s(*db, "SELECT id, name, n FROM u ORDER BY rowid"); s.step();)
    rows.push_back(s.text(0) + s.text(1) + std::to_string(s.integer(2)));
  EXPECT_EQ(rows, (std::vector<std::string>{"1uno11", "2two2"}));
  EXPECT_EQ(upsert_sql("a", {"x", "y", "z"}, "x, y"),
            "INSERT INTO a(x, y, z) VALUES (?, ?, ?) ON CONFLICT(x, y) DO UPDATE SET z = "
            "excluded.z");
}

// The guarantee spawn lacked: a reader (a listing) opens the database and reads while another
// process is inside a write transaction, seeing the last commit. If it waited for the lock the
// writer would never finish (it waits for the reader first), and the reader would fail with
// "database is locked" after the busy timeout.
TEST_P(Engine, ReaderInAnotherProcessDoesNotWaitForAWriteTransaction) {
  put(*open(v1()), "committed", 1);
  Pipe in_txn, reader_done;
  pid_t writer = in_child([&] {
    auto db = open(v1());
    db->write([&] {
      put(*db, "pending", 2);
      in_txn.signal();
      if (!reader_done.wait(60000)) throw std::runtime_error("reader never finished");
    });
    return 0;
  });
  ASSERT_TRUE(in_txn.wait(60000)) << "the writer did not start";
  {
    Database::Options quick;
    quick.busy_timeout_ms = 2000;  // a reader that waited would fail, not hang the test
    auto db = open(v1(), quick);
    std::vector<std::string> names;
    db->read([&] {
      for (Stmt s(*db, "SELECT name FROM items ORDER BY name"); s.step();)
        names.push_back(s.text(0));
    });
    EXPECT_EQ(names, std::vector<std::string>{"committed"});
  }
  reader_done.signal();
  EXPECT_EQ(wait_child(writer), 0);
  EXPECT_EQ(count(*open(v1())), 2);
}

// A writer that gives up waiting for the lock (kBusy after the busy timeout) leaves its
// connection usable: the next write on it succeeds once the lock is free.
TEST_P(Engine, AWriterThatTimedOutCanWriteLater) {
  put(*open(v1()), "first", 1);
  Pipe in_txn, release;
  pid_t holder = in_child([&] {
    auto db = open(v1());
    db->write([&] {
      put(*db, "held", 2);
      in_txn.signal();
      if (!release.wait(60000)) throw std::runtime_error("never released");
    });
    return 0;
  });
  ASSERT_TRUE(in_txn.wait(60000));
  Database::Options quick;
  quick.busy_timeout_ms = 300;
  auto db = open(v1(), quick);
  try {
    db->write([&] { put(*db, "late", 3); });
    ADD_FAILURE() << "wrote while another writer held the lock";
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kBusy) << e.what();
  }
  release.signal();
  EXPECT_EQ(wait_child(holder), 0);
  db->write([&] { put(*db, "later", 4); });
  EXPECT_EQ(count(*db), 3);
}

// Read-modify-write from several processes (hosts, for PostgreSQL): every increment counts,
// none fails with BUSY.
TEST_P(Engine, WritersInSeveralProcessesSerialise) {
  put(*open(v1()), "counter", 0);
  constexpr int kProcs = 4, kEach = 25;
  std::vector<pid_t> pids;
  for (int p = 0; p < kProcs; ++p)
    pids.push_back(in_child([&] {
      auto db = open(v1());
      for (int i = 0; i < kEach; ++i) db->write([&] { set_counter(*db, counter(*db) + 1); });
      return 0;
    }));
  for (pid_t pid : pids) EXPECT_EQ(wait_child(pid), 0);
  EXPECT_EQ(counter(*open(v1())), kProcs * kEach);
}

// The same through a read that turns into a write (read(), then write() inside it): the
// writers' lock is taken at the write, and no increment is lost or silently overwritten —
// a stale read either waits (SQLite) or fails kBusy (PostgreSQL's serialisation check), and
// the caller's retry counts it.
TEST_P(Engine, AReadThatWritesLosesNoUpdate) {
  put(*open(v1()), "counter", 0);
  constexpr int kProcs = 3, kEach = 20;
  std::vector<pid_t> pids;
  for (int p = 0; p < kProcs; ++p)
    pids.push_back(in_child([&] {
      auto db = open(v1());
      for (int i = 0; i < kEach;) {
        try {
          db->read([&] {
            const int64_t n = counter(*db);
            db->write([&] { set_counter(*db, n + 1); });
          });
          ++i;
        } catch (const Error& e) {
          if (e.reason() != Reason::kBusy && e.reason() != Reason::kIo) throw;
        }
      }
      return 0;
    }));
  for (pid_t pid : pids) EXPECT_EQ(wait_child(pid), 0);
  EXPECT_EQ(counter(*open(v1())), kProcs * kEach);
}

// A process that commits and dies without closing anything (no destructor, no checkpoint, a
// transaction open): the commit is there when the database is opened again, the rest is not.
TEST_P(Engine, CommittedWriteSurvivesTheProcessDying) {
  open(v1());
  pid_t pid = in_child([&] {
    auto* db = new Database(location_, v1(), [&] {
      Database::Options o;
      o.schema = options_.schema;
      return o;
    }());  // never deleted: the process just ends
    db->write([&] {
      put(*db, "survivor", 42);
      put(*db, "second", 43);
    });
    db->write([&] {
      put(*db, "uncommitted", 44);
      ::_exit(0);  // dies inside this transaction
    });
    return 1;
  });
  ASSERT_EQ(wait_child(pid), 0);
  auto db = open(v1());
  Stmt s(*db, "SELECT name, n FROM items ORDER BY n");
  ASSERT_TRUE(s.step());
  EXPECT_EQ(s.text(0), "survivor");
  ASSERT_TRUE(s.step());
  EXPECT_EQ(s.text(0), "second");
  EXPECT_FALSE(s.step()) << "an uncommitted row survived";
  if (!postgres()) {
    Stmt check(*db, "PRAGMA integrity_check");
    ASSERT_TRUE(check.step());
    EXPECT_EQ(check.text(0), "ok");
  }
}

// SQLite only: the file's mode and journal.
TEST(Store, NewDatabaseIsMigratedAndPrivateWhateverTheUmask) {
  TempDir dir;
  std::string path = dir.file("t.db");
  mode_t old = ::umask(0);
  {
    Database db(path, v2());
    put(db, "a", 1);
  }
  ::umask(old);
  Database db(path, v2());
  EXPECT_EQ(db.schema_version(), 2);
  for (std::string p : {path, path + "-wal", path + "-shm"}) {
    struct stat st;
    ASSERT_EQ(::stat(p.c_str(), &st), 0) << p;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << p;
  }
  Stmt s(db, "PRAGMA journal_mode");
  ASSERT_TRUE(s.step());
  EXPECT_EQ(s.text(0), "wal");
  Stmt sync(db, "PRAGMA synchronous");
  ASSERT_TRUE(sync.step());
  EXPECT_EQ(sync.integer(0), 2);  // FULL
}

TEST(Store, OldWalAndShmFilesAreMadePrivate) {
  TempDir dir;
  std::string path = dir.file("t.db");
  { Database db(path, v1()); }
  // As an older binary left them: readable by everyone.
  for (std::string p : {path + "-wal", path + "-shm"}) {
    if (!std::filesystem::exists(p)) Fd(::open(p.c_str(), O_CREAT | O_WRONLY, 0644));
    ASSERT_EQ(::chmod(p.c_str(), 0644), 0);
  }
  Database db(path, v1());
  for (std::string p : {path + "-wal", path + "-shm"}) {
    struct stat st;
    ASSERT_EQ(::stat(p.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u) << p;
  }
}

// Each command is a short process that reopens the database; the WAL must still be
// checkpointed and truncated rather than grow with every commit.
TEST(Store, WalStaysBoundedAcrossReopens) {
  TempDir dir;
  std::string path = dir.file("t.db");
  Database::Options o;
  o.checkpoint_pages = 20;
  std::string blob(3000, 'x');
  for (int i = 0; i < 200; ++i) {
    Database db(path, v1(), o);
    put(db, blob + std::to_string(i), i);
  }
  EXPECT_LT(std::filesystem::file_size(path + "-wal"), 40u * (4096 + 24));
  Database db(path, v1(), o);
  EXPECT_EQ(count(db), 200);
}

TEST(Store, LocationsThatAreUrls) {
  EXPECT_TRUE(Database::is_url("postgresql:///kiln?host=/run/postgresql"));
  EXPECT_TRUE(Database::is_url("postgres://u@db.example/kiln"));
  EXPECT_FALSE(Database::is_url("/var/lib/kiln/net.db"));
  EXPECT_FALSE(Database::is_url("postgresql.db"));
}

// PostgreSQL only.
class Postgres : public Engine {};
INSTANTIATE_TEST_SUITE_P(Only, Postgres, ::testing::Values(Dialect::kPostgres),
                         [](const auto&) { return "postgres"; });

// kiln-net and kiln-spawn share one database, each in its schema: the same table name twice,
// two schema versions, neither sees the other's rows.
TEST_P(Postgres, ModulesInOneDatabaseKeepTheirOwnSchemas) {
  Database::Options a, b;
  a.schema = options_.schema + "_net";
  b.schema = options_.schema + "_spawn";
  Database net(location_, v1(), a);
  Database spawn(location_, v2(), b);
  put(net, "only-net", 1);
  EXPECT_EQ(count(net), 1);
  EXPECT_EQ(count(spawn), 0);
  EXPECT_EQ(net.schema_version(), 1);
  EXPECT_EQ(spawn.schema_version(), 2);
}

// A password in the URL never reaches a message or path().
TEST_P(Postgres, PasswordsStayOutOfMessages) {
  const std::string url = "postgresql://kiln:s3cr3t@/postgres?host=" + dir_.file("nowhere") +
                          "&connect_timeout=2&password=s3cr3t";
  try {
    Database db(url, v1());
    FAIL() << "connected to a server that is not there";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.find("s3cr3t"), std::string::npos) << what;
    EXPECT_NE(what.find("cannot connect to postgresql://kiln:***@"), std::string::npos) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << "not one line: " << what;
  }
}

TEST_P(Postgres, BadSchemaNamesAreRefused) {
  Database::Options o;
  o.schema = "x; DROP TABLE items";
  try {
    Database db(location_, v1(), o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kInvalidArgument);
  }
}

}  // namespace
}  // namespace kiln::common

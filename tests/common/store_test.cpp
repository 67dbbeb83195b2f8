// The store base, tested once for both of its users (netplumb, spawn): migrations, modes,
// readers that do not wait for a writer, writers that serialise, commits that survive a crash.
#include "kiln/common/store.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <functional>

#include "kiln/common/error.h"
#include "kiln/common/fd.h"
#include "kiln/common/temp.h"

namespace kiln::common {
namespace {

std::vector<Database::Migration> v1() {
  return {[](Database& db) {
    db.exec("CREATE TABLE items (name TEXT PRIMARY KEY, n INTEGER NOT NULL)");
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

TEST(Store, MigratesFromVersionNToNPlusOneKeepingTheRows) {
  TempDir dir;
  std::string path = dir.file("t.db");
  {
    Database db(path, v1());
    EXPECT_EQ(db.schema_version(), 1);
    put(db, "kept", 7);
  }
  int runs = 0;
  {
    Database db(path, v2(&runs));
    EXPECT_EQ(runs, 1);
    EXPECT_EQ(db.schema_version(), 2);
    Stmt s(db, "SELECT name, n, note FROM items");
    ASSERT_TRUE(s.step());
    EXPECT_EQ(s.text(0), "kept");
    EXPECT_EQ(s.integer(1), 7);
    EXPECT_EQ(s.text(2), "none");
  }
  Database again(path, v2(&runs));
  EXPECT_EQ(runs, 1) << "a migration ran twice";
}

TEST(Store, FailedMigrationLeavesTheOldVersion) {
  TempDir dir;
  std::string path = dir.file("t.db");
  { put(*std::make_unique<Database>(path, v1()), "a", 1); }
  auto bad = v1();
  bad.push_back([](Database& db) {
    db.exec("ALTER TABLE items ADD COLUMN half INTEGER");
    throw system_error("migration failed halfway");
  });
  EXPECT_THROW(Database(path, bad), Error);
  Database db(path, v1());
  EXPECT_EQ(db.schema_version(), 1);
  EXPECT_EQ(count(db), 1);
  // The half-done step was rolled back with the version: the next try can add the column.
  EXPECT_NO_THROW(Database(path, v2()));
}

TEST(Store, DatabaseNewerThanTheCodeIsRefused) {
  TempDir dir;
  std::string path = dir.file("t.db");
  { Database db(path, v2()); }
  try {
    Database db(path, v1());
    FAIL() << "opened a database of a newer schema";
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("schema version 2, newer than this program (1)"),
              std::string::npos)
        << e.what();
  }
}

TEST(Store, WriteRollsBackOnErrorAndNestedWritesJoin) {
  TempDir dir;
  Database db(dir.file("t.db"), v1());
  EXPECT_THROW(db.write([&] {
    put(db, "a", 1);
    db.write([&] { put(db, "b", 2); });
    throw invalid("no");
  }),
               Error);
  EXPECT_EQ(count(db), 0);
  db.write([&] {
    put(db, "a", 1);
    db.write([&] { put(db, "b", 2); });
  });
  EXPECT_EQ(count(db), 2);
}

TEST(Store, ConstraintErrorsHaveReasons) {
  TempDir dir;
  Database db(dir.file("t.db"), v1());
  put(db, "a", 1);
  try {
    put(db, "a", 2);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kExists);
    EXPECT_NE(std::string(e.what()).find("database constraint: UNIQUE"), std::string::npos)
        << e.what();
  }
  try {
    Stmt(db, "INSERT INTO items(name) VALUES ('x')").run();  // n NOT NULL
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kBusy);
  }
}

// The guarantee spawn lacked: a reader (a listing) opens the database and reads while another
// process is inside a write transaction, seeing the last commit. If it waited for the lock the
// writer would never finish (it waits for the reader first), and the reader would fail with
// "database is locked" after the busy timeout.
TEST(Store, ReaderInAnotherProcessDoesNotWaitForAWriteTransaction) {
  TempDir dir;
  std::string path = dir.file("t.db");
  {
    Database db(path, v1());
    put(db, "committed", 1);
  }
  Pipe in_txn, reader_done;
  pid_t writer = in_child([&] {
    Database db(path, v1());
    db.write([&] {
      put(db, "pending", 2);
      in_txn.signal();
      if (!reader_done.wait(60000)) throw std::runtime_error("reader never finished");
    });
    return 0;
  });
  ASSERT_TRUE(in_txn.wait(60000)) << "the writer did not start";
  {
    Database::Options quick;
    quick.busy_timeout_ms = 2000;  // a reader that waited would fail, not hang the test
    Database db(path, v1(), quick);
    std::vector<std::string> names;
    db.read([&] {
      for (Stmt s(db, "SELECT name FROM items ORDER BY name"); s.step();)
        names.push_back(s.text(0));
    });
    EXPECT_EQ(names, std::vector<std::string>{"committed"});
  }
  reader_done.signal();
  EXPECT_EQ(wait_child(writer), 0);
  Database db(path, v1());
  EXPECT_EQ(count(db), 2);
}

// Read-modify-write from several processes: every increment counts, none fails with BUSY.
TEST(Store, WritersInSeveralProcessesSerialise) {
  TempDir dir;
  std::string path = dir.file("t.db");
  {
    Database db(path, v1());
    put(db, "counter", 0);
  }
  constexpr int kProcs = 4, kEach = 25;
  std::vector<pid_t> pids;
  for (int p = 0; p < kProcs; ++p)
    pids.push_back(in_child([&] {
      Database db(path, v1());
      for (int i = 0; i < kEach; ++i)
        db.write([&] {
          Stmt s(db, "SELECT n FROM items WHERE name = 'counter'");
          s.step();
          int64_t n = s.integer(0);
          Stmt(db, "UPDATE items SET n = ? WHERE name = 'counter'").bind(n + 1).run();
        });
      return 0;
    }));
  for (pid_t pid : pids) EXPECT_EQ(wait_child(pid), 0);
  Database db(path, v1());
  Stmt s(db, "SELECT n FROM items WHERE name = 'counter'");
  ASSERT_TRUE(s.step());
  EXPECT_EQ(s.integer(0), kProcs * kEach);
}

// A process that commits and dies without closing anything (no destructor, no checkpoint):
// the commit is there when the database is opened again, and the file is sound.
TEST(Store, CommittedWriteSurvivesTheProcessDying) {
  TempDir dir;
  std::string path = dir.file("t.db");
  { Database db(path, v1()); }
  pid_t pid = ::fork();
  if (pid == 0) {
    auto* db = new Database(path, v1());  // never deleted: the process just ends
    db->write([&] {
      put(*db, "survivor", 42);
      put(*db, "second", 43);
    });
    db->exec("BEGIN IMMEDIATE");
    put(*db, "uncommitted", 44);  // dies inside this transaction
    ::_exit(0);
  }
  ASSERT_EQ(wait_child(pid), 0);
  Database db(path, v1());
  Stmt s(db, "SELECT name, n FROM items ORDER BY n");
  ASSERT_TRUE(s.step());
  EXPECT_EQ(s.text(0), "survivor");
  ASSERT_TRUE(s.step());
  EXPECT_EQ(s.text(0), "second");
  EXPECT_FALSE(s.step()) << "an uncommitted row survived";
  Stmt check(db, "PRAGMA integrity_check");
  ASSERT_TRUE(check.step());
  EXPECT_EQ(check.text(0), "ok");
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

}  // namespace
}  // namespace kiln::common

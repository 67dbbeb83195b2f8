// spawn's use of the common store base (tested in common/tests/store_test.cpp): a listing in
// one process while a boot in another holds the write lock.
#include "kiln/spawn/store.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>

#include "kiln/common/fd.h"
#include "test_util.h"

namespace kiln::spawn {
namespace {

using testing::TempDir;
using testing::TestNetStore;
using testing::TestStore;

// kiln-spawn list opens the store and reads. It used to take the write lock on every open, so a
// listing waited for a running boot's transaction (and failed with "database is locked" after
// 30 s). Here the writer does not commit until the listing is done: a listing that waited
// would never see it finish.
TEST(Store, ListingDoesNotWaitForARunningWriteTransaction) {
  TempDir dir;
  {
    TestStore s(dir.str());
    Instance i;
    i.id = "id-a";
    i.name = "a";
    s.put(i);
  }
  int in_txn[2], listed[2];
  ASSERT_EQ(::pipe(in_txn), 0);
  ASSERT_EQ(::pipe(listed), 0);
  common::Fd in_txn_r(in_txn[0]), in_txn_w(in_txn[1]), listed_r(listed[0]), listed_w(listed[1]);
  pid_t writer = ::fork();
  if (writer == 0) {
    int rc = 1;
    try {
      TestStore s(dir.str());
      s.write([&] {
        Instance i;
        i.id = "id-b";
        i.name = "b";
        s.put(i);
        (void)!::write(in_txn_w.get(), "x", 1);
        pollfd p{listed_r.get(), POLLIN, 0};
        if (::poll(&p, 1, 120000) != 1) throw std::runtime_error("the listing never finished");
      });
      rc = 0;
    } catch (...) {
      rc = 2;
    }
    ::_exit(rc);
  }
  pollfd p{in_txn_r.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 60000), 1) << "the writer did not start its transaction";
  std::vector<std::string> names;
  try {
    TestStore s(dir.str());  // as kiln-spawn list does
    for (const auto& i : s.instances()) names.push_back(i.name);
    EXPECT_EQ(s.flavors().size(), builtin_flavors().size());
  } catch (const std::exception& e) {
    ADD_FAILURE() << "listing during a write: " << e.what();
  }
  (void)!::write(listed_w.get(), "x", 1);
  int st = 0;
  ::waitpid(writer, &st, 0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  EXPECT_EQ(names, std::vector<std::string>{"a"});  // the last commit, not the pending row
  TestStore s(dir.str());
  EXPECT_EQ(s.instances().size(), 2u);
}

// A store written before image-create kept Glance's fields (schema version 1) opens, its
// images read back with empty fields, and new images keep theirs.
TEST(Store, Version1ImagesGainGlanceFields) {
  TempDir dir;
  {
    common::Database old(dir.str() + "/spawn.db", {[](common::Database& db) {
                           db.exec(
                               "CREATE TABLE images (id TEXT PRIMARY KEY, name TEXT NOT NULL "
                               "UNIQUE, disk_format TEXT NOT NULL, digest TEXT NOT NULL, size "
                               "INTEGER NOT NULL, virtual_size INTEGER NOT NULL, created_at "
                               "TEXT NOT NULL);"
                               "INSERT INTO images VALUES ('id-old', 'old', 'raw', "
                               "'0123456789abcdef0123456789abcdef', 4096, 4096, 'then');"
                               // What later versions change of version 1's other tables.
                               "CREATE TABLE claims (instance_id TEXT PRIMARY KEY, vcpus "
                               "INTEGER NOT NULL, ram_mb INTEGER NOT NULL, disk_gb INTEGER NOT "
                               "NULL);"
                               "CREATE TABLE instances (id TEXT PRIMARY KEY);"
                               "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT "
                               "NULL);");
                         }});
  }
  Store s(dir.str());
  auto old = s.find_image("old");
  ASSERT_TRUE(old);
  EXPECT_EQ(old->digest, "0123456789abcdef0123456789abcdef");
  EXPECT_EQ(old->size, 4096u);
  EXPECT_EQ(old->checksum, "");
  EXPECT_EQ(old->min_ram, 0);
  EXPECT_TRUE(old->properties.empty());

  Image i;
  i.id = "id-new";
  i.name = "new";
  i.disk_format = "qcow2";
  i.digest = "d";
  i.checksum = "900150983cd24fb0d6963f7d28e17f72";
  i.os_hash_algo = "sha512";
  i.os_hash_value = "ab";
  i.min_disk = 3;
  i.min_ram = 256;
  i.properties = {{"os_distro", "debian"}, {"quote\"d", "v\n"}};
  i.created_at = "now";
  s.put(i);
  Store again(dir.str());
  auto n = again.find_image("new");
  ASSERT_TRUE(n);
  EXPECT_EQ(n->checksum, i.checksum);
  EXPECT_EQ(n->os_hash_algo, "sha512");
  EXPECT_EQ(n->os_hash_value, "ab");
  EXPECT_EQ(n->min_disk, 3);
  EXPECT_EQ(n->min_ram, 256);
  EXPECT_EQ(n->properties, i.properties);
  EXPECT_EQ(again.images().size(), 2u);
}

}  // namespace
}  // namespace kiln::spawn

#include "kiln/spawn/images.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "kiln/block/qcow2.h"
#include "kiln/common/random.h"
#include "kiln/spawn/error.h"
#include "test_util.h"

namespace kiln::spawn {
namespace {

using testing::TempDir;
using testing::TestNetStore;
using testing::TestStore;

std::string make_qcow2(const std::string& path, uint64_t size, const std::string& backing = "") {
  block::qcow2::CreateOptions o;
  o.size = size;
  if (!backing.empty()) {
    o.backing_file = backing;
    o.backing_format = "qcow2";
  }
  block::qcow2::create(block::Reactor::current(), path, o);
  return path;
}

std::string make_raw(const std::string& path, size_t size) {
  std::string data(size, '\0');
  for (size_t i = 0; i < size; i += 4096) data[i] = static_cast<char>(i / 4096 + 1);
  testing::write_text(path, data);
  return path;
}

TEST(Images, CheckName) {
  EXPECT_NO_THROW(check_name("image", "cirros-0.6.2_x86.64"));
  EXPECT_THROW(check_name("image", ""), Error);
  EXPECT_THROW(check_name("image", "-x"), Error);
  EXPECT_THROW(check_name("image", "a/b"), Error);
  EXPECT_THROW(check_name("image", std::string(64, 'a')), Error);
}

TEST(Images, CreateQcow2AndRaw) {
  TempDir d;
  TestStore s(d / "state");
  ImageStore images(s);
  Image q = images.create("q", make_qcow2(d / "q.qcow2", 64 << 20), "", false);
  EXPECT_EQ(q.disk_format, "qcow2");
  EXPECT_EQ(q.virtual_size, 64u << 20);
  EXPECT_EQ(q.digest, file_digest(d / "q.qcow2"));
  EXPECT_EQ(q.digest.size(), 32u);
  EXPECT_EQ(file_digest(images.image_path(q)), q.digest);

  Image r = images.create("r", make_raw(d / "r.raw", 1 << 20), "raw", false);
  EXPECT_EQ(r.disk_format, "raw");
  EXPECT_EQ(r.virtual_size, 1u << 20);
  EXPECT_EQ(r.size, 1u << 20);
  EXPECT_EQ(testing::read_text(images.image_path(r)), testing::read_text(d / "r.raw"));

  EXPECT_EQ(images.get("q").id, q.id);
  EXPECT_EQ(images.get(r.id).name, "r");
  EXPECT_EQ(s.images().size(), 2u);
  try {
    images.create("q", d / "r.raw", "", false);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kExists);
  }
}

TEST(Images, FormatIsCheckedByContent) {
  TempDir d;
  TestStore s(d / "state");
  ImageStore images(s);
  make_qcow2(d / "q.qcow2", 1 << 20);
  try {
    images.create("x", d / "q.qcow2", "raw", false);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("qcow2 image by its content"), std::string::npos)
        << e.what();
  }
  make_raw(d / "r.raw", 4096);
  EXPECT_THROW(images.create("y", d / "r.raw", "qcow2", false), Error);
  EXPECT_THROW(images.create("z", d / "r.raw", "vmdk", false), Error);
  // A qcow2 with a backing file is not self-contained.
  make_qcow2(d / "top.qcow2", 1 << 20, d / "q.qcow2");
  try {
    images.create("top", d / "top.qcow2", "", false);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("backing file"), std::string::npos) << e.what();
  }
  EXPECT_THROW(images.create("none", d / "missing", "", false), Error);
  EXPECT_TRUE(s.images().empty());
  // Nothing half-copied is left in the store.
  for (const auto& e : std::filesystem::directory_iterator(d / "state/images"))
    ADD_FAILURE() << "left over: " << e.path();
}

TEST(Images, BaseCacheFilledOnceAndPruned) {
  TempDir d;
  TestStore s(d / "state");
  ImageStore images(s);
  Image img = images.create("img", make_raw(d / "r.raw", 3 << 20), "", false);
  bool filled = false;
  std::string base = images.ensure_base(img, false, &filled);
  EXPECT_TRUE(filled);
  EXPECT_EQ(base, images.base_path(img.digest));
  EXPECT_EQ(file_digest(base), img.digest);
  struct stat st {};
  ASSERT_EQ(stat(base.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0400u);
  images.ensure_base(img, false, &filled);
  EXPECT_FALSE(filled);

  // An instance using the base keeps it (and the image) alive.
  Instance inst;
  inst.id = common::new_uuid();
  inst.name = "vm";
  inst.image_id = img.id;
  inst.image_digest = img.digest;
  inst.image_format = img.disk_format;
  inst.flavor = "m1.tiny";
  inst.network = "n";
  s.put(inst);
  try {
    images.remove("img");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kBusy);
    EXPECT_NE(std::string(e.what()).find("vm"), std::string::npos);
  }
  s.remove_instance(inst.id);
  images.remove("img");
  EXPECT_FALSE(std::filesystem::exists(base));
  EXPECT_FALSE(std::filesystem::exists(images.image_path(img)));
  EXPECT_THROW(images.get("img"), Error);
}

// Six processes want the same base at once: one copies it, the others wait and use it.
TEST(Images, ConcurrentBootsCopyTheBaseOnce) {
  TempDir d;
  Image img;
  {
    TestStore s(d / "state");
    img = ImageStore(s).create("img", make_raw(d / "r.raw", 16 << 20), "", false);
  }
  std::vector<int> rcs = testing::in_children(6, [&](int) {
    TestStore s(d / "state");
    ImageStore images(s);
    bool filled = false;
    std::string base = images.ensure_base(img, false, &filled);
    return file_digest(base) == img.digest ? (filled ? 1 : 0) : 2;
  });
  int fills = 0;
  for (int rc : rcs) {
    ASSERT_LE(rc, 1) << "a child failed: " << rc;
    fills += rc;
  }
  EXPECT_EQ(fills, 1);
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(d / "state/_base")) {
    if (e.path().extension() != ".lock") ++files;
  }
  EXPECT_EQ(files, 1);
}

}  // namespace
}  // namespace kiln::spawn

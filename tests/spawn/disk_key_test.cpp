// boot --encrypted's key file: a fresh, private, never reused key per instance.
#include "kiln/spawn/disk_key.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "kiln/block/qcow2.h"
#include "kiln/common/error.h"
#include "test_util.h"

namespace kiln::spawn {
namespace {

using testing::TempDir;

bool is_base64(const std::string& s) {
  for (char c : s)
    if (!isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '/' && c != '=') return false;
  return true;
}

TEST(DiskKey, NewKeyIsPrivateRandomAndNeverReused) {
  TempDir d;
  const std::string dir = d.path();
  EXPECT_FALSE(disk_encrypted(dir));
  EXPECT_EQ(read_disk_key(dir), std::nullopt);
  const mode_t old_umask = ::umask(0);  // the file is 0600 whatever the umask
  std::string key = create_disk_key(dir);
  ::umask(old_umask);
  // 32 bytes as base64: 44 characters, one '=' of padding, no newline.
  EXPECT_EQ(key.size(), 44u);
  EXPECT_TRUE(is_base64(key)) << key;
  EXPECT_EQ(key.find('='), 43u);
  struct stat st {};
  ASSERT_EQ(::lstat(disk_key_path(dir).c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_uid, ::geteuid());
  EXPECT_EQ(st.st_size, 44);
  EXPECT_TRUE(disk_encrypted(dir));
  EXPECT_EQ(read_disk_key(dir), key);
  // An existing key is never overwritten (nor a link followed): O_EXCL.
  EXPECT_THROW(create_disk_key(dir), common::Error);
  EXPECT_EQ(read_disk_key(dir), key);
  // Another instance gets another key.
  TempDir other;
  EXPECT_NE(create_disk_key(other.path()), key);
}

TEST(DiskKey, KeyFileOthersCanReadIsRefused) {
  TempDir d;
  create_disk_key(d.path());
  ASSERT_EQ(::chmod(disk_key_path(d.path()).c_str(), 0644), 0);
  try {
    read_disk_key(d.path());
    FAIL();
  } catch (const common::Error& e) {
    EXPECT_NE(std::string(e.what()).find("mode 0600"), std::string::npos) << e.what();
  }
}

TEST(DiskKey, OverlayOptionsAreLuksWithWholeSectors) {
  block::qcow2::CreateOptions o;
  o.size = (1 << 20) + 100;
  set_overlay_encryption(o, "k");
  EXPECT_EQ(o.encrypt_format, "luks");
  EXPECT_EQ(o.key_secret, "k");
  EXPECT_EQ(o.size, (1u << 20) + 512);
  EXPECT_LE(o.encrypt_iter_time_ms, 100u);
}

}  // namespace
}  // namespace kiln::spawn

#include "kiln/common/temp.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

namespace kiln::common {
namespace {

namespace fs = std::filesystem;

TEST(Temp, DirIsPrivateAndRemovedWithItsContent) {
  std::string path;
  {
    TempDir dir("kiln-common-test-");
    path = dir.path();
    struct stat st;
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISDIR(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0700u);
    EXPECT_NE(fs::path(path).filename().string().find("kiln-common-test-"), std::string::npos);
    fs::create_directories(dir / "a/b");
    std::ofstream(dir.file("a/b/f")) << "x";
  }
  EXPECT_FALSE(fs::exists(path));
}

TEST(Temp, DirRemovedWhenAnExceptionUnwinds) {
  std::string path;
  try {
    TempDir dir;
    path = dir.path();
    std::ofstream(dir.file("f")) << "x";
    throw std::runtime_error("boom");
  } catch (const std::runtime_error&) {
  }
  ASSERT_FALSE(path.empty());
  EXPECT_FALSE(fs::exists(path));
}

TEST(Temp, FileUnlinkedUnlessReleased) {
  TempDir dir;
  std::string a = dir.file("a"), b = dir.file("b");
  {
    std::ofstream(a) << "x";
    std::ofstream(b) << "y";
    TempFile ta(a);
    TempFile tb(b);
    tb.release();
  }
  EXPECT_FALSE(fs::exists(a));
  EXPECT_TRUE(fs::exists(b));
}

}  // namespace
}  // namespace kiln::common

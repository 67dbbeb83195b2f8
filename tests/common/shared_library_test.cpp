#include "kiln/common/shared_library.h"

#include <gtest/gtest.h>
#include <string.h>  // strlen, declared by the library we resolve it from

namespace kiln::common {
namespace {

TEST(SharedLibrary, ResolvesFunctionsWithTheirOwnTypes) {
  SharedLibrary libc("libc.so.6", "the C library");
  decltype(&::strlen) fn = nullptr;
  libc.resolve(fn, "strlen");
  ASSERT_NE(fn, nullptr) << libc.error();
  EXPECT_TRUE(libc.error().empty());
  EXPECT_EQ(fn("kiln"), 4u);
}

TEST(SharedLibrary, AMissingLibraryNamesWhatToInstall) {
  SharedLibrary lib("libkiln-no-such-library.so.9", "libnothing (package libnothing9)");
  decltype(&::strlen) fn = &::strlen;
  lib.resolve(fn, "strlen");
  EXPECT_EQ(fn, nullptr);
  EXPECT_NE(lib.error().find("cannot load libnothing (package libnothing9): "), std::string::npos)
      << lib.error();
  EXPECT_NE(lib.error().find("libkiln-no-such-library.so.9"), std::string::npos) << lib.error();
}

TEST(SharedLibrary, AMissingFunctionIsTheFirstErrorKept) {
  SharedLibrary libc("libc.so.6", "the C library");
  decltype(&::strlen) a = nullptr, b = nullptr, c = nullptr;
  libc.resolve(a, "kiln_no_such_function");
  libc.resolve(b, "strlen");
  libc.resolve(c, "kiln_another_missing_one");
  EXPECT_EQ(a, nullptr);
  EXPECT_NE(b, nullptr);
  EXPECT_EQ(c, nullptr);
  EXPECT_EQ(libc.error(), "the C library lacks kiln_no_such_function");
}

}  // namespace
}  // namespace kiln::common

#include "kiln/common/text.h"

#include <gtest/gtest.h>

namespace kiln::common {
namespace {

using V = std::vector<std::string>;

TEST(Text, SplitKeepsEmptyFields) {
  EXPECT_EQ(split("a,,b", ','), (V{"a", "", "b"}));
  EXPECT_EQ(split("a,", ','), (V{"a", ""}));
  EXPECT_EQ(split("", ','), V{});
  EXPECT_EQ(split("abc", ','), V{"abc"});
  for (std::string s : {"x", "x,y", ",", "a,,b,"}) EXPECT_EQ(join(split(s, ','), ","), s);
}

TEST(Text, SplitNonemptyDropsEmptyFields) {
  EXPECT_EQ(split_nonempty(",a,,b,", ','), (V{"a", "b"}));
  EXPECT_EQ(split_nonempty(",,", ','), V{});
}

TEST(Text, SplitQemuOptionsUnescapesDoubledCommas) {
  EXPECT_EQ(split_qemu_options("a=1,,2,b"), (std::vector<std::string>{"a=1,2", "b"}));
  EXPECT_EQ(split_qemu_options("x,,,,y,"), (std::vector<std::string>{"x,,y", ""}));
  EXPECT_EQ(split_qemu_options(""), (std::vector<std::string>{""}));
  EXPECT_EQ(split_qemu_options(",,"), (std::vector<std::string>{","}));
}

TEST(Text, Join) {
  EXPECT_EQ(join({}, ", "), "");
  EXPECT_EQ(join({"a"}, ", "), "a");
  EXPECT_EQ(join({"a", "b", "c"}, ", "), "a, b, c");
}

TEST(Text, Trim) {
  EXPECT_EQ(trim("  a b\t\r\n"), "a b");
  EXPECT_EQ(trim(" \t "), "");
  EXPECT_EQ(trim(""), "");
  EXPECT_EQ(trim("x"), "x");
}

TEST(Text, Base64PadsAsRfc4648) {
  EXPECT_EQ(base64(""), "");
  EXPECT_EQ(base64("f"), "Zg==");
  EXPECT_EQ(base64("fo"), "Zm8=");
  EXPECT_EQ(base64("foo"), "Zm9v");
  EXPECT_EQ(base64("foobar"), "Zm9vYmFy");
  EXPECT_EQ(base64(std::string("\xff\x00\xfe", 3)), "/wD+");
}

}  // namespace
}  // namespace kiln::common

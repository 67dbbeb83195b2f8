#include "cli/args.h"

#include <gtest/gtest.h>

#include "kiln/spawn/error.h"

namespace kiln::spawn::cli {
namespace {

TEST(Args, OptionsFlagsAndPositionals) {
  Args a = Args::parse(
      {"vm1", "--image", "img", "--file=/a=b", "--file", "/c=d", "--inject", "--", "--literal"},
      {"--inject"}, {"--image", "--file"});
  EXPECT_EQ(a.positional(), (std::vector<std::string>{"vm1", "--literal"}));
  EXPECT_EQ(a.get("--image"), "img");
  EXPECT_EQ(a.all("--file"), (std::vector<std::string>{"/a=b", "/c=d"}));
  EXPECT_TRUE(a.flag("--inject"));
  EXPECT_FALSE(a.get("--flavor"));
  EXPECT_EQ(a.get_or("--flavor", "m1.tiny"), "m1.tiny");
}

TEST(Args, NegativeNumbersArePositional) {
  Args a = Args::parse({"cpu_allocation_ratio", "-2"}, {}, {});
  EXPECT_EQ(a.positional().size(), 2u);
}

TEST(Args, Errors) {
  EXPECT_THROW(Args::parse({"--nope"}, {}, {}), Error);
  EXPECT_THROW(Args::parse({"--image"}, {}, {"--image"}), Error);
  EXPECT_THROW(Args::parse({"--inject=1"}, {"--inject"}, {}), Error);
  Args a = Args::parse({"x"}, {}, {});
  EXPECT_THROW(a.positional(1, "FILE"), Error);
  EXPECT_THROW(a.max_positional(0), Error);
  EXPECT_EQ(parse_int("--ram", "512", 1000), 512);
  EXPECT_THROW(parse_int("--ram", "5x", 1000), Error);
  EXPECT_THROW(parse_int("--ram", "", 1000), Error);
  EXPECT_THROW(parse_int("--ram", "1001", 1000), Error);
}

}  // namespace
}  // namespace kiln::spawn::cli

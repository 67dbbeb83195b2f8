#include "cli/args.h"

#include <gtest/gtest.h>

#include "kiln/net/error.h"

namespace kiln::net::cli {
namespace {

TEST(Args, NeutronSpellings) {
  Args a =
      Args::parse({"demo-net", "--provider:network_type", "vxlan", "--provider:segmentation_id=1",
                   "--router:external=True", "--tenant_id", "demo"},
                  {"--router:external"},
                  {"--provider:network-type", "--provider:segmentation-id", "--tenant-id"});
  EXPECT_EQ(a.positional(0, "NAME"), "demo-net");
  EXPECT_EQ(a.get("--provider:network-type"), "vxlan");
  EXPECT_EQ(a.integer("--provider:segmentation-id", 1, 16777215), 1);
  EXPECT_TRUE(a.flag("--router:external"));
  EXPECT_EQ(a.get("--tenant-id"), "demo");
}

TEST(Args, RepeatedAndBooleans) {
  Args a = Args::parse(
      {"--dns-nameserver", "8.8.8.8", "--dns-nameserver=1.1.1.1", "--router:external=False"},
      {"--router:external"}, {"--dns-nameserver"});
  EXPECT_EQ(a.all("--dns-nameserver"), (std::vector<std::string>{"8.8.8.8", "1.1.1.1"}));
  EXPECT_FALSE(a.flag("--router:external"));
}

TEST(Args, Errors) {
  EXPECT_THROW(Args::parse({"--nope"}, {}, {}), Error);
  EXPECT_THROW(Args::parse({"--name"}, {}, {"--name"}), Error);
  EXPECT_THROW(Args::parse({"--flag=maybe"}, {"--flag"}, {}), Error);
  Args a = Args::parse({"--n", "x1"}, {}, {"--n"});
  EXPECT_THROW(a.integer("--n", 0, 10), Error);
  EXPECT_THROW(a.positional(0, "NAME"), Error);
  Args b = Args::parse({"a", "b"}, {}, {});
  EXPECT_THROW(b.max_positional(1), Error);
  EXPECT_THROW(Args::parse({std::string(5000, 'x')}, {}, {}), Error);
}

// Whole strings only, within the range the option allows; the error names the option, the
// value and the range.
TEST(Args, IntegersAreStrictAndRangeChecked) {
  auto value = [](const std::string& v, int64_t min, int64_t max) {
    return Args::parse({"--n", v}, {}, {"--n"}).integer("--n", min, max);
  };
  EXPECT_EQ(value("0", 0, 65535), 0);
  EXPECT_EQ(value("65535", 0, 65535), 65535);
  EXPECT_EQ(value("4294967295", 1, 0xffffffff), 4294967295);
  EXPECT_EQ(value("-3", -5, 5), -3);
  EXPECT_FALSE(Args::parse({}, {}, {"--n"}).integer("--n", 0, 1));
  const std::pair<std::string, std::string> bad[] = {
      {"80x", "'80x' is not an integer (an integer from 0 to 65535)"},
      {"", "'' is not an integer"},
      {" 80", "is not an integer"},
      {"80 ", "is not an integer"},
      {"+80", "is not an integer"},
      {"0x50", "is not an integer"},
      {"8e1", "is not an integer"},
      {"65536", "65536 is out of range (an integer from 0 to 65535)"},
      {"-1", "-1 is out of range"},
      {"99999999999999999999", "is out of range"},
  };
  for (const auto& [v, needle] : bad) {
    try {
      value(v, 0, 65535);
      ADD_FAILURE() << "'" << v << "' accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--n: "), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << v << ": " << e.what();
    }
  }
}

}  // namespace
}  // namespace kiln::net::cli

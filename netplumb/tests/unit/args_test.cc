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
  EXPECT_EQ(a.integer("--provider:segmentation-id"), 1);
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
  EXPECT_THROW(a.integer("--n"), Error);
  EXPECT_THROW(a.positional(0, "NAME"), Error);
  Args b = Args::parse({"a", "b"}, {}, {});
  EXPECT_THROW(b.max_positional(1), Error);
  EXPECT_THROW(Args::parse({std::string(5000, 'x')}, {}, {}), Error);
}

}  // namespace
}  // namespace kiln::net::cli

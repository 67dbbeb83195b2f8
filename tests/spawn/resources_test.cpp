#include "kiln/spawn/resources.h"

#include <gtest/gtest.h>

#include "kiln/spawn/error.h"
#include "test_util.h"

namespace kiln::spawn {
namespace {

using testing::TempDir;
using testing::TestNetStore;
using testing::TestStore;

TEST(Store, BuiltinFlavorsAndSettings) {
  TempDir d;
  TestStore s(d.str());
  auto tiny = s.find_flavor("m1.tiny");
  ASSERT_TRUE(tiny);
  EXPECT_EQ(tiny->vcpus, 1);
  EXPECT_EQ(tiny->ram_mb, 512);
  EXPECT_EQ(tiny->disk_gb, 1);
  auto small = s.find_flavor("m1.small");
  ASSERT_TRUE(small);
  EXPECT_EQ(small->ram_mb, 2048);
  EXPECT_EQ(small->disk_gb, 20);
  EXPECT_FALSE(s.find_flavor("m1.nope"));
  s.set_setting("host_vcpus", "4");
  EXPECT_EQ(s.setting("host_vcpus"), "4");
  s.set_setting("host_vcpus", "");
  EXPECT_FALSE(s.setting("host_vcpus"));
  // A second open of the same directory sees the same data and does not duplicate flavors.
  TestStore s2(d.str());
  EXPECT_EQ(s2.flavors().size(), s.flavors().size());
}

TEST(ResourceTracker, DiscoveryAndNovaDefaults) {
  TempDir d;
  TestStore s(d.str());
  ResourceTracker t(s);
  ResourceConfig c = t.config();
  EXPECT_GE(c.total.vcpus, 1);
  EXPECT_GT(c.total.memory_mb, 0);
  EXPECT_GT(c.total.disk_gb, 0);
  EXPECT_DOUBLE_EQ(c.cpu_allocation_ratio, 16.0);
  EXPECT_DOUBLE_EQ(c.ram_allocation_ratio, 1.5);
  EXPECT_DOUBLE_EQ(c.disk_allocation_ratio, 1.0);
  EXPECT_EQ(c.reserved_host_memory_mb, 512);
}

TEST(ResourceTracker, CapacityIsTotalLessReservedTimesRatio) {
  TempDir d;
  TestStore s(d.str());
  s.set_setting("host_vcpus", "2");
  s.set_setting("host_memory_mb", "4096");
  s.set_setting("host_disk_gb", "10");
  s.set_setting("reserved_host_disk_mb", "1024");
  ResourceTracker t(s);
  auto st = t.stats();
  ASSERT_EQ(st.size(), 3u);
  EXPECT_EQ(st[0].resource, "vcpus");
  EXPECT_EQ(st[0].capacity, 32);                    // 2 * 16
  EXPECT_EQ(st[1].capacity, (4096 - 512) * 3 / 2);  // ram ratio 1.5
  EXPECT_EQ(st[2].capacity, 9);                     // (10 - 1) * 1.0
  t.claim("a", Flavor{"x", 3, 1000, 4, false});
  st = t.stats();
  EXPECT_EQ(st[0].used, 3);
  EXPECT_EQ(st[1].used, 1000);
  EXPECT_EQ(st[2].free(), 5);
  t.release("a");
  EXPECT_EQ(t.stats()[1].used, 0);
}

TEST(ResourceTracker, ClaimBeyondCapacityNamesTheResource) {
  TempDir d;
  TestStore s(d.str());
  s.set_setting("host_vcpus", "1");
  s.set_setting("cpu_allocation_ratio", "1.0");
  s.set_setting("host_memory_mb", "2048");
  s.set_setting("host_disk_gb", "100");
  ResourceTracker t(s);
  t.claim("a", Flavor{"m1.tiny", 1, 512, 1, true});
  try {
    t.claim("b", Flavor{"m1.tiny", 1, 512, 1, true});
    FAIL() << "second claim fitted";
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kNoSpace);
    EXPECT_NE(std::string(e.what()).find("vCPUs"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find("memory"), std::string::npos) << e.what();
  }
  try {
    t.claim("c", Flavor{"big", 1, 100000, 1000, false});
    FAIL() << "big claim fitted";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("vCPUs"), std::string::npos) << m;
    EXPECT_NE(m.find("memory"), std::string::npos) << m;
    EXPECT_NE(m.find("disk"), std::string::npos) << m;
  }
  EXPECT_FALSE(s.has_claim("b"));
  EXPECT_FALSE(s.has_claim("c"));
  EXPECT_EQ(t.instances(), 1);
}

TEST(ResourceTracker, BadSettingIsAClearError) {
  TempDir d;
  TestStore s(d.str());
  s.set_setting("ram_allocation_ratio", "lots");
  ResourceTracker t(s);
  try {
    t.config();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ram_allocation_ratio"), std::string::npos);
  }
}

// Settings are read whole and within bounds: what std::stoll/stod would half-read or take
// for a number ("+5", " 5", "1e3", "0x10", "inf", "1.5x") is an error naming the setting.
TEST(ResourceTracker, SettingsAreParsedStrictly) {
  TempDir d;
  TestStore s(d.str());
  ResourceTracker t(s);
  for (const char* bad :
       {"+5", " 5", "5 ", "1e3", "0x10", "-1", "5x", "", "99999999999999", "1099511627777"}) {
    if (!*bad) continue;  // '' is "the default"
    s.set_setting("host_vcpus", bad);
    try {
      t.config();
      ADD_FAILURE() << "host_vcpus '" << bad << "' accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("host_vcpus must be a whole number"), std::string::npos)
          << e.what();
    }
  }
  s.set_setting("host_vcpus", "1099511627776");
  EXPECT_EQ(t.config().total.vcpus, int64_t{1} << 40);
  for (const char* bad :
       {"1e3", "inf", "nan", "0", "0.0", "10000.5", "1.5x", ".5", "5.", "-1.5", "0x1p3", " 1.5"}) {
    s.set_setting("cpu_allocation_ratio", bad);
    try {
      t.config();
      ADD_FAILURE() << "cpu_allocation_ratio '" << bad << "' accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("cpu_allocation_ratio must be a number"),
                std::string::npos)
          << e.what();
    }
  }
  s.set_setting("cpu_allocation_ratio", "2.25");
  EXPECT_DOUBLE_EQ(t.config().cpu_allocation_ratio, 2.25);
  s.set_setting("cpu_allocation_ratio", "10000");
  EXPECT_DOUBLE_EQ(t.config().cpu_allocation_ratio, 10000.0);
}

// Eight processes race for 20 slots, 10 attempts each: exactly 20 claims exist afterwards.
TEST(ResourceTracker, ConcurrentClaimsNeverExceedCapacity) {
  TempDir d;
  {
    TestStore s(d.str());
    s.set_setting("host_vcpus", "20");
    s.set_setting("cpu_allocation_ratio", "1.0");
    s.set_setting("host_memory_mb", "1000000");
    s.set_setting("host_disk_gb", "1000");
  }
  std::vector<int> rcs = testing::in_children(8, [&](int child) {
    TestStore s(d.str());
    ResourceTracker t(s);
    int won = 0;
    for (int i = 0; i < 10; ++i) {
      try {
        std::string id = std::to_string(child * 100 + i);  // (GCC 12 warns on "c" + ...)
        t.claim(id, Flavor{"f", 1, 1, 1, false});
        ++won;
      } catch (const Error& e) {
        if (e.reason() != Reason::kNoSpace) return 97;
      }
    }
    return won;
  });
  int total = 0;
  for (int rc : rcs) {
    ASSERT_LE(rc, 10) << "child failed with " << rc;
    total += rc;
  }
  EXPECT_EQ(total, 20);
  TestStore s(d.str());
  EXPECT_EQ(s.usage().vcpus, 20);
  EXPECT_EQ(s.usage().instances, 20);
}

}  // namespace
}  // namespace kiln::spawn

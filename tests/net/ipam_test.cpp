#include "kiln/net/ipam.h"

#include <gtest/gtest.h>

#include <set>

#include "kiln/net/error.h"

namespace kiln::net {
namespace {

Ipv4 ip(const char* s) { return *Ipv4::parse(s); }
Cidr cidr(const char* s) { return *Cidr::parse(s); }

TEST(Ipam, DefaultPoolsSkipNetworkBroadcastAndGateway) {
  auto pools = default_pools(cidr("192.168.0.0/24"), ip("192.168.0.1"));
  ASSERT_EQ(pools.size(), 1u);
  EXPECT_EQ(pools[0].str(), "192.168.0.2-192.168.0.254");
  pools = default_pools(cidr("10.0.0.0/29"), ip("10.0.0.4"));
  ASSERT_EQ(pools.size(), 2u);
  EXPECT_EQ(pools[0].str(), "10.0.0.1-10.0.0.3");
  EXPECT_EQ(pools[1].str(), "10.0.0.5-10.0.0.6");
  pools = default_pools(cidr("10.0.0.0/30"), std::nullopt);
  ASSERT_EQ(pools.size(), 1u);
  EXPECT_EQ(pools[0].str(), "10.0.0.1-10.0.0.2");
}

TEST(Ipam, AllocatesEveryPoolAddressOnceAndNeverReserved) {
  Cidr c = cidr("10.1.0.0/28");
  Ipv4 gw = ip("10.1.0.7");
  auto pools = default_pools(c, gw);
  std::vector<Ipv4> used;
  while (auto next = first_free(pools, used)) {
    EXPECT_NE(*next, c.network);
    EXPECT_NE(*next, c.broadcast());
    EXPECT_NE(*next, gw);
    EXPECT_TRUE(c.contains(*next));
    used.push_back(*next);
  }
  EXPECT_EQ(used.size(), 13u);  // 16 - network - broadcast - gateway
  EXPECT_EQ(std::set<Ipv4>(used.begin(), used.end()).size(), used.size());
}

TEST(Ipam, FirstFreeReusesFreedAddresses) {
  std::vector<IpRange> pools = {{ip("172.24.1.100"), ip("172.24.1.102")}};
  std::vector<Ipv4> used = {ip("172.24.1.100"), ip("172.24.1.102")};
  EXPECT_EQ(first_free(pools, used), ip("172.24.1.101"));
  used.push_back(ip("172.24.1.101"));
  EXPECT_FALSE(first_free(pools, used));
  // Used addresses outside the pool do not matter.
  EXPECT_EQ(first_free(pools, {ip("172.24.1.99")}), ip("172.24.1.100"));
}

TEST(Ipam, PoolEndingAtTopOfRange) {
  std::vector<IpRange> pools = {{ip("10.0.0.253"), ip("10.0.0.254")}};
  EXPECT_EQ(first_free(pools, {ip("10.0.0.253")}), ip("10.0.0.254"));
  EXPECT_FALSE(first_free(pools, {ip("10.0.0.253"), ip("10.0.0.254")}));
}

TEST(Ipam, ValidateSubnet) {
  Cidr c = cidr("172.24.1.0/24");
  EXPECT_NO_THROW(validate_subnet(c, ip("172.24.1.1"), {{ip("172.24.1.100"), ip("172.24.1.200")}}));
  EXPECT_THROW(validate_subnet(c, ip("172.24.1.1"), {{ip("172.24.1.0"), ip("172.24.1.10")}}),
               Error);  // network address
  EXPECT_THROW(validate_subnet(c, ip("172.24.1.1"), {{ip("172.24.1.200"), ip("172.24.1.255")}}),
               Error);  // broadcast
  EXPECT_THROW(validate_subnet(c, ip("172.24.1.1"), {{ip("172.24.1.1"), ip("172.24.1.10")}}),
               Error);  // gateway
  EXPECT_THROW(validate_subnet(c, ip("172.24.2.1"), {}), Error);
  EXPECT_THROW(validate_subnet(c, ip("172.24.1.255"), {}), Error);
  EXPECT_THROW(validate_subnet(c, std::nullopt,
                               {{ip("172.24.1.10"), ip("172.24.1.20")},
                                {ip("172.24.1.20"), ip("172.24.1.30")}}),
               Error);  // overlap
  EXPECT_THROW(validate_subnet(cidr("10.0.0.0/31"), std::nullopt, {}), Error);
}

TEST(Ipam, ValidateFixedIp) {
  Subnet s;
  s.name = "demo-subnet";
  s.cidr = cidr("192.168.0.0/24");
  s.gateway_ip = ip("192.168.0.1");
  EXPECT_NO_THROW(validate_fixed_ip(s, ip("192.168.0.50"), {}, false));
  try {
    validate_fixed_ip(s, ip("192.168.1.5"), {}, false);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "IP address 192.168.1.5 is not in subnet demo-subnet (192.168.0.0/24)");
  }
  EXPECT_THROW(validate_fixed_ip(s, ip("192.168.0.0"), {}, false), Error);
  EXPECT_THROW(validate_fixed_ip(s, ip("192.168.0.255"), {}, false), Error);
  EXPECT_THROW(validate_fixed_ip(s, ip("192.168.0.1"), {}, false), Error);
  EXPECT_NO_THROW(validate_fixed_ip(s, ip("192.168.0.1"), {}, true));
  try {
    validate_fixed_ip(s, ip("192.168.0.50"), {ip("192.168.0.50")}, false);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kExists);
  }
}

TEST(Ipam, RandomMacKeepsPrefix) {
  std::set<std::string> seen;
  for (int i = 0; i < 200; ++i) {
    Mac m = random_mac({0xfa, 0x16, 0x3e});
    EXPECT_EQ(m.b[0], 0xfa);
    EXPECT_EQ(m.b[1], 0x16);
    EXPECT_EQ(m.b[2], 0x3e);
    seen.insert(m.str());
  }
  EXPECT_GT(seen.size(), 190u);  // 24 random bits: collisions in 200 draws are rare
  Mac m = random_mac({0x02, 0xaa, 0xbb, 0xcc, 0xdd});
  EXPECT_EQ(m.str().substr(0, 14), "02:aa:bb:cc:dd");
}

}  // namespace
}  // namespace kiln::net

#include "kiln/net/addr.h"

#include <gtest/gtest.h>

namespace kiln::net {
namespace {

TEST(Ipv4, ParsesAndFormats) {
  auto ip = Ipv4::parse("192.168.0.1");
  ASSERT_TRUE(ip);
  EXPECT_EQ(ip->value(), 0xc0a80001u);
  EXPECT_EQ(ip->str(), "192.168.0.1");
  EXPECT_EQ(Ipv4::parse("0.0.0.0")->str(), "0.0.0.0");
  EXPECT_EQ(Ipv4::parse("255.255.255.255")->value(), 0xffffffffu);
}

TEST(Ipv4, RejectsMalformed) {
  for (const char* bad : {"", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.-4", "a.b.c.d", "1..2.3",
                          "01.2.3.4", "1.2.3.4 ", " 1.2.3.4", "1.2.3.4/24"})
    EXPECT_FALSE(Ipv4::parse(bad)) << bad;
}

TEST(Cidr, ParsesNetworkAddressesOnly) {
  auto c = Cidr::parse("192.168.0.0/24");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->broadcast().str(), "192.168.0.255");
  EXPECT_EQ(c->netmask().str(), "255.255.255.0");
  EXPECT_TRUE(c->contains(*Ipv4::parse("192.168.0.77")));
  EXPECT_FALSE(c->contains(*Ipv4::parse("192.168.1.1")));
  EXPECT_FALSE(Cidr::parse("192.168.0.1/24"));  // host bits set
  EXPECT_FALSE(Cidr::parse("192.168.0.0/33"));
  EXPECT_FALSE(Cidr::parse("192.168.0.0"));
  EXPECT_EQ(Cidr::parse("0.0.0.0/0")->mask(), 0u);
}

TEST(Cidr, Overlaps) {
  auto a = *Cidr::parse("10.0.0.0/16"), b = *Cidr::parse("10.0.5.0/24"),
       c = *Cidr::parse("10.1.0.0/24");
  EXPECT_TRUE(a.overlaps(b));
  EXPECT_TRUE(b.overlaps(a));
  EXPECT_FALSE(a.overlaps(c));
}

TEST(IpRange, ParsesBothForms) {
  auto r = IpRange::parse("start=172.24.1.100,end=172.24.1.200");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->str(), "172.24.1.100-172.24.1.200");
  EXPECT_EQ(IpRange::parse(r->str()), r);
  EXPECT_FALSE(IpRange::parse("start=10.0.0.9,end=10.0.0.1"));
  EXPECT_FALSE(IpRange::parse("start=10.0.0.1"));
}

TEST(Mac, ParsesAndFormats) {
  auto m = Mac::parse("FA:16:3e:00:aB:01");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->str(), "fa:16:3e:00:ab:01");
  EXPECT_TRUE(m->is_unicast());
  EXPECT_FALSE(Mac::parse("01:00:5e:00:00:01")->is_unicast());
  EXPECT_FALSE(Mac::parse("fa:16:3e:00:ab"));
  EXPECT_FALSE(Mac::parse("fa-16-3e-00-ab-01"));
  EXPECT_FALSE(Mac::parse("fa:16:3e:00:ab:0g"));
}

TEST(Mac, Prefix) {
  EXPECT_EQ(parse_mac_prefix("fa:16:3e")->size(), 3u);
  EXPECT_FALSE(parse_mac_prefix("01:16:3e"));  // multicast
  EXPECT_FALSE(parse_mac_prefix("fa:16:3e:00:00:00"));
  EXPECT_FALSE(parse_mac_prefix("fa:16:"));
  EXPECT_FALSE(parse_mac_prefix(""));
}

}  // namespace
}  // namespace kiln::net

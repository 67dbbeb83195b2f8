#include <gtest/gtest.h>

#include "kiln/common/temp.h"
#include "kiln/net/plumber.h"
#include "kiln/net/service.h"
#include "plumb/sg_rules.h"
#include "test_store.h"

namespace kiln::net {
namespace {

class RulesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    NetworkSpec n;
    n.name = "net";
    svc_.create_network(n);
    SubnetSpec s;
    s.network = "net";
    s.name = "sub";
    s.cidr = "10.0.0.0/24";
    svc_.create_subnet(s);
  }
  Port port(const std::string& ip, std::vector<std::string> groups = {}) {
    PortSpec p;
    p.network = "net";
    p.fixed_ips = {{"sub", ip}};
    p.security_groups = std::move(groups);
    return svc_.create_port(p);
  }
  common::TempDir dir_;
  kiln::teststore::StoreLocation where_ = kiln::teststore::test_store(dir_.file("db"), "net");
  Store store_{where_.location, where_.schema};
  NetService svc_{store_};
};

TEST_F(RulesTest, NoFilteredPortsNoRules) {
  EXPECT_EQ(security_group_ruleset(store_.snapshot()), "");  // only the DHCP port exists
}

TEST_F(RulesTest, AntiSpoofingAndDefaultGroup) {
  Port a = port("10.0.0.10");
  Port b = port("10.0.0.11");
  std::string rules = security_group_ruleset(store_.snapshot());
  std::string dev = port_device_name(a);
  EXPECT_NE(rules.find("\"" + dev + "\" : jump from_" + std::to_string(a.tag)), std::string::npos);
  EXPECT_NE(rules.find("ether saddr != " + a.mac_address.str() + " drop"), std::string::npos);
  EXPECT_NE(rules.find("arp saddr ip != 0.0.0.0 arp saddr ip != 10.0.0.10 drop"),
            std::string::npos);
  EXPECT_NE(rules.find("ip saddr != 10.0.0.10 drop"), std::string::npos);
  // No anonymous sets in a port's chains (named sets only): see none_of() in sg_rules.cpp.
  EXPECT_EQ(rules.find("!= {"), std::string::npos) << rules;
  // The default group: ingress from its members only, via a set of their addresses.
  std::string set = "rg_" + a.security_groups.at(0);
  for (char& c : set)
    if (c == '-') c = '_';
  EXPECT_NE(rules.find("add element inet kiln_sg " + set + " { 10.0.0.10, 10.0.0.11 }"),
            std::string::npos)
      << rules;
  EXPECT_NE(rules.find("ip saddr @" + set + " accept"), std::string::npos);
  // The DHCP port is not filtered.
  for (auto& p : store_.ports()) {
    if (p.device_owner == kOwnerDhcp) {
      EXPECT_EQ(rules.find(port_device_name(p)), std::string::npos);
    }
  }
  EXPECT_NE(rules.find(port_device_name(b)), std::string::npos);
}

TEST_F(RulesTest, RulesRender) {
  svc_.create_security_group("web", kDefaultTenant);
  RuleSpec r;
  r.security_group = "web";
  r.protocol = "tcp";
  r.port_range_min = 80;
  r.port_range_max = 443;
  r.remote_ip_prefix = "192.0.2.0/24";
  svc_.create_security_group_rule(r);
  RuleSpec icmp;
  icmp.security_group = "web";
  icmp.protocol = "icmp";
  icmp.port_range_min = 8;
  svc_.create_security_group_rule(icmp);
  RuleSpec v6;
  v6.security_group = "web";
  v6.ethertype = "IPv6";
  svc_.create_security_group_rule(v6);
  Port p = port("10.0.0.20", {"web"});
  std::string rules = security_group_ruleset(store_.snapshot());
  EXPECT_NE(rules.find("ip saddr 192.0.2.0/24 meta l4proto tcp tcp dport 80-443 accept"),
            std::string::npos)
      << rules;
  EXPECT_NE(rules.find("meta l4proto icmp icmp type 8 accept"), std::string::npos);
  EXPECT_NE(rules.find("meta nfproto ipv4 return"), std::string::npos);  // egress: anything
}

TEST_F(RulesTest, IncrementalChanges) {
  Port a = port("10.0.0.10");
  SgState one = security_group_state(store_.snapshot());
  EXPECT_EQ(sg_incremental_script(sg_applied(one), one), "");
  Port b = port("10.0.0.11");
  SgState two = security_group_state(store_.snapshot());
  std::string add = sg_incremental_script(sg_applied(one), two);
  std::string tb = std::to_string(b.tag);
  EXPECT_NE(add.find("add chain inet kiln_sg egress_" + tb), std::string::npos) << add;
  EXPECT_NE(add.find("add element bridge kiln_sg from_port { \"" + port_device_name(b) +
                     "\" : jump from_" + tb + " }"),
            std::string::npos);
  // b joins the default group: its address joins the set; a's chains do not change.
  std::string set = "rg_" + b.security_groups.at(0);
  for (char& c : set)
    if (c == '-') c = '_';
  EXPECT_NE(add.find("add element inet kiln_sg " + set + " { 10.0.0.11 }"), std::string::npos)
      << add;
  EXPECT_EQ(add.find("egress_" + std::to_string(a.tag)), std::string::npos);
  // A new port costs additions only: nothing flushed or deleted (the kernel would make the
  // next close of an nftables socket wait for an RCU grace period to free what went).
  EXPECT_EQ(add.find("flush"), std::string::npos) << add;
  EXPECT_EQ(add.find("delete"), std::string::npos) << add;
  svc_.delete_port(b.id);
  SgState three = security_group_state(store_.snapshot());
  std::string del = sg_incremental_script(sg_applied(two), three);
  EXPECT_NE(del.find("delete element inet kiln_sg ingress_by_mark"), std::string::npos) << del;
  EXPECT_NE(del.find("delete chain bridge kiln_sg to_" + tb), std::string::npos);
  // Elements go before the chains they point to.
  EXPECT_LT(del.find("delete element bridge kiln_sg to_port"), del.find("delete chain"));
  EXPECT_NE(del.find("delete element inet kiln_sg " + set + " { 10.0.0.11 }"), std::string::npos);
  EXPECT_EQ(del.find("flush set"), std::string::npos) << del;
  EXPECT_EQ(three, one);
}

TEST_F(RulesTest, StateRoundTrip) {
  port("10.0.0.10");
  SgApplied s = sg_applied(security_group_state(store_.snapshot()));
  SgApplied back;
  ASSERT_TRUE(sg_deserialize(sg_serialize(s), back));
  EXPECT_EQ(back, s);
  EXPECT_EQ(back.sets.size(), 1u);
  EXPECT_FALSE(sg_deserialize("garbage", back));
  EXPECT_FALSE(sg_deserialize("{\"ports\": {\"x\": {}}, \"sets\": {}}", back));  // older format
  EXPECT_FALSE(sg_deserialize("kiln-sg 1\nport 0 tapx 0x1\n", back));
  EXPECT_FALSE(sg_deserialize("kiln-sg 1\nport 70000 tapx 0x1\n", back));
  EXPECT_FALSE(sg_deserialize("kiln-sg 1\nport 3 tapx zz\n", back));
  EXPECT_FALSE(sg_deserialize("kiln-sg 1\nset rg_x 10.0.0.300\n", back));
}

TEST_F(RulesTest, ChangedRulesRewriteOnlyThatPort) {
  Port a = port("10.0.0.10");
  svc_.create_security_group("web", kDefaultTenant);
  Port b = port("10.0.0.11", {"web"});
  SgState before = security_group_state(store_.snapshot());
  RuleSpec r;
  r.security_group = "web";
  r.protocol = "tcp";
  r.port_range_min = 22;
  svc_.create_security_group_rule(r);
  std::string script =
      sg_incremental_script(sg_applied(before), security_group_state(store_.snapshot()));
  std::string tb = std::to_string(b.tag);
  EXPECT_NE(script.find("flush chain inet kiln_sg ingress_" + tb), std::string::npos) << script;
  EXPECT_NE(script.find("tcp dport 22 accept"), std::string::npos);
  EXPECT_EQ(script.find("_" + std::to_string(a.tag) + "\n"), std::string::npos) << script;
}

TEST_F(RulesTest, RouterNat) {
  svc_.create_router("r", kDefaultTenant);
  svc_.add_router_interface("r", "sub");
  NetworkSpec pub;
  pub.name = "pub";
  pub.router_external = true;
  svc_.create_network(pub);
  SubnetSpec ps;
  ps.network = "pub";
  ps.name = "pubsub";
  ps.cidr = "203.0.113.0/24";
  ps.enable_dhcp = false;
  svc_.create_subnet(ps);
  Router r = svc_.set_router_gateway("r", "pub");
  Port vm = port("10.0.0.30");
  svc_.create_floating_ip("pub", kDefaultTenant, vm.id);
  std::string rules = router_nat_ruleset(store_.snapshot(), svc_.router("r"));
  std::string qg = "qg-" + r.gw_port_id.substr(0, 11);
  EXPECT_NE(rules.find("ip daddr 203.0.113.3 dnat to 10.0.0.30"), std::string::npos) << rules;
  EXPECT_NE(rules.find("oifname \"" + qg + "\" ip saddr 10.0.0.30 snat to 203.0.113.3"),
            std::string::npos);
  EXPECT_NE(rules.find("ip saddr { 10.0.0.0/24 } snat to 203.0.113.2"), std::string::npos);
  // The floating IP's SNAT comes before the router's.
  EXPECT_LT(rules.find("snat to 203.0.113.3"), rules.find("snat to 203.0.113.2"));
}

}  // namespace
}  // namespace kiln::net

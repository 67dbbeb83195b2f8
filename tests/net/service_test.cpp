#include "kiln/net/service.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <set>

#include "kiln/common/temp.h"
#include "kiln/net/error.h"
#include "test_store.h"

namespace kiln::net {
namespace {

using common::TempDir;

class ServiceTest : public ::testing::Test {
 protected:
  Store open_store() const { return Store(where_.location, where_.schema); }

  // The walkthrough of issue 5, through the API.
  void walkthrough() {
    NetworkSpec n;
    n.name = "demo-net";
    n.tenant_id = "demo";
    n.network_type = "vxlan";
    n.segmentation_id = 1;
    svc_.create_network(n);
    SubnetSpec s;
    s.name = "demo-subnet";
    s.tenant_id = "demo";
    s.network = "demo-net";
    s.cidr = "192.168.0.0/24";
    s.gateway_ip = "192.168.0.1";
    s.dns_nameservers = {"8.8.8.8"};
    svc_.create_subnet(s);
    svc_.create_router("demo-router", "demo");
    svc_.add_router_interface("demo-router", "demo-subnet");
    NetworkSpec pub;
    pub.name = "public";
    pub.router_external = true;
    svc_.create_network(pub);
    SubnetSpec ps;
    ps.name = "public-subnet";
    ps.network = "public";
    ps.cidr = "172.24.1.0/24";
    ps.gateway_ip = "172.24.1.1";
    ps.allocation_pools = {"start=172.24.1.100,end=172.24.1.200"};
    ps.enable_dhcp = false;
    svc_.create_subnet(ps);
    svc_.set_router_gateway("demo-router", "public");
  }

  Port guest_port(const std::string& name = "") {
    PortSpec p;
    p.network = "demo-net";
    p.tenant_id = "demo";
    p.name = name;
    return svc_.create_port(p);
  }

  template <class F>
  std::string error_of(F&& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  }

  TempDir dir_;
  kiln::teststore::StoreLocation where_ =
      kiln::teststore::test_store(dir_.file("netplumb.db"), "net");
  Store store_{where_.location, where_.schema};
  NetService svc_{store_};
};

TEST_F(ServiceTest, WalkthroughBuildsTheModel) {
  walkthrough();
  Network demo = svc_.network("demo-net");
  EXPECT_EQ(demo.network_type, "vxlan");
  EXPECT_EQ(demo.segmentation_id, 1u);
  Network pub = svc_.network("public");
  EXPECT_TRUE(pub.router_external);
  EXPECT_EQ(pub.network_type, "flat");
  EXPECT_EQ(pub.physical_network, "physnet1");

  Router r = svc_.router("demo-router");
  EXPECT_EQ(r.gw_network_id, pub.id);
  Port gw = svc_.port(r.gw_port_id);
  ASSERT_EQ(gw.fixed_ips.size(), 1u);
  EXPECT_EQ(gw.fixed_ips[0].ip_address.str(), "172.24.1.100");  // first of the pool

  // Router interface holds the gateway; the DHCP port takes the first pool address.
  std::map<std::string, std::string> by_owner;
  for (auto& p : store_.ports(demo.id))
    by_owner[p.device_owner] = p.fixed_ips.at(0).ip_address.str();
  EXPECT_EQ(by_owner[kOwnerRouterInterface], "192.168.0.1");
  EXPECT_EQ(by_owner[kOwnerDhcp], "192.168.0.2");
  // No DHCP port on the public network (--disable-dhcp).
  for (auto& p : store_.ports(pub.id)) EXPECT_NE(p.device_owner, kOwnerDhcp);

  Port g = guest_port("vm1");
  EXPECT_EQ(g.fixed_ips.at(0).ip_address.str(), "192.168.0.3");
  EXPECT_EQ(g.mac_address.str().substr(0, 8), "fa:16:3e");
  ASSERT_EQ(g.security_groups.size(), 1u);
  EXPECT_EQ(svc_.security_group(g.security_groups[0]).name, "default");
}

TEST_F(ServiceTest, NamesOrIds) {
  walkthrough();
  Network n = svc_.network("demo-net");
  EXPECT_EQ(svc_.network(n.id).name, "demo-net");
  EXPECT_EQ(error_of([&] { svc_.network("nope"); }), "network 'nope' not found");
  NetworkSpec dup;
  dup.name = "demo-net";
  svc_.create_network(dup);
  EXPECT_EQ(error_of([&] { svc_.network("demo-net"); }),
            "several networks are named 'demo-net'; give an id instead");
  EXPECT_EQ(svc_.network(n.id).id, n.id);
}

TEST_F(ServiceTest, FixedIpRequestsAreValidated) {
  walkthrough();
  PortSpec p;
  p.network = "demo-net";
  p.fixed_ips = {{"demo-subnet", "192.168.0.50"}};
  Port a = svc_.create_port(p);
  EXPECT_EQ(a.fixed_ips.at(0).ip_address.str(), "192.168.0.50");
  EXPECT_EQ(error_of([&] { svc_.create_port(p); }),
            "IP address 192.168.0.50 is already allocated in subnet demo-subnet");
  p.fixed_ips = {{"demo-subnet", "192.168.1.9"}};
  EXPECT_EQ(error_of([&] { svc_.create_port(p); }),
            "IP address 192.168.1.9 is not in subnet demo-subnet (192.168.0.0/24)");
  p.fixed_ips = {{"demo-subnet", "192.168.0.1"}};
  EXPECT_EQ(error_of([&] { svc_.create_port(p); }),
            "IP address 192.168.0.1 is the gateway of subnet demo-subnet");
  p.fixed_ips = {{"demo-subnet", "192.168.0.255"}};
  EXPECT_NE(error_of([&] { svc_.create_port(p); }), "(no error)");
  p.fixed_ips = {{"public-subnet", ""}};
  EXPECT_EQ(error_of([&] { svc_.create_port(p); }),
            "subnet 'public-subnet' is not on network 'demo-net'");
  // An address without a subnet finds its subnet.
  p.fixed_ips = {{"", "192.168.0.60"}};
  EXPECT_EQ(svc_.create_port(p).fixed_ips.at(0).ip_address.str(), "192.168.0.60");
}

TEST_F(ServiceTest, DeletingAPortFreesItsIpAndMac) {
  walkthrough();
  PortSpec p;
  p.network = "demo-net";
  p.mac_address = "fa:16:3e:11:22:33";
  Port a = svc_.create_port(p);
  EXPECT_EQ(error_of([&] { svc_.create_port(p); }),
            "MAC address fa:16:3e:11:22:33 is already used on network 'demo-net'");
  std::string ip = a.fixed_ips.at(0).ip_address.str();
  svc_.delete_port(a.id);
  Port b = svc_.create_port(p);                       // same MAC accepted again
  EXPECT_EQ(b.fixed_ips.at(0).ip_address.str(), ip);  // and the lowest free IP is the old one
  // The same MAC on another network is fine: unique per network.
  p.network = "public";
  EXPECT_NO_THROW(svc_.create_port(p));
}

TEST_F(ServiceTest, PoolExhaustion) {
  NetworkSpec n;
  n.name = "tiny";
  svc_.create_network(n);
  SubnetSpec s;
  s.network = "tiny";
  s.name = "tiny-sub";
  s.cidr = "10.9.0.0/29";
  s.allocation_pools = {"start=10.9.0.2,end=10.9.0.4"};
  s.enable_dhcp = false;
  svc_.create_subnet(s);
  PortSpec p;
  p.network = "tiny";
  std::set<std::string> ips;
  for (int i = 0; i < 3; ++i) ips.insert(svc_.create_port(p).fixed_ips.at(0).ip_address.str());
  EXPECT_EQ(ips, (std::set<std::string>{"10.9.0.2", "10.9.0.3", "10.9.0.4"}));
  EXPECT_EQ(error_of([&] { svc_.create_port(p); }),
            "no free IP address in the subnets of network 'tiny'");
}

TEST_F(ServiceTest, InUseDeletesAreRefusedNamingTheUser) {
  walkthrough();
  Port vm = guest_port("vm1");
  Router r = svc_.router("demo-router");
  Port rp;
  for (auto& p : store_.ports())
    if (p.device_owner == kOwnerRouterInterface) rp = p;
  EXPECT_EQ(error_of([&] { svc_.delete_subnet("demo-subnet"); }),
            "subnet 'demo-subnet' is in use by router 'demo-router' (interface " + rp.id +
                "), port " + vm.id + " ('vm1')");
  svc_.delete_port("vm1");
  std::string msg = error_of([&] { svc_.delete_subnet("demo-subnet"); });
  EXPECT_TRUE(msg.starts_with("subnet 'demo-subnet' is in use by router 'demo-router' (interface "))
      << msg;
  msg = error_of([&] { svc_.delete_network("demo-net"); });
  EXPECT_TRUE(msg.starts_with("network 'demo-net' is in use by router 'demo-router'")) << msg;
  EXPECT_EQ(error_of([&] { svc_.delete_network("public"); }),
            "network 'public' is in use by router 'demo-router' (gateway " + r.gw_port_id + ")");
  EXPECT_EQ(error_of([&] { svc_.delete_router("demo-router"); }),
            "router 'demo-router' still has interfaces on subnet 'demo-subnet'; remove them with "
            "router-interface-delete");
  EXPECT_TRUE(error_of([&] { svc_.delete_port(rp.id); }).ends_with("use router-interface-delete"));

  // Taking it apart in order works, and everything is gone.
  svc_.remove_router_interface("demo-router", "demo-subnet");
  svc_.delete_router("demo-router");
  svc_.delete_network("demo-net");
  svc_.delete_network("public");
  EXPECT_TRUE(store_.ports().empty());
  EXPECT_TRUE(store_.subnets().empty());
  EXPECT_TRUE(store_.networks().empty());
}

TEST_F(ServiceTest, SegmentsAndTypes) {
  NetworkSpec a;
  a.name = "a";
  a.network_type = "vxlan";
  a.segmentation_id = 7;
  svc_.create_network(a);
  a.name = "b";
  EXPECT_EQ(error_of([&] { svc_.create_network(a); }),
            "vxlan segment 7 is already used by network 'a'");
  a.network_type = "gre";
  EXPECT_NO_THROW(svc_.create_network(a));  // gre is accepted in the model
  a.network_type = "geneve";
  EXPECT_EQ(error_of([&] { svc_.create_network(a); }),
            "network type 'geneve' is not one of flat, vlan, vxlan, gre");
  a.network_type = "vlan";
  a.segmentation_id = 5000;
  EXPECT_EQ(error_of([&] { svc_.create_network(a); }),
            "vlan segmentation id must be between 1 and 4094");
  NetworkSpec auto_vni;
  auto_vni.name = "c";
  EXPECT_EQ(svc_.create_network(auto_vni).segmentation_id, 1000u);
  EXPECT_EQ(svc_.create_network(auto_vni).segmentation_id, 1001u);
}

TEST_F(ServiceTest, FloatingIps) {
  walkthrough();
  Port vm = guest_port("vm1");
  FloatingIp f = svc_.create_floating_ip("public", "demo");
  EXPECT_EQ(f.floating_ip_address.str(), "172.24.1.101");  // .100 is the router's gateway
  f = svc_.associate_floating_ip(f.floating_ip_address.str(), "vm1");
  EXPECT_EQ(f.port_id, vm.id);
  EXPECT_EQ(f.fixed_ip_address, vm.fixed_ips[0].ip_address);
  EXPECT_EQ(f.router_id, svc_.router("demo-router").id);
  std::string msg = error_of([&] { svc_.remove_router_interface("demo-router", "demo-subnet"); });
  EXPECT_TRUE(msg.starts_with("floating IP 172.24.1.101 reaches port")) << msg;
  svc_.delete_port("vm1");  // disassociates
  EXPECT_TRUE(svc_.floating_ip(f.id).port_id.empty());
  svc_.delete_floating_ip(f.id);
  EXPECT_THROW(svc_.floating_ip(f.id), Error);
}

TEST_F(ServiceTest, SecurityGroups) {
  walkthrough();
  SecurityGroup web = svc_.create_security_group("web", "demo");
  ASSERT_EQ(store_.security_group_rules(web.id).size(), 1u);  // egress allowed
  RuleSpec r;
  r.security_group = "web";
  r.tenant_id = "demo";
  r.protocol = "tcp";
  r.port_range_min = 80;
  r.remote_ip_prefix = "10.1.2.3/8";
  SecurityGroupRule rule = svc_.create_security_group_rule(r);
  EXPECT_EQ(rule.port_range_max, 80);
  EXPECT_EQ(rule.remote_ip_prefix, "10.0.0.0/8");
  EXPECT_TRUE(error_of([&] {
                svc_.create_security_group_rule(r);
              }).starts_with("security group 'web' already has this rule"));
  r.protocol = "sctp";
  EXPECT_NE(error_of([&] { svc_.create_security_group_rule(r); }), "(no error)");
  r.protocol = "tcp";
  r.port_range_min = 90;
  r.port_range_max = 80;
  EXPECT_NE(error_of([&] { svc_.create_security_group_rule(r); }), "(no error)");

  PortSpec p;
  p.network = "demo-net";
  p.tenant_id = "demo";
  p.name = "web1";
  p.security_groups = {"web"};
  Port port = svc_.create_port(p);
  EXPECT_EQ(error_of([&] { svc_.delete_security_group("web"); }),
            "security group 'web' is in use by port " + port.id + " ('web1')");
  svc_.delete_port("web1");
  svc_.delete_security_group("web");
  EXPECT_TRUE(store_.security_group_rules(web.id).empty());
}

TEST_F(ServiceTest, UpdatePort) {
  walkthrough();
  svc_.create_security_group("web", "demo");
  Port p = guest_port("vm1");
  PortUpdate u;
  u.name = "vm1-renamed";
  u.security_groups = std::vector<std::string>{"web", "default", "web"};
  Port q = svc_.update_port("vm1", u);
  EXPECT_EQ(q.name, "vm1-renamed");
  ASSERT_EQ(q.security_groups.size(), 2u);
  EXPECT_EQ(svc_.security_group(q.security_groups[0]).name, "web");
  EXPECT_EQ(q.fixed_ips[0].ip_address, p.fixed_ips[0].ip_address);  // addresses stay
  EXPECT_EQ(q.tag, p.tag);
  PortUpdate off;
  off.port_security_enabled = false;
  q = svc_.update_port(q.id, off);
  EXPECT_TRUE(q.security_groups.empty());
  PortUpdate bad;
  bad.security_groups = std::vector<std::string>{"web"};
  EXPECT_EQ(error_of([&] { svc_.update_port(q.id, bad); }),
            "security groups need port security enabled");
  Router r = svc_.router("demo-router");
  EXPECT_NE(error_of([&] { svc_.update_port(r.gw_port_id, u); }), "(no error)");
}

// Several processes create ports on one network at once: no IP and no MAC is given twice.
TEST_F(ServiceTest, ConcurrentProcessesNeverCollide) {
  walkthrough();
  constexpr int kProcs = 4, kPorts = 25;
  std::vector<pid_t> kids;
  for (int i = 0; i < kProcs; ++i) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int rc = 0;
      try {
        Store store(where_.location, where_.schema);  // each process its own connection
        NetService svc(store);
        PortSpec p;
        p.network = "demo-net";
        for (int k = 0; k < kPorts; ++k) svc.create_port(p);
      } catch (...) {
        rc = 1;
      }
      _exit(rc);
    }
    kids.push_back(pid);
  }
  for (pid_t pid : kids) {
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  std::set<std::string> ips, macs;
  std::set<uint32_t> tags;
  auto ports = store_.ports(svc_.network("demo-net").id);
  for (auto& p : ports) {
    ips.insert(p.fixed_ips.at(0).ip_address.str());
    macs.insert(p.mac_address.str());
    tags.insert(p.tag);
  }
  EXPECT_EQ(ports.size(), size_t{kProcs * kPorts + 2});  // + router interface + DHCP
  EXPECT_EQ(ips.size(), ports.size());
  EXPECT_EQ(macs.size(), ports.size());
  EXPECT_EQ(tags.size(), ports.size());
}

// Each kiln-net command opens the store, commits and exits; a process that opens the database
// alone rebuilds the WAL index from the whole WAL. The WAL must stay small all the same.
TEST(StoreTest, WalStaysSmallWhenEveryCommandIsAProcess) {
  TempDir dir;
  std::string path = dir.file("netplumb.db");
  {
    Store store(path);
    NetService svc(store);
    NetworkSpec n;
    n.name = "n";
    svc.create_network(n);
    SubnetSpec s;
    s.network = "n";
    s.cidr = "10.0.0.0/16";
    svc.create_subnet(s);
  }
  constexpr int kPorts = 40;  // about 500 WAL pages if nothing checkpointed
  for (int i = 0; i < kPorts; ++i) {
    Store store(path);
    NetService svc(store);
    PortSpec p;
    p.network = "n";
    svc.create_port(p);
  }
  auto wal = std::filesystem::file_size(path + "-wal");
  EXPECT_LT(wal, 150u * (4096 + 24)) << "the WAL grows without checkpoints";
  Store store(path);
  EXPECT_EQ(store.ports().size(), size_t{kPorts + 1});  // + DHCP
}

TEST_F(ServiceTest, Settings) {
  svc_.set_setting("mac_prefix", "02:aa:bb");
  EXPECT_THROW(svc_.set_setting("mac_prefix", "01:00"), Error);
  EXPECT_THROW(svc_.set_setting("nope", "x"), Error);
  NetworkSpec n;
  n.name = "n";
  svc_.create_network(n);
  PortSpec p;
  p.network = "n";
  EXPECT_EQ(svc_.create_port(p).mac_address.str().substr(0, 8), "02:aa:bb");
}

// KILN_HOST for one test, restored afterwards.
class HostEnv {
 public:
  explicit HostEnv(const char* name) {
    if (const char* e = std::getenv("KILN_HOST")) old_ = e;
    set(name);
  }
  ~HostEnv() {
    if (old_)
      ::setenv("KILN_HOST", old_->c_str(), 1);
    else
      ::unsetenv("KILN_HOST");
  }
  void set(const char* name) { ::setenv("KILN_HOST", name, 1); }

 private:
  std::optional<std::string> old_;
};

std::string setting_of(const std::vector<std::pair<std::string, std::string>>& all,
                       const std::string& key) {
  for (auto& [k, v] : all)
    if (k == key) return v;
  return "(missing)";
}

TEST_F(ServiceTest, HostSettingsArePerHost) {
  HostEnv env("host-a");
  svc_.set_setting("vxlan_local_ip", "10.99.0.1");
  svc_.set_setting("vxlan_local_ip", "10.99.0.2", "host-b");
  svc_.set_setting("mac_prefix", "02:aa:bb");
  EXPECT_EQ(setting_of(svc_.settings(), "vxlan_local_ip"), "10.99.0.1");
  EXPECT_EQ(setting_of(svc_.settings("host-b"), "vxlan_local_ip"), "10.99.0.2");
  EXPECT_EQ(setting_of(svc_.settings("host-b"), "mac_prefix"), "02:aa:bb");  // global
  EXPECT_EQ(setting_of(svc_.settings("host-c"), "vxlan_local_ip"), "");
  env.set("host-b");
  EXPECT_EQ(setting_of(svc_.settings(), "vxlan_local_ip"), "10.99.0.2");
  EXPECT_EQ(host_config(svc_).vxlan_local_ip, "10.99.0.2");
  EXPECT_EQ(host_config(svc_).host, "host-b");
  EXPECT_NE(error_of([&] { svc_.set_setting("mac_prefix", "02:aa:cc", "host-a"); }).find("global"),
            std::string::npos);
  EXPECT_THROW(svc_.set_setting("vxlan_local_ip", "10.0.0.1", "bad host"), Error);
  EXPECT_THROW(svc_.set_setting("vxlan_local_ip", "not-an-ip", "host-a"), Error);
  svc_.set_setting("vxlan_local_ip", "", "host-a");  // unset
  EXPECT_EQ(store_.host_setting("host-a", "vxlan_local_ip"), std::nullopt);
  env.set("bad host");
  EXPECT_THROW(svc_.settings(), Error);
}

TEST_F(ServiceTest, AgentsGiveTheTunnelPeers) {
  HostEnv env("host-a");
  const char* hosts[] = {"host-a", "host-b", "host-c"};
  for (int i = 0; i < 3; ++i) {
    svc_.set_setting("vxlan_local_ip", "10.99.0." + std::to_string(i + 1), hosts[i]);
    env.set(hosts[i]);
    Agent a = svc_.report_agent();
    EXPECT_EQ(a.host, hosts[i]);
    EXPECT_EQ(a.tunnel_ip, "10.99.0." + std::to_string(i + 1));
  }
  ASSERT_EQ(svc_.agents().size(), 3u);
  EXPECT_EQ(svc_.tunnel_peers("host-a"), (std::vector<std::string>{"10.99.0.2", "10.99.0.3"}));
  EXPECT_EQ(svc_.tunnel_peers("host-c"), (std::vector<std::string>{"10.99.0.1", "10.99.0.2"}));
  env.set("host-a");
  EXPECT_EQ(host_config(svc_).vxlan_peers, (std::vector<std::string>{"10.99.0.2", "10.99.0.3"}));
  // A second report is the same agent, with a new tunnel IP and a fresh heartbeat.
  Agent before = svc_.agent("host-a");
  svc_.set_setting("vxlan_local_ip", "10.99.0.11");
  Agent after = svc_.report_agent();
  EXPECT_EQ(after.id, before.id);
  EXPECT_EQ(after.created_at, before.created_at);
  EXPECT_GE(after.heartbeat_at, before.heartbeat_at);
  EXPECT_EQ(svc_.agents().size(), 3u);
  EXPECT_EQ(svc_.tunnel_peers("host-b"), (std::vector<std::string>{"10.99.0.11", "10.99.0.3"}));
  // An explicit vxlan_peers wins over the agents.
  svc_.set_setting("vxlan_peers", "10.99.0.7");
  EXPECT_EQ(svc_.tunnel_peers(), (std::vector<std::string>{"10.99.0.7"}));
  svc_.set_setting("vxlan_peers", "");
  // An agent administratively down is no peer; up again, it is.
  EXPECT_FALSE(svc_.update_agent("host-b", false).admin_state_up);
  EXPECT_EQ(svc_.tunnel_peers(), (std::vector<std::string>{"10.99.0.3"}));
  EXPECT_TRUE(svc_.update_agent("host-b", true).admin_state_up);
  EXPECT_EQ(svc_.tunnel_peers(), (std::vector<std::string>{"10.99.0.2", "10.99.0.3"}));
  // A deleted agent (by host or by id) is no one's peer any more.
  svc_.delete_agent("host-c");
  svc_.delete_agent(svc_.agent("host-b").id);
  EXPECT_TRUE(svc_.tunnel_peers().empty());
  EXPECT_EQ(svc_.agents().size(), 1u);
  EXPECT_THROW(svc_.agent("host-c"), Error);
  EXPECT_THROW(svc_.delete_agent("host-c"), Error);
}

TEST_F(ServiceTest, PortBinding) {
  walkthrough();
  PortSpec p;
  p.network = "demo-net";
  p.tenant_id = "demo";
  p.binding_host_id = "compute-2";
  Port port = svc_.create_port(p);
  EXPECT_EQ(svc_.port(port.id).binding_host_id, "compute-2");
  EXPECT_EQ(guest_port("plain").binding_host_id, "");
  EXPECT_EQ(svc_.port("plain").binding_host_id, "");
  PortUpdate u;
  u.binding_host_id = "";
  EXPECT_EQ(svc_.update_port(port.id, u).binding_host_id, "");
  EXPECT_EQ(svc_.port(port.id).binding_host_id, "");
  u.binding_host_id = "no/such host";
  EXPECT_THROW(svc_.update_port(port.id, u), Error);
  p.binding_host_id = "-x";
  EXPECT_THROW(svc_.create_port(p), Error);
  // A DHCP port can be placed on a host, and nothing else about it changed.
  Port dhcp;
  for (auto& x : store_.ports())
    if (x.device_owner == kOwnerDhcp) dhcp = x;
  ASSERT_FALSE(dhcp.id.empty());
  u.binding_host_id = "network-1";
  EXPECT_EQ(svc_.update_port(dhcp.id, u).binding_host_id, "network-1");
  EXPECT_EQ(svc_.port(dhcp.id).binding_host_id, "network-1");
  u.name = "renamed";
  EXPECT_THROW(svc_.update_port(dhcp.id, u), Error);
}

TEST_F(ServiceTest, MigrationMakesTheSettingsThisHosts) {
  HostEnv env("old-host");
  TempDir dir;
  auto where = kiln::teststore::test_store(dir.file("v1.db"), "netv1");
  {
    // The tables of schema version 1 that version 2 changes, as version 1 made them.
    common::Database::Options o;
    o.schema = where.schema;
    common::Database v1(where.location, {[](common::Database& db) {
                          db.exec(db.schema_sql(R"sql(
CREATE TABLE ports (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, tenant_id TEXT NOT NULL,
  network_id TEXT NOT NULL, mac_address TEXT NOT NULL,
  device_owner TEXT NOT NULL, device_id TEXT NOT NULL, vif_type TEXT NOT NULL,
  binding_netns TEXT NOT NULL, binding_ifname TEXT NOT NULL,
  port_security_enabled INTEGER NOT NULL, admin_state_up INTEGER NOT NULL,
  tag INTEGER NOT NULL UNIQUE, UNIQUE (network_id, mac_address){{rowid}});
CREATE TABLE ip_allocations (
  subnet_id TEXT NOT NULL, ip_address TEXT NOT NULL, port_id TEXT NOT NULL,
  position INTEGER NOT NULL, PRIMARY KEY (subnet_id, ip_address));
CREATE TABLE port_security_groups (
  port_id TEXT NOT NULL, security_group_id TEXT NOT NULL,
  position INTEGER NOT NULL, PRIMARY KEY (port_id, security_group_id));
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
)sql"));
                        }},
                        o);
    v1.write([&] {
      v1.exec(
          "INSERT INTO settings VALUES ('mac_prefix', '02:aa:bb'), "
          "('vxlan_local_ip', '10.99.0.1'), ('vxlan_peers', '10.99.0.2,10.99.0.3'), "
          "('metadata_socket', '')");
      v1.exec(
          "INSERT INTO ports VALUES ('p1', 'old', 'demo', 'n1', 'fa:16:3e:00:00:01', '', '', "
          "'tap', '', '', 1, 1, 1)");
    });
    ASSERT_EQ(v1.schema_version(), 1);
  }
  Store store(where.location, where.schema);
  NetService svc(store);
  EXPECT_EQ(store.host_setting("old-host", "vxlan_local_ip"), "10.99.0.1");
  EXPECT_EQ(store.host_setting("old-host", "vxlan_peers"), "10.99.0.2,10.99.0.3");
  EXPECT_EQ(store.setting("vxlan_local_ip"), std::nullopt);  // moved, not copied
  EXPECT_EQ(store.setting("mac_prefix"), "02:aa:bb");        // global
  EXPECT_EQ(setting_of(svc.settings(), "vxlan_peers"), "10.99.0.2,10.99.0.3");
  env.set("new-host");
  EXPECT_EQ(setting_of(svc.settings(), "vxlan_local_ip"), "");
  ASSERT_EQ(store.ports().size(), 1u);
  EXPECT_EQ(store.ports()[0].binding_host_id, "");
  EXPECT_EQ(store.ports()[0].tag, 1u);
}

}  // namespace
}  // namespace kiln::net

// The metadata service's trees and lookup (kiln/spawn/metadata.h): the same data as the config
// drive, Nova's paths and listings, 404 for the rest, answers only for a recorded address.
#include "kiln/spawn/metadata.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "kiln/net/service.h"
#include "kiln/net/store.h"
#include "kiln/spawn/error.h"
#include "kiln/spawn/store.h"
#include "test_util.h"

namespace kiln::spawn {
namespace {

using testing::TestNetStore;
using testing::TestStore;

using json = nlohmann::json;

constexpr const char* kNet = "6f1c2a10-8d7e-4c3b-9a55-0e2f4b6d8a01";
constexpr const char* kOtherNet = "0a0b0c0d-1111-4222-8333-444455556666";

ConfigDriveInput metadata_sample() {
  ConfigDriveInput in;
  in.uuid = "1b4f6a3c-2d5e-4f60-8a9b-0c1d2e3f4a5b";
  in.name = "Web_Server.1";
  in.hostname = sanitize_hostname(in.name);
  in.project_id = "demo";
  in.flavor = "m1.tiny";
  in.image_id = "aabbccdd-0000-4000-8000-000000000000";
  in.security_groups = {"default", "web"};
  in.public_keys = {{"mykey", "ssh-ed25519 AAAAC3Nz test@host"}};
  in.has_user_data = true;
  in.user_data = std::string("\x1f\x8b binary user data\0\xff", 22);
  in.files = {{"/etc/motd", "hello\n"}};
  ConfigDriveNetwork n;
  n.port_id = "port-1";
  n.network_id = kNet;
  n.mac = "fa:16:3e:00:00:01";
  n.tap = "tapport-1";
  n.ip = "192.168.0.5";
  n.netmask = "255.255.255.0";
  n.gateway = "192.168.0.1";
  n.dns = {"8.8.8.8"};
  in.networks = {n};
  in.random_seed = "c2VlZA==";
  return in;
}

MetadataReply get(const std::string& path, const ConfigDriveInput& in = metadata_sample()) {
  return metadata_reply(config_drive_files(in), path);
}

// Every OpenStack file of the drive is served, byte for byte, at the same path.
TEST(Metadata, OpenStackTreeIsTheConfigDrive) {
  auto files = config_drive_files(metadata_sample());
  int served = 0;
  for (const auto& [path, data] : files) {
    if (!path.starts_with("openstack/")) continue;
    MetadataReply r = metadata_reply(files, "/" + path);
    EXPECT_EQ(r.status, 200) << path;
    EXPECT_EQ(r.body, data) << path;
    ++served;
  }
  EXPECT_GT(served, 30);
  EXPECT_EQ(get("/openstack/latest/meta_data.json").content_type, "application/json");
  json md = json::parse(get("/openstack/latest/meta_data.json").body);
  EXPECT_EQ(md["uuid"], "1b4f6a3c-2d5e-4f60-8a9b-0c1d2e3f4a5b");
  EXPECT_EQ(md["hostname"], "web-server.1");
  EXPECT_EQ(md["public_keys"]["mykey"], "ssh-ed25519 AAAAC3Nz test@host");
  EXPECT_EQ(get("/openstack/latest/user_data").body, metadata_sample().user_data);
}

// The EC2 tree walks the drive's ec2/<version>/meta-data.json: every leaf as text.
TEST(Metadata, Ec2TreeIsTheConfigDrive) {
  auto files = config_drive_files(metadata_sample());
  for (const std::string v : {"2009-04-04", "latest"}) {
    json md = json::parse(files.at("ec2/" + v + "/meta-data.json"));
    for (const auto& [key, value] : md.items()) {
      MetadataReply r = metadata_reply(files, "/" + v + "/meta-data/" + key);
      EXPECT_EQ(r.status, 200) << key;
      if (value.is_string()) {
        EXPECT_EQ(r.body, value.get<std::string>()) << key;
      }
    }
  }
  EXPECT_EQ(get("/latest/meta-data/instance-id").body, "i-1b4f6a3c");
  EXPECT_EQ(get("/latest/meta-data/hostname").body, "web-server.1");
  EXPECT_EQ(get("/latest/meta-data/local-ipv4").body, "192.168.0.5");
  EXPECT_EQ(get("/latest/meta-data/public-ipv4").status, 200);
  EXPECT_EQ(get("/latest/meta-data/public-keys/0/openssh-key").body,
            "ssh-ed25519 AAAAC3Nz test@host");
  EXPECT_EQ(get("/latest/meta-data/placement/availability-zone").body, "nova");
  EXPECT_EQ(get("/latest/meta-data/security-groups").body, "default\nweb");
  EXPECT_EQ(get("/2009-04-04/user-data").body, metadata_sample().user_data);
}

TEST(Metadata, Listings) {
  std::string versions;
  for (const auto& v : openstack_metadata_versions()) versions += v + "\n";
  EXPECT_EQ(get("/openstack").body, versions + "latest");
  EXPECT_EQ(get("/openstack/").body, versions + "latest");
  EXPECT_EQ(get("/openstack/latest").body,
            "meta_data.json\nuser_data\nvendor_data.json\nnetwork_data.json\nvendor_data2.json");
  // Older versions have fewer files, as Nova's.
  EXPECT_EQ(get("/openstack/2012-08-10/").body, "meta_data.json\nuser_data");
  EXPECT_EQ(get("/").body, "2009-04-04\nlatest");
  EXPECT_EQ(get("/latest/").body, "meta-data/\nuser-data");
  std::string md = get("/latest/meta-data/").body;
  EXPECT_NE(md.find("instance-id\n"), std::string::npos) << md;
  EXPECT_NE(md.find("placement/\n"), std::string::npos) << md;
  EXPECT_NE(md.find("public-keys/"), std::string::npos) << md;
  EXPECT_EQ(get("/latest/meta-data/public-keys/").body, "0/");
  EXPECT_EQ(get("/openstack/content/0000").body, "hello\n");
}

TEST(Metadata, UnknownPathsAre404) {
  for (const std::string p :
       {"/openstack/latest/nope", "/openstack/2099-01-01/meta_data.json", "/openstack/a/b/c",
        "/latest/meta-data/nope", "/latest/meta-data/hostname/x", "/latest/nope",
        "/1999-01-01/meta-data/", "/openstack/../ec2/latest/meta-data.json",
        "/openstack//latest/meta_data.json", "/openstack/content/9999", "relative", "",
        "/ec2/latest/meta-data.json"})
    EXPECT_EQ(get(p).status, 404) << p;
  // No user data: no user_data file, no user-data key, and neither is listed.
  ConfigDriveInput in = metadata_sample();
  in.has_user_data = false;
  in.user_data.clear();
  EXPECT_EQ(get("/openstack/latest/user_data", in).status, 404);
  EXPECT_EQ(get("/latest/user-data", in).status, 404);
  EXPECT_EQ(get("/latest/", in).body, "meta-data/");
  EXPECT_EQ(get("/openstack/latest/", in).body.find("user_data"), std::string::npos);
}

TEST(Metadata, RecordKeepsEverythingButTheSeed) {
  ConfigDriveInput in = metadata_sample();
  ConfigDriveInput back = parse_metadata_record(metadata_record(in));
  EXPECT_TRUE(back.random_seed.empty());
  back.random_seed = in.random_seed;
  EXPECT_EQ(config_drive_files(back), config_drive_files(in));
  EXPECT_THROW(parse_metadata_record("not a record"), Error);
}

// The service answers by (network, fixed IP) as recorded; anything else is refused.
TEST(Metadata, ServerAnswersOnlyTheRecordedAddress) {
  testing::TempDir dir;
  TestStore store(dir.path());
  ConfigDriveInput a = metadata_sample(), b = metadata_sample();
  b.uuid = "22222222-3333-4444-8555-666677778888";
  b.name = b.hostname = "other";
  b.networks[0].ip = "192.168.0.6";
  b.has_user_data = false;
  store.put_metadata(a.uuid, metadata_record(a), {{kNet, "192.168.0.5"}});
  store.put_metadata(b.uuid, metadata_record(b), {{kNet, "192.168.0.6"}});
  MetadataServer server(store, dir.path() + "/md.sock");

  auto uuid_at = [&](const std::string& net, const std::string& ip) {
    MetadataReply r = server.handle("GET", "/openstack/latest/meta_data.json", net, ip);
    return r.status == 200 ? json::parse(r.body)["uuid"].get<std::string>()
                           : std::to_string(r.status);
  };
  EXPECT_EQ(uuid_at(kNet, "192.168.0.5"), a.uuid);
  EXPECT_EQ(uuid_at(kNet, "192.168.0.6"), b.uuid);
  EXPECT_EQ(uuid_at(kNet, "192.168.0.7"), "404");       // no instance there
  EXPECT_EQ(uuid_at(kOtherNet, "192.168.0.5"), "404");  // same IP, other network
  EXPECT_EQ(uuid_at("", "192.168.0.5"), "400");         // not through a proxy
  EXPECT_EQ(uuid_at(kNet, ""), "400");
  EXPECT_EQ(uuid_at(kNet, "192.168.0.5, 10.0.0.1"), "400");
  EXPECT_EQ(server.handle("HEAD", "/openstack", kNet, "192.168.0.5").status, 200);
  EXPECT_EQ(server.handle("POST", "/openstack", kNet, "192.168.0.5").status, 405);
  EXPECT_EQ(server.handle("GET", "/nope", kNet, "192.168.0.5").status, 404);
  EXPECT_EQ(server.handle("GET", "/latest/user-data", kNet, "192.168.0.6").status, 404);

  // The record goes with the instance.
  Instance inst;
  inst.id = a.uuid;
  inst.name = "a";
  inst.created_at = utc_now();
  store.put(inst);
  store.remove_instance(a.uuid);
  EXPECT_EQ(uuid_at(kNet, "192.168.0.5"), "404");
  EXPECT_EQ(uuid_at(kNet, "192.168.0.6"), b.uuid);
}

// A router's proxy names the router: the guest is found on the router's subnet that holds its
// address, and only there (issue 12: a guest configured statically reaches the router's proxy).
TEST(Metadata, RouterProxyFindsTheGuestOnTheRoutersSubnets) {
  testing::TempDir dir;
  net::Store nets(dir.path() + "/netplumb.db");
  net::NetService svc(nets);
  auto network = [&](const std::string& name, const std::string& cidr) {
    net::NetworkSpec n;
    n.name = name;
    std::string id = svc.create_network(n).id;
    net::SubnetSpec s;
    s.name = name + "-subnet";
    s.network = id;
    s.cidr = cidr;
    svc.create_subnet(s);
    return id;
  };
  std::string a = network("a", "192.168.0.0/24"), b = network("b", "10.1.0.0/24"),
              c = network("c", "192.168.0.0/24"), d = network("d", "10.2.0.0/24");
  std::string r = svc.create_router("r", net::kDefaultTenant).id;
  std::string other = svc.create_router("other", net::kDefaultTenant).id;
  svc.add_router_interface("r", "a-subnet");
  svc.add_router_interface("r", "b-subnet");
  svc.add_router_interface("other", "d-subnet");

  EXPECT_EQ(router_network(nets, r, "192.168.0.5"), a);
  EXPECT_EQ(router_network(nets, r, "10.1.0.7"), b);
  EXPECT_EQ(router_network(nets, r, "10.2.0.7"), std::nullopt);  // the other router's subnet
  EXPECT_EQ(router_network(nets, other, "10.2.0.7"), d);
  EXPECT_EQ(router_network(nets, r, "172.16.0.1"), std::nullopt);
  EXPECT_EQ(router_network(nets, r, "not an address"), std::nullopt);
  EXPECT_EQ(router_network(nets, "no-such-router", "192.168.0.5"), std::nullopt);

  Store store(dir.path() + "/spawn");
  ConfigDriveInput on_a = metadata_sample(), on_c = metadata_sample(), on_b = metadata_sample();
  on_c.uuid = "33333333-3333-4444-8555-666677778888";
  on_b.uuid = "44444444-3333-4444-8555-666677778888";
  store.put_metadata(on_a.uuid, metadata_record(on_a), {{a, "192.168.0.5"}});
  store.put_metadata(on_c.uuid, metadata_record(on_c), {{c, "192.168.0.6"}});
  store.put_metadata(on_b.uuid, metadata_record(on_b), {{b, "10.1.0.7"}});
  MetadataServer server(store, dir.path() + "/md.sock",
                        [&](const std::string& router, const std::string& ip) {
                          return router_network(nets, router, ip);
                        });
  auto uuid_via = [&](const std::string& router, const std::string& ip) {
    MetadataReply reply = server.handle("GET", "/openstack/latest/meta_data.json", "", ip, router);
    return reply.status == 200 ? json::parse(reply.body)["uuid"].get<std::string>()
                               : std::to_string(reply.status);
  };
  EXPECT_EQ(uuid_via(r, "192.168.0.5"), on_a.uuid);
  EXPECT_EQ(uuid_via(r, "10.1.0.7"), on_b.uuid);
  // Network c is not on the router: its guest's address asked through r is a's subnet's.
  EXPECT_EQ(uuid_via(r, "192.168.0.6"), "404");
  EXPECT_EQ(uuid_via(other, "192.168.0.5"), "404");
  // Both headers, or a bad router id: not a proxy's request.
  EXPECT_EQ(server.handle("GET", "/openstack", a, "192.168.0.5", r).status, 400);
  EXPECT_EQ(uuid_via("../etc", "192.168.0.5"), "400");
  // Without a way to read the routers, a router's request finds nobody.
  MetadataServer blind(store, dir.path() + "/md2.sock");
  EXPECT_EQ(blind.handle("GET", "/openstack", "", "192.168.0.5", r).status, 404);

  // Overlapping subnets on one router: the address says nothing, nobody is answered.
  svc.add_router_interface("r", "c-subnet");
  EXPECT_EQ(router_network(nets, r, "192.168.0.5"), std::nullopt);
  EXPECT_EQ(uuid_via(r, "192.168.0.5"), "404");
  EXPECT_EQ(uuid_via(r, "10.1.0.7"), on_b.uuid);
}

}  // namespace
}  // namespace kiln::spawn

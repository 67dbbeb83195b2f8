#include "kiln/spawn/configdrive.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "kiln/spawn/error.h"
#include "test_util.h"

namespace kiln::spawn {
namespace {

using json = nlohmann::json;

ConfigDriveInput drive_sample() {
  ConfigDriveInput in;
  in.uuid = "1b4f6a3c-2d5e-4f60-8a9b-0c1d2e3f4a5b";
  in.name = "Web_Server.1";
  in.hostname = sanitize_hostname(in.name);
  in.project_id = "demo";
  in.flavor = "m1.tiny";
  in.image_id = "aabbccdd-0000-4000-8000-000000000000";
  in.security_groups = {"default"};
  in.public_keys = {{"mykey", "ssh-ed25519 AAAAC3Nz test@host"}};
  in.has_user_data = true;
  in.user_data = "#cloud-config\nhostname: x\n";
  in.files = {{"/etc/motd", "hello\n"}, {"/root/data.bin", std::string("\0\1\2", 3)}};
  ConfigDriveNetwork n;
  n.port_id = "port-1";
  n.network_id = "net-1";
  n.mac = "fa:16:3e:00:00:01";
  n.tap = "tapport-1";
  n.ip = "192.168.0.5";
  n.netmask = "255.255.255.0";
  n.gateway = "192.168.0.1";
  n.dns = {"8.8.8.8"};
  n.mtu = 1450;
  in.networks = {n};
  return in;
}

TEST(ConfigDrive, HostnameAsNova) {
  EXPECT_EQ(sanitize_hostname("Web_Server.1"), "web-server.1");
  EXPECT_EQ(sanitize_hostname("--a b--"), "a-b");
  EXPECT_EQ(sanitize_hostname("***"), "server");
  EXPECT_EQ(sanitize_hostname(std::string(100, 'a')).size(), 63u);
}

TEST(ConfigDrive, OpenStackLayoutEveryVersion) {
  auto files = config_drive_files(drive_sample());
  std::vector<std::string> versions = openstack_metadata_versions();
  versions.push_back("latest");
  for (const auto& v : versions) {
    std::string dir = "openstack/" + v + "/";
    ASSERT_TRUE(files.count(dir + "meta_data.json")) << v;
    json md = json::parse(files[dir + "meta_data.json"]);
    EXPECT_EQ(md["uuid"], "1b4f6a3c-2d5e-4f60-8a9b-0c1d2e3f4a5b") << v;
    EXPECT_EQ(md["name"], "Web_Server.1");
    EXPECT_EQ(md["hostname"], "web-server.1");
    EXPECT_EQ(md["launch_index"], 0);
    EXPECT_EQ(md["availability_zone"], "nova");
    EXPECT_EQ(md["public_keys"]["mykey"], "ssh-ed25519 AAAAC3Nz test@host");
    EXPECT_EQ(md["files"].size(), 2u);
    EXPECT_EQ(md["files"][0]["path"], "/etc/motd");
    EXPECT_EQ(md["files"][0]["content_path"], "/content/0000");
    EXPECT_EQ(md.contains("random_seed"), v >= "2013-04-04") << v;
    EXPECT_EQ(files[dir + "user_data"], "#cloud-config\nhostname: x\n");
    EXPECT_EQ(files.count(dir + "vendor_data.json") == 1, v >= "2013-10-17") << v;
    EXPECT_EQ(files.count(dir + "network_data.json") == 1, v >= "2015-10-15") << v;
    EXPECT_EQ(files.count(dir + "vendor_data2.json") == 1, v >= "2016-10-06") << v;
  }
  EXPECT_EQ(files["openstack/content/0000"], "hello\n");
  EXPECT_EQ(files["openstack/content/0001"], std::string("\0\1\2", 3));
  json md = json::parse(files["openstack/latest/meta_data.json"]);
  // 512 random bytes, base64: 684 characters.
  EXPECT_EQ(md["random_seed"].get<std::string>().size(), 684u);
  EXPECT_EQ(md["project_id"], "demo");
}

TEST(ConfigDrive, NetworkData) {
  auto files = config_drive_files(drive_sample());
  json nd = json::parse(files["openstack/latest/network_data.json"]);
  ASSERT_EQ(nd["links"].size(), 1u);
  EXPECT_EQ(nd["links"][0]["ethernet_mac_address"], "fa:16:3e:00:00:01");
  EXPECT_EQ(nd["links"][0]["id"], "tapport-1");
  EXPECT_EQ(nd["links"][0]["vif_id"], "port-1");
  EXPECT_EQ(nd["links"][0]["mtu"], 1450);
  ASSERT_EQ(nd["networks"].size(), 1u);
  const json& n = nd["networks"][0];
  EXPECT_EQ(n["link"], "tapport-1");
  EXPECT_EQ(n["type"], "ipv4");
  EXPECT_EQ(n["ip_address"], "192.168.0.5");
  EXPECT_EQ(n["netmask"], "255.255.255.0");
  EXPECT_EQ(n["network_id"], "net-1");
  EXPECT_EQ(n["routes"][0]["gateway"], "192.168.0.1");
  EXPECT_EQ(n["routes"][0]["network"], "0.0.0.0");
  EXPECT_EQ(nd["services"][0]["type"], "dns");
  EXPECT_EQ(nd["services"][0]["address"], "8.8.8.8");
}

TEST(ConfigDrive, Ec2Tree) {
  auto files = config_drive_files(drive_sample());
  for (const std::string v : {"2009-04-04", "latest"}) {
    json md = json::parse(files["ec2/" + v + "/meta-data.json"]);
    EXPECT_EQ(md["instance-id"], "i-1b4f6a3c");
    EXPECT_EQ(md["local-ipv4"], "192.168.0.5");
    EXPECT_EQ(md["instance-type"], "m1.tiny");
    EXPECT_EQ(md["public-keys"]["0"]["openssh-key"], "ssh-ed25519 AAAAC3Nz test@host");
    EXPECT_EQ(md["placement"]["availability-zone"], "nova");
    EXPECT_EQ(md["security-groups"][0], "default");
    EXPECT_EQ(files["ec2/" + v + "/user-data"], "#cloud-config\nhostname: x\n");
  }
}

TEST(ConfigDrive, NoUserDataNoKeys) {
  ConfigDriveInput in = drive_sample();
  in.has_user_data = false;
  in.public_keys.clear();
  in.files.clear();
  auto files = config_drive_files(in);
  EXPECT_FALSE(files.count("openstack/latest/user_data"));
  EXPECT_FALSE(files.count("ec2/latest/user-data"));
  json md = json::parse(files["openstack/latest/meta_data.json"]);
  EXPECT_FALSE(md.contains("public_keys"));
  EXPECT_FALSE(md.contains("files"));
}

TEST(ConfigDrive, Limits) {
  ConfigDriveInput in = drive_sample();
  in.user_data = std::string(kMaxUserData + 1, 'x');
  EXPECT_THROW(config_drive_files(in), Error);
  in = drive_sample();
  in.files.assign(kMaxInjectedFiles + 1, {"/a", "b"});
  EXPECT_THROW(config_drive_files(in), Error);
}

// The ISO's primary volume descriptor (sector 16) carries the label config-2, and the
// Joliet supplementary descriptor follows it; the content is checked with xorriso in the
// integration tests.
TEST(ConfigDrive, IsoLabelAndDescriptors) {
  testing::TempDir d;
  write_iso(config_drive_files(drive_sample()), d / "cd.iso");
  std::string iso = testing::read_text(d / "cd.iso");
  ASSERT_GT(iso.size(), 18u * 2048);
  EXPECT_EQ(iso.size() % 2048, 0u);
  EXPECT_EQ(iso.substr(16 * 2048, 6), std::string("\1CD001", 6));
  EXPECT_EQ(iso.substr(16 * 2048 + 40, 8), "config-2");
  bool joliet = false;
  for (size_t s = 17; s < 32; ++s) {
    std::string vd = iso.substr(s * 2048, 2048);
    if (vd[0] == '\2' && vd.substr(1, 5) == "CD001") joliet = true;
    if (vd[0] == '\xff') break;
  }
  EXPECT_TRUE(joliet);
  EXPECT_FALSE(std::filesystem::exists(d / "cd.iso.tmp"));
}

TEST(ConfigDrive, BadPathRefused) {
  testing::TempDir d;
  EXPECT_THROW(write_iso({{"../x", "y"}}, d / "cd.iso"), Error);
  EXPECT_FALSE(std::filesystem::exists(d / "cd.iso"));
}

}  // namespace
}  // namespace kiln::spawn

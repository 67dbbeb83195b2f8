#include "kiln/spawn/configdrive.h"

#include <algorithm>
#include <cerrno>
#include <nlohmann/json.hpp>

#include "kiln/common/random.h"
#include "kiln/common/text.h"
#include "kiln/spawn/error.h"

namespace kiln::spawn {

using json = nlohmann::json;

namespace {

constexpr const char* kGrizzly = "2013-04-04";
constexpr const char* kHavana = "2013-10-17";
constexpr const char* kLiberty = "2015-10-15";
constexpr const char* kNewtonOne = "2016-06-30";
constexpr const char* kNewtonTwo = "2016-10-06";
constexpr const char* kVictoria = "2020-10-14";

// True if `version` ("latest" is newest) is at least `since`.
bool at_least(const std::string& version, const char* since) {
  return version == "latest" || version >= since;  // ISO dates compare as strings
}

std::string random_bytes(size_t n) {
  std::string out(n, '\0');
  common::random_bytes(out.data(), n);
  return out;
}

// "i-" / "ami-" / "r-" followed by 8 hex digits derived from a UUID, as Nova's EC2 ids look.
std::string ec2_id(const std::string& prefix, const std::string& uuid) {
  std::string hex;
  for (char c : uuid)
    if (c != '-') hex += c;
  return prefix + hex.substr(0, 8);
}

json network_data(const ConfigDriveInput& in) {
  json links = json::array(), networks = json::array(), services = json::array();
  int n = 0;
  for (const auto& net : in.networks) {
    links.push_back({{"id", net.tap},
                     {"vif_id", net.port_id},
                     {"type", net.link_type},
                     {"mtu", net.mtu},
                     {"ethernet_mac_address", net.mac}});
    json routes = json::array();
    if (!net.gateway.empty())
      routes.push_back({{"network", "0.0.0.0"}, {"netmask", "0.0.0.0"}, {"gateway", net.gateway}});
    json net_services = json::array();
    for (const auto& d : net.dns) {
      net_services.push_back({{"type", "dns"}, {"address", d}});
      json svc = {{"type", "dns"}, {"address", d}};
      if (std::find(services.begin(), services.end(), svc) == services.end())
        services.push_back(svc);
    }
    networks.push_back({{"id", "network" + std::to_string(n++)},
                        {"type", "ipv4"},
                        {"link", net.tap},
                        {"ip_address", net.ip},
                        {"netmask", net.netmask},
                        {"routes", routes},
                        {"network_id", net.network_id},
                        {"services", net_services}});
  }
  return {{"links", links}, {"networks", networks}, {"services", services}};
}

json openstack_meta_data(const ConfigDriveInput& in, const std::string& version,
                         const json& files) {
  json md = {{"uuid", in.uuid}};
  if (!files.empty()) md["files"] = files;
  if (!in.public_keys.empty()) {
    json pk = json::object(), keys = json::array();
    for (const auto& [name, data] : in.public_keys) {
      pk[name] = data;
      keys.push_back({{"name", name}, {"type", "ssh"}, {"data", data}});
    }
    md["public_keys"] = pk;
    md["keys"] = keys;
  }
  md["hostname"] = in.hostname;
  md["name"] = in.name;
  md["launch_index"] = in.launch_index;
  md["availability_zone"] = in.availability_zone;
  if (at_least(version, kGrizzly)) md["random_seed"] = in.random_seed;
  if (at_least(version, kLiberty)) md["project_id"] = in.project_id;
  if (at_least(version, kNewtonOne)) md["devices"] = json::array();
  if (at_least(version, kVictoria)) md["dedicated_cpus"] = json::array();
  return md;
}

json ec2_meta_data(const ConfigDriveInput& in) {
  std::string ip = in.networks.empty() ? "" : in.networks[0].ip;
  json md = {{"ami-id", ec2_id("ami-", in.image_id)},
             {"ami-launch-index", in.launch_index},
             {"ami-manifest-path", "FIXME"},
             {"instance-id", ec2_id("i-", in.uuid)},
             {"hostname", in.hostname},
             {"local-ipv4", ip},
             {"reservation-id", ec2_id("r-", in.uuid)},
             {"security-groups", in.security_groups},
             {"local-hostname", in.hostname},
             {"public-hostname", in.hostname},
             {"public-ipv4", ""},
             {"instance-type", in.flavor},
             {"block-device-mapping", {{"ami", "vda"}, {"root", "/dev/vda"}}},
             {"placement", {{"availability-zone", in.availability_zone}}},
             {"instance-action", "none"}};
  if (!in.public_keys.empty())
    md["public-keys"] = {{"0", {{"openssh-key", in.public_keys.front().second}}}};
  return md;
}

}  // namespace

const std::vector<std::string>& openstack_metadata_versions() {
  static const std::vector<std::string> kVersions = {"2012-08-10", "2013-04-04", "2013-10-17",
                                                     "2015-10-15", "2016-06-30", "2016-10-06",
                                                     "2017-02-22", "2018-08-27", "2020-10-14"};
  return kVersions;
}

const std::vector<std::string>& ec2_metadata_versions() {
  static const std::vector<std::string> kVersions = {"2009-04-04"};
  return kVersions;
}

std::string sanitize_hostname(const std::string& name) {
  std::string out;
  for (char c : name) {
    char l = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    if (l == ' ' || l == '_') l = '-';
    if ((l >= 'a' && l <= 'z') || (l >= '0' && l <= '9') || l == '.' || l == '-') out += l;
  }
  if (out.size() > 63) out.resize(63);
  while (!out.empty() && (out.front() == '.' || out.front() == '-')) out.erase(0, 1);
  while (!out.empty() && (out.back() == '.' || out.back() == '-')) out.pop_back();
  return out.empty() ? "server" : out;
}

std::map<std::string, std::string> config_drive_files(const ConfigDriveInput& input) {
  ConfigDriveInput in = input;
  if (in.has_user_data && in.user_data.size() > kMaxUserData)
    throw invalid("user data is larger than " + std::to_string(kMaxUserData) + " bytes");
  if (in.files.size() > kMaxInjectedFiles)
    throw invalid("at most " + std::to_string(kMaxInjectedFiles) + " files can be injected");
  size_t total = 0;
  for (const auto& f : in.files) total += f.second.size();
  if (total > kMaxInjectedBytes)
    throw invalid("injected files are larger than " + std::to_string(kMaxInjectedBytes) +
                  " bytes in total");
  if (in.random_seed.empty()) in.random_seed = common::base64(random_bytes(512));

  std::map<std::string, std::string> out;
  json files = json::array();
  for (size_t i = 0; i < in.files.size(); ++i) {
    char key[24];
    std::snprintf(key, sizeof key, "%04zu", i);
    files.push_back(
        {{"path", in.files[i].first}, {"content_path", std::string("/content/") + key}});
    out[std::string("openstack/content/") + key] = in.files[i].second;
  }
  std::vector<std::string> versions = openstack_metadata_versions();
  versions.push_back("latest");
  std::string net = network_data(in).dump();
  for (const auto& v : versions) {
    std::string dir = "openstack/" + v + "/";
    out[dir + "meta_data.json"] = openstack_meta_data(in, v, files).dump();
    if (in.has_user_data) out[dir + "user_data"] = in.user_data;
    if (at_least(v, kHavana)) out[dir + "vendor_data.json"] = "{}";
    if (at_least(v, kLiberty)) out[dir + "network_data.json"] = net;
    if (at_least(v, kNewtonTwo)) out[dir + "vendor_data2.json"] = "{}";
  }
  std::vector<std::string> ec2 = ec2_metadata_versions();
  ec2.push_back("latest");
  std::string ec2_md = ec2_meta_data(in).dump();
  for (const auto& v : ec2) {
    out["ec2/" + v + "/meta-data.json"] = ec2_md;
    if (in.has_user_data) out["ec2/" + v + "/user-data"] = in.user_data;
  }
  return out;
}

}  // namespace kiln::spawn

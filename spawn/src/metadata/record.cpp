// The stored form of an instance's metadata (metadata.h): the config drive's input as JSON.
#include <nlohmann/json.hpp>

#include "kiln/spawn/error.h"
#include "kiln/spawn/metadata.h"

namespace kiln::spawn {

using json = nlohmann::json;

std::string metadata_record(const ConfigDriveInput& in) {
  json nets = json::array();
  for (const auto& n : in.networks)
    nets.push_back({{"port_id", n.port_id},
                    {"network_id", n.network_id},
                    {"mac", n.mac},
                    {"tap", n.tap},
                    {"ip", n.ip},
                    {"netmask", n.netmask},
                    {"gateway", n.gateway},
                    {"dns", n.dns},
                    {"mtu", n.mtu},
                    {"link_type", n.link_type}});
  json files = json::array(), keys = json::array();
  for (const auto& [path, data] : in.files) files.push_back(json::array({path, data}));
  for (const auto& [name, data] : in.public_keys) keys.push_back(json::array({name, data}));
  json r = {{"uuid", in.uuid},
            {"name", in.name},
            {"hostname", in.hostname},
            {"availability_zone", in.availability_zone},
            {"project_id", in.project_id},
            {"launch_index", in.launch_index},
            {"flavor", in.flavor},
            {"image_id", in.image_id},
            {"security_groups", in.security_groups},
            {"public_keys", keys},
            {"has_user_data", in.has_user_data},
            {"user_data", in.user_data},
            {"files", files},
            {"networks", nets}};
  // User data and injected files are bytes (gzip is common): dump() refuses strings that are
  // not UTF-8, CBOR carries them as they are.
  std::vector<uint8_t> cbor = json::to_cbor(r);
  return std::string(cbor.begin(), cbor.end());
}

ConfigDriveInput parse_metadata_record(const std::string& record) {
  ConfigDriveInput in;
  try {
    json r = json::from_cbor(record);
    in.uuid = r.at("uuid").get<std::string>();
    in.name = r.at("name").get<std::string>();
    in.hostname = r.at("hostname").get<std::string>();
    in.availability_zone = r.at("availability_zone").get<std::string>();
    in.project_id = r.at("project_id").get<std::string>();
    in.launch_index = r.at("launch_index").get<int>();
    in.flavor = r.at("flavor").get<std::string>();
    in.image_id = r.at("image_id").get<std::string>();
    in.security_groups = r.at("security_groups").get<std::vector<std::string>>();
    for (const auto& k : r.at("public_keys"))
      in.public_keys.emplace_back(k.at(0).get<std::string>(), k.at(1).get<std::string>());
    in.has_user_data = r.at("has_user_data").get<bool>();
    in.user_data = r.at("user_data").get<std::string>();
    for (const auto& f : r.at("files"))
      in.files.emplace_back(f.at(0).get<std::string>(), f.at(1).get<std::string>());
    for (const auto& n : r.at("networks")) {
      ConfigDriveNetwork c;
      c.port_id = n.at("port_id").get<std::string>();
      c.network_id = n.at("network_id").get<std::string>();
      c.mac = n.at("mac").get<std::string>();
      c.tap = n.at("tap").get<std::string>();
      c.ip = n.at("ip").get<std::string>();
      c.netmask = n.at("netmask").get<std::string>();
      c.gateway = n.at("gateway").get<std::string>();
      c.dns = n.at("dns").get<std::vector<std::string>>();
      c.mtu = n.at("mtu").get<int>();
      c.link_type = n.at("link_type").get<std::string>();
      in.networks.push_back(c);
    }
  } catch (const json::exception& e) {
    throw invalid(std::string("bad metadata record: ") + e.what());
  }
  return in;
}

}  // namespace kiln::spawn

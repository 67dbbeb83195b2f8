// The metadata service's trees (metadata.h): paths mapped onto the config drive's files.
#include <algorithm>
#include <nlohmann/json.hpp>

#include "kiln/common/text.h"
#include "kiln/spawn/metadata.h"

namespace kiln::spawn {

namespace {

using json = nlohmann::json;

// Files of an OpenStack version directory, in the order Nova lists them.
const char* const kOpenStackFiles[] = {"meta_data.json",    "user_data",
                                       "password",          "vendor_data.json",
                                       "network_data.json", "vendor_data2.json"};

MetadataReply ok(std::string body, std::string type = "text/plain") {
  return {200, std::move(body), std::move(type)};
}

MetadataReply not_found() { return {404, "Not Found\n", "text/plain"}; }

bool known(const std::vector<std::string>& versions, const std::string& v) {
  return v == "latest" || std::find(versions.begin(), versions.end(), v) != versions.end();
}

std::string lines(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& i : items) out += (out.empty() ? "" : "\n") + i;
  return out;
}

std::string listing(const std::vector<std::string>& versions) {
  std::vector<std::string> all = versions;
  all.push_back("latest");
  return lines(all);
}

MetadataReply openstack(const std::map<std::string, std::string>& files,
                        const std::vector<std::string>& parts) {
  if (parts.size() == 1) return ok(listing(openstack_metadata_versions()));
  if (parts.size() == 3 && parts[1] == "content") {
    auto it = files.find("openstack/content/" + parts[2]);
    return it == files.end() ? not_found() : ok(it->second, "application/octet-stream");
  }
  if (!known(openstack_metadata_versions(), parts[1])) return not_found();
  std::string dir = "openstack/" + parts[1] + "/";
  if (parts.size() == 2) {
    std::vector<std::string> names;
    for (const char* f : kOpenStackFiles)
      if (files.count(dir + f)) names.push_back(f);
    return ok(lines(names));
  }
  if (parts.size() != 3) return not_found();
  auto it = files.find(dir + parts[2]);
  if (it == files.end()) return not_found();
  bool is_json = parts[2].ends_with(".json");
  return ok(it->second, is_json ? "application/json" : "text/plain");
}

// A value of the EC2 tree as text: a directory lists its keys, a list its items.
std::string ec2_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array()) {
    std::vector<std::string> items;
    for (const auto& i : v) items.push_back(ec2_text(i));
    return lines(items);
  }
  if (v.is_object()) {
    std::vector<std::string> keys;
    for (const auto& [k, x] : v.items()) keys.push_back(x.is_object() ? k + "/" : k);
    return lines(keys);
  }
  return v.dump();
}

MetadataReply ec2(const std::map<std::string, std::string>& files,
                  const std::vector<std::string>& parts) {
  if (!known(ec2_metadata_versions(), parts[0])) return not_found();
  std::string dir = "ec2/" + parts[0] + "/";
  bool has_user_data = files.count(dir + "user-data") != 0;
  if (parts.size() == 1)
    return ok(std::string("meta-data/") + (has_user_data ? "\nuser-data" : ""));
  if (parts[1] == "user-data") {
    if (parts.size() != 2 || !has_user_data) return not_found();
    return ok(files.at(dir + "user-data"), "application/octet-stream");
  }
  if (parts[1] != "meta-data") return not_found();
  auto it = files.find(dir + "meta-data.json");
  if (it == files.end()) return not_found();
  json v = json::parse(it->second);
  for (size_t i = 2; i < parts.size(); ++i) {
    if (!v.is_object() || !v.contains(parts[i])) return not_found();
    v = v[parts[i]];
  }
  return ok(ec2_text(v));
}

}  // namespace

MetadataReply metadata_reply(const std::map<std::string, std::string>& files,
                             const std::string& path) {
  if (path.empty() || path[0] != '/') return not_found();
  // "/a/b/" and "/a/b" name the same node; empty components ("//") name nothing.
  std::string p = path.substr(1);
  if (!p.empty() && p.back() == '/') p.pop_back();
  if (p.empty()) return ok(listing(ec2_metadata_versions()));  // as Nova: no "openstack"
  std::vector<std::string> parts = common::split(p, '/');
  for (const auto& s : parts)
    if (s.empty() || s == "." || s == "..") return not_found();
  if (parts[0] == "openstack") return openstack(files, parts);
  return ec2(files, parts);
}

}  // namespace kiln::spawn

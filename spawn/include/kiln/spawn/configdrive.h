// The config drive: an ISO9660 volume labelled "config-2" (Rock Ridge and Joliet) in the layout
// that Nova writes and cloud-init's ConfigDrive datasource reads:
//
//   openstack/<version>/meta_data.json     every version from 2012-08-10 up, and latest
//   openstack/<version>/user_data          when user data is given
//   openstack/<version>/vendor_data.json   from 2013-10-17
//   openstack/<version>/network_data.json  from 2015-10-15
//   openstack/<version>/vendor_data2.json  from 2016-10-06
//   openstack/content/NNNN                 injected files (meta_data.json "files": content_path)
//   ec2/<version>/meta-data.json           2009-04-04 and latest
//   ec2/<version>/user-data                when user data is given
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace kiln::spawn {

// Versions of the OpenStack metadata written, oldest first ("latest" comes on top).
const std::vector<std::string>& openstack_metadata_versions();
const std::vector<std::string>& ec2_metadata_versions();

inline constexpr const char* kConfigDriveLabel = "config-2";
// Limits: user data as Nova (64 KiB), injected files in number and total size.
inline constexpr size_t kMaxUserData = 65535;
inline constexpr size_t kMaxInjectedFiles = 64;
inline constexpr size_t kMaxInjectedBytes = 10u << 20;
inline constexpr size_t kMaxKeyFile = 16384;  // boot --key-file

struct ConfigDriveNetwork {
  std::string port_id, network_id, mac, tap;
  std::string ip, netmask, gateway;  // gateway may be empty
  std::vector<std::string> dns;
  int mtu = 1500;
  std::string link_type = "tap";
};

struct ConfigDriveInput {
  std::string uuid, name, hostname;
  std::string availability_zone = "nova";
  std::string project_id;
  int launch_index = 0;
  std::string flavor, image_id;
  std::vector<std::string> security_groups;                      // names
  std::vector<std::pair<std::string, std::string>> public_keys;  // name, OpenSSH key
  bool has_user_data = false;
  std::string user_data;
  std::vector<std::pair<std::string, std::string>> files;  // guest path, content
  std::vector<ConfigDriveNetwork> networks;
  std::string random_seed;  // base64; generated (512 random bytes) when empty
};

// Nova's hostname rules: lower case, [a-z0-9.-] only, at most 63 characters.
std::string sanitize_hostname(const std::string& name);

// The drive's files: path (relative, '/'-separated) -> content.
std::map<std::string, std::string> config_drive_files(const ConfigDriveInput& in);

// Writes `files` as an ISO9660 image (Rock Ridge + Joliet) with volume id `label` to `path`.
void write_iso(const std::map<std::string, std::string>& files, const std::string& path,
               const std::string& label = kConfigDriveLabel);

}  // namespace kiln::spawn

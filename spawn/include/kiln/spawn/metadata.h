// The metadata service's data: what Nova's metadata API answers at http://169.254.169.254/ for
// one instance, taken from the config drive's files (config_drive_files()), so that the drive
// and the service cannot disagree. Two trees:
//
//   /openstack                          versions, one a line, then "latest"
//   /openstack/<version>/               the files of that version (meta_data.json, user_data,
//                                       vendor_data.json, network_data.json, vendor_data2.json)
//   /openstack/<version>/<file>         the drive's openstack/<version>/<file>
//   /openstack/content/NNNN             injected files (meta_data.json "files")
//   /                                   EC2 versions, then "latest"
//   /<ec2 version>/                     meta-data/ and user-data
//   /<ec2 version>/meta-data/...        the drive's ec2/<version>/meta-data.json walked by key:
//                                       a directory lists its keys ("name/" for a directory),
//                                       a leaf answers its value as text
//   /<ec2 version>/user-data            the user data
//
// Anything else, and a file the instance does not have (no user data), is 404.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "kiln/spawn/configdrive.h"

namespace kiln::spawn {

struct MetadataReply {
  int status = 404;
  std::string body;
  std::string content_type = "text/plain";
};

// The answer to a GET of `path` (query string already removed) for the instance whose drive
// would hold `files`.
MetadataReply metadata_reply(const std::map<std::string, std::string>& files,
                             const std::string& path);

// The instance's metadata as stored for the service (Store::put_metadata): the input of its
// config drive without the random seed (the service makes a new one for every answer, as Nova
// does). Injected files are kept.
std::string metadata_record(const ConfigDriveInput& in);
// Throws Error (invalid) on a record that is not one.
ConfigDriveInput parse_metadata_record(const std::string& record);

class Store;

// The headers the metadata proxy (kiln-net-metadata-proxy, docs/netplumb.md) sets on every
// request it forwards, replacing whatever the guest sent: the guest's source address as the
// proxy saw it and the network whose namespace the proxy serves.
inline constexpr const char* kForwardedForHeader = "X-Forwarded-For";
inline constexpr const char* kNetworkIdHeader = "X-Kiln-Network-ID";

// The metadata service: HTTP on a Unix socket (only the proxies reach it), GET and HEAD,
// answering for the instance recorded at (X-Kiln-Network-ID, X-Forwarded-For).
class MetadataServer {
 public:
  MetadataServer(Store& store, std::string socket_path);
  ~MetadataServer();
  MetadataServer(const MetadataServer&) = delete;
  MetadataServer& operator=(const MetadataServer&) = delete;
  // Binds the socket (replacing a stale one), serves until stop(); false if it cannot bind.
  bool run();
  void stop();
  // The reply of the whole service: status, body, content type.
  MetadataReply handle(const std::string& method, const std::string& path,
                       const std::string& network_id, const std::string& forwarded_for);

 private:
  struct Impl;
  Store& store_;
  std::string socket_path_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::spawn

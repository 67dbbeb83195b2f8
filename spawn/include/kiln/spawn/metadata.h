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

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "kiln/spawn/configdrive.h"

namespace kiln::net {
class Store;
}

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
// proxy saw it and the network whose DHCP namespace the proxy serves, or the router whose
// namespace it serves.
inline constexpr const char* kForwardedForHeader = "X-Forwarded-For";
inline constexpr const char* kNetworkIdHeader = "X-Kiln-Network-ID";
inline constexpr const char* kRouterIdHeader = "X-Kiln-Router-ID";

// The network of the guest at `ip` behind router `router_id`: the network of the one subnet
// attached to the router (netplumb's router interfaces) that holds `ip`; nullopt if none does,
// or if several do (overlapping subnets on one router: the address names no single guest).
std::optional<std::string> router_network(net::Store& net, const std::string& router_id,
                                          const std::string& ip);
using RouterNetworks =
    std::function<std::optional<std::string>(const std::string& router_id, const std::string& ip)>;

// The metadata service: HTTP on a Unix socket (only the proxies reach it), GET and HEAD,
// answering for the instance recorded at (X-Kiln-Network-ID, X-Forwarded-For), or, from a
// router's proxy, at (the network `routers` finds for X-Kiln-Router-ID, X-Forwarded-For).
class MetadataServer {
 public:
  // `routers` is called under the server's lock (one request at a time).
  MetadataServer(Store& store, std::string socket_path, RouterNetworks routers = {});
  ~MetadataServer();
  MetadataServer(const MetadataServer&) = delete;
  MetadataServer& operator=(const MetadataServer&) = delete;
  // Binds the socket (replacing a stale one), serves until stop(); false if it cannot bind.
  bool run();
  void stop();
  // The reply of the whole service: status, body, content type. Exactly one of `network_id`
  // and `router_id` is given (the proxy's headers); otherwise 400.
  MetadataReply handle(const std::string& method, const std::string& path,
                       const std::string& network_id, const std::string& forwarded_for,
                       const std::string& router_id = "");

 private:
  struct Impl;
  Store& store_;
  std::string socket_path_;
  RouterNetworks routers_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::spawn

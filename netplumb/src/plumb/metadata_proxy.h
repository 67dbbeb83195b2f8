// The metadata proxies (docs/netplumb.md): kiln-net-metadata-proxy inside a network's DHCP
// namespace (one per network with a DHCP port) or a router's namespace (one per router with an
// interface), listening on 169.254.169.254:80 and forwarding to the metadata service's Unix
// socket with the guest's address and the network's or the router's id. Started and stopped by
// its pid file as dnsmasq is.
#pragma once

#include <string>
#include <vector>

namespace kiln::net {

inline constexpr const char* kMetadataIp = "169.254.169.254";

struct MetadataProxyConfig {
  std::string binary;      // kiln-net-metadata-proxy
  std::string dir;         // $KILN_RUN_DIR/metadata/<network id> or qrouter-<router id>
  std::string netns_path;  // the DHCP or router namespace
  std::string socket;      // the metadata service's socket
  std::string network_id;  // exactly one of these two
  std::string router_id;
};

// Starts the proxy, or restarts it when its command line changed; appends what it did.
void ensure_metadata_proxy(const MetadataProxyConfig& cfg, std::vector<std::string>& changes);

// Stops the proxy whose files are in `dir` (if it runs) and removes the directory.
void stop_metadata_proxy(const std::string& dir);

}  // namespace kiln::net

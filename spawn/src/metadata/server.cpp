// The metadata service's HTTP side (metadata.h): cpp-httplib on a Unix socket, the instance
// found by the proxy's headers (a network's proxy names the network; a router's, the router,
// whose subnets say which network the guest's address is on), the answer from the trees.
#include <arpa/inet.h>
#include <httplib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mutex>
#include <optional>

#include "kiln/spawn/metadata.h"
#include "kiln/spawn/store.h"

namespace kiln::spawn {

namespace {

// Ids are UUIDs; anything longer or with other characters is not one of ours.
bool plausible_id(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == '-'))
      return false;
  return true;
}

bool ipv4(const std::string& s) {
  in_addr a;
  return s.size() <= 15 && ::inet_pton(AF_INET, s.c_str(), &a) == 1;
}

}  // namespace

struct MetadataServer::Impl {
  httplib::Server http;
  std::mutex store_lock;  // one SQLite connection, requests on the pool's threads
};

MetadataServer::MetadataServer(Store& store, std::string socket_path, RouterNetworks routers)
    : store_(store),
      socket_path_(std::move(socket_path)),
      routers_(std::move(routers)),
      impl_(std::make_unique<Impl>()) {}

MetadataServer::~MetadataServer() = default;

MetadataReply MetadataServer::handle(const std::string& method, const std::string& path,
                                     const std::string& network_id,
                                     const std::string& forwarded_for,
                                     const std::string& router_id) {
  if (method != "GET" && method != "HEAD") return {405, "Method Not Allowed\n", "text/plain"};
  // Without the proxy's headers the request did not come through a proxy: nobody to answer.
  bool by_router = !router_id.empty();
  if (!ipv4(forwarded_for) || by_router == !network_id.empty() ||
      !plausible_id(by_router ? router_id : network_id))
    return {400, "X-Forwarded-For and one of X-Kiln-Network-ID, X-Kiln-Router-ID are required\n",
            "text/plain"};
  std::optional<std::string> record;
  {
    std::lock_guard<std::mutex> g(impl_->store_lock);
    std::optional<std::string> network = network_id;
    if (by_router) network = routers_ ? routers_(router_id, forwarded_for) : std::nullopt;
    if (network) record = store_.metadata_for(*network, forwarded_for);
  }
  if (!record) return {404, "Not Found\n", "text/plain"};
  return metadata_reply(config_drive_files(parse_metadata_record(*record)), path);
}

bool MetadataServer::run() {
  auto& http = impl_->http;
  http.set_payload_max_length(4096);  // GET and HEAD carry no body
  http.set_read_timeout(10, 0);
  http.set_keep_alive_max_count(16);
  auto answer = [this](const httplib::Request& req, httplib::Response& res) {
    MetadataReply r;
    try {
      r = handle(req.method, req.path, req.get_header_value(kNetworkIdHeader),
                 req.get_header_value(kForwardedForHeader), req.get_header_value(kRouterIdHeader));
    } catch (const std::exception& e) {
      r = {500, std::string("Internal Server Error: ") + e.what() + "\n", "text/plain"};
    }
    res.status = r.status;
    res.set_content(r.body, r.content_type.c_str());
    return httplib::Server::HandlerResponse::Handled;
  };
  // Every request is answered here, whatever its method: the router would answer 404 for a
  // POST (Nova's answer is 405) and 400 for methods it does not know.
  http.set_pre_routing_handler(answer);
  http.set_address_family(AF_UNIX);
  ::unlink(socket_path_.c_str());
  mode_t old = ::umask(0077);  // only root's proxies may claim to be a guest
  bool bound = http.bind_to_port(socket_path_, 80);
  ::umask(old);
  if (!bound) return false;
  bool ok = http.listen_after_bind();
  ::unlink(socket_path_.c_str());
  return ok;
}

void MetadataServer::stop() { impl_->http.stop(); }

}  // namespace kiln::spawn

// kiln-net-metadata-proxy: the metadata proxy of one network or one router (docs/netplumb.md).
// kiln-net's reconciler runs it inside the network's DHCP namespace (--network-id) or the
// router's namespace (--router-id); it answers guests on 169.254.169.254:80 by asking the
// metadata service on its Unix socket, with headers of its own only: X-Forwarded-For (the
// guest's address as this socket saw it) and X-Kiln-Network-ID or X-Kiln-Router-ID. Nothing the
// guest sends but the method and the path reaches the service, so a guest cannot claim
// another's address, network or router.
#include <httplib.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "kiln/common/cli.h"

namespace kiln::net::cli {

namespace {

void help(std::ostream& out) {
  out << "Usage: kiln-net-metadata-proxy --listen=IP:PORT --socket=PATH "
         "(--network-id=ID | --router-id=ID) --pid-file=PATH\n\n"
         "The metadata proxy of one network or router, run by kiln-net in the network's DHCP\n"
         "namespace or the router's namespace: answers GET and HEAD on IP:PORT by asking the\n"
         "metadata service on the Unix socket PATH (kiln-spawn metadata-serve) with\n"
         "X-Forwarded-For set to the client's address and X-Kiln-Network-ID (or\n"
         "X-Kiln-Router-ID) to ID; writes its pid to the pid file once it listens.\n";
}

struct Options {
  std::string host, socket, pid_file;
  std::string id_header, id;  // X-Kiln-Network-ID or X-Kiln-Router-ID, and its value
  int port = 0;
};

bool parse(const std::vector<std::string>& args, Options& o) {
  std::map<std::string, std::string> kv;
  for (const auto& a : args) {
    auto eq = a.find('=');
    if (!a.starts_with("--") || eq == std::string::npos) return false;
    kv[a.substr(2, eq - 2)] = a.substr(eq + 1);
  }
  // Exactly one of --network-id and --router-id.
  if (kv.size() != 4 || !kv.count("listen") || !kv.count("socket") || !kv.count("pid-file") ||
      kv.count("network-id") == kv.count("router-id"))
    return false;
  auto colon = kv["listen"].rfind(':');
  if (colon == std::string::npos) return false;
  o.host = kv["listen"].substr(0, colon);
  o.port = std::atoi(kv["listen"].substr(colon + 1).c_str());
  o.socket = kv["socket"];
  bool router = kv.count("router-id");
  o.id_header = router ? "X-Kiln-Router-ID" : "X-Kiln-Network-ID";
  o.id = kv[router ? "router-id" : "network-id"];
  o.pid_file = kv["pid-file"];
  return o.port > 0 && o.port < 65536 && !o.socket.empty() && o.socket.size() < 108 &&
         !o.id.empty() && o.id.size() <= 64;
}

void forward(const Options& o, const httplib::Request& req, httplib::Response& res) {
  if (req.method != "GET" && req.method != "HEAD") {
    res.status = 405;
    res.set_content("Method Not Allowed\n", "text/plain");
    return;
  }
  httplib::Client backend(o.socket);
  backend.set_address_family(AF_UNIX);
  backend.set_connection_timeout(5, 0);
  backend.set_read_timeout(10, 0);
  httplib::Headers headers = {{"X-Forwarded-For", req.remote_addr}, {o.id_header, o.id}};
  auto r = backend.Get(req.target, headers);
  if (!r) {
    res.status = 502;
    res.set_content("Bad Gateway: the metadata service does not answer\n", "text/plain");
    return;
  }
  res.status = r->status;
  std::string type = r->get_header_value("Content-Type");
  res.set_content(r->body, type.empty() ? "text/plain" : type.c_str());
}

int run(const std::vector<std::string>& args) {
  Options o;
  if (!parse(args, o))
    throw common::cli::UsageError(
        "expected --listen=IP:PORT --socket=PATH (--network-id=ID | --router-id=ID) "
        "--pid-file=PATH");
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  httplib::Server http;
  http.set_payload_max_length(4096);  // GET and HEAD carry no body
  http.set_read_timeout(10, 0);
  http.set_keep_alive_max_count(16);
  http.set_pre_routing_handler([&](const httplib::Request& req, httplib::Response& res) {
    forward(o, req, res);
    return httplib::Server::HandlerResponse::Handled;
  });
  if (!http.bind_to_port(o.host, o.port)) {
    std::cerr << "kiln-net-metadata-proxy: cannot listen on " << o.host << ":" << o.port << ": "
              << std::strerror(errno) << "\n";
    return 1;
  }
  // The pid file says "listening": the reconciler waits for it.
  {
    std::string tmp = o.pid_file + ".tmp";
    std::ofstream f(tmp, std::ios::trunc);
    f << ::getpid() << "\n";
    f.close();
    if (!f || std::rename(tmp.c_str(), o.pid_file.c_str()) < 0) {
      std::cerr << "kiln-net-metadata-proxy: cannot write " << o.pid_file << "\n";
      return 1;
    }
  }
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    http.stop();
  });
  waiter.detach();  // the process ends when listen returns
  bool ok = http.listen_after_bind();
  ::unlink(o.pid_file.c_str());
  return ok ? 0 : 1;
}

}  // namespace

}  // namespace kiln::net::cli

int main(int argc, char** argv) {
  return kiln::common::cli::run_main({"kiln-net-metadata-proxy", kiln::net::cli::help, 2}, argc,
                                     argv, kiln::net::cli::run);
}

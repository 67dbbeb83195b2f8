// kiln-spawn metadata-serve: the metadata service (docs/kiln-spawn.md), in the foreground until
// SIGTERM or SIGINT.
#include <pthread.h>
#include <signal.h>

#include <iostream>
#include <thread>

#include "context.h"
#include "kiln/net/store.h"
#include "kiln/spawn/metadata.h"

namespace kiln::spawn::cli {

namespace {

int metadata_serve(Context& c) {
  c.args.max_positional(0);
  std::string socket = c.args.get_or("--socket", net::run_dir() + "/metadata.sock");
  if (socket.empty() || socket.size() >= 108)
    throw invalid("--socket must be a path of 1 to 107 bytes (a Unix socket's limit)");
  // The signals go to one thread that stops the server; the server's threads never see them.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  // A router's proxy names the router: its subnets are in netplumb's model (opened on the first
  // such request), read for every one (a router interface added later counts at once).
  MetadataServer server(c.store(), socket, [&c](const std::string& router, const std::string& ip) {
    return router_network(c.net_store(), router, ip);
  });
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    server.stop();
  });
  std::cerr << "kiln-spawn: metadata service on " << socket << std::endl;
  bool ok = server.run();
  if (!ok) {
    std::cerr << "kiln-spawn: cannot listen on " << socket << std::endl;
    pthread_kill(waiter.native_handle(), SIGTERM);
  }
  waiter.join();
  return ok ? 0 : 1;
}

}  // namespace

CommandTable metadata_commands() {
  return {{"metadata-serve", "[--socket PATH]", {{"--socket", kValue}}, metadata_serve}};
}

}  // namespace kiln::spawn::cli

// Feeds arbitrary bytes to kiln-nbd's protocol code as one client connection: handshake and
// transmission phase, against a small raw export and a small qcow2 export. The server must
// neither crash nor hang; whatever it replies is drained and dropped.
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "kiln/block/qcow2.h"
#include "kiln/nbd/server.h"

using namespace kiln;

namespace {

struct Fixture {
  block::Reactor reactor{256};
  std::unique_ptr<nbd::Server> server;
  std::string dir;

  Fixture() {
    char tmpl[] = "/tmp/kiln-nbd-fuzz-XXXXXX";
    dir = mkdtemp(tmpl);
    const std::string raw = dir + "/disk.raw", qcow = dir + "/disk.qcow2";
    FILE* f = fopen(raw.c_str(), "w");
    ftruncate(fileno(f), 1 << 20);
    fclose(f);
    block::qcow2::CreateOptions co;
    co.size = 1 << 20;
    co.cluster_size = 4096;
    block::qcow2::create(reactor, qcow, co);
    nbd::ServerOptions so;
    so.threads = 1;
    so.max_block = 1 << 20;
    server = std::make_unique<nbd::Server>(reactor, so);
    nbd::ExportConfig c;
    c.name = "";
    c.path = raw;
    c.format = "raw";
    reactor.run(server->add_export(c));
    c.name = "q";
    c.path = qcow;
    c.format = "qcow2";
    c.discard = true;
    reactor.run(server->add_export(c));
    // The exports keep their files open: the names can go now, so that no run leaves them
    // behind (libFuzzer ends the process with exit()).
    unlink(raw.c_str());
    unlink(qcow.c_str());
    rmdir(dir.c_str());
  }
};

Fixture& fixture() {
  static Fixture* f = new Fixture();  // lives for the whole run
  return *f;
}

// Writes the input, then drains the replies until the server closes its end.
block::Task<void> client(block::Reactor& r, int fd, const uint8_t* data, size_t size) {
  size_t sent = 0;
  while (sent < size) {
    const uint8_t* p = data + sent;
    const size_t n = size - sent;
    int rc =
        co_await r.submit([=](io_uring_sqe* s) { io_uring_prep_send(s, fd, p, n, MSG_NOSIGNAL); });
    if (rc <= 0) break;
    sent += size_t(rc);
  }
  shutdown(fd, SHUT_WR);
  static uint8_t sink[65536];
  for (;;) {
    int rc = co_await r.submit(
        [=](io_uring_sqe* s) { io_uring_prep_recv(s, fd, sink, sizeof sink, 0); });
    if (rc <= 0) break;
  }
  close(fd);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fixture();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fixture& fx = fixture();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return 0;
  block::WaitGroup done(fx.reactor);
  fx.server->serve_connection(sv[0], &done);
  fx.reactor.spawn(client(fx.reactor, sv[1], data, size), &done);
  fx.reactor.run([](block::WaitGroup* g) -> block::Task<void> { co_await g->wait(); }(&done));
  return 0;
}

// kiln-nbd's server: exports (named block devices), listeners, connections, and the control
// API, all driven by one reactor.
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kiln/block/device.h"
#include "kiln/nbd/tls.h"

namespace kiln::nbd {

struct ExportConfig {
  std::string name;
  std::string path;
  std::string format;  // empty: probe (the top image only; backings are never probed)
  std::string description;
  bool read_only = false;
  bool discard = true;  // honour TRIM (qemu-nbd --discard=unmap); else TRIM is a no-op
  // qemu-nbd's --cache: writeback (flush on FLUSH/FUA), writethrough (every write durable
  // before its reply), unsafe (FLUSH and FUA ignored).
  enum class Cache { kWriteback, kWritethrough, kUnsafe } cache = Cache::kWriteback;
  size_t l2_cache_bytes = 4u << 20;
  bool persistent = false;  // recorded in the state file (exports added through the control API)
};

// Counters are updated on the export's reactor thread and read by the control API.
struct ExportStats {
  std::atomic<uint64_t> requests{0}, reads{0}, writes{0}, bytes_read{0}, bytes_written{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> connections{0};        // open now
  std::atomic<uint64_t> total_connections{0};  // since the export was added
};

struct ServerOptions {
  uint32_t max_block = 32u << 20;  // largest request payload
  unsigned max_in_flight = 256;    // requests in flight per connection
  unsigned max_connections = 1024;
  bool shared = true;        // more than one client at a time (qemu-nbd -e)
  unsigned max_clients = 0;  // qemu-nbd -e N: 0 = unlimited
  bool persistent = true;    // keep serving after the last client leaves (qemu-nbd -t)
  std::string state_file;    // where exports added through the control API are recorded
  unsigned threads = 1;      // reactor threads, the caller's included
  TlsMode tls_mode = TlsMode::kOff;
  std::shared_ptr<const TlsCredentials> tls;  // set unless tls_mode is kOff
};

class Connection;
class Listener;
struct Worker;

// An export lives on one reactor (its home): its image is opened there, and every connection
// to it runs its transmission phase there, so the image needs no locks and a flush on any
// connection covers writes completed on all of them.
class Export {
 public:
  ExportConfig config;
  std::unique_ptr<block::BlockDevice> device;
  block::Reactor* home = nullptr;
  ExportStats stats;
  bool removing = false;
};

class Server {
 public:
  Server(block::Reactor& reactor, ServerOptions options);
  ~Server();

  // Opens the image and makes it available. Throws block::Error (or std::runtime_error).
  block::Task<void> add_export(ExportConfig config);
  // Stops new connections to the export, waits for its connections to end (after
  // asking them to), flushes and closes the image. Returns 0 or -errno.
  block::Task<int> remove_export(const std::string& name);
  Export* find_export(const std::string& name);
  const std::map<std::string, std::unique_ptr<Export>>& exports() const { return exports_; }

  // Listeners. Throw std::runtime_error on failure.
  void listen_unix(const std::string& path);
  void listen_tcp(const std::string& host, uint16_t port);
  void listen_control(const std::string& path);
  // Serves a client on an already connected socket (inetd style, and the fuzz target); the
  // server owns `fd` from now on. `done`, if given, is told when the connection has ended.
  void serve_connection(int fd, block::WaitGroup* done = nullptr);

  // Runs until shutdown() finishes; the caller starts it from a coroutine.
  block::Task<void> serve();
  // Stops accepting, lets requests in flight finish, flushes and closes every image.
  void request_shutdown();
  bool stopping() const { return stopping_; }

  const ServerOptions& options() const { return options_; }
  block::Reactor& reactor() { return reactor_; }

  // Used by connections.
  void connection_started(Connection* c);
  void connection_finished(Connection* c);
  bool accepting_clients() const;

  // Control API: one JSON request in, one JSON reply out.
  block::Task<std::string> control(const std::string& request);

 private:
  block::Task<void> accept_loop(Listener* l);
  void start_workers();
  block::Task<void> stop_workers();
  block::Task<int> close_export(Export* e);
  block::Task<void> control_client(int fd);
  block::Task<void> drain_and_close();
  void save_state();

  block::Reactor& reactor_;
  ServerOptions options_;
  std::map<std::string, std::unique_ptr<Export>> exports_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<block::Reactor*> reactors_;  // [0] is the caller's
  size_t next_home_ = 0;
  std::list<Connection*> connections_;
  block::WaitList changed_;  // connections ended, shutdown requested
  block::WaitGroup accepters_;
  bool stopping_ = false;
  uint64_t clients_seen_ = 0;
};

// Exports recorded in a state file by an earlier run (control API). Throws on a damaged file.
std::vector<ExportConfig> load_state(const std::string& path);

}  // namespace kiln::nbd

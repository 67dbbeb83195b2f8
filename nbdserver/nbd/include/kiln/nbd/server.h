// kiln-nbd's server: exports (named block devices), listeners, connections, and the control
// API, all driven by one reactor.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
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
  // qemu-nbd's --cache, the host page cache side: writeback (flush on FLUSH/FUA),
  // writethrough (every write durable before its reply), unsafe (FLUSH and FUA ignored).
  enum class Cache { kWriteback, kWritethrough, kUnsafe } cache = Cache::kWriteback;
  // O_DIRECT on the image and its backing chain: --cache=none (with kWriteback) and
  // directsync (with kWritethrough).
  bool direct = false;
  size_t l2_cache_bytes = 4u << 20;
  bool persistent = false;  // recorded in the state file (exports added through the control API)
  // A Unix socket of the export's own: a client connected through it sees only this export.
  std::string socket;
  std::string owner;  // "USER[:GROUP]" the socket is chown'd to; empty: the server's user
  // Only TLS sessions authenticated as this identity (a PSK identity, or an X.509 client
  // certificate's distinguished name) see and open the export; empty: every client.
  std::string tls_identity;
  // An encrypted (qcow2 LUKS) image's passphrase: a file read when the export opens (mode 0600
  // or stricter; the path is recorded in the state file, never the secret), or the secret's
  // bytes (command line --object ... data=/file=), kept in memory only. Never logged.
  std::string key_secret_file;
  std::optional<std::string> key_secret;
};

// Counters are updated on the export's reactor thread and read by the control API.
struct ExportStats {
  std::atomic<uint64_t> requests{0}, reads{0}, writes{0}, bytes_read{0}, bytes_written{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> receive_waits{0};      // receives delayed by the pacer (pacer.h)
  std::atomic<uint64_t> connections{0};        // open now
  std::atomic<uint64_t> total_connections{0};  // since the export was added
};

// Who may connect to a Unix socket the server creates: its owner (the server's user unless
// said otherwise) and, when `gid` is set, that group.
struct SocketAccess {
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
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
  // Bytes held for requests and replies (payloads read, reply data not yet sent): per
  // connection, and in total. A connection over either stops reading requests until its
  // replies drain; one that holds nothing may always start a request of up to
  // kGuaranteedRequestBytes, so that clients that never read cannot starve the others.
  uint64_t max_connection_bytes = 64u << 20;
  uint64_t max_memory = 1ull << 30;
  // The longest a connection's reader waits before a receive so that more of a pipelining
  // client's requests arrive together (pacer.h; 0: never waits).
  unsigned batch_wait_us = 200;
  // A client that has not finished the handshake after this long is disconnected (0: never).
  unsigned handshake_timeout_ms = 10000;
  // After a connection is asked to stop (shutdown, export removed), how long its replies
  // may take to drain before the socket is closed under a client that does not read them.
  unsigned drain_timeout_ms = 10000;
  // Images (and every backing file) must lie under one of these (empty: anywhere).
  std::vector<std::string> allowed_dirs;
  SocketAccess socket_access;   // the -k socket(s)
  SocketAccess control_access;  // the control socket; its group is also admitted by SO_PEERCRED
  TlsMode tls_mode = TlsMode::kOff;
  std::shared_ptr<const TlsCredentials> tls;  // set unless tls_mode is kOff
};

// A connection that holds nothing may always take one request of up to this many bytes.
constexpr uint64_t kGuaranteedRequestBytes = 1u << 20;

class Connection;
class Listener;
class DirtyMap;
struct CommitJob;

// Every request of an export passes through its gate (on the export's home reactor). A live
// snapshot or commit closes it: new requests wait, those in flight finish, and once none is
// left the export's device can be switched; opening it lets the waiting requests go on, on the
// new device. No request fails for it.
class ExportGate {
 public:
  explicit ExportGate(block::Reactor& r) : drained_(r), r_(&r) {}
  struct Enter {
    ExportGate* g;
    bool await_ready() noexcept {
      if (g->closed_) return false;
      ++g->active_;
      return true;
    }
    void await_suspend(std::coroutine_handle<> h) { g->waiting_.push_back(h); }
    void await_resume() const noexcept {}
  };
  Enter enter() { return Enter{this}; }
  void leave() {
    if (--active_ == 0 && closed_) drained_.notify_all();
  }
  // Stops new requests and waits for those in flight.
  block::Task<void> close() {
    closed_ = true;
    while (active_ > 0) co_await drained_.wait();
  }
  void open() {
    closed_ = false;
    for (auto h : waiting_) {
      ++active_;  // counted now: a close() right after waits for them too
      r_->post(h);
    }
    waiting_.clear();
  }

 private:
  bool closed_ = false;
  uint64_t active_ = 0;
  std::vector<std::coroutine_handle<>> waiting_;
  block::WaitList drained_;
  block::Reactor* r_;
};

// Options of a live snapshot's new overlay.
struct SnapshotOptions {
  uint32_t cluster_size = 0;  // 0: the top image's, or 64 KiB
  bool extended_l2 = false;
};
class MemoryBudget;
struct Worker;

// The one export a client connected through a per-export socket may see: that export, by name
// and by id (a new export under the same name is another export, maybe another tenant's).
struct ExportScope {
  std::string name;
  uint64_t id;
};

// An export lives on one reactor (its home): its image is opened there, and every connection
// to it runs its transmission phase there, so the image needs no locks and a flush on any
// connection covers writes completed on all of them.
//
// Lifetime: only connections in the transmission phase hold an Export*; remove_export() waits
// for them. The handshake copies what it needs and looks the export up again by name and id
// after every suspension, so that an export may go away at any moment of a handshake.
class Export {
 public:
  ExportConfig config;
  std::unique_ptr<block::BlockDevice> device;   // null: the image could not be opened at start
  std::string error;                            // why, when device is null
  common::Reason reason = common::Reason::kIo;  // and its reason
  uint64_t id = 0;                              // unique for the server's lifetime
  block::Reactor* home = nullptr;
  ExportStats stats;
  bool removing = false;
  Listener* listener = nullptr;  // its own socket (config.socket), if any
  // Live snapshot and commit (live.cpp, commit.cpp). The gate lives on the home reactor.
  std::unique_ptr<ExportGate> gate;
  DirtyMap* dirty = nullptr;       // home thread, set and cleared with the gate closed
  bool live_busy = false;          // a snapshot or commit runs (server thread)
  std::shared_ptr<CommitJob> job;  // the last commit, kept for {"cmd":"jobs"} (server thread)
  bool usable() const { return device && !removing; }
};

class Server {
 public:
  Server(block::Reactor& reactor, ServerOptions options);
  ~Server();

  // Opens the image and makes it available (and listens on its own socket, if it has one).
  // Throws block::Error (or std::runtime_error).
  block::Task<void> add_export(ExportConfig config);
  // Records an export whose image could not be opened at start (from the state file): it
  // stays listed (as failed) and recorded until removed, and clients do not see it.
  void add_failed_export(ExportConfig config, std::string error, common::Reason reason);
  // Adds the exports recorded in the state file: those that cannot be opened are kept as
  // failed (add_failed_export) rather than stopping the server. The state file is not
  // written before this has run, so that nothing recorded is dropped on the way.
  block::Task<void> restore_exports(std::vector<ExportConfig> recorded);
  // Stops new connections to the export, waits for its connections to end (after
  // asking them to), flushes and closes the image. Returns 0 or -errno.
  block::Task<int> remove_export(const std::string& name);
  // A usable export (not failed, not being removed), or null.
  Export* find_export(const std::string& name);
  const std::map<std::string, std::unique_ptr<Export>>& exports() const { return exports_; }

  // Listeners. Throw std::runtime_error on failure.
  void listen_unix(const std::string& path);
  void listen_tcp(const std::string& host, uint16_t port);
  void listen_control(const std::string& path);
  // Serves a client on an already connected socket (inetd style, and the fuzz target); the
  // server owns `fd` from now on. `done`, if given, is told when the connection has ended.
  // `scope`, if given, is the one export the client may see (a per-export socket).
  void serve_connection(int fd, block::WaitGroup* done = nullptr,
                        std::optional<ExportScope> scope = std::nullopt);

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
  // Whether clients of `e` may be told NBD_FLAG_CAN_MULTI_CONN: only when more than one
  // client may connect at a time and the device supports it.
  bool multi_conn(const Export& e) const;
  MemoryBudget& budget() { return *budget_; }

  // Live snapshot (live.cpp): creates a qcow2 overlay at `path` whose backing is the export's
  // image, and switches the export to it with no request failing; the old image becomes
  // read-only. Throws common::Error.
  block::Task<void> snapshot_export(const std::string& name, const std::string& path,
                                    const SnapshotOptions& options);
  // Live commit (commit.cpp): starts copying the export's top image into its backing while
  // clients write, then switches the export to the backing. Progress in CommitJob.
  block::Task<void> start_commit(const std::string& name, const std::string& base);
  // Asks the export's running commit to stop; false if none runs.
  bool cancel_commit(const std::string& name);

  // Control API: one JSON request in, one JSON reply out.
  block::Task<std::string> control(const std::string& request);

 private:
  block::Task<void> accept_loop(Listener* l);
  block::Task<void> backoff();
  block::Task<void> housekeeping();
  Listener* add_listener(std::unique_ptr<Listener> l);
  block::Task<void> close_listener(Listener* l);
  void start_workers();
  block::Task<void> stop_workers();
  block::Task<int> close_export(Export* e);
  block::Task<void> control_client(int fd);
  block::Task<void> drain_and_close();
  block::Task<void> run_commit(Export* e, std::shared_ptr<CommitJob> job);
  // Waits until no snapshot or commit runs on `e` (after cancelling a commit).
  block::Task<void> end_live_ops(Export* e);
  bool save_state();  // false (and logged) if the file could not be written

  block::Reactor& reactor_;
  ServerOptions options_;
  std::map<std::string, std::unique_ptr<Export>> exports_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<block::Reactor*> reactors_;  // [0] is the caller's
  size_t next_home_ = 0;
  std::list<Connection*> connections_;
  block::WaitList changed_;      // connections ended, shutdown requested
  block::WaitGroup background_;  // housekeeping
  // Control clients: ended by shutdown(2) of their sockets when the server stops, and waited
  // for, so that none is left suspended when the server's state goes.
  std::set<int> control_fds_;
  block::WaitGroup control_clients_;
  bool serving_ = false;
  bool stopping_ = false;
  uint64_t clients_seen_ = 0;
  uint64_t next_export_id_ = 1;
  bool state_restored_ = false;
  std::unique_ptr<MemoryBudget> budget_;
};

// Exports recorded in a state file by an earlier run (control API). Throws on a damaged file.
std::vector<ExportConfig> load_state(const std::string& path);

}  // namespace kiln::nbd

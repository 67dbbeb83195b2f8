// Listeners, the accept loops, connection bookkeeping, export lifetime and clean shutdown.
#include "kiln/nbd/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <future>
#include <stdexcept>
#include <thread>

#include "budget.h"
#include "commit.h"
#include "connection.h"
#include "kiln/block/secret.h"
#include "kiln/common/error.h"
#include "kiln/common/fd.h"
#include "kiln/nbd/access.h"
#include "kiln/nbd/protocol.h"
#include "log.h"

namespace kiln::nbd {

using block::Task;

class Listener {
 public:
  Listener(block::Reactor& r, int fd, std::string what, bool control, std::string unlink_path,
           std::optional<ExportScope> scope = std::nullopt)
      : fd(fd),
        what(std::move(what)),
        control(control),
        unlink_path(std::move(unlink_path)),
        scope(std::move(scope)),
        loop(r) {}
  ~Listener() {
    if (!unlink_path.empty()) ::unlink(unlink_path.c_str());
  }
  common::Fd fd;
  std::string what;
  bool control;
  std::string unlink_path;
  std::optional<ExportScope> scope;  // a per-export socket: the one export its clients see
  bool closing = false;
  block::WaitGroup loop;  // its accept loop
};

// A reactor thread other than the caller's.
struct Worker {
  std::thread thread;
  block::Reactor* reactor = nullptr;
  bool done = false;  // touched only on the worker's thread
};

namespace {

[[noreturn]] void fail(const std::string& what) { throw common::errno_error(what, errno); }

// An earlier socket at `path` is replaced only if nothing listens on it any more (left behind
// by a crash); anything else there is an error, never unlinked.
void remove_stale_socket(const std::string& path, const sockaddr_un& addr) {
  struct stat st;
  if (lstat(path.c_str(), &st) < 0) {
    if (errno == ENOENT) return;
    fail(path);
  }
  if (!S_ISSOCK(st.st_mode))
    throw common::exists(path + ": exists and is not a socket (not replacing it)");
  common::Fd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!probe) fail("socket");
  const int rc = connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int e = errno;
  probe.reset();
  if (rc == 0 || e == EAGAIN)
    throw common::busy(path + ": another server is listening on this socket");
  if (e != ECONNREFUSED && e != ENOENT) {
    errno = e;
    fail(path);
  }
  if (::unlink(path.c_str()) < 0 && errno != ENOENT) fail(path);
}

// A listening Unix socket, created with `mode` and given to `uid`/`gid` before it listens, so
// that nobody else can connect at any moment.
int unix_listener(const std::string& path, mode_t mode, std::optional<uid_t> uid,
                  std::optional<gid_t> gid) {
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path) throw common::invalid(path + ": socket path too long");
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  remove_stale_socket(path, addr);
  common::Fd sock(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!sock) fail("socket");
  const int fd = sock.get();
  // bind() creates the file with the umask's mode: make it 0600 from the start. (The umask is
  // the process's; no other thread of kiln-nbd creates files.)
  const mode_t old_umask = umask(0177);
  const int rc = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  const int bind_errno = errno;
  umask(old_umask);
  auto give_up = [&](int e, bool unlink_it) {
    sock.reset();
    if (unlink_it) ::unlink(path.c_str());
    errno = e;
    fail(path);
  };
  if (rc < 0) give_up(bind_errno, false);
  if ((uid || gid) && lchown(path.c_str(), uid ? *uid : uid_t(-1), gid ? *gid : gid_t(-1)) < 0)
    give_up(errno, true);
  if (mode != 0600 && fchmodat(AT_FDCWD, path.c_str(), mode, AT_SYMLINK_NOFOLLOW) < 0)
    give_up(errno, true);
  if (listen(fd, 128) < 0) give_up(errno, true);
  return sock.release();
}

std::string peer_name(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) return "client";
  char host[INET6_ADDRSTRLEN + 8] = "unix";
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    return std::string(host) + ":" + std::to_string(ntohs(a->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(a->sin6_port));
  }
  return "unix:" + std::to_string(fd);
}

}  // namespace

Server::Server(block::Reactor& reactor, ServerOptions options)
    : reactor_(reactor),
      options_(std::move(options)),
      changed_(reactor),
      background_(reactor),
      control_clients_(reactor),
      budget_(std::make_unique<MemoryBudget>(options_.max_memory)) {
  reactor_.enable_remote();
  reactors_.push_back(&reactor_);
  start_workers();
}

Server::~Server() {
  // serve() stops the workers; this covers a server that never served.
  for (auto& w : workers_) {
    if (!w->thread.joinable()) continue;
    block::Reactor* r = w->reactor;
    Worker* wp = w.get();
    reactor_.run([](block::Reactor* target, Worker* worker, block::Reactor* back) -> Task<void> {
      co_await target->schedule();
      worker->done = true;
      co_await back->schedule();  // finish on this thread, which waits for it
    }(r, wp, &reactor_));
    w->thread.join();
  }
}

void Server::start_workers() {
  for (unsigned i = 1; i < std::max(1u, options_.threads); ++i) {
    auto w = std::make_unique<Worker>();
    std::promise<block::Reactor*> ready;
    auto started = ready.get_future();
    Worker* wp = w.get();
    w->thread = std::thread([wp, ready = std::move(ready)]() mutable {
      block::Reactor r(1024, block::Reactor::Issuer::kOwnThread);
      r.enable_remote();
      ready.set_value(&r);
      r.run_until(wp->done);
    });
    w->reactor = started.get();
    reactors_.push_back(w->reactor);
    workers_.push_back(std::move(w));
  }
}

Task<void> Server::stop_workers() {
  for (auto& w : workers_) {
    Worker* wp = w.get();
    co_await wp->reactor->schedule();
    wp->done = true;  // the worker's loop ends after this coroutine
    co_await reactor_.schedule();
  }
  for (auto& w : workers_) w->thread.join();
  workers_.clear();
  reactors_.resize(1);
}

Listener* Server::add_listener(std::unique_ptr<Listener> l) {
  Listener* p = l.get();
  listeners_.push_back(std::move(l));
  if (serving_) {
    logf(LogLevel::kInfo, "listening on %s", p->what.c_str());
    reactor_.spawn(accept_loop(p), &p->loop);
  }
  return p;
}

Task<void> Server::close_listener(Listener* l) {
  l->closing = true;
  co_await reactor_.cancel_fd(l->fd.get());  // its pending accept
  co_await l->loop.wait();
  std::erase_if(listeners_, [l](const std::unique_ptr<Listener>& p) { return p.get() == l; });
}

void Server::listen_unix(const std::string& path) {
  const SocketAccess& a = options_.socket_access;
  add_listener(std::make_unique<Listener>(
      reactor_, unix_listener(path, a.gid ? 0660 : 0600, a.uid, a.gid), path, false, path));
}

void Server::listen_control(const std::string& path) {
  const SocketAccess& a = options_.control_access;
  add_listener(std::make_unique<Listener>(
      reactor_, unix_listener(path, a.gid ? 0660 : 0600, a.uid, a.gid), path, true, path));
}

void Server::listen_tcp(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0) throw std::runtime_error(host + ": " + gai_strerror(rc));
  int bound = 0;
  std::string err;
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    common::Fd sock(socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
    if (!sock) continue;
    const int fd = sock.get();
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
      err = strerror(errno);
      continue;
    }
    char h[INET6_ADDRSTRLEN] = "";
    getnameinfo(ai->ai_addr, ai->ai_addrlen, h, sizeof h, nullptr, 0, NI_NUMERICHOST);
    add_listener(std::make_unique<Listener>(
        reactor_, sock.release(), std::string(h) + ":" + std::to_string(port), false, ""));
    ++bound;
  }
  freeaddrinfo(res);
  if (!bound) throw std::runtime_error("cannot listen on " + host + ":" + service + ": " + err);
}

Task<void> Server::add_export(ExportConfig config) {
  if (config.name.size() > kMaxStringLength) throw common::invalid("export name too long");
  if (exports_.count(config.name))
    throw common::exists("export '" + config.name + "' already exists");
  std::optional<Owner> owner;
  if (!config.socket.empty()) {
    for (const auto& l : listeners_)
      if (l->unlink_path == config.socket)
        throw common::busy(config.socket + ": already used by another listener");
    owner = config.owner.empty() ? Owner{geteuid(), std::nullopt} : parse_owner(config.owner);
  } else if (!config.owner.empty()) {
    throw common::invalid("an owner is given but no socket");
  }
  if (!config.tls_identity.empty() && options_.tls_mode == TlsMode::kOff)
    throw common::invalid("export '" + config.name +
                          "': a TLS identity needs TLS (--tls-creds or --tls-psk)");
  if (config.tls_identity.size() > kMaxStringLength)
    throw common::invalid("export '" + config.name + "': TLS identity too long");
  // Sent to clients in NBD_INFO_DESCRIPTION, a string of the protocol's: at most 4096 bytes.
  if (config.description.size() > kMaxStringLength)
    throw common::invalid("export '" + config.name + "': description longer than " +
                          std::to_string(kMaxStringLength) + " bytes");
  if (config.key_secret_file.size() > kMaxStringLength)
    throw common::invalid("export '" + config.name + "': key secret file name too long");
  block::OpenOptions o;
  o.key_secret = config.key_secret;
  if (!config.key_secret_file.empty())
    o.key_secret = block::read_secret_file(config.key_secret_file, true, options_.allowed_dirs);
  o.format = config.format;
  o.read_only = config.read_only;
  o.l2_cache_bytes = config.l2_cache_bytes;
  o.direct = config.direct;
  o.allowed_dirs = options_.allowed_dirs;
  auto e = std::make_unique<Export>();
  // Exports are spread over the reactors, the extra threads first.
  e->home = reactors_[(1 + next_home_++) % reactors_.size()];
  e->gate = std::make_unique<ExportGate>(*e->home);
  std::exception_ptr error;
  co_await e->home->schedule();
  try {
    e->device = co_await block::open_image(*e->home, config.path, o);
  } catch (...) {
    error = std::current_exception();
  }
  co_await reactor_.schedule();
  if (error) std::rethrow_exception(error);
  e->id = next_export_id_++;
  std::unique_ptr<Listener> listener;
  if (!config.socket.empty()) {
    try {
      // Owner only (0600), even with a group: the socket is the export's, one guest's.
      listener = std::make_unique<Listener>(
          reactor_, unix_listener(config.socket, 0600, owner->uid, owner->gid), config.socket,
          false, config.socket, ExportScope{config.name, e->id});
    } catch (...) {
      error = std::current_exception();
    }
    if (error) {
      co_await close_export(e.get());
      std::rethrow_exception(error);
    }
  }
  if (config.format.empty()) config.format = e->device->format();
  e->config = std::move(config);
  logf(LogLevel::kInfo, "export '%s': %s (%s, %llu bytes%s)", e->config.name.c_str(),
       e->config.path.c_str(), e->config.format.c_str(), (unsigned long long)e->device->size(),
       e->config.read_only ? ", read-only" : "");
  if (listener) e->listener = add_listener(std::move(listener));
  std::string name = e->config.name;
  exports_.emplace(std::move(name), std::move(e));
  save_state();
}

void Server::add_failed_export(ExportConfig config, std::string error, common::Reason reason) {
  if (exports_.count(config.name)) {
    logf(LogLevel::kError, "export '%s' is recorded twice; dropping the second",
         config.name.c_str());
    return;
  }
  auto e = std::make_unique<Export>();
  e->id = next_export_id_++;
  e->error = std::move(error);
  e->reason = reason;
  e->config = std::move(config);
  logf(LogLevel::kError, "export '%s' is not served: %s", e->config.name.c_str(), e->error.c_str());
  std::string name = e->config.name;
  exports_.emplace(std::move(name), std::move(e));
}

Export* Server::find_export(const std::string& name) {
  auto it = exports_.find(name);
  return it == exports_.end() || !it->second->usable() ? nullptr : it->second.get();
}

Task<int> Server::remove_export(const std::string& name) {
  auto it = exports_.find(name);
  if (it == exports_.end() || it->second->removing) co_return -ENOENT;
  Export* e = it->second.get();
  e->removing = true;  // from now on no handshake finds it, so no new connection binds to it
  // A running commit is cancelled (the export stays on its chain); a snapshot finishes.
  co_await end_live_ops(e);
  if (e->listener) {
    co_await close_listener(e->listener);
    e->listener = nullptr;
  }
  for (Connection* c : connections_)
    if (c->exported() == e) c->shutdown();
  while (std::any_of(connections_.begin(), connections_.end(),
                     [e](Connection* c) { return c->exported() == e; }))
    co_await changed_.wait();
  int rc = e->device ? co_await close_export(e) : 0;
  logf(LogLevel::kInfo, "export '%s' removed", name.c_str());
  exports_.erase(name);
  save_state();
  co_return rc;
}

Task<int> Server::close_export(Export* e) {
  co_await e->home->schedule();
  int rc = co_await e->device->close();
  e->device.reset();  // freed on its own thread
  co_await reactor_.schedule();
  co_return rc;
}

bool Server::accepting_clients() const {
  if (stopping_) return false;
  uint64_t active = 0;
  for (Connection* c : connections_) active += c->exported() != nullptr;
  if (!options_.shared && active >= 1) return false;
  return options_.max_clients == 0 || active < options_.max_clients;
}

bool Server::multi_conn(const Export& e) const {
  const bool many_clients = options_.shared && options_.max_clients != 1;
  return many_clients && e.device->caps().can_multi_conn;
}

void Server::connection_started(Connection* c) { connections_.push_back(c); }

void Server::connection_finished(Connection* c) {
  connections_.remove(c);
  changed_.notify_all();
  if (!options_.persistent && connections_.empty() && clients_seen_ > 0) request_shutdown();
}

// Out of descriptors or memory: the client waits in the listen backlog while connections end.
// Retrying at once would spin at full CPU.
Task<void> Server::backoff() { co_await reactor_.sleep(std::chrono::milliseconds(100)); }

Task<void> Server::accept_loop(Listener* l) {
  bool starved = false;
  while (!stopping_ && !l->closing) {
    const int lfd = l->fd.get();
    int fd = co_await reactor_.submit(
        [lfd](io_uring_sqe* s) { io_uring_prep_accept(s, lfd, nullptr, nullptr, SOCK_CLOEXEC); });
    if (stopping_ || l->closing) {
      common::Fd late(fd >= 0 ? fd : -1);  // accepted while stopping: closed here
      break;
    }
    if (fd < 0) {
      if (fd == -EINTR || fd == -ECONNABORTED || fd == -EAGAIN) continue;
      if (fd == -EMFILE || fd == -ENFILE || fd == -ENOBUFS || fd == -ENOMEM) {
        if (!starved)
          logf(LogLevel::kWarn, "accept on %s: %s; retrying every 100 ms", l->what.c_str(),
               strerror(-fd));
        starved = true;
        co_await backoff();
        continue;
      }
      logf(LogLevel::kError, "accept on %s: %s", l->what.c_str(), strerror(-fd));
      break;
    }
    if (starved) logf(LogLevel::kInfo, "accepting on %s again", l->what.c_str());
    starved = false;
    if (l->control) {
      reactor_.spawn(control_client(fd), &control_clients_);
      continue;
    }
    if (connections_.size() >= options_.max_connections) {
      logf(LogLevel::kWarn, "too many connections, refusing one");
      common::Fd refused(fd);
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // fails harmlessly on Unix
    serve_connection(fd, nullptr, l->scope);
  }
}

// Drops clients that take too long: to finish the handshake, or to take their last replies
// once asked to stop.
Task<void> Server::housekeeping() {
  using namespace std::chrono;
  while (!stopping_ || !connections_.empty()) {
    co_await reactor_.sleep(milliseconds(200));
    const auto now = Connection::Clock::now();
    const milliseconds handshake(options_.handshake_timeout_ms);
    const milliseconds drain(options_.drain_timeout_ms);
    for (Connection* c : connections_) {
      if (c->aborted()) continue;
      if (options_.handshake_timeout_ms && c->phase() == Connection::Phase::kHandshake &&
          now - c->started() > handshake) {
        logf(LogLevel::kWarn, "%s: handshake not finished after %u ms, disconnecting",
             c->peer().c_str(), options_.handshake_timeout_ms);
        c->abort();
        continue;
      }
      const auto asked = c->shutdown_at();
      if (options_.drain_timeout_ms && asked && now - *asked > drain) {
        logf(LogLevel::kWarn, "%s: replies not taken %u ms after the end, disconnecting",
             c->peer().c_str(), options_.drain_timeout_ms);
        c->abort();
      }
    }
  }
}

void Server::serve_connection(int fd, block::WaitGroup* done, std::optional<ExportScope> scope) {
  ++clients_seen_;
  std::string peer = peer_name(fd);
  auto* c = new Connection(*this, common::Fd(fd), std::move(peer), std::move(scope));
  connection_started(c);
  reactor_.spawn(
      [](Server* s, Connection* conn) -> Task<void> {
        co_await conn->run();
        s->connection_finished(conn);
        delete conn;
      }(this, c),
      done);
}

void Server::request_shutdown() {
  if (stopping_) return;
  stopping_ = true;
  logf(LogLevel::kInfo, "shutting down: finishing requests in flight");
  for (auto& l : listeners_) {
    reactor_.spawn([](block::Reactor* r, int fd) -> Task<void> {
      co_await r->cancel_fd(fd);  // the pending accepts
    }(&reactor_, l->fd.get()));
  }
  for (Connection* c : connections_) c->shutdown();
  for (auto& [name, e] : exports_)
    if (e->job) e->job->cancel = true;  // the export stays on its old chain
  // A control client waiting for its next request reads the end of its stream and returns; one
  // in the middle of a request finishes it first.
  for (int fd : control_fds_) ::shutdown(fd, SHUT_RDWR);
  changed_.notify_all();
}

Task<void> Server::drain_and_close() {
  while (!connections_.empty()) co_await changed_.wait();
  // (By index: a control client may still remove an export, and its listener, meanwhile.)
  for (size_t i = 0; i < listeners_.size(); ++i) co_await listeners_[i]->loop.wait();
  co_await control_clients_.wait();
  co_await background_.wait();
  for (auto& [name, e] : exports_) {
    if (!e->device) continue;
    int rc = co_await close_export(e.get());
    if (rc < 0)
      logf(LogLevel::kError, "export '%s': closing the image failed: %s", name.c_str(),
           strerror(-rc));
  }
  exports_.clear();
  listeners_.clear();
  co_await stop_workers();
  logf(LogLevel::kInfo, "stopped");
}

Task<void> Server::serve() {
  serving_ = true;
  for (auto& l : listeners_) {
    logf(LogLevel::kInfo, "listening on %s%s", l->what.c_str(), l->control ? " (control)" : "");
    reactor_.spawn(accept_loop(l.get()), &l->loop);
  }
  reactor_.spawn(housekeeping(), &background_);
  while (!stopping_) co_await changed_.wait();
  co_await drain_and_close();
}

}  // namespace kiln::nbd

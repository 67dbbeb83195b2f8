// Listeners, the accept loops, connection bookkeeping, export lifetime and clean shutdown.
#include "kiln/nbd/server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <future>
#include <stdexcept>
#include <thread>

#include "connection.h"
#include "log.h"

namespace kiln::nbd {

using block::Task;

class Listener {
 public:
  Listener(int fd, std::string what, bool control, std::string unlink_path)
      : fd(fd), what(std::move(what)), control(control), unlink_path(std::move(unlink_path)) {}
  ~Listener() {
    if (fd >= 0) ::close(fd);
    if (!unlink_path.empty()) ::unlink(unlink_path.c_str());
  }
  int fd;
  std::string what;
  bool control;
  std::string unlink_path;
};

// A reactor thread other than the caller's.
struct Worker {
  std::thread thread;
  block::Reactor* reactor = nullptr;
  bool done = false;  // touched only on the worker's thread
};

namespace {

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error(what + ": " + strerror(errno));
}

int unix_listener(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path)
    throw std::runtime_error(path + ": socket path too long");
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) fail("socket");
  ::unlink(path.c_str());
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 || listen(fd, 128) < 0) {
    int e = errno;
    ::close(fd);
    errno = e;
    fail(path);
  }
  return fd;
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
    : reactor_(reactor), options_(std::move(options)), changed_(reactor), accepters_(reactor) {
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
      block::Reactor r(1024);
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

void Server::listen_unix(const std::string& path) {
  listeners_.push_back(std::make_unique<Listener>(unix_listener(path), path, false, path));
}

void Server::listen_control(const std::string& path) {
  listeners_.push_back(std::make_unique<Listener>(unix_listener(path), path, true, path));
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
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
      err = strerror(errno);
      ::close(fd);
      continue;
    }
    char h[INET6_ADDRSTRLEN] = "";
    getnameinfo(ai->ai_addr, ai->ai_addrlen, h, sizeof h, nullptr, 0, NI_NUMERICHOST);
    listeners_.push_back(
        std::make_unique<Listener>(fd, std::string(h) + ":" + std::to_string(port), false, ""));
    ++bound;
  }
  freeaddrinfo(res);
  if (!bound) throw std::runtime_error("cannot listen on " + host + ":" + service + ": " + err);
}

Task<void> Server::add_export(ExportConfig config) {
  if (config.name.size() > 4096) throw std::runtime_error("export name too long");
  if (exports_.count(config.name))
    throw std::runtime_error("export '" + config.name + "' already exists");
  block::OpenOptions o;
  o.format = config.format;
  o.read_only = config.read_only;
  o.l2_cache_bytes = config.l2_cache_bytes;
  auto e = std::make_unique<Export>();
  // Exports are spread over the reactors, the extra threads first.
  e->home = reactors_[(1 + next_home_++) % reactors_.size()];
  std::exception_ptr error;
  co_await e->home->schedule();
  try {
    e->device = co_await block::open_image(*e->home, config.path, o);
  } catch (...) {
    error = std::current_exception();
  }
  co_await reactor_.schedule();
  if (error) std::rethrow_exception(error);
  if (config.format.empty()) config.format = e->device->format();
  e->config = std::move(config);
  logf(LogLevel::kInfo, "export '%s': %s (%s, %llu bytes%s)", e->config.name.c_str(),
       e->config.path.c_str(), e->config.format.c_str(), (unsigned long long)e->device->size(),
       e->config.read_only ? ", read-only" : "");
  std::string name = e->config.name;
  exports_.emplace(std::move(name), std::move(e));
  save_state();
}

Export* Server::find_export(const std::string& name) {
  auto it = exports_.find(name);
  return it == exports_.end() || it->second->removing ? nullptr : it->second.get();
}

Task<int> Server::remove_export(const std::string& name) {
  auto it = exports_.find(name);
  if (it == exports_.end() || it->second->removing) co_return -ENOENT;
  Export* e = it->second.get();
  e->removing = true;
  for (Connection* c : connections_)
    if (c->exported() == e) c->shutdown();
  while (std::any_of(connections_.begin(), connections_.end(),
                     [e](Connection* c) { return c->exported() == e; }))
    co_await changed_.wait();
  int rc = co_await close_export(e);
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

void Server::connection_started(Connection* c) { connections_.push_back(c); }

void Server::connection_finished(Connection* c) {
  connections_.remove(c);
  changed_.notify_all();
  if (!options_.persistent && connections_.empty() && clients_seen_ > 0) request_shutdown();
}

Task<void> Server::accept_loop(Listener* l) {
  while (!stopping_) {
    const int lfd = l->fd;
    int fd = co_await reactor_.submit(
        [lfd](io_uring_sqe* s) { io_uring_prep_accept(s, lfd, nullptr, nullptr, SOCK_CLOEXEC); });
    if (stopping_) {
      if (fd >= 0) ::close(fd);
      break;
    }
    if (fd < 0) {
      if (fd == -EINTR || fd == -ECONNABORTED || fd == -EAGAIN) continue;
      if (fd == -EMFILE || fd == -ENFILE || fd == -ENOBUFS || fd == -ENOMEM) {
        logf(LogLevel::kWarn, "accept on %s: %s", l->what.c_str(), strerror(-fd));
        continue;
      }
      logf(LogLevel::kError, "accept on %s: %s", l->what.c_str(), strerror(-fd));
      break;
    }
    if (l->control) {
      reactor_.spawn(control_client(fd));
      continue;
    }
    if (connections_.size() >= options_.max_connections) {
      logf(LogLevel::kWarn, "too many connections, refusing one");
      ::close(fd);
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // fails harmlessly on Unix
    serve_connection(fd);
  }
}

void Server::serve_connection(int fd, block::WaitGroup* done) {
  ++clients_seen_;
  auto* c = new Connection(*this, fd, peer_name(fd));
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
    }(&reactor_, l->fd));
  }
  for (Connection* c : connections_) c->shutdown();
  changed_.notify_all();
}

Task<void> Server::drain_and_close() {
  while (!connections_.empty()) co_await changed_.wait();
  co_await accepters_.wait();
  for (auto& [name, e] : exports_) {
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
  for (auto& l : listeners_) {
    logf(LogLevel::kInfo, "listening on %s%s", l->what.c_str(), l->control ? " (control)" : "");
    reactor_.spawn(accept_loop(l.get()), &accepters_);
  }
  while (!stopping_) co_await changed_.wait();
  co_await drain_and_close();
}

}  // namespace kiln::nbd

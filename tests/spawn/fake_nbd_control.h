// A stand-in for kiln-nbd's control socket (docs/kiln-nbd.md) for spawn's tests: it answers
// add-export, remove-export, list-exports, snapshot, commit (completed at once) and jobs,
// records every request line, and for an
// add-export with "socket" and "owner" makes that socket (listening, 0600, chowned) as the
// per-export sockets of kiln-nbd do — or, as today's kiln-nbd, ignores the two fields.
// One thread; stopped and joined by the destructor.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "perms.h"

namespace kiln::spawn::testing {

class FakeNbdControl {
 public:
  enum class Sockets {
    kMade,     // per-export sockets as the contract says
    kIgnored,  // a kiln-nbd that does not know the fields
    kOpen,     // made, but 0666
  };

  FakeNbdControl(std::string path, Sockets mode = Sockets::kMade)
      : path_(std::move(path)), mode_(mode) {
    listen_fd_ = listen_on(path_, 0600);
    if (::pipe(stop_) != 0) throw std::runtime_error("pipe");
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeNbdControl() {
    char b = 0;
    (void)!::write(stop_[1], &b, 1);
    thread_.join();
    ::close(listen_fd_);
    ::close(stop_[0]);
    ::close(stop_[1]);
    for (auto& [name, e] : exports_)
      if (e.fd >= 0) ::close(e.fd);
    ::unlink(path_.c_str());
  }
  FakeNbdControl(const FakeNbdControl&) = delete;
  FakeNbdControl& operator=(const FakeNbdControl&) = delete;

  const std::string& path() const { return path_; }
  std::vector<nlohmann::json> requests() {
    std::lock_guard<std::mutex> l(mu_);
    return requests_;
  }
  std::vector<nlohmann::json> requests(const std::string& cmd) {
    std::vector<nlohmann::json> out;
    for (auto& r : requests())
      if (r.value("cmd", "") == cmd) out.push_back(r);
    return out;
  }
  size_t export_count() {
    std::lock_guard<std::mutex> l(mu_);
    return exports_.size();
  }

 private:
  struct Export {
    std::string path, socket, backing;
    int fd = -1;
  };

  static int listen_on(const std::string& path, mode_t mode) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (path.size() >= sizeof a.sun_path) throw std::runtime_error("path too long: " + path);
    std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ::unlink(path.c_str());
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::listen(fd, 16) != 0 || ::chmod(path.c_str(), mode) != 0)
      throw std::runtime_error("cannot listen on " + path);
    return fd;
  }

  nlohmann::json handle(const nlohmann::json& req) {
    std::lock_guard<std::mutex> l(mu_);
    requests_.push_back(req);
    const std::string cmd = req.value("cmd", "");
    if (cmd == "list-exports") {
      nlohmann::json list = nlohmann::json::array();
      for (auto& [name, e] : exports_)
        list.push_back({{"name", name}, {"path", e.path}, {"format", "qcow2"}});
      return {{"ok", true}, {"exports", list}};
    }
    const std::string name = req.value("name", "");
    if (cmd == "add-export") {
      if (exports_.count(name)) return {{"ok", false}, {"error", "export exists"}};
      Export e;
      e.path = req.value("path", "");
      if (req.contains("socket") && mode_ != Sockets::kIgnored) {
        e.socket = req["socket"].get<std::string>();
        e.fd = listen_on(e.socket, mode_ == Sockets::kOpen ? 0666 : 0600);
        HostUser owner = parse_host_user(req.value("owner", ""), "owner");
        if (::chown(e.socket.c_str(), owner.uid, owner.gid) != 0)
          return {{"ok", false}, {"error", "chown"}};
      }
      exports_[name] = e;
      return {{"ok", true}};
    }
    if (cmd == "remove-export") {
      auto it = exports_.find(name);
      if (it == exports_.end()) return {{"ok", false}, {"error", "no such export"}};
      if (it->second.fd >= 0) {
        ::close(it->second.fd);
        ::unlink(it->second.socket.c_str());
      }
      exports_.erase(it);
      return {{"ok", true}};
    }
    if (cmd == "snapshot" || cmd == "commit") {
      auto it = exports_.find(name);
      if (it == exports_.end()) return {{"ok", false}, {"error", "no export named '" + name + "'"}};
      if (cmd == "snapshot") {
        it->second.backing = it->second.path;
        it->second.path = req.value("path", "");
      } else {
        // The commit completes at once: the export is on the backing again.
        jobs_[name] = {{"export", name},         {"type", "commit"},
                       {"top", it->second.path}, {"base", it->second.backing},
                       {"done", 65536},          {"total", 65536},
                       {"state", "completed"}};
        it->second.path = it->second.backing;
      }
      return {{"ok", true}};
    }
    if (cmd == "jobs") {
      nlohmann::json list = nlohmann::json::array();
      for (auto& [n, j] : jobs_) list.push_back(j);
      return {{"ok", true}, {"jobs", list}};
    }
    return {{"ok", false}, {"error", "unknown command"}};
  }

  void serve() {
    for (;;) {
      pollfd p[2] = {{listen_fd_, POLLIN, 0}, {stop_[0], POLLIN, 0}};
      if (::poll(p, 2, -1) < 0) continue;
      if (p[1].revents) return;
      int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      std::string line;
      char buf[4096];
      while (line.find('\n') == std::string::npos) {
        ssize_t n = ::read(c, buf, sizeof buf);
        if (n <= 0) break;
        line.append(buf, static_cast<size_t>(n));
      }
      nlohmann::json reply;
      try {
        reply = handle(nlohmann::json::parse(line.substr(0, line.find('\n'))));
      } catch (const std::exception& e) {
        reply = {{"ok", false}, {"error", e.what()}};
      }
      std::string out = reply.dump() + "\n";
      (void)!::write(c, out.data(), out.size());
      ::close(c);
    }
  }

  std::string path_;
  Sockets mode_;
  int listen_fd_ = -1;
  int stop_[2] = {-1, -1};
  std::mutex mu_;
  std::vector<nlohmann::json> requests_;
  std::map<std::string, Export> exports_;
  std::map<std::string, nlohmann::json> jobs_;  // the last commit of each export
  std::thread thread_;
};

}  // namespace kiln::spawn::testing

// The control socket: one JSON request per line, one JSON reply per line.
//   {"cmd":"add-export","name":N,"path":P[,"format":F][,"read-only":B][,"description":D]
//    [,"socket":PATH[,"owner":"USER[:GROUP]"]][,"tls-identity":ID]
//    [,"key-secret-file":PATH]}   (an encrypted image's passphrase, a mode-0600 file)
//   {"cmd":"remove-export","name":N}
//   {"cmd":"list-exports"}
//   {"cmd":"stats"[,"name":N]}
//   {"cmd":"snapshot","name":N,"path":OVERLAY[,"format":"qcow2"][,"options":{"cluster_size":B,
//    "extended_l2":B}]}   (live.cpp)
//   {"cmd":"commit","name":N[,"base":PATH]}, {"cmd":"jobs"}, {"cmd":"cancel-job","name":N}
//    (commit.cpp)
// Replies: {"ok":true,...} or {"ok":false,"error":"...","reason":R}, R a common::Reason name
// ("not-found", "corrupt", ...; docs/common.md). Exports added here are recorded in
// the state file and restored when kiln-nbd starts again. Only root, the server's own user and
// members of --control-group may talk to it (SO_PEERCRED, checked on every connection).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string_view>

#include "commit.h"
#include "kiln/common/error.h"
#include "kiln/common/fd.h"
#include "kiln/nbd/access.h"
#include "kiln/nbd/server.h"
#include "log.h"
#include "socket.h"

namespace kiln::nbd {

using block::Task;
using nlohmann::json;

namespace {

constexpr size_t kMaxControlLine = 64 * 1024;

json stats_json(const Export& e) {
  const ExportStats& s = e.stats;
  return {{"requests", s.requests.load()},
          {"reads", s.reads.load()},
          {"writes", s.writes.load()},
          {"bytes-read", s.bytes_read.load()},
          {"bytes-written", s.bytes_written.load()},
          {"errors", s.errors.load()},
          {"receive-waits", s.receive_waits.load()},
          {"connections", s.connections.load()},
          {"total-connections", s.total_connections.load()}};
}

json export_json(const Export& e) {
  json j = {{"name", e.config.name},
            {"path", e.config.path},
            {"format", e.config.format},
            {"read-only", e.config.read_only},
            {"description", e.config.description},
            {"state", e.device ? "ready" : "failed"},
            {"connections", e.stats.connections.load()}};
  if (e.device)
    j["size"] = e.device->size();
  else
    j["error"] = e.error, j["reason"] = common::reason_name(e.reason);
  if (!e.config.socket.empty()) j["socket"] = e.config.socket;
  if (!e.config.owner.empty()) j["owner"] = e.config.owner;
  if (!e.config.tls_identity.empty()) j["tls-identity"] = e.config.tls_identity;
  if (!e.config.key_secret_file.empty()) j["key-secret-file"] = e.config.key_secret_file;
  return j;
}

// The fields of an export that the state file keeps.
json recorded_json(const ExportConfig& c) {
  json j = {{"name", c.name},
            {"path", c.path},
            {"format", c.format},
            {"read-only", c.read_only},
            {"description", c.description}};
  if (!c.socket.empty()) j["socket"] = c.socket;
  if (!c.owner.empty()) j["owner"] = c.owner;
  if (!c.tls_identity.empty()) j["tls-identity"] = c.tls_identity;
  if (!c.key_secret_file.empty()) j["key-secret-file"] = c.key_secret_file;
  return j;
}

ExportConfig config_from_json(const json& j) {
  ExportConfig c;
  c.name = j.at("name").get<std::string>();
  c.path = j.at("path").get<std::string>();
  c.format = j.value("format", "");
  c.read_only = j.value("read-only", false);
  c.description = j.value("description", "");
  c.socket = j.value("socket", "");
  c.owner = j.value("owner", "");
  c.tls_identity = j.value("tls-identity", "");
  c.key_secret_file = j.value("key-secret-file", "");
  c.persistent = true;
  return c;
}

// Makes the directories above `path` that do not exist yet, 0700 whatever the umask.
void make_private_parents(const std::string& path) {
  for (size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    const std::string dir = path.substr(0, slash);
    if (mkdir(dir.c_str(), 0700) == 0)
      chmod(dir.c_str(), 0700);
    else if (errno != EEXIST)
      return;  // writing the state file reports the error
  }
}

using common::Reason;

json error(const std::string& msg, Reason reason) {
  return {{"ok", false}, {"error", msg}, {"reason", common::reason_name(reason)}};
}

// The reason of an exception thrown while serving a request: errors of the block layer and
// of the server are common::Errors; anything else is a failure of the system.
Reason reason_of(const std::exception& e) {
  if (auto* c = dynamic_cast<const common::Error*>(&e)) return c->reason();
  return Reason::kIo;
}

}  // namespace

Task<std::string> Server::control(const std::string& line) {
  json req;
  try {
    req = json::parse(line);
  } catch (const std::exception& e) {
    co_return error(std::string("invalid JSON: ") + e.what(), Reason::kInvalidArgument).dump();
  }
  if (!req.is_object() || !req.contains("cmd") || !req["cmd"].is_string())
    co_return error("a request is an object with a \"cmd\"", Reason::kInvalidArgument).dump();
  const std::string cmd = req["cmd"];
  try {
    if ((cmd == "add-export" || cmd == "remove-export" || cmd == "snapshot" || cmd == "commit") &&
        stopping_)
      co_return error("the server is shutting down", Reason::kBusy).dump();
    if (cmd == "add-export") {
      co_await add_export(config_from_json(req));
      co_return json{{"ok", true}}.dump();
    }
    if (cmd == "remove-export") {
      const std::string name = req.at("name").get<std::string>();
      int rc = co_await remove_export(name);
      if (rc == -ENOENT)
        co_return error("no export named '" + name + "'", Reason::kNotFound).dump();
      if (rc < 0)
        co_return error(std::string("closing the image: ") + strerror(-rc), Reason::kIo).dump();
      co_return json{{"ok", true}}.dump();
    }
    if (cmd == "list-exports") {
      json list = json::array();
      for (const auto& [name, e] : exports_)
        if (!e->removing) list.push_back(export_json(*e));
      co_return json{{"ok", true}, {"exports", list}}.dump();
    }
    if (cmd == "snapshot") {
      const std::string name = req.at("name").get<std::string>();
      const std::string path = req.at("path").get<std::string>();
      if (req.value("format", "qcow2") != "qcow2")
        co_return error("a live snapshot's overlay is qcow2", Reason::kInvalidArgument).dump();
      SnapshotOptions so;
      if (req.contains("options")) {
        const json& o = req["options"];
        if (!o.is_object())
          co_return error("\"options\" is an object", Reason::kInvalidArgument).dump();
        for (const auto& [k, v] : o.items())
          if (k != "cluster_size" && k != "extended_l2")
            co_return error("unknown snapshot option '" + k + "'", Reason::kInvalidArgument).dump();
        so.cluster_size = o.value("cluster_size", 0u);
        so.extended_l2 = o.value("extended_l2", false);
      }
      co_await snapshot_export(name, path, so);
      co_return json{{"ok", true}}.dump();
    }
    if (cmd == "commit") {
      const std::string name = req.at("name").get<std::string>();
      co_await start_commit(name, req.value("base", ""));
      co_return json{{"ok", true}}.dump();
    }
    if (cmd == "jobs") {
      json list = json::array();
      for (const auto& [name, e] : exports_) {
        if (!e->job || e->removing) continue;
        CommitJob& j = *e->job;
        const int state = j.state.load();
        json o = {{"export", name},
                  {"type", "commit"},
                  {"top", j.top},
                  {"base", j.base},
                  {"done", j.done.load()},
                  {"total", j.total.load()},
                  {"state", CommitJob::state_name(state)}};
        if (state == CommitJob::kFailed) {
          std::lock_guard<std::mutex> g(j.mu);
          o["error"] = j.error;
        }
        list.push_back(o);
      }
      co_return json{{"ok", true}, {"jobs", list}}.dump();
    }
    if (cmd == "cancel-job") {
      const std::string name = req.at("name").get<std::string>();
      if (!cancel_commit(name))
        co_return error("export '" + name + "' has no running job", Reason::kNotFound).dump();
      co_return json{{"ok", true}}.dump();
    }
    if (cmd == "stats") {
      json out = json::object();
      if (req.contains("name")) {
        Export* e = find_export(req["name"].get<std::string>());
        if (!e) co_return error("no such export", Reason::kNotFound).dump();
        out[e->config.name] = stats_json(*e);
      } else {
        for (const auto& [name, e] : exports_) out[name] = stats_json(*e);
      }
      co_return json{{"ok", true}, {"stats", out}}.dump();
    }
  } catch (const json::exception& e) {
    co_return error(std::string("bad request: ") + e.what(), Reason::kInvalidArgument).dump();
  } catch (const std::exception& e) {
    co_return error(e.what(), reason_of(e)).dump();
  }
  co_return error("unknown command '" + cmd + "'", Reason::kInvalidArgument).dump();
}

Task<void> Server::control_client(int fd) {
  Socket sock(reactor_, common::Fd(fd));
  if (stopping_) co_return;
  // Known to request_shutdown() while it runs (the guard goes before the socket closes).
  struct Registered {
    std::set<int>& fds;
    int fd;
    ~Registered() { fds.erase(fd); }
  } registered{control_fds_, fd};
  control_fds_.insert(fd);
  std::string who;
  if (!control_peer_allowed(fd, options_.control_access.gid, &who)) {
    logf(LogLevel::kWarn, "control connection from %s refused", who.c_str());
    const std::string reply =
        error("permission denied: " + who + " may not use the control socket", Reason::kPermission)
            .dump() +
        "\n";
    co_await sock.write_all(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(reply.data()), reply.size()));
    co_return;
  }
  std::string line;
  for (;;) {
    const int rc = co_await sock.read_line(line, kMaxControlLine);
    if (rc == -EMSGSIZE) {
      static constexpr std::string_view kTooLong =
          "{\"ok\":false,\"error\":\"request too long\",\"reason\":\"invalid-argument\"}\n";
      co_await sock.write_all(std::span<const uint8_t>(
          reinterpret_cast<const uint8_t*>(kTooLong.data()), kTooLong.size()));
      break;
    }
    if (rc < 0) break;
    std::string reply = co_await control(line) + "\n";
    if (co_await sock.write_all(std::span<const uint8_t>(
            reinterpret_cast<const uint8_t*>(reply.data()), reply.size())) < 0)
      break;
  }
}

Task<void> Server::restore_exports(std::vector<ExportConfig> recorded) {
  for (auto& c : recorded) {
    std::string error;
    Reason reason = Reason::kIo;
    try {
      co_await add_export(c);
    } catch (const std::exception& e) {
      error = e.what();
      reason = reason_of(e);
    }
    if (!error.empty()) add_failed_export(std::move(c), std::move(error), reason);
  }
  state_restored_ = true;
  save_state();
}

bool Server::save_state() {
  if (options_.state_file.empty() || !state_restored_) return true;
  json list = json::array();
  for (const auto& [name, e] : exports_) {
    // Failed exports stay recorded: the image may come back; remove-export forgets them.
    if (!e->config.persistent || e->removing) continue;
    list.push_back(recorded_json(e->config));
  }
  make_private_parents(options_.state_file);
  const std::string tmp = options_.state_file + ".tmp";
  const std::string data = json{{"exports", list}}.dump(2) + "\n";
  common::Fd file(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  const int fd = file.get();
  if (fd < 0 || write(fd, data.data(), data.size()) != ssize_t(data.size()) || fsync(fd) < 0 ||
      rename(tmp.c_str(), options_.state_file.c_str()) < 0) {
    logf(LogLevel::kError, "cannot write the state file %s: %s", options_.state_file.c_str(),
         strerror(errno));
    return false;
  }
  return true;
}

std::vector<ExportConfig> load_state(const std::string& path) {
  std::vector<ExportConfig> out;
  FILE* f = fopen(path.c_str(), "re");
  if (!f) return out;  // no state yet
  std::string text;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
  fclose(f);
  json j = json::parse(text);  // throws on a damaged file: better than silently losing exports
  for (const auto& e : j.at("exports")) out.push_back(config_from_json(e));
  return out;
}

}  // namespace kiln::nbd

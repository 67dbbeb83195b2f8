// The control socket: one JSON request per line, one JSON reply per line.
//   {"cmd":"add-export","name":N,"path":P[,"format":F][,"read-only":B][,"description":D]}
//   {"cmd":"remove-export","name":N}
//   {"cmd":"list-exports"}
//   {"cmd":"stats"[,"name":N]}
// Replies: {"ok":true,...} or {"ok":false,"error":"..."}. Exports added here are recorded in
// the state file and restored when kiln-nbd starts again.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string_view>

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
          {"connections", s.connections.load()},
          {"total-connections", s.total_connections.load()}};
}

json export_json(const Export& e) {
  return {{"name", e.config.name},
          {"path", e.config.path},
          {"format", e.config.format},
          {"read-only", e.config.read_only},
          {"description", e.config.description},
          {"size", e.device->size()},
          {"connections", e.stats.connections.load()}};
}

json error(const std::string& msg) { return {{"ok", false}, {"error", msg}}; }

}  // namespace

Task<std::string> Server::control(const std::string& line) {
  json req;
  try {
    req = json::parse(line);
  } catch (const std::exception& e) {
    co_return error(std::string("invalid JSON: ") + e.what()).dump();
  }
  if (!req.is_object() || !req.contains("cmd") || !req["cmd"].is_string())
    co_return error("a request is an object with a \"cmd\"").dump();
  const std::string cmd = req["cmd"];
  try {
    if (cmd == "add-export") {
      ExportConfig c;
      c.name = req.at("name").get<std::string>();
      c.path = req.at("path").get<std::string>();
      c.format = req.value("format", "");
      c.read_only = req.value("read-only", false);
      c.description = req.value("description", "");
      c.persistent = true;
      co_await add_export(std::move(c));
      co_return json{{"ok", true}}.dump();
    }
    if (cmd == "remove-export") {
      const std::string name = req.at("name").get<std::string>();
      int rc = co_await remove_export(name);
      if (rc == -ENOENT) co_return error("no export named '" + name + "'").dump();
      if (rc < 0) co_return error(std::string("closing the image: ") + strerror(-rc)).dump();
      co_return json{{"ok", true}}.dump();
    }
    if (cmd == "list-exports") {
      json list = json::array();
      for (const auto& [name, e] : exports_)
        if (!e->removing) list.push_back(export_json(*e));
      co_return json{{"ok", true}, {"exports", list}}.dump();
    }
    if (cmd == "stats") {
      json out = json::object();
      if (req.contains("name")) {
        Export* e = find_export(req["name"].get<std::string>());
        if (!e) co_return error("no such export").dump();
        out[e->config.name] = stats_json(*e);
      } else {
        for (const auto& [name, e] : exports_) out[name] = stats_json(*e);
      }
      co_return json{{"ok", true}, {"stats", out}}.dump();
    }
  } catch (const json::exception& e) {
    co_return error(std::string("bad request: ") + e.what()).dump();
  } catch (const std::exception& e) {
    co_return error(e.what()).dump();
  }
  co_return error("unknown command '" + cmd + "'").dump();
}

Task<void> Server::control_client(int fd) {
  Socket sock(reactor_, fd);
  std::string line;
  for (;;) {
    const int rc = co_await sock.read_line(line, kMaxControlLine);
    if (rc == -EMSGSIZE) {
      static constexpr std::string_view kTooLong =
          "{\"ok\":false,\"error\":\"request too long\"}\n";
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

void Server::save_state() {
  if (options_.state_file.empty()) return;
  json list = json::array();
  for (const auto& [name, e] : exports_) {
    if (!e->config.persistent || e->removing) continue;
    list.push_back({{"name", e->config.name},
                    {"path", e->config.path},
                    {"format", e->config.format},
                    {"read-only", e->config.read_only},
                    {"description", e->config.description}});
  }
  const std::string tmp = options_.state_file + ".tmp";
  const std::string data = json{{"exports", list}}.dump(2) + "\n";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || write(fd, data.data(), data.size()) != ssize_t(data.size()) || fsync(fd) < 0 ||
      rename(tmp.c_str(), options_.state_file.c_str()) < 0) {
    logf(LogLevel::kError, "cannot write the state file %s: %s", options_.state_file.c_str(),
         strerror(errno));
  }
  if (fd >= 0) close(fd);
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
  for (const auto& e : j.at("exports")) {
    ExportConfig c;
    c.name = e.at("name").get<std::string>();
    c.path = e.at("path").get<std::string>();
    c.format = e.value("format", "");
    c.read_only = e.value("read-only", false);
    c.description = e.value("description", "");
    c.persistent = true;
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace kiln::nbd

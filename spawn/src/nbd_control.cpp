#include "kiln/spawn/nbd_control.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>

#include "kiln/spawn/error.h"
#include "util.h"

namespace kiln::spawn {

using json = nlohmann::json;

namespace {

constexpr size_t kMaxReply = 16u << 20;

}  // namespace

std::string NbdControl::call(const std::string& request) {
  const std::string where = "kiln-nbd control socket " + path_;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path_.size() >= sizeof addr.sun_path) throw invalid(where + ": path too long");
  std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) throw errno_error("socket", errno);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    throw errno_error("cannot connect to " + where + " (is kiln-nbd --control running?)", errno);
  std::string line = request + "\n";
  size_t sent = 0;
  while (sent < line.size()) {
    ssize_t n = ::send(fd.get(), line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw errno_error("cannot write to " + where, errno);
    }
    sent += static_cast<size_t>(n);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms_);
  std::string reply;
  char buf[65536];
  for (;;) {
    size_t nl = reply.find('\n');
    if (nl != std::string::npos) return reply.substr(0, nl);
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    if (left <= 0)
      throw system_error(where + ": no reply within " + std::to_string(timeout_ms_ / 1000) + " s");
    pollfd p{fd.get(), POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(left));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw errno_error("poll", errno);
    }
    if (r == 0) continue;
    ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw errno_error("cannot read from " + where, errno);
    }
    if (n == 0) throw system_error(where + " closed the connection without a reply");
    reply.append(buf, static_cast<size_t>(n));
    if (reply.size() > kMaxReply) throw system_error(where + ": reply too long");
  }
}

namespace {

json parse_reply(const std::string& line, const std::string& what) {
  json r = json::parse(line, nullptr, false);
  if (r.is_discarded() || !r.is_object() || !r.contains("ok"))
    throw system_error("kiln-nbd: malformed reply to " + what);
  return r;
}

std::string reply_error(const json& r) {
  return r.contains("error") && r["error"].is_string() ? r["error"].get<std::string>()
                                                       : "unknown error";
}

}  // namespace

std::string NbdControl::add_export_request(const std::string& name, const std::string& path,
                                           const std::string& format, const ExportSocket* socket,
                                           const std::string& tls_identity,
                                           const std::string& key_secret_file) {
  json req = {{"cmd", "add-export"}, {"name", name}, {"path", path}, {"format", format}};
  if (socket) {
    req["socket"] = socket->path;
    req["owner"] = socket->owner;
  }
  if (!tls_identity.empty()) req["tls-identity"] = tls_identity;
  if (!key_secret_file.empty()) req["key-secret-file"] = key_secret_file;
  return req.dump();
}

void NbdControl::add_export(const std::string& name, const std::string& path,
                            const std::string& format, const ExportSocket* socket,
                            const std::string& tls_identity, const std::string& key_secret_file) {
  json r = parse_reply(
      call(add_export_request(name, path, format, socket, tls_identity, key_secret_file)),
      "add-export");
  if (r["ok"] != true)
    throw system_error("kiln-nbd: cannot add export " + name + ": " + reply_error(r));
}

bool NbdControl::remove_export(const std::string& name) {
  if (!has_export(name)) return false;
  json req = {{"cmd", "remove-export"}, {"name", name}};
  json r = parse_reply(call(req.dump()), "remove-export");
  if (r["ok"] != true) {
    if (!has_export(name)) return false;  // removed meanwhile
    throw system_error("kiln-nbd: cannot remove export " + name + ": " + reply_error(r));
  }
  return true;
}

std::vector<NbdExport> NbdControl::list_exports() {
  json r = parse_reply(call(R"({"cmd":"list-exports"})"), "list-exports");
  if (r["ok"] != true) throw system_error("kiln-nbd: list-exports: " + reply_error(r));
  std::vector<NbdExport> out;
  for (const auto& e : r.value("exports", json::array())) {
    NbdExport x;
    x.name = e.value("name", "");
    x.path = e.value("path", "");
    x.format = e.value("format", "");
    x.read_only = e.value("read-only", false);
    x.connections = e.value("connections", 0);
    x.tls_identity = e.value("tls-identity", "");
    out.push_back(std::move(x));
  }
  return out;
}

void NbdControl::snapshot(const std::string& name, const std::string& overlay) {
  json req = {{"cmd", "snapshot"}, {"name", name}, {"path", overlay}};
  json r = parse_reply(call(req.dump()), "snapshot");
  if (r["ok"] != true)
    throw system_error("kiln-nbd: cannot snapshot export " + name + ": " + reply_error(r));
}

void NbdControl::commit(const std::string& name, const std::string& base) {
  json req = {{"cmd", "commit"}, {"name", name}};
  if (!base.empty()) req["base"] = base;
  json r = parse_reply(call(req.dump()), "commit");
  if (r["ok"] != true)
    throw system_error("kiln-nbd: cannot commit export " + name + ": " + reply_error(r));
}

NbdJob NbdControl::job(const std::string& name) {
  json r = parse_reply(call(R"({"cmd":"jobs"})"), "jobs");
  if (r["ok"] != true) throw system_error("kiln-nbd: jobs: " + reply_error(r));
  NbdJob out;
  for (const auto& j : r.value("jobs", json::array())) {
    if (!j.is_object() || j.value("export", "") != name) continue;
    out.export_name = name;
    out.top = j.value("top", "");
    out.base = j.value("base", "");
    out.state = j.value("state", "");
    out.done = j.value("done", uint64_t{0});
    out.total = j.value("total", uint64_t{0});
    out.error = j.value("error", "");
  }
  return out;
}

void NbdControl::cancel_job(const std::string& name) {
  json req = {{"cmd", "cancel-job"}, {"name", name}};
  json r = parse_reply(call(req.dump()), "cancel-job");
  if (r["ok"] != true)
    throw system_error("kiln-nbd: cannot cancel the job of export " + name + ": " + reply_error(r));
}

bool NbdControl::has_export(const std::string& name) {
  for (const auto& e : list_exports())
    if (e.name == name) return true;
  return false;
}

}  // namespace kiln::spawn

#include "plumb/metadata_proxy.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "kiln/net/error.h"
#include "plumb/daemon.h"
#include "plumb/netns.h"

namespace kiln::net {

namespace {

std::vector<std::string> argv_for(const MetadataProxyConfig& c) {
  std::string id =
      c.router_id.empty() ? "--network-id=" + c.network_id : "--router-id=" + c.router_id;
  return {c.binary, "--listen=" + std::string(kMetadataIp) + ":80", "--socket=" + c.socket, id,
          "--pid-file=" + c.dir + "/pid"};
}

// The proxy does not go to the background itself: run_in_netns detaches it, its output in
// the log file.
void start(const MetadataProxyConfig& c, const std::vector<std::string>& args) {
  std::string log = c.dir + "/log";
  ::unlink((c.dir + "/pid").c_str());
  run_in_netns(c.netns_path, args, log);
  // The proxy writes its pid file once it listens; it exits at once if it cannot.
  std::string pid_file = c.dir + "/pid";
  for (int i = 0; i < 500 && !daemon_pid(pid_file); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  if (!daemon_pid(pid_file)) {
    std::string text = read_small_file(log);
    if (text.size() > 400) text = text.substr(text.size() - 400);
    throw system_error("metadata proxy " + c.binary + " did not start in " + c.netns_path +
                       (text.empty() ? "" : ": " + text));
  }
}

}  // namespace

void ensure_metadata_proxy(const MetadataProxyConfig& c, std::vector<std::string>& changes) {
  std::filesystem::create_directories(c.dir);
  ::chmod(c.dir.c_str(), 0700);
  auto args = argv_for(c);
  std::string want, have;
  for (auto& a : args) want += a + '\0';
  pid_t pid = daemon_pid(c.dir + "/pid", &have);
  if (pid && have == want) return;
  if (pid) stop_daemon(pid);
  start(c, args);
  changes.push_back((pid ? "restarted" : "started") + std::string(" metadata proxy in ") +
                    c.netns_path);
}

void stop_metadata_proxy(const std::string& dir) {
  if (pid_t pid = daemon_pid(dir + "/pid")) stop_daemon(pid);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

}  // namespace kiln::net

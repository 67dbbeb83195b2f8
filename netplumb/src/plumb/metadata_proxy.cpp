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
  return {c.binary, "--listen=" + std::string(kMetadataIp) + ":80", "--socket=" + c.socket,
          "--network-id=" + c.network_id, "--pid-file=" + c.dir + "/pid"};
}

// Double fork: the proxy is nobody's child (no zombie in a long-lived kiln-spawn), in its own
// session, inside the namespace, its output in the log file.
void start(const MetadataProxyConfig& c, const std::vector<std::string>& args) {
  Fd ns = open_netns(c.netns_path);
  std::string log = c.dir + "/log";
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  ::unlink((c.dir + "/pid").c_str());
  pid_t child = ::fork();
  if (child < 0) throw system_error(std::string("fork: ") + std::strerror(errno));
  if (child == 0) {
    ::setsid();
    if (::fork() != 0) _exit(0);
    if (::setns(ns.get(), CLONE_NEWNET) < 0) _exit(126);
    int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (null < 0 || out < 0) _exit(126);
    ::dup2(null, 0);
    ::dup2(out, 1);
    ::dup2(out, 2);
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
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

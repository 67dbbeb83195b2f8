#include "plumb/dnsmasq.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "kiln/net/error.h"
#include "plumb/daemon.h"
#include "plumb/netns.h"

namespace kiln::net {
namespace {

// Replaces the file atomically; returns true if its contents changed.
bool write_file(const std::string& path, const std::string& data) {
  if (std::filesystem::exists(path) && read_small_file(path) == data) return false;
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << data;
    if (!f) throw system_error("write " + tmp + " failed");
  }
  ::chmod(tmp.c_str(), 0644);
  if (::rename(tmp.c_str(), path.c_str()) < 0)
    throw system_error("rename " + tmp + ": " + std::strerror(errno));
  return true;
}

std::vector<std::string> argv_for(const DnsmasqConfig& c) {
  std::vector<std::string> a = {c.binary,
                                "--conf-file=/dev/null",
                                "--no-hosts",
                                "--no-resolv",
                                "--port=0",
                                "--bind-interfaces",
                                "--interface=" + c.interface,
                                "--except-interface=lo",
                                "--pid-file=" + c.dir + "/pid",
                                "--dhcp-hostsfile=" + c.dir + "/host",
                                "--dhcp-optsfile=" + c.dir + "/opts",
                                "--leasefile-ro",
                                "--dhcp-authoritative",
                                "--log-facility=" + c.dir + "/log"};
  for (auto& r : c.ranges) a.push_back("--dhcp-range=" + r);
  return a;
}

// The pid of the dnsmasq that owns `dir`, or 0.
pid_t running_pid(const std::string& dir, std::string* cmdline = nullptr) {
  return daemon_pid(dir + "/pid", cmdline);
}

void start(const DnsmasqConfig& c, const std::vector<std::string>& args) {
  ::unlink((c.dir + "/pid").c_str());
  // dnsmasq forks into the background; its first process exits once it is set up (or failed).
  const int status = run_in_netns(c.netns_path, args);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::string log = read_small_file(c.dir + "/log");
    if (log.size() > 400) log = log.substr(log.size() - 400);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    throw system_error("dnsmasq failed to start (exit " + std::to_string(code) + ")" +
                       (code == 127 ? ": cannot run " + c.binary : "") +
                       (log.empty() ? "" : ": " + log));
  }
  for (int i = 0; i < 200 && !running_pid(c.dir); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  if (!running_pid(c.dir)) throw system_error("dnsmasq started but wrote no pid file");
}

}  // namespace

void ensure_dnsmasq(const DnsmasqConfig& c, std::vector<std::string>& changes) {
  std::filesystem::create_directories(c.dir);
  ::chmod(c.dir.c_str(), 0755);  // dnsmasq rereads the files after dropping privileges
  bool files_changed = write_file(c.dir + "/host", c.hosts);
  files_changed |= write_file(c.dir + "/opts", c.opts);
  auto args = argv_for(c);
  std::string want;
  for (auto& a : args) want += a + '\0';
  std::string have;
  pid_t pid = running_pid(c.dir, &have);
  if (pid && have == want) {
    if (files_changed) {
      ::kill(pid, SIGHUP);
      changes.push_back("reloaded dnsmasq " + std::to_string(pid) + " in " + c.netns_path);
    }
    return;
  }
  if (pid) stop_daemon(pid);
  start(c, args);
  changes.push_back((pid ? "restarted" : "started") + std::string(" dnsmasq in ") + c.netns_path);
}

bool dnsmasq_current(const DnsmasqConfig& c) {
  std::string want, have;
  for (auto& a : argv_for(c)) want += a + '\0';
  return running_pid(c.dir, &have) && have == want;
}

void stop_dnsmasq(const std::string& dir) {
  if (pid_t pid = running_pid(dir)) stop_daemon(pid);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

}  // namespace kiln::net

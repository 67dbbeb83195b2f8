#include "plumb/daemon.h"

#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

namespace kiln::net {

namespace {

bool is_zombie(pid_t pid) {
  std::string stat = read_small_file("/proc/" + std::to_string(pid) + "/stat");
  auto close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] == 'Z';
}

}  // namespace

std::string read_small_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

pid_t daemon_pid(const std::string& pid_file, std::string* cmdline) {
  pid_t pid = static_cast<pid_t>(std::atol(read_small_file(pid_file).c_str()));
  if (pid <= 0) return 0;
  std::string cl = read_small_file("/proc/" + std::to_string(pid) + "/cmdline");
  if (cl.find("--pid-file=" + pid_file) == std::string::npos) return 0;
  if (is_zombie(pid)) return 0;
  if (cmdline) *cmdline = cl;
  return pid;
}

void stop_daemon(pid_t pid) {
  ::kill(pid, SIGTERM);
  for (int i = 0; i < 300; ++i) {  // up to 3 s
    if (::kill(pid, 0) < 0) return;
    if (read_small_file("/proc/" + std::to_string(pid) + "/stat").empty() || is_zombie(pid)) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid, SIGKILL);
}

}  // namespace kiln::net

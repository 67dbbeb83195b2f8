#include "plumb/daemon.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "kiln/net/error.h"
#include "plumb/netns.h"

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

int run_in_netns(const std::string& netns_path, const std::vector<std::string>& args,
                 const std::string& log) {
  Fd ns = open_netns(netns_path);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t child = ::fork();
  if (child < 0) throw system_error(std::string("fork: ") + std::strerror(errno));
  if (child == 0) {
    if (!log.empty()) {
      ::setsid();
      if (::fork() != 0) _exit(0);
    }
    if (::setns(ns.get(), CLONE_NEWNET) < 0) _exit(126);
    if (!log.empty()) {
      int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
      if (null < 0 || out < 0) _exit(126);
      ::dup2(null, 0);
      ::dup2(out, 1);
      ::dup2(out, 2);
    }
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

}  // namespace kiln::net

#include "plumb/netns.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "kiln/net/error.h"

namespace kiln::net {

Fd open_netns(const std::string& path_or_name) {
  std::string path =
      path_or_name.find('/') == std::string::npos ? "/run/netns/" + path_or_name : path_or_name;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw system_error("open network namespace " + path + ": " + std::strerror(errno));
  return Fd(fd);
}

NetnsGuard::NetnsGuard(int netns_fd) {
  int self = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (self < 0) throw system_error(std::string("open own namespace: ") + std::strerror(errno));
  saved_ = Fd(self);
  if (::setns(netns_fd, CLONE_NEWNET) < 0)
    throw system_error(std::string("enter network namespace: ") + std::strerror(errno));
}

NetnsGuard::~NetnsGuard() {
  // Failing to come back would leave the process plumbing the wrong namespace.
  if (::setns(saved_.get(), CLONE_NEWNET) < 0) std::abort();
}

bool is_netns_file(const std::string& path) {
  struct statfs st {};
  return ::statfs(path.c_str(), &st) == 0 && st.f_type == static_cast<long>(NSFS_MAGIC);
}

void create_named_netns(const std::string& path) {
  if (is_netns_file(path)) return;
  int fd = ::open(path.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC, 0444);
  if (fd < 0) throw system_error("create " + path + ": " + std::strerror(errno));
  ::close(fd);
  int self = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (self < 0) throw system_error(std::string("open own namespace: ") + std::strerror(errno));
  Fd saved(self);
  if (::unshare(CLONE_NEWNET) < 0) {
    int e = errno;
    ::unlink(path.c_str());
    throw system_error(std::string("new network namespace: ") + std::strerror(e));
  }
  int rc = ::mount("/proc/thread-self/ns/net", path.c_str(), "none", MS_BIND, nullptr);
  int e = errno;
  if (::setns(saved.get(), CLONE_NEWNET) < 0) std::abort();
  if (rc < 0) {
    ::unlink(path.c_str());
    throw system_error("bind network namespace to " + path + ": " + std::strerror(e));
  }
}

void delete_named_netns(const std::string& path) {
  if (is_netns_file(path) && ::umount2(path.c_str(), MNT_DETACH) < 0)
    throw system_error("unmount " + path + ": " + std::strerror(errno));
  if (::unlink(path.c_str()) < 0 && errno != ENOENT)
    throw system_error("remove " + path + ": " + std::strerror(errno));
}

void write_sysctl(const std::string& key, const std::string& value) {
  std::string path = "/proc/sys/" + key;
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) throw system_error("open " + path + ": " + std::strerror(errno));
  ssize_t n = ::write(fd, value.data(), value.size());
  int e = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(value.size()))
    throw system_error("write " + path + ": " + std::strerror(e));
}

}  // namespace kiln::net

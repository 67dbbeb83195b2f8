#include "allowed_dirs.h"

#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>

#include "kiln/block/device.h"

namespace kiln::block {

namespace {

std::string real_path(const std::string& path) {
  char buf[PATH_MAX];
  if (!realpath(path.c_str(), buf)) return {};
  return buf;
}

bool under_allowed(const std::string& real, const std::vector<std::string>& dirs) {
  if (real.empty() || real[0] != '/') return false;
  for (const std::string& d : dirs) {
    const std::string dir = real_path(d);
    if (dir.empty()) continue;
    if (dir == "/" || real == dir ||
        (real.size() > dir.size() && real.compare(0, dir.size(), dir) == 0 &&
         real[dir.size()] == '/'))
      return true;
  }
  return false;
}

[[noreturn]] void refuse(const std::string& path) {
  throw Error(EACCES, path + ": outside the allowed directories (--allow-dir)");
}

}  // namespace

void check_allowed_path(const std::string& path, const std::vector<std::string>& dirs) {
  if (dirs.empty()) return;
  const std::string real = real_path(path);
  // A path that does not resolve is left to open() to report (it fails the same way).
  if (real.empty()) {
    if (errno == ENOENT || errno == ENOTDIR) return;
    refuse(path);
  }
  if (!under_allowed(real, dirs)) refuse(path);
}

void check_allowed_fd(int fd, const std::string& path, const std::vector<std::string>& dirs) {
  if (dirs.empty()) return;
  // The kernel's name for what was really opened, whatever the path went through.
  const std::string link = "/proc/self/fd/" + std::to_string(fd);
  char buf[PATH_MAX];
  const ssize_t n = readlink(link.c_str(), buf, sizeof buf - 1);
  if (n <= 0) refuse(path);
  if (!under_allowed(std::string(buf, size_t(n)), dirs)) refuse(path);
}

}  // namespace kiln::block

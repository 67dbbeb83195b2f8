#include "mount_table.h"

#include <fcntl.h>
#include <unistd.h>

#include <sstream>

namespace kiln::fs::fuse_detail {

namespace {

// Fields 3 and 5 of a mountinfo line: "36 35 0:45 / /mnt/vm1 rw,... - fuse.kiln-fs ...".
bool parse_line(const std::string& line, std::string& device, std::string& point) {
  std::istringstream in(line);
  std::string id, parent, root;
  return static_cast<bool>(in >> id >> parent >> device >> root >> point);
}

}  // namespace

MountWatch::MountWatch(const std::string& resolved_mountpoint) {
  fd_.reset(::open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC));
  if (!fd_) return;
  std::istringstream table(read_table());
  std::string line, device, point;
  while (std::getline(table, line)) {
    // Paths with spaces are escaped (\040) in mountinfo and are not matched: no watch then.
    if (parse_line(line, device, point) && point == resolved_mountpoint) device_ = device;
  }
  if (device_.empty()) fd_.reset();
}

std::string MountWatch::read_table() {
  std::string table;
  if (::lseek(fd_.get(), 0, SEEK_SET) < 0) return table;
  char buf[8192];
  ssize_t n;
  while ((n = ::read(fd_.get(), buf, sizeof buf)) > 0) table.append(buf, static_cast<size_t>(n));
  return table;
}

bool MountWatch::still_mounted() {
  if (!fd_) return true;
  std::istringstream table(read_table());
  std::string line, device, point;
  while (std::getline(table, line)) {
    if (parse_line(line, device, point) && device == device_) return true;
  }
  return false;
}

bool MountWatch::is_mount_point(const std::string& path) {
  if (!fd_) return true;
  std::istringstream table(read_table());
  std::string line, device, point;
  while (std::getline(table, line)) {
    if (parse_line(line, device, point) && point == path) return true;
  }
  return false;
}

}  // namespace kiln::fs::fuse_detail

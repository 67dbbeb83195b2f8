// This process's view of the mount: its device in /proc/self/mountinfo, and whether it is
// still mounted. The kernel ends a FUSE session only when the last mount of the superblock is
// gone; a mount namespace created while the filesystem was mounted (ip netns, unshare -m)
// holds a copy that an unmount here does not remove, so the daemon watches its own mount table
// too and ends when the filesystem has left it.
#pragma once

#include <string>

#include "kiln/common/fd.h"

namespace kiln::fs::fuse_detail {

class MountWatch {
 public:
  // Looks up the newest mount at RESOLVED_MOUNTPOINT (an absolute path without symlinks).
  explicit MountWatch(const std::string& resolved_mountpoint);
  MountWatch(const MountWatch&) = delete;
  MountWatch& operator=(const MountWatch&) = delete;

  bool found() const { return !device_.empty(); }
  const std::string& device() const { return device_; }  // "major:minor" of the FUSE superblock
  // Polled with POLLPRI: the mount table changed. -1 when not found.
  int fd() const { return fd_.get(); }
  // Re-reads the table (re-arming the change event); false once no mount of the device is left.
  bool still_mounted();
  // Whether anything is mounted at PATH now.
  bool is_mount_point(const std::string& path);

 private:
  std::string read_table();

  common::Fd fd_;
  std::string device_;
};

}  // namespace kiln::fs::fuse_detail

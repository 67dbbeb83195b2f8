// A block device for the mount to name, so that it can be a `fuseblk` mount.
//
// The kernel waits for a FUSE daemon at unmount only for `fuseblk` mounts: their umount(2)
// sends FUSE_DESTROY and returns once the daemon has answered it, so a daemon that writes the
// image back before answering makes `umount DIR` return with the image complete. A plain
// `fuse` mount is only aborted: umount returns at once and the daemon learns of it afterwards.
//
// `fuseblk` needs a block device as the mount's source, which the kernel opens exclusively
// but never reads for a FUSE filesystem. kiln-fs serves images that are files (and NBD
// exports), so it makes one: a loop device over an empty in-memory file (memfd),
// with autoclear, so that it disappears when the unmount lets go of it. The image itself never
// goes through it. Only root can do this (loop devices, and fusermount3 refuses `blkdev`).
#pragma once

#include <string>

#include "kiln/common/fd.h"

namespace kiln::fs::fuse_detail {

class PlaceholderDevice {
 public:
  // Binds a free loop device to an empty memfd named after LABEL (what `losetup -l` shows).
  // On failure, path() is empty and error() says why.
  explicit PlaceholderDevice(const std::string& label);
  PlaceholderDevice(const PlaceholderDevice&) = delete;
  PlaceholderDevice& operator=(const PlaceholderDevice&) = delete;

  const std::string& path() const { return path_; }  // "/dev/loopN", or empty
  const std::string& error() const { return error_; }
  // Closes this process's descriptor of the device: with autoclear, the loop device is
  // detached as soon as nothing (the mount) holds it any more.
  void release() { device_.reset(); }

 private:
  common::Fd device_;
  std::string path_;
  std::string error_;
};

}  // namespace kiln::fs::fuse_detail

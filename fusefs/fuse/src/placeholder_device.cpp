#include "placeholder_device.h"

#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kiln::fs::fuse_detail {
namespace {

// Another process (losetup -f, a loop mount) may take the same free device between our
// LOOP_CTL_GET_FREE and LOOP_CONFIGURE: then LOOP_CONFIGURE fails with EBUSY and we ask again.
constexpr int kAttempts = 16;
constexpr off_t kSize = 4096;  // one block: the kernel checks the device, never reads it

}  // namespace

PlaceholderDevice::PlaceholderDevice(const std::string& label) {
  common::Fd backing(memfd_create(("kiln-fs " + label).substr(0, 240).c_str(), MFD_CLOEXEC));
  if (!backing || ftruncate(backing.get(), kSize) != 0) {
    error_ = std::string("memfd: ") + std::strerror(errno);
    return;
  }
  common::Fd control(::open("/dev/loop-control", O_RDWR | O_CLOEXEC));
  if (!control) {
    error_ = std::string("/dev/loop-control: ") + std::strerror(errno);
    return;
  }
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    const int n = ioctl(control.get(), LOOP_CTL_GET_FREE);
    if (n < 0) {
      error_ = std::string("no free loop device: ") + std::strerror(errno);
      return;
    }
    const std::string path = "/dev/loop" + std::to_string(n);
    // Opened for writing: otherwise the loop device is made read-only.
    common::Fd dev(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!dev) {
      error_ = path + ": " + std::strerror(errno);
      if (errno == ENOENT) continue;  // udev has not made the node yet
      return;
    }
    loop_config config{};
    config.fd = static_cast<unsigned>(backing.get());
    // Writable: the kernel opens a fuseblk mount's device for writing (EACCES otherwise).
    config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
    std::strncpy(reinterpret_cast<char*>(config.info.lo_file_name), ("kiln-fs " + label).c_str(),
                 LO_NAME_SIZE - 1);
    if (ioctl(dev.get(), LOOP_CONFIGURE, &config) == 0) {
      device_ = std::move(dev);
      path_ = path;
      error_.clear();
      return;
    }
    error_ = path + ": LOOP_CONFIGURE: " + std::strerror(errno);
    if (errno != EBUSY) return;
  }
}

}  // namespace kiln::fs::fuse_detail

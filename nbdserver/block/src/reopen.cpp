#include "reopen.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "host_file.h"
#include "kiln/block/device.h"
#include "kiln/common/fd.h"
#include "lock.h"

namespace kiln::block {

void reopen_image_file(int fd, const std::string& path, bool writable, bool direct) {
  if (!writable) {
    // Write, write unchanged and resize (bytes 101-103); the reader's bytes stay.
    unlock_image_bytes(fd, 101, 3);
    return;
  }
  const int mode = fcntl(fd, F_GETFL);
  if (mode < 0) throw Error(errno, path + ": " + strerror(errno));
  if ((mode & O_ACCMODE) == O_RDWR) {
    // Our own bytes do not conflict with our own description: only other openers are seen.
    lock_image_file(fd, path, true);
    return;
  }
  common::Fd fresh = open_host_file(path, false, direct);
  struct stat a, b;
  if (fstat(fd, &a) < 0 || fstat(fresh.get(), &b) < 0)
    throw Error(errno, path + ": " + strerror(errno));
  if (a.st_dev != b.st_dev || a.st_ino != b.st_ino)
    throw Error(Reason::kBusy, ESTALE, path + ": the file was replaced while it was open");
  // The old description's read locks would refuse our own writer: drop them first, and take
  // them back if the writer's cannot be had.
  unlock_image_file(fd);
  try {
    lock_image_file(fresh.get(), path, true);
  } catch (...) {
    lock_image_file(fd, path, false);
    throw;
  }
  // The descriptor number stays (the driver keeps it); the read-only description goes.
  if (dup3(fresh.get(), fd, O_CLOEXEC) < 0) {
    const int e = errno;
    lock_image_file(fd, path, false);
    throw Error(e, path + ": " + strerror(e));
  }
}

}  // namespace kiln::block

#include "reopen.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "host_file.h"
#include "kiln/block/device.h"
#include "kiln/common/fd.h"

namespace kiln::block {

namespace {

// The lock bytes of lock.cpp: 100+i held by who holds permission i, 200+i by who refuses to
// share it. Permissions: consistent read (0), write (1), write unchanged (2), resize (3).
void unlock_bytes(int fd, off_t first, off_t count) {
  struct flock fl {};
  fl.l_type = F_UNLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = first;
  fl.l_len = count;
  fcntl(fd, F_OFD_SETLK, &fl);  // unlocking what is not held is not an error
}

}  // namespace

void reopen_image_file(int fd, const std::string& path, bool writable, bool direct) {
  if (!writable) {
    unlock_bytes(fd, 101, 3);  // write, write unchanged, resize; the reader's bytes stay
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
  unlock_bytes(fd, 100, 4);
  unlock_bytes(fd, 200, 4);
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

#include "kiln/common/fd.h"

#include <unistd.h>

#include <cerrno>

namespace kiln::common {

void Fd::reset(int fd) {
  // Linux releases the descriptor even when close() fails (EINTR included): never retry.
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

int Fd::close() {
  if (fd_ < 0) return 0;
  int rc = ::close(release());
  return rc == 0 ? 0 : errno;
}

}  // namespace kiln::common

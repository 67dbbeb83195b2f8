#include "raw_request.h"

#include <linux/fuse.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace kiln::fs::fuse_detail {

bool raw_header(const fuse_buf& buf, int res, RawHeader& out) {
  if ((buf.flags & FUSE_BUF_IS_FD) || res < static_cast<int>(sizeof(fuse_in_header))) {
    return false;
  }
  fuse_in_header in;
  std::memcpy(&in, buf.mem, sizeof in);
  out.len = in.len;
  out.opcode = in.opcode;
  out.unique = in.unique;
  return true;
}

bool is_syncfs(const RawHeader& h) { return h.opcode == FUSE_SYNCFS; }

void reply_raw(fuse_session* se, const RawHeader& h, int error) {
  fuse_out_header out{};
  out.len = sizeof out;
  out.error = -error;
  out.unique = h.unique;
  // ENOENT: the request was interrupted and is gone; nothing to do.
  if (write(fuse_session_fd(se), &out, sizeof out) < 0 && errno != ENOENT) {
    std::fprintf(stderr, "kiln-fs: answering request %llu: %s\n",
                 static_cast<unsigned long long>(h.unique), std::strerror(errno));
  }
}

}  // namespace kiln::fs::fuse_detail

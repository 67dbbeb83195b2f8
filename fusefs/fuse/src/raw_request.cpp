#include "raw_request.h"

#include <linux/fuse.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
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
  const char* arg = static_cast<const char*>(buf.mem) + sizeof in;
  const size_t arg_len = static_cast<size_t>(res) - sizeof in;
  if (in.opcode == FUSE_SETATTR && arg_len >= sizeof(fuse_setattr_in)) {
    fuse_setattr_in a;
    std::memcpy(&a, arg, sizeof a);
    out.kill_suidgid = (a.valid & FATTR_KILL_SUIDGID) != 0;
  } else if (in.opcode == FUSE_WRITE && arg_len >= offsetof(fuse_write_in, lock_owner)) {
    uint32_t flags;
    std::memcpy(&flags, arg + offsetof(fuse_write_in, write_flags), sizeof flags);
    out.kill_suidgid = (flags & FUSE_WRITE_KILL_SUIDGID) != 0;
  } else if (in.opcode == FUSE_INIT && arg_len >= offsetof(fuse_init_in, flags) + 4) {
    fuse_init_in a{};
    std::memcpy(&a, arg, std::min(arg_len, sizeof a));
    out.offers_killpriv_v2 = a.major == 7 && a.minor >= 33 && (a.flags & FUSE_HANDLE_KILLPRIV_V2);
  }
  return true;
}

bool is_syncfs(const RawHeader& h) { return h.opcode == FUSE_SYNCFS; }

bool is_init(const RawHeader& h) { return h.opcode == FUSE_INIT; }

bool add_killpriv_v2(const iovec* iov, int count, uint64_t unique) {
  if (count < 2 || iov[0].iov_len < sizeof(fuse_out_header) ||
      iov[1].iov_len < offsetof(fuse_init_out, flags) + sizeof(uint32_t)) {
    return false;
  }
  fuse_out_header out;
  std::memcpy(&out, iov[0].iov_base, sizeof out);
  if (out.unique != unique || out.error != 0) return false;
  char* flags_at = static_cast<char*>(iov[1].iov_base) + offsetof(fuse_init_out, flags);
  uint32_t flags;
  std::memcpy(&flags, flags_at, sizeof flags);
  flags |= FUSE_HANDLE_KILLPRIV_V2;
  std::memcpy(flags_at, &flags, sizeof flags);
  return true;
}

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

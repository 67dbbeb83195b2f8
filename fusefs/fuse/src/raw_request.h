// Requests that libfuse (3.14) does not dispatch, served from the raw buffer: FUSE_SYNCFS,
// which the kernel sends from sync(2)/syncfs(2) once per filesystem (after writing back the
// page cache). libfuse answers it ENOSYS, after which the kernel stops sending it, so that
// `sync` never reached the image.
// Also the fields of a request that libfuse 3.14 does not pass on: the INIT request's offer of
// FUSE_HANDLE_KILLPRIV_V2 and the kill-set-ID flags of SETATTR and WRITE, and the INIT reply's
// flags, to which FUSE_HANDLE_KILLPRIV_V2 is added (mount.cpp, write_reply).
#pragma once

#include <fuse_lowlevel.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>

namespace kiln::fs::fuse_detail {

struct RawHeader {
  uint32_t len = 0;
  uint32_t opcode = 0;
  uint64_t unique = 0;
  // SETATTR with FATTR_KILL_SUIDGID, WRITE with FUSE_WRITE_KILL_SUIDGID: the kernel asks the
  // filesystem to drop set-ID bits (FUSE_HANDLE_KILLPRIV_V2), a flag libfuse 3.14 drops.
  bool kill_suidgid = false;
  // INIT: the kernel offers FUSE_HANDLE_KILLPRIV_V2.
  bool offers_killpriv_v2 = false;
};

// The header of a request read into BUF (res bytes); false if BUF holds none (spliced).
bool raw_header(const fuse_buf& buf, int res, RawHeader& out);
bool is_syncfs(const RawHeader& h);
bool is_init(const RawHeader& h);
// Adds FUSE_HANDLE_KILLPRIV_V2 to the flags of the INIT reply in IOV (as libfuse writes it:
// the header, then fuse_init_out) if it answers request UNIQUE without an error.
bool add_killpriv_v2(const iovec* iov, int count, uint64_t unique);
// Answers request H with ERROR (0 or a positive errno) on the session's device.
void reply_raw(fuse_session* se, const RawHeader& h, int error);

}  // namespace kiln::fs::fuse_detail

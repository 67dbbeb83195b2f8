// Requests that libfuse (3.14) does not dispatch, served from the raw buffer: FUSE_SYNCFS,
// which the kernel sends from sync(2)/syncfs(2) once per filesystem (after writing back the
// page cache). libfuse answers it ENOSYS, after which the kernel stops sending it, so that
// `sync` never reached the image.
#pragma once

#include <fuse_lowlevel.h>

#include <cstddef>
#include <cstdint>

namespace kiln::fs::fuse_detail {

struct RawHeader {
  uint32_t len = 0;
  uint32_t opcode = 0;
  uint64_t unique = 0;
};

// The header of a request read into BUF (res bytes); false if BUF holds none (spliced).
bool raw_header(const fuse_buf& buf, int res, RawHeader& out);
bool is_syncfs(const RawHeader& h);
// Answers request H with ERROR (0 or a positive errno) on the session's device.
void reply_raw(fuse_session* se, const RawHeader& h, int error);

}  // namespace kiln::fs::fuse_detail

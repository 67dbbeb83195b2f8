// O_DIRECT and the bounce path; see host_file.h for the exclusion rules.
#include "host_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "kiln/block/device.h"

namespace kiln::block {

namespace {

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<uint8_t, FreeDeleter>;

AlignedBuffer aligned_buffer(size_t align, size_t size) {
  // aligned_alloc wants a size that is a multiple of the alignment; callers round already.
  return AlignedBuffer(static_cast<uint8_t*>(std::aligned_alloc(align, size)));
}

}  // namespace

common::Fd open_host_file(const std::string& path, bool read_only, bool direct) {
  const int flags = (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC | (direct ? O_DIRECT : 0);
  common::Fd fd(::open(path.c_str(), flags));
  struct statx sx;
  if (fd && direct && statx(fd.get(), "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
      (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_offset_align == 0) {
    // The kernel knows this file takes no direct I/O although open() let O_DIRECT through.
    fd.reset();
    errno = EINVAL;
  }
  if (fd) return fd;
  const int err = errno;
  // open(2) says EINVAL for O_DIRECT on a file system without direct I/O (tmpfs before 6.6,
  // some FUSE file systems). Say which option asked for it, as qemu does.
  if (direct && err == EINVAL)
    throw Error(Reason::kUnsupported, err,
                path +
                    ": the file system does not support O_DIRECT (--cache=none or directsync); "
                    "use --cache=writeback or writethrough");
  throw Error(err, path + ": cannot open: " + strerror(err));
}

HostFile::HostFile(Reactor& r, common::Fd fd, bool direct, uint32_t align)
    : r_(&r), fd_(std::move(fd)), direct_(direct), idle_(r) {
  if (!direct_) return;
  if (align != 0) {
    offset_align_ = memory_align_ = align;
    return;
  }
  offset_align_ = memory_align_ = 4096;  // what no Linux file system refuses
  struct statx sx;
  if (statx(fd_.get(), "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
      (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_offset_align != 0) {
    offset_align_ = sx.stx_dio_offset_align;
    memory_align_ = std::max<uint32_t>(sx.stx_dio_mem_align, 1);
  }
}

HostFile::~HostFile() {
  if (fd_) unlock_image_file(fd_.get());
}

bool HostFile::aligned(const void* p, uint64_t offset, uint64_t len) const {
  return (reinterpret_cast<uintptr_t>(p) & (memory_align_ - 1)) == 0 &&
         ((offset | len) & (offset_align_ - 1)) == 0;
}

Task<void> HostFile::enter(uint64_t start, uint64_t end, bool rmw) {
  for (;;) {
    const bool conflict = std::any_of(busy_.begin(), busy_.end(), [&](const Busy& b) {
      return b.start < end && start < b.end && (rmw || b.rmw);
    });
    if (!conflict) break;
    co_await idle_.wait();
  }
  busy_.push_back({start, end, rmw});
}

void HostFile::leave(uint64_t start, uint64_t end, bool rmw) {
  for (auto it = busy_.begin(); it != busy_.end(); ++it)
    if (it->start == start && it->end == end && it->rmw == rmw) {
      *it = busy_.back();
      busy_.pop_back();
      break;
    }
  idle_.notify_all();
}

Task<int> HostFile::read_aligned(uint8_t* p, uint64_t len, uint64_t offset, uint64_t* got) {
  if (FaultInjector* f = r_->fault_injector()) [[unlikely]] {
    if (int rc = co_await f->before(FileOp::kRead, fd_.get(), offset, len); rc < 0) co_return rc;
  }
  uint64_t done = 0;
  while (done < len) {
    uint8_t* q = p + done;
    const unsigned n = static_cast<unsigned>(std::min<uint64_t>(len - done, 1u << 30));
    const uint64_t off = offset + done;
    const int res = co_await r_->submit(
        [=, this](io_uring_sqe* s) { io_uring_prep_read(s, fd_.get(), q, n, off); });
    if (res < 0) {
      if (Reactor::retryable(res)) continue;
      co_return res;
    }
    done += static_cast<uint64_t>(res);
    // A direct read stops short only at the end of the file; if that end is not aligned, the
    // next read could not even be asked for (EINVAL). Either way the rest is past the end.
    if (res == 0 || (done & (offset_align_ - 1)) != 0) break;
  }
  if (got) *got = done;
  if (done < len) std::memset(p + done, 0, len - done);
  co_return 0;
}

Task<int> HostFile::write_aligned(const uint8_t* p, uint64_t len, uint64_t offset) {
  if (FaultInjector* f = r_->fault_injector()) [[unlikely]] {
    if (int rc = co_await f->before(FileOp::kWrite, fd_.get(), offset, len); rc < 0) co_return rc;
  }
  uint64_t done = 0;
  while (done < len) {
    const uint8_t* q = p + done;
    const unsigned n = static_cast<unsigned>(std::min<uint64_t>(len - done, 1u << 30));
    const uint64_t off = offset + done;
    const int res = co_await r_->submit(
        [=, this](io_uring_sqe* s) { io_uring_prep_write(s, fd_.get(), q, n, off); });
    if (res < 0) {
      if (Reactor::retryable(res)) continue;
      co_return res;
    }
    done += static_cast<uint64_t>(res);
    // A short direct write (a full disk) leaves an offset the next one may not start at.
    if (res == 0 || (done < len && (done & (offset_align_ - 1)) != 0)) co_return -ENOSPC;
  }
  co_return 0;
}

Task<int> HostFile::read_full(std::span<uint8_t> buf, uint64_t offset) {
  if (!direct_) {
    if (r_->inline_file_io()) co_return read_now(buf, offset);
    co_return co_await r_->read_full(fd_.get(), buf, offset);
  }
  if (buf.empty()) co_return 0;
  if (aligned(buf.data(), offset, buf.size()))
    co_return co_await read_aligned(buf.data(), buf.size(), offset, nullptr);
  co_return co_await read_bounced(buf, offset);
}

Task<int> HostFile::read_bounced(std::span<uint8_t> buf, uint64_t offset) {
  ++bounced_;
  const uint64_t start = down(offset), end = up(offset + buf.size());
  AlignedBuffer b = aligned_buffer(std::max(memory_align_, offset_align_), end - start);
  if (!b) co_return -ENOMEM;
  if (int rc = co_await read_aligned(b.get(), end - start, start, nullptr); rc < 0) co_return rc;
  std::memcpy(buf.data(), b.get() + (offset - start), buf.size());
  co_return 0;
}

Task<int> HostFile::write_full(std::span<const uint8_t> buf, uint64_t offset) {
  if (!direct_) {
    if (r_->inline_file_io()) co_return write_now(buf, offset);
    co_return co_await r_->write_full(fd_.get(), buf, offset);
  }
  if (buf.empty()) co_return 0;
  if (!aligned(buf.data(), offset, buf.size())) co_return co_await write_bounced(buf, offset);
  const uint64_t end = offset + buf.size();
  co_await enter(offset, end, false);
  const int rc = co_await write_aligned(buf.data(), buf.size(), offset);
  leave(offset, end, false);
  co_return rc;
}

Task<int> HostFile::write_bounced(std::span<const uint8_t> buf, uint64_t offset) {
  ++bounced_;
  const uint64_t want_end = offset + buf.size();
  const uint64_t start = down(offset), end = up(want_end);
  const uint64_t a = offset_align_;
  AlignedBuffer b = aligned_buffer(std::max(memory_align_, offset_align_), end - start);
  if (!b) co_return -ENOMEM;
  co_await enter(start, end, true);
  int rc = 0;
  // Where the file ended, if the last block we touch reaches past it.
  uint64_t file_end = ~uint64_t{0};
  if (offset != start) {  // the head block: keep the bytes before the write
    uint64_t got = 0;
    rc = co_await read_aligned(b.get(), a, start, &got);
    if (rc == 0 && got < a) file_end = start + got;
  }
  if (rc == 0 && want_end != end && (end - a != start || offset == start)) {  // the tail block
    uint64_t got = 0;
    rc = co_await read_aligned(b.get() + (end - a - start), a, end - a, &got);
    if (rc == 0 && got < a) file_end = end - a + got;
  }
  if (rc == 0) {
    std::memcpy(b.get() + (offset - start), buf.data(), buf.size());
    rc = co_await write_aligned(b.get(), end - start, start);
  }
  // The block went out whole, so the file may now end after the request: put the end back
  // where a buffered write would have left it, unless something else has grown the file since.
  if (rc == 0 && file_end < end) {
    struct stat st;
    if (fstat(fd_.get(), &st) == 0 && uint64_t(st.st_size) == end &&
        ftruncate(fd_.get(), off_t(std::max(file_end, want_end))) < 0)
      rc = -errno;
  }
  leave(start, end, true);
  co_return rc;
}

int HostFile::write_now(std::span<const uint8_t> buf, uint64_t offset) {
  size_t done = 0;
  while (done < buf.size()) {
    const ssize_t n = ::pwrite(fd_.get(), buf.data() + done, buf.size() - done,
                               static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return -EIO;
    done += static_cast<size_t>(n);
  }
  return 0;
}

int HostFile::read_now(std::span<uint8_t> buf, uint64_t offset) {
  size_t done = 0;
  while (done < buf.size()) {
    const ssize_t n =
        ::pread(fd_.get(), buf.data() + done, buf.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) {  // the end of the file
      std::memset(buf.data() + done, 0, buf.size() - done);
      break;
    }
    done += static_cast<size_t>(n);
  }
  return 0;
}

void HostFile::start_writeback() {
  if (direct_ || writeback_error_) return;
  if (::sync_file_range(fd_.get(), 0, 0, SYNC_FILE_RANGE_WRITE) != 0) writeback_error_ = -errno;
}

Task<int> HostFile::fsync(bool datasync) {
  const int rc = co_await r_->fsync(fd_.get(), datasync);
  co_return rc < 0 ? rc : writeback_error_;
}

Task<int> HostFile::fallocate(int mode, uint64_t offset, uint64_t len) {
  if (!direct_) co_return co_await r_->fallocate(fd_.get(), mode, offset, len);
  // Zeroing or punching part of a block races an RMW of the same block like a write does.
  const uint64_t start = down(offset), end = up(offset + len);
  co_await enter(start, end, false);
  const int rc = co_await r_->fallocate(fd_.get(), mode, offset, len);
  leave(start, end, false);
  co_return rc;
}

}  // namespace kiln::block

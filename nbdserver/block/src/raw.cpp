// Raw image files: guest offset = file offset. Holes and zeros come from the file system
// (fallocate for write-zeroes and discard, SEEK_DATA/SEEK_HOLE for block status).
// A failed fdatasync poisons the file as it does a qcow2 image (see qcow2/flush.cpp): the
// kernel reports a lost write-back once, so every later write and flush fails with -EIO.
#include "raw.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "allowed_dirs.h"
#include "host_file.h"
#include "kiln/common/fd.h"
#include "lock.h"
#include "reopen.h"

namespace kiln::block {

namespace {

class RawDevice final : public BlockDevice {
 public:
  RawDevice(std::string path, HostFile file, uint64_t size, bool ro)
      : path_(std::move(path)), fd_(std::move(file)), size_(size) {
    caps_.read_only = ro;
  }

  uint64_t size() const override { return size_; }
  const Capabilities& caps() const override { return caps_; }
  const char* format() const override { return "raw"; }
  const std::string& filename() const override { return path_; }
  uint32_t chain_length() const override { return 0; }

  Task<int> read(uint64_t off, std::span<uint8_t> buf) override {
    if (off > size_ || buf.size() > size_ - off) co_return -EINVAL;
    co_return co_await fd_.read_full(buf, off);
  }
  Task<int> write(uint64_t off, std::span<const uint8_t> buf, unsigned flags) override {
    if (caps_.read_only) co_return -EPERM;
    if (poisoned_) co_return -EIO;
    if (off > size_ || buf.size() > size_ - off) co_return -ENOSPC;
    int rc = co_await fd_.write_full(buf, off);
    if (rc == 0 && (flags & kWriteFua)) rc = co_await sync();
    co_return rc;
  }
  Task<int> flush() override {
    if (caps_.read_only) co_return 0;
    if (poisoned_) co_return -EIO;
    co_return co_await sync();
  }
  Task<int> discard(uint64_t off, uint64_t len) override {
    if (caps_.read_only) co_return -EPERM;
    if (poisoned_) co_return -EIO;
    if (off > size_ || len > size_ - off) co_return -EINVAL;
    int rc = co_await fd_.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
    co_return rc == -EOPNOTSUPP ? 0 : rc;  // discard is advisory
  }
  Task<int> write_zeroes(uint64_t off, uint64_t len, unsigned flags) override {
    if (caps_.read_only) co_return -EPERM;
    if (poisoned_) co_return -EIO;
    if (off > size_ || len > size_ - off) co_return -ENOSPC;
    int mode =
        (flags & kWriteNoUnmap) ? FALLOC_FL_ZERO_RANGE : FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    int rc = co_await fd_.fallocate(mode, off, len);
    if (rc == -EOPNOTSUPP && mode != FALLOC_FL_ZERO_RANGE)
      rc = co_await fd_.fallocate(FALLOC_FL_ZERO_RANGE, off, len);
    if (rc == -EOPNOTSUPP) {
      if (flags & kWriteFastZero) co_return -ENOTSUP;
      std::vector<uint8_t> zeros(std::min<uint64_t>(len, 1u << 20));
      for (uint64_t pos = 0; pos < len && rc != 0;) {
        uint64_t n = std::min<uint64_t>(zeros.size(), len - pos);
        if (int w = co_await fd_.write_full(std::span<const uint8_t>(zeros).first(n), off + pos);
            w < 0)
          co_return w;
        pos += n;
      }
      rc = 0;
    }
    if (rc == 0 && (flags & kWriteFua)) rc = co_await sync();
    co_return rc;
  }
  Task<int> block_status(uint64_t off, uint64_t len, std::vector<Extent>* out) override {
    if (off > size_) co_return -EINVAL;
    len = std::min(len, size_ - off);
    const uint64_t end = off + len;
    uint64_t pos = off;
    while (pos < end) {
      off_t data = lseek(fd_.get(), off_t(pos), SEEK_DATA);
      uint64_t data_at = data < 0 ? end : std::min<uint64_t>(uint64_t(data), end);
      if (data_at > pos) {
        push(out, pos, data_at - pos, false);
        pos = data_at;
        continue;
      }
      off_t hole = lseek(fd_.get(), off_t(pos), SEEK_HOLE);
      uint64_t hole_at = hole < 0 ? end : std::min<uint64_t>(uint64_t(hole), end);
      if (hole_at <= pos) hole_at = end;
      push(out, pos, hole_at - pos, true);
      pos = hole_at;
    }
    co_return 0;
  }
  Task<int> resize(uint64_t new_size) override {
    if (caps_.read_only) co_return -EPERM;
    if (poisoned_) co_return -EIO;
    if (new_size < size_) co_return -ENOTSUP;
    if (ftruncate(fd_.get(), off_t(new_size)) < 0) co_return -errno;
    size_ = new_size;
    co_return 0;
  }
  Task<int> close() override { co_return co_await flush(); }
  void start_writeback() override { fd_.start_writeback(); }
  Task<void> set_read_only(bool ro) override {
    if (ro == caps_.read_only) co_return;
    if (ro) {
      if (int rc = co_await flush(); rc < 0)
        throw Error(-rc, path_ + ": cannot flush: " + strerror(-rc));
    }
    reopen_image_file(fd_.get(), path_, !ro, fd_.direct());
    caps_.read_only = ro;
  }

 private:
  Task<int> sync() {
    const int rc = co_await fd_.fsync(true);
    if (rc < 0) poisoned_ = true;
    co_return rc;
  }

  static void push(std::vector<Extent>* out, uint64_t off, uint64_t len, bool data) {
    Extent e;
    e.offset = off;
    e.length = len;
    e.present = true;  // a raw file has every byte: holes are allocated zeros
    e.data = data;
    e.zero = !data;
    e.host_offset = off;
    if (!out->empty()) {
      Extent& b = out->back();
      if (b.offset + b.length == off && b.data == data) {
        b.length += len;
        return;
      }
    }
    out->push_back(e);
  }

  std::string path_;
  HostFile fd_;
  uint64_t size_;
  Capabilities caps_;
  bool poisoned_ = false;  // an fdatasync failed: see the top of this file
};

}  // namespace

std::unique_ptr<BlockDevice> open_raw(Reactor& r, const std::string& path, bool read_only,
                                      bool lock, const std::vector<std::string>& allowed_dirs,
                                      bool direct) {
  check_allowed_path(path, allowed_dirs);
  common::Fd fd = open_host_file(path, read_only, direct);
  check_allowed_fd(fd.get(), path, allowed_dirs);
  struct stat st;
  if (fstat(fd.get(), &st) < 0) throw Error(errno, path + ": " + strerror(errno));
  if (lock || !read_only) lock_image_file(fd.get(), path, !read_only);
  // As QEMU does, a raw file's size is counted in whole 512-byte sectors; the tail past the
  // end of the file reads as zeros.
  const uint64_t size = (uint64_t(st.st_size) + 511) & ~uint64_t{511};
  return std::make_unique<RawDevice>(path, HostFile(r, std::move(fd), direct), size, read_only);
}

}  // namespace kiln::block

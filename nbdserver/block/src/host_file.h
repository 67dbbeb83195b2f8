// The image file under a driver: the one place that knows whether it was opened with O_DIRECT
// (--cache=none/directsync) and what alignment direct I/O wants. Drivers call it as they would
// call the reactor; a request that is not aligned (offset, length or buffer address) goes
// through an aligned bounce buffer, and an unaligned write becomes a read-modify-write of the
// blocks it touches. Buffered files pass straight to the reactor.
//
// Read-modify-write needs exclusion that the drivers' own locks do not give: two writes (or a
// write and a fallocate) into disjoint bytes of one block would each write back the block they
// read, and the second would undo the first. So every write and fallocate of a direct file
// registers the blocks it covers; an RMW waits for any overlapping operation, and an aligned
// operation waits for an overlapping RMW. Aligned operations do not wait for each other (they
// share no bytes they do not both write). Reads need no exclusion: an RMW writes the bytes it
// did not change back unchanged. All of it runs on the reactor thread of the device.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kiln/block/reactor.h"
#include "kiln/block/task.h"
#include "kiln/common/fd.h"

namespace kiln::block {

// Opens `path` read-only or read-write, with O_DIRECT when `direct`. Throws Error with one
// clear line, naming the cache mode when the file system refuses direct I/O.
common::Fd open_host_file(const std::string& path, bool read_only, bool direct);

class HostFile {
 public:
  // `fd` comes from open_host_file. `align` (a power of two) overrides what the file system
  // reports (tests); 0 asks statx (STATX_DIOALIGN) and falls back to 4096 where the kernel
  // does not say.
  HostFile(Reactor& r, common::Fd fd, bool direct, uint32_t align = 0);
  HostFile(HostFile&&) = default;
  ~HostFile();  // drops the image locks the file may hold (unlock_image_file), then closes it
  HostFile& operator=(HostFile&&) = delete;

  int get() const { return fd_.get(); }
  bool direct() const { return direct_; }
  uint32_t offset_align() const { return offset_align_; }
  uint32_t memory_align() const { return memory_align_; }
  // Requests that went through a bounce buffer (tests and benchmarks read it).
  uint64_t bounced() const { return bounced_; }

  // As Reactor::read_full/write_full: whole buffer, 0 or -errno; what lies past the end of
  // the file reads as zeros, and a write past the end extends the file to exactly its end.
  // Buffered files of a reactor with inline_file_io() do them with pread/pwrite right away.
  Task<int> read_full(std::span<uint8_t> buf, uint64_t offset);
  Task<int> write_full(std::span<const uint8_t> buf, uint64_t offset);
  // A small write into a buffered file's page cache, made on the calling thread with pwrite
  // instead of through io_uring, which hands every buffered write on ext4 to an io-wq worker
  // (a wake-up and two context switches for a few microseconds of copying). For metadata:
  // bytes that are usually in the page cache already. Only where can_write_now(): a
  // buffered file, and no fault injector (tests that hold or fail writes use write_full).
  // The calling thread waits as the io-wq worker would have (dirty page throttling
  // included). 0 or -errno.
  bool can_write_now() const { return !direct_ && !r_->fault_injector(); }
  int write_now(std::span<const uint8_t> buf, uint64_t offset);
  // read_full's pread counterpart of write_now (zeros past the end of the file).
  int read_now(std::span<uint8_t> buf, uint64_t offset);
  // Fails with start_writeback's error, if it had one, even when the fsync itself succeeds.
  Task<int> fsync(bool datasync);
  // BlockDevice::start_writeback for this file: sync_file_range(SYNC_FILE_RANGE_WRITE) over
  // the whole file, for a buffered one (a direct file has no dirty pages). Without a wait
  // flag the call does not wait for the write-out, nor consume an error of the write-out
  // itself: the next fsync still reports it. An error it returns (the file system gave up on
  // some pages when starting their write-out, which may leave them clean and the error stored
  // nowhere else) is kept, and fails this fsync and every later one.
  void start_writeback();
  int writeback_error() const { return writeback_error_; }  // 0 or -errno
  Task<int> fallocate(int mode, uint64_t offset, uint64_t len);

 private:
  struct Busy {
    uint64_t start, end;
    bool rmw;
  };
  bool aligned(const void* p, uint64_t offset, uint64_t len) const;
  uint64_t down(uint64_t v) const { return v & ~uint64_t{offset_align_ - 1}; }
  uint64_t up(uint64_t v) const { return down(v + offset_align_ - 1); }
  Task<void> enter(uint64_t start, uint64_t end, bool rmw);
  void leave(uint64_t start, uint64_t end, bool rmw);
  // Aligned direct transfers. `*got` (optional) is how many bytes the file had: less than the
  // buffer when the end of the file lies inside it (the rest is zero-filled).
  Task<int> read_aligned(uint8_t* p, uint64_t len, uint64_t offset, uint64_t* got);
  Task<int> write_aligned(const uint8_t* p, uint64_t len, uint64_t offset);
  Task<int> read_bounced(std::span<uint8_t> buf, uint64_t offset);
  Task<int> write_bounced(std::span<const uint8_t> buf, uint64_t offset);

  Reactor* r_;
  common::Fd fd_;
  bool direct_;
  uint32_t offset_align_ = 1;
  uint32_t memory_align_ = 1;
  uint64_t bounced_ = 0;
  int writeback_error_ = 0;
  std::vector<Busy> busy_;  // writes and fallocates in flight (direct files only)
  WaitList idle_;           // woken when one of them ends
};

}  // namespace kiln::block

// Live commit of an export's top image into its backing (QEMU's block-commit of the active
// layer): the job's state, and the map of ranges clients wrote while it copies.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "kiln/block/device.h"
#include "kiln/block/task.h"

namespace kiln::nbd {

// Chunks of an export written since they were last copied (home thread only). A bit per
// chunk: 2 MiB of map for a 1 TiB disk at 64 KiB chunks.
class DirtyMap {
 public:
  static constexpr uint64_t kChunk = 64 * 1024;
  explicit DirtyMap(uint64_t size) : size_(size), bits_((size / kChunk + 64) / 64, 0) {}
  void mark(uint64_t offset, uint64_t length) {
    if (length == 0 || offset >= size_) return;
    const uint64_t last = (std::min(offset + length, size_) - 1) / kChunk;
    for (uint64_t c = offset / kChunk; c <= last; ++c) {
      uint64_t& w = bits_[c / 64];
      const uint64_t bit = 1ull << (c % 64);
      if (!(w & bit)) {
        w |= bit;
        ++count_;
      }
    }
  }
  // Takes the next dirty chunk at or after the cursor (wrapping once); false if none.
  bool take(uint64_t* chunk) {
    const size_t n = bits_.size();
    for (size_t i = 0; i <= n && count_; ++i) {
      const size_t wi = (cursor_ + i) % n;
      if (bits_[wi]) {
        const unsigned b = unsigned(__builtin_ctzll(bits_[wi]));
        bits_[wi] &= ~(1ull << b);
        --count_;
        cursor_ = wi;
        *chunk = wi * 64 + b;
        return true;
      }
    }
    return false;
  }
  uint64_t count() const { return count_; }

  // Active mirroring (QEMU's write-blocking copy mode): client writes are applied to the base
  // too once they have reached the top, so that the copy converges whatever the clients do.
  // Two writers of the same chunk at once (a client's mirrored write and the job's copy, or
  // two mirrored writes) may land on the base in either order: such a chunk is marked dirty,
  // and copied again from the top, at the latest during the final pause.
  block::BlockDevice* mirror = nullptr;   // the base; null once a mirrored write failed
  int mirror_error = 0;                   // the first failed mirrored write (-errno)
  uint64_t copy_start = 0, copy_end = 0;  // what the job is copying now
  bool mirroring(uint64_t offset, uint64_t length) const {
    if (length == 0) return false;
    for (uint64_t c = offset / kChunk; c <= (offset + length - 1) / kChunk; ++c)
      if (inflight_.count(c)) return true;
    return false;
  }
  // Around a mirrored write: returns whether it collides with another writer of the base.
  bool begin_mirror(uint64_t offset, uint64_t length) {
    bool conflict = copy_end > offset && copy_start < offset + length;
    for (uint64_t c = offset / kChunk; c <= (offset + length - 1) / kChunk; ++c)
      if (inflight_[c]++ > 0) conflict = true;
    return conflict;
  }
  void end_mirror(uint64_t offset, uint64_t length) {
    for (uint64_t c = offset / kChunk; c <= (offset + length - 1) / kChunk; ++c)
      if (--inflight_[c] == 0) inflight_.erase(c);
  }

 private:
  std::unordered_map<uint64_t, uint32_t> inflight_;  // chunk -> mirrored writes in flight
  uint64_t size_;
  std::vector<uint64_t> bits_;
  uint64_t count_ = 0;
  size_t cursor_ = 0;
};

// A client's write (kCmdWrite with `data`, or write-zeroes) that reached the top: applied to
// the base as well, or marked dirty when that cannot be trusted (see DirtyMap).
block::Task<void> mirror_write(DirtyMap& d, bool zeroes, uint64_t offset, uint64_t length,
                               std::span<const uint8_t> data);

// One commit, as {"cmd":"jobs"} reports it. Written by the job on the export's home thread,
// read by the control API: the numbers are atomics; `error` is set before `state` says so.
struct CommitJob {
  enum State : int { kRunning, kReady, kCompleted, kFailed, kCancelled };
  std::string export_name, top, base;
  std::atomic<uint64_t> done{0}, total{0};
  std::atomic<int> state{kRunning};
  std::atomic<bool> cancel{false};
  std::mutex mu;
  std::string error;  // under mu
  static const char* state_name(int s) {
    switch (s) {
      case kRunning:
        return "running";
      case kReady:
        return "ready";
      case kCompleted:
        return "completed";
      case kFailed:
        return "failed";
      default:
        return "cancelled";
    }
  }
  bool finished() const { return state.load() >= kCompleted; }
};

}  // namespace kiln::nbd

// Payload buffers for data requests: 4096-byte aligned, so that a device opened with O_DIRECT
// can read into them and write from them without a bounce copy. A small per-thread cache keeps
// recently freed buffers, so that a stream of 4 KiB requests does not go to the allocator (and
// glibc's memalign, which is much slower than malloc) for every request.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace kiln::nbd {

class AlignedBuffer {
 public:
  static constexpr size_t kAlign = 4096;
  AlignedBuffer() = default;
  // `size` bytes, not initialised (none allocated for 0). Throws std::bad_alloc.
  explicit AlignedBuffer(size_t size);
  // What a buffer of `size` bytes may cost the heap: its capacity (a multiple of 4096) plus
  // what the allocator may lose to alignment. The memory budget charges this, not `size`.
  static constexpr uint64_t footprint(uint64_t size) {
    return size ? ((size + kAlign - 1) & ~uint64_t(kAlign - 1)) + kAlign : 0;
  }
  ~AlignedBuffer() { release(); }
  AlignedBuffer(AlignedBuffer&& o) noexcept : p_(o.p_), size_(o.size_), cap_(o.cap_) {
    o.p_ = nullptr;
    o.size_ = o.cap_ = 0;
  }
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = o.p_;
      size_ = o.size_;
      cap_ = o.cap_;
      o.p_ = nullptr;
      o.size_ = o.cap_ = 0;
    }
    return *this;
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  uint8_t* data() const { return p_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::span<uint8_t> span() const { return {p_, size_}; }
  // Frees the memory now (or returns it to the thread's cache).
  void release();

 private:
  uint8_t* p_ = nullptr;
  size_t size_ = 0, cap_ = 0;
};

}  // namespace kiln::nbd

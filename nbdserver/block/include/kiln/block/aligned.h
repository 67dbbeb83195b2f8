// Byte buffers at page-aligned addresses, for callers of the block layer whose buffers should
// reach an O_DIRECT image without a bounce (--cache=none): with OpenOptions::direct, a buffer
// whose address is not aligned to the file's direct-I/O alignment (512 bytes or more; malloc
// gives 16) is copied through an aligned one. std::vector<uint8_t, PageAllocator<uint8_t>>
// behaves as std::vector<uint8_t> otherwise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

namespace kiln::block {

template <typename T>
struct PageAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{4096};
  PageAllocator() = default;
  template <typename U>
  PageAllocator(const PageAllocator<U>&) noexcept {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, size_t n) noexcept { ::operator delete(p, n * sizeof(T), kAlign); }
  template <typename U>
  bool operator==(const PageAllocator<U>&) const noexcept {
    return true;
  }
};

using AlignedBytes = std::vector<uint8_t, PageAllocator<uint8_t>>;

}  // namespace kiln::block

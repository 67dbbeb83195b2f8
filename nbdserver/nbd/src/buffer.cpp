#include "buffer.h"

#include <cstdlib>
#include <new>

namespace kiln::nbd {

namespace {

// Buffers of exactly 4, 8, ..., 128 KiB of capacity are cached; others always go back to the
// allocator. At most kPerClass buffers per class stay cached, so a thread keeps at
// most 8 * (4 + 8 + ... + 128) KiB = 2 MiB that nobody uses.
constexpr size_t kClasses = 6;
constexpr size_t kPerClass = 8;

int size_class(size_t cap) {
  size_t c = AlignedBuffer::kAlign;
  for (size_t i = 0; i < kClasses; ++i, c <<= 1)
    if (cap == c) return int(i);
  return -1;
}

size_t capacity_for(size_t size) {
  return (size + AlignedBuffer::kAlign - 1) & ~(AlignedBuffer::kAlign - 1);
}

// Plain data, so that it can be used (and is empty) after the thread's destructors ran.
struct Cache {
  uint8_t* slots[kClasses][kPerClass];
  size_t count[kClasses];
  bool dead;
};
thread_local constinit Cache tls_cache{};

struct Reaper {
  ~Reaper() {
    for (size_t i = 0; i < kClasses; ++i)
      for (size_t j = 0; j < tls_cache.count[i]; ++j) std::free(tls_cache.slots[i][j]);
    tls_cache = Cache{};
    tls_cache.dead = true;  // buffers freed from later destructors go to the allocator
  }
};

// The thread's cache, or null when it must not be used: after the thread's destructors ran,
// and under AddressSanitizer (reused buffers would hide a use after free).
Cache* cache() {
#if defined(__SANITIZE_ADDRESS__)
  return nullptr;
#else
  if (tls_cache.dead) return nullptr;
  thread_local Reaper reaper;  // frees the cached buffers when the thread ends
  return &tls_cache;
#endif
}

}  // namespace

AlignedBuffer::AlignedBuffer(size_t size) : size_(size), cap_(capacity_for(size)) {
  if (size == 0) return;
  const int cls = size_class(cap_);
  if (Cache* c = cls >= 0 ? cache() : nullptr; c && c->count[cls] > 0) {
    p_ = c->slots[cls][--c->count[cls]];
    return;
  }
  p_ = static_cast<uint8_t*>(std::aligned_alloc(kAlign, cap_));
  if (!p_) throw std::bad_alloc();
}

void AlignedBuffer::release() {
  if (!p_) return;
  const int cls = size_class(cap_);
  if (Cache* c = cls >= 0 ? cache() : nullptr; c && c->count[cls] < kPerClass)
    c->slots[cls][c->count[cls]++] = p_;
  else
    std::free(p_);
  p_ = nullptr;
  size_ = cap_ = 0;
}

}  // namespace kiln::nbd

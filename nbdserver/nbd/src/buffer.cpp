#include "buffer.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <new>

#include "kiln/common/sanitizer.h"

namespace kiln::nbd {

namespace {

// Buffers of exactly 4, 8, ..., 128 KiB of capacity are cached; others always go back to the
// allocator. A class keeps up to 256 KiB of buffers, and at least 8 of them: 64 of 4 KiB (a
// client with 32 or more 4 KiB reads in flight frees more than 8 at a time, and the rest went
// through glibc's slow paths, `perf`: 2 to 3 % of a serving thread), ..., 8 of 128 KiB. A
// thread keeps at most 4 * 256 KiB + 8 * (64 + 128) KiB = 2.5 MiB that nobody uses.
constexpr size_t kClasses = 6;
constexpr size_t kMaxPerClass = 64;
constexpr size_t kClassBytes = 256 * 1024;

constexpr size_t per_class(int cls) {
  return std::max<size_t>(8, kClassBytes / (AlignedBuffer::kAlign << cls));
}
static_assert(per_class(0) == kMaxPerClass);

int size_class(size_t cap) {
  size_t c = AlignedBuffer::kAlign;
  for (size_t i = 0; i < kClasses; ++i, c <<= 1)
    if (cap == c) return int(i);
  return -1;
}

size_t capacity_for(size_t size) {
  return (size + AlignedBuffer::kAlign - 1) & ~(AlignedBuffer::kAlign - 1);
}

// Larger buffers (a guest's 256 KiB to 32 MiB requests) are mapped pages of their own: from
// glibc's heap, a stream of 1 MiB requests over two serving threads held 55 MiB of RSS for
// 8 MiB in flight (per-thread arenas and memalign's fragmentation). A thread keeps up to
// kLargeSlots of them, at most kLargeCacheBytes in all, so that a stream of equal large
// requests is not a mmap, 256 page faults and a munmap each.
constexpr size_t kLargeMin = 256 * 1024;
constexpr size_t kLargeSlots = 8;
constexpr size_t kLargeCacheBytes = 8 * 1024 * 1024;

// Plain data, so that it can be used (and is empty) after the thread's destructors ran.
struct Cache {
  uint8_t* slots[kClasses][kMaxPerClass];
  size_t count[kClasses];
  uint8_t* large[kLargeSlots];
  size_t large_cap[kLargeSlots];
  size_t large_count, large_bytes;
  bool dead;
};
thread_local constinit Cache tls_cache{};

bool is_large(size_t cap) {
#if KILN_ASAN
  (void)cap;
  return false;  // from the heap, where AddressSanitizer watches them
#else
  return cap >= kLargeMin;
#endif
}

struct Reaper {
  ~Reaper() {
    for (size_t i = 0; i < kClasses; ++i)
      for (size_t j = 0; j < tls_cache.count[i]; ++j) std::free(tls_cache.slots[i][j]);
    for (size_t j = 0; j < tls_cache.large_count; ++j)
      ::munmap(tls_cache.large[j], tls_cache.large_cap[j]);
    tls_cache = Cache{};
    tls_cache.dead = true;  // buffers freed from later destructors go to the allocator
  }
};

// The thread's cache, or null when it must not be used: after the thread's destructors ran,
// and under AddressSanitizer (reused buffers would hide a use after free).
Cache* cache() {
#if KILN_ASAN
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
  if (is_large(cap_)) {
    if (Cache* c = cache())
      for (size_t j = 0; j < c->large_count; ++j)
        if (c->large_cap[j] == cap_) {
          p_ = c->large[j];
          c->large_bytes -= cap_;
          c->large[j] = c->large[--c->large_count];
          c->large_cap[j] = c->large_cap[c->large_count];
          return;
        }
    void* m = ::mmap(nullptr, cap_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    p_ = static_cast<uint8_t*>(m);
    return;
  }
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
  if (is_large(cap_)) {
    Cache* c = cache();
    if (c && c->large_count < kLargeSlots && c->large_bytes + cap_ <= kLargeCacheBytes) {
      c->large[c->large_count] = p_;
      c->large_cap[c->large_count++] = cap_;
      c->large_bytes += cap_;
    } else {
      ::munmap(p_, cap_);
    }
    p_ = nullptr;
    size_ = cap_ = 0;
    return;
  }
  const int cls = size_class(cap_);
  if (Cache* c = cls >= 0 ? cache() : nullptr; c && c->count[cls] < per_class(cls))
    c->slots[cls][c->count[cls]++] = p_;
  else
    std::free(p_);
  p_ = nullptr;
  size_ = cap_ = 0;
}

}  // namespace kiln::nbd

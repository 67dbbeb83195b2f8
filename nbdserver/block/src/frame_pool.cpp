// A per-thread cache of coroutine frames (task.h: detail::allocate_frame, free_frame).
//
// A 4 KiB read through kiln-nbd runs about eight coroutines (the request's handler, the NBD
// read, the overlay's read and its backing file's, each cluster's part, the host file's read),
// each with a frame from the heap. At 90k requests a second on one connection, glibc's malloc
// and free of those frames were 7 to 9 % of the serving thread's CPU (`perf`, 2026-12-05):
// tcache keeps 7 blocks of a size, and 32 requests in flight free more than that, so most
// frees went through _int_free and the fast bins, with malloc_consolidate now and then. Frames
// are cached here by size class of 64 bytes up to 2 KiB, up to kPerClass of a class and
// kMaxBytes in all per thread; larger frames and the rest go to the allocator.
//
// A frame may end on another thread than the one that made it (a task resumed by a worker
// pool): it goes to that thread's cache, which is fine since a class's blocks all have the
// class's size. Not under AddressSanitizer, where reuse would hide a use after free.
#include <cstddef>
#include <cstdint>
#include <new>

#include "kiln/block/task.h"
#include "kiln/common/sanitizer.h"

namespace kiln::block::detail {

namespace {

constexpr size_t kGrain = 64;
constexpr size_t kClasses = 32;  // 64, 128, ..., 2048 bytes
constexpr uint32_t kPerClass = 64;
constexpr size_t kMaxBytes = 512 * 1024;

struct FreeFrame {
  FreeFrame* next;
};

// Plain data, so that it can be used (and is empty) after the thread's destructors ran.
struct Cache {
  FreeFrame* head[kClasses];
  uint32_t count[kClasses];
  size_t bytes;
  bool dead;
};
thread_local constinit Cache tls_cache{};

struct Reaper {
  ~Reaper() {
    for (size_t i = 0; i < kClasses; ++i)
      while (FreeFrame* f = tls_cache.head[i]) {
        tls_cache.head[i] = f->next;
        ::operator delete(f);
      }
    tls_cache = Cache{};
    tls_cache.dead = true;  // frames freed by later destructors go to the allocator
  }
};

Cache* cache() {
#if KILN_ASAN
  return nullptr;
#else
  if (tls_cache.dead) return nullptr;
  thread_local Reaper reaper;  // frees the cached frames when the thread ends
  return &tls_cache;
#endif
}

// The class of a frame of `size` bytes, or kClasses for one that is not cached.
size_t class_of(size_t size) { return size == 0 ? 0 : (size - 1) / kGrain; }

}  // namespace

void* allocate_frame(size_t size) {
  const size_t cls = class_of(size);
  if (KILN_ASAN || cls >= kClasses) return ::operator new(size);
  if (Cache* c = cache(); c && c->head[cls]) {
    FreeFrame* f = c->head[cls];
    c->head[cls] = f->next;
    --c->count[cls];
    c->bytes -= (cls + 1) * kGrain;
    return f;
  }
  return ::operator new((cls + 1) * kGrain);  // the class's size, so that any frame of it fits
}

void free_frame(void* p, size_t size) noexcept {
  const size_t cls = class_of(size);
  const size_t bytes = (cls + 1) * kGrain;
  if (Cache* c = cls < kClasses ? cache() : nullptr;
      c && c->count[cls] < kPerClass && c->bytes + bytes <= kMaxBytes) {
    auto* f = static_cast<FreeFrame*>(p);
    f->next = c->head[cls];
    c->head[cls] = f;
    ++c->count[cls];
    c->bytes += bytes;
    return;
  }
  ::operator delete(p);
}

size_t cached_frames() noexcept {
  size_t n = 0;
  if (!tls_cache.dead)
    for (uint32_t k : tls_cache.count) n += k;
  return n;
}

}  // namespace kiln::block::detail

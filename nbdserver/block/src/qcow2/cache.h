// A bounded cache of metadata slices (parts of L2 tables or refcount blocks), keyed by the
// slice's host offset. Slices in use are pinned by their shared_ptr; eviction takes the least
// recently used clean, unpinned slice. Dirty slices are written by the image's flush, which
// knows the order metadata must reach the disk in.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "kiln/block/task.h"

namespace kiln::block::qcow2 {

struct Slice {
  // An allocation whose L2 (or L1) update must not reach the disk before the flush that makes
  // its refcount and data durable: until then the entry is written with its old value.
  struct Pending {
    uint32_t index;
    uint64_t old_entry;
    uint64_t gen;
    uint64_t old_bitmap = 0;  // extended L2 entries
  };

  explicit Slice(uint64_t off, size_t bytes) : offset(off), data(new uint8_t[bytes]()) {}
  uint64_t offset;
  std::unique_ptr<uint8_t[]> data;
  bool dirty = false;
  bool loading = false;
  int load_error = 0;
  uint64_t last_use = 0;
  uint64_t gen = 0;  // refcount blocks: last generation that changed this slice
  std::vector<Pending> pending;
  std::unique_ptr<WaitList> loaded;  // waiters while `loading`
};
using SliceRef = std::shared_ptr<Slice>;

class SliceCache {
 public:
  SliceCache(size_t slice_bytes, size_t capacity_bytes)
      : slice_bytes_(slice_bytes), capacity_(std::max<size_t>(capacity_bytes / slice_bytes, 8)) {}

  size_t slice_bytes() const { return slice_bytes_; }

  // A cached (possibly still loading) slice, or null.
  SliceRef find(uint64_t offset) {
    auto it = map_.find(offset);
    if (it == map_.end()) return nullptr;
    it->second->last_use = ++tick_;
    return it->second;
  }
  // find() without a reference: for a look that does not suspend before it is done with the
  // slice (no copy of the shared_ptr, whose count is atomic, on the read path's cache hits).
  Slice* peek(uint64_t offset) {
    auto it = map_.find(offset);
    if (it == map_.end()) return nullptr;
    it->second->last_use = ++tick_;
    return it->second.get();
  }
  // Inserts a new zero-filled slice.
  SliceRef insert(uint64_t offset) {
    auto s = std::make_shared<Slice>(offset, slice_bytes_);
    s->last_use = ++tick_;
    map_[offset] = s;
    return s;
  }
  void erase(uint64_t offset) { map_.erase(offset); }
  // Evicts clean, unpinned slices until within capacity. Returns false if only dirty or
  // pinned slices are left and the cache is still over capacity.
  bool shrink() {
    while (map_.size() > capacity_) {
      auto victim = map_.end();
      for (auto it = map_.begin(); it != map_.end(); ++it) {
        const Slice& s = *it->second;
        if (s.dirty || s.loading || it->second.use_count() > 1) continue;
        if (victim == map_.end() || s.last_use < victim->second->last_use) victim = it;
      }
      if (victim == map_.end()) return false;
      map_.erase(victim);
    }
    return true;
  }
  bool over_capacity() const { return map_.size() > capacity_; }
  template <typename F>
  void for_each(F&& f) {
    for (auto& [off, s] : map_) f(s);
  }
  // Drops every slice of the range [start, end) (a table that was freed or moved).
  void drop_range(uint64_t start, uint64_t end) {
    std::erase_if(map_, [&](auto& kv) { return kv.first >= start && kv.first < end; });
  }

 private:
  size_t slice_bytes_;
  size_t capacity_;
  uint64_t tick_ = 0;
  std::unordered_map<uint64_t, SliceRef> map_;
};

}  // namespace kiln::block::qcow2

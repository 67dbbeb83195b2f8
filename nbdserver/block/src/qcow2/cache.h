// A bounded cache of metadata slices (parts of L2 tables or refcount blocks), keyed by the
// slice's host offset. Slices in use are pinned by their shared_ptr; eviction takes the least
// recently used clean, unpinned slice. Dirty slices are written by the image's flush, which
// knows the order metadata must reach the disk in.
//
// The slices are kept in order of use (a list, most recent first), so that eviction starts at
// the oldest and usually takes it: a scan of the whole cache for the oldest slice on every
// miss was 47 % of the CPU of 4 KiB random reads over an image whose L2 tables were twice the
// cache (kiln-block-bench, 4 GiB image of 4 KiB clusters, 8 MiB of L2 against 4 MiB).
#pragma once

#include <cstdint>
#include <list>
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
  std::list<Slice*>::iterator lru;  // its place in the cache's order of use
  uint64_t gen = 0;                 // refcount blocks: last generation that changed this slice
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
    touch(*it->second);
    return it->second;
  }
  // find() without a reference: for a look that does not suspend before it is done with the
  // slice (no copy of the shared_ptr, whose count is atomic, on the read path's cache hits).
  Slice* peek(uint64_t offset) {
    auto it = map_.find(offset);
    if (it == map_.end()) return nullptr;
    touch(*it->second);
    return it->second.get();
  }
  // Inserts a new zero-filled slice.
  SliceRef insert(uint64_t offset) {
    auto s = std::make_shared<Slice>(offset, slice_bytes_);
    auto [it, fresh] = map_.try_emplace(offset, s);
    if (!fresh) {  // replaces a slice of the same offset (not done today)
      lru_.erase(it->second->lru);
      it->second = s;
    }
    lru_.push_front(s.get());
    s->lru = lru_.begin();
    return s;
  }
  void erase(uint64_t offset) {
    auto it = map_.find(offset);
    if (it == map_.end()) return;
    lru_.erase(it->second->lru);
    map_.erase(it);
  }
  // Evicts clean, unpinned slices until within capacity. Returns false if only dirty or
  // pinned slices are left and the cache is still over capacity.
  bool shrink() {
    auto from = lru_.end();  // slices after this one (towards the newest) are not looked at again
    while (map_.size() > capacity_) {
      auto victim = map_.end();
      while (from != lru_.begin()) {
        const Slice& s = **--from;
        if (s.dirty || s.loading) continue;
        auto it = map_.find(s.offset);
        if (it->second.use_count() > 1) continue;  // pinned
        victim = it;
        break;
      }
      if (victim == map_.end()) return false;
      from = lru_.erase(from);
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
    std::erase_if(map_, [&](auto& kv) {
      if (kv.first < start || kv.first >= end) return false;
      lru_.erase(kv.second->lru);
      return true;
    });
  }

 private:
  size_t slice_bytes_;
  size_t capacity_;
  std::unordered_map<uint64_t, SliceRef> map_;
  std::list<Slice*> lru_;  // every slice of map_, the most recently used first

  void touch(Slice& s) { lru_.splice(lru_.begin(), lru_, s.lru); }
};

}  // namespace kiln::block::qcow2

// The qcow2 metadata cache's eviction (nbdserver/block/src/qcow2/cache.h): the least recently
// used clean, unpinned slice goes first; dirty, loading and pinned slices stay.
#include <gtest/gtest.h>

#include "qcow2/cache.h"

using kiln::block::qcow2::SliceCache;
using kiln::block::qcow2::SliceRef;

namespace {
constexpr size_t kSlice = 4096;
bool cached(SliceCache& c, uint64_t off) { return c.peek(off) != nullptr; }
}  // namespace

TEST(SliceCache, EvictsTheLeastRecentlyUsed) {
  SliceCache c(kSlice, 8 * kSlice);  // room for 8
  for (uint64_t i = 0; i < 8; ++i) c.insert(i * kSlice);
  EXPECT_TRUE(c.shrink());
  c.find(0);           // 0 is now the newest; 1 the oldest
  c.peek(1 * kSlice);  // no: 1 the newest, 2 the oldest
  c.insert(8 * kSlice);
  c.insert(9 * kSlice);
  EXPECT_TRUE(c.over_capacity());
  EXPECT_TRUE(c.shrink());
  EXPECT_FALSE(c.over_capacity());
  EXPECT_FALSE(cached(c, 2 * kSlice));
  EXPECT_FALSE(cached(c, 3 * kSlice));
  for (uint64_t off : {0, 1, 4, 5, 6, 7, 8, 9}) EXPECT_TRUE(cached(c, off * kSlice)) << off;
}

TEST(SliceCache, KeepsDirtyLoadingAndPinnedSlices) {
  SliceCache c(kSlice, 8 * kSlice);
  for (uint64_t i = 0; i < 8; ++i) c.insert(i * kSlice);
  c.find(0)->dirty = true;
  c.find(1 * kSlice)->loading = true;
  SliceRef pinned = c.find(2 * kSlice);
  // Uses 3, 4, 5, 6, 7, 3, 4, 5: newest first 5 4 3 7 6, then 2 1 0, the oldest.
  for (uint64_t i = 0; i < 8; ++i) c.peek((3 + i % 5) * kSlice);
  for (uint64_t i = 8; i < 12; ++i) c.insert(i * kSlice);
  EXPECT_TRUE(c.shrink());  // four to go: not 0, 1, 2, so 6, 7, 3 and 4
  for (uint64_t off : {0, 1, 2, 5}) EXPECT_TRUE(cached(c, off * kSlice)) << off;
  for (uint64_t off : {3, 4, 6, 7}) EXPECT_FALSE(cached(c, off * kSlice)) << off;

  // Only slices that must stay are left over capacity: shrink says so, and drops nothing.
  SliceCache small(kSlice, 8 * kSlice);
  std::vector<SliceRef> held;
  for (uint64_t i = 0; i < 10; ++i) held.push_back(small.insert(i * kSlice));
  EXPECT_FALSE(small.shrink());
  for (uint64_t i = 0; i < 10; ++i) EXPECT_TRUE(cached(small, i * kSlice)) << i;
  held.clear();
  EXPECT_TRUE(small.shrink());
  EXPECT_FALSE(small.over_capacity());
}

TEST(SliceCache, EraseAndDropRangeLeaveTheOrderWhole) {
  SliceCache c(kSlice, 8 * kSlice);
  for (uint64_t i = 0; i < 12; ++i) c.insert(i * kSlice);
  c.erase(0);
  c.erase(5 * kSlice);
  c.drop_range(8 * kSlice, 10 * kSlice);  // 8 and 9
  EXPECT_FALSE(cached(c, 0));
  EXPECT_FALSE(cached(c, 8 * kSlice));
  EXPECT_TRUE(c.shrink());  // 8 left, room for 8: nothing to evict
  for (uint64_t off : {1, 2, 3, 4, 6, 7, 10, 11}) EXPECT_TRUE(cached(c, off * kSlice)) << off;
  c.insert(12 * kSlice);
  EXPECT_TRUE(c.shrink());
  // peek() above made 1..11 newer in that order; 1 is the oldest.
  EXPECT_FALSE(cached(c, 1 * kSlice));
  EXPECT_TRUE(cached(c, 12 * kSlice));
}

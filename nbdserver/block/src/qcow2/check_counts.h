// Bookkeeping for the checker (check.cpp), sized by what the image file really allocates
// rather than by its length: a hostile image can be a sparse terabyte holding a few MiB of
// data, and the checker must not need memory or time in proportion to the terabyte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace kiln::block::qcow2 {

// The data extents of a file (SEEK_DATA/SEEK_HOLE): tables that lie in holes read as zeros
// and need not be read at all.
class FileExtents {
 public:
  // Lists the data extents of `fd` below `size`. Where the file system cannot tell (no
  // SEEK_DATA), or past kMaxExtents extents, everything counts as data: correct, only slower.
  void load(int fd, uint64_t size);

  // Calls fn(offset, length) for each part of [offset, offset + length) that holds data.
  template <typename F>
  void for_each_data(uint64_t offset, uint64_t length, F&& fn) const {
    const uint64_t end = offset + length;
    for (size_t i = first_ending_after(offset); i < extents_.size(); ++i) {
      const auto [a, b] = extents_[i];
      if (a >= end) break;
      const uint64_t from = a > offset ? a : offset, to = b < end ? b : end;
      if (from < to) fn(from, to - from);
    }
  }
  bool any_data(uint64_t offset, uint64_t length) const;

 private:
  static constexpr size_t kMaxExtents = 1u << 20;
  size_t first_ending_after(uint64_t offset) const;
  std::vector<std::pair<uint64_t, uint64_t>> extents_;  // sorted, disjoint [start, end)
};

// References per host cluster. Clusters below the dense limit (as far as the allocated part
// of the file can reference: every reference is an 8-byte table entry somewhere in it) are
// counted in an array; references beyond it, which only a hostile image makes, are listed and
// merged by finalize(), up to a limit. Counts saturate at UINT32_MAX.
class RefCounts {
 public:
  void reset(uint64_t dense_clusters, uint64_t max_sparse);
  // Returns false once the list of references beyond the dense part is full.
  bool add(uint64_t cluster, uint64_t n);
  // Sorts and merges the list; get() and for_each_nonzero() are valid from then on.
  void finalize();
  uint64_t get(uint64_t cluster) const;
  // Calls fn(cluster, count) for every cluster in [first, end) with a non-zero count.
  template <typename F>
  void for_each_nonzero(uint64_t first, uint64_t end, F&& fn) const {
    for (uint64_t c = first; c < end && c < dense_.size(); ++c)
      if (dense_[c]) fn(c, uint64_t{dense_[c]});
    for (size_t i = lower_bound(first); i < sparse_.size() && sparse_[i].first < end; ++i)
      fn(sparse_[i].first, sparse_[i].second);
  }
  // One past the last cluster with a non-zero count (0 if none).
  uint64_t end_of_nonzero() const;
  bool overflowed() const { return overflowed_; }

 private:
  size_t lower_bound(uint64_t cluster) const;
  std::vector<uint32_t> dense_;
  std::vector<std::pair<uint64_t, uint64_t>> sparse_;  // (cluster, count)
  uint64_t max_sparse_ = 0;
  bool overflowed_ = false;
};

}  // namespace kiln::block::qcow2

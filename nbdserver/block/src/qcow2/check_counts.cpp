#include "qcow2/check_counts.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>

namespace kiln::block::qcow2 {

void FileExtents::load(int fd, uint64_t size) {
  extents_.clear();
  uint64_t pos = 0;
  while (pos < size) {
    const off_t data = lseek(fd, off_t(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;         // only a hole is left
      extents_.emplace_back(pos, size);  // cannot tell: data
      break;
    }
    if (uint64_t(data) >= size) break;
    off_t hole = lseek(fd, data, SEEK_HOLE);
    uint64_t end = hole < 0 ? size : std::min<uint64_t>(uint64_t(hole), size);
    if (end <= uint64_t(data)) end = size;
    if (extents_.size() + 1 == kMaxExtents) end = size;  // too fragmented to list: data
    extents_.emplace_back(uint64_t(data), end);
    pos = end;
  }
}

size_t FileExtents::first_ending_after(uint64_t offset) const {
  auto it = std::upper_bound(extents_.begin(), extents_.end(), offset,
                             [](uint64_t off, const auto& e) { return off < e.second; });
  return size_t(it - extents_.begin());
}

bool FileExtents::any_data(uint64_t offset, uint64_t length) const {
  const size_t i = first_ending_after(offset);
  return i < extents_.size() && extents_[i].first < offset + length;
}

void RefCounts::reset(uint64_t dense_clusters, uint64_t max_sparse) {
  dense_.assign(dense_clusters, 0);
  sparse_.clear();
  max_sparse_ = max_sparse;
  overflowed_ = false;
}

bool RefCounts::add(uint64_t cluster, uint64_t n) {
  if (cluster < dense_.size()) {
    const uint64_t v = uint64_t{dense_[cluster]} + n;
    dense_[cluster] = uint32_t(std::min<uint64_t>(v, UINT32_MAX));
    return true;
  }
  if (overflowed_) return false;
  if (sparse_.size() >= max_sparse_) {
    finalize();  // merge repeated clusters; give up if that does not make room
    if (sparse_.size() >= max_sparse_ / 2) {
      overflowed_ = true;
      return false;
    }
  }
  sparse_.emplace_back(cluster, n);
  return true;
}

void RefCounts::finalize() {
  std::sort(sparse_.begin(), sparse_.end());
  size_t out = 0;
  for (size_t i = 0; i < sparse_.size(); ++i) {
    if (out && sparse_[out - 1].first == sparse_[i].first) {
      const uint64_t v = sparse_[out - 1].second + sparse_[i].second;
      sparse_[out - 1].second = std::min<uint64_t>(v, UINT32_MAX);
    } else {
      sparse_[out++] = sparse_[i];
    }
  }
  sparse_.resize(out);
}

size_t RefCounts::lower_bound(uint64_t cluster) const {
  auto it = std::lower_bound(sparse_.begin(), sparse_.end(), cluster,
                             [](const auto& e, uint64_t c) { return e.first < c; });
  return size_t(it - sparse_.begin());
}

uint64_t RefCounts::get(uint64_t cluster) const {
  if (cluster < dense_.size()) return dense_[cluster];
  const size_t i = lower_bound(cluster);
  return i < sparse_.size() && sparse_[i].first == cluster ? sparse_[i].second : 0;
}

uint64_t RefCounts::end_of_nonzero() const {
  if (!sparse_.empty()) return sparse_.back().first + 1;
  for (uint64_t c = dense_.size(); c-- > 0;)
    if (dense_[c]) return c + 1;
  return 0;
}

}  // namespace kiln::block::qcow2

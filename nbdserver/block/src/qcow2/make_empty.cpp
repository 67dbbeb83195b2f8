// Emptying an overlay after kiln-img commit: every L2 entry of the active table becomes
// unallocated (the guest then reads the backing file everywhere) and the clusters it held are
// freed at the flush, as QEMU's bdrv_make_empty() leaves a committed overlay.
#include <cerrno>
#include <cstring>

#include "kiln/block/qcow2.h"
#include "qcow2/image.h"

namespace kiln::block::qcow2 {

// The caller holds the image alone (kiln-img opened it for writing, nothing else is in
// flight), so no cluster lock or in-place write pin can be outstanding.
Task<int> Image::make_empty() {
  if (read_only_) co_return -EPERM;
  if (poisoned_) co_return -EIO;
  const uint64_t clusters = (h_.size + cs_ - 1) >> cb_;
  for (uint32_t l1i = 0; l1i < l1_.size(); ++l1i) {
    if (L1Entry{l1_[l1i]}.l2_offset() == 0) continue;
    const uint64_t first = uint64_t(l1i) * l2_entries_;
    const uint64_t last = std::min(clusters, first + l2_entries_);
    for (uint64_t gc = first; gc < last; ++gc) {
      bool hit;
      L2Entry m = l2_entry_cached(gc, &hit);
      if (!hit)
        if (int rc = co_await l2_entry(gc, &m); rc < 0) co_return rc;
      if (m.empty()) continue;
      // A table shared with a snapshot is copied first; the snapshot keeps its clusters.
      if (int rc = co_await prepare_l2(l1i); rc < 0) co_return rc;
      if (int rc = co_await l2_entry(gc, &m); rc < 0) co_return rc;
      if (int rc = co_await set_l2_entry(gc, 0, 0, false); rc < 0) co_return rc;
      if (m.allocated()) defer_free(m.raw());
    }
  }
  co_return co_await flush();
}

Task<int> make_empty(BlockDevice& dev) {
  auto* img = dynamic_cast<Image*>(&dev);
  if (!img) co_return -ENOTSUP;
  co_return co_await img->make_empty();
}

}  // namespace kiln::block::qcow2

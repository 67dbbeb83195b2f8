// Preallocation of a new image (create/convert -o preallocation=metadata|falloc|full), laid out
// as QEMU lays it out: for each L2 table in turn, the table and then the host clusters of the
// guest clusters it maps, contiguous. The entries point at those clusters (with extended L2
// entries the subclusters stay unallocated, as QEMU leaves them, so a backing file still
// shows through); the file is extended over them, its blocks reserved (falloc) or written
// with zeros (full).
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "qcow2/image.h"

namespace kiln::block::qcow2 {

Task<int> Image::preallocate(Preallocation mode) {
  if (mode == Preallocation::kOff) co_return 0;
  if (read_only_) co_return -EPERM;
  if (poisoned_) co_return -EIO;
  const uint64_t clusters = (h_.size + cs_ - 1) >> cb_;
  uint64_t file_end = 0;
  std::vector<uint8_t> zeros;
  if (mode == Preallocation::kFull) zeros.resize(std::min<uint64_t>(uint64_t{1} << 20, cs_ * 16));
  for (uint64_t gc = 0; gc < clusters;) {
    const uint64_t n = std::min(l2_entries_ - gc % l2_entries_, clusters - gc);
    if (int rc = co_await prepare_l2(uint32_t(gc / l2_entries_)); rc < 0) co_return rc;
    uint64_t host;
    if (int rc = co_await alloc_clusters(n, &host); rc < 0) co_return rc;
    for (uint64_t i = 0; i < n; ++i) {
      L2Entry m;
      if (int rc = co_await l2_entry(gc + i, &m); rc < 0) co_return rc;
      if (m.allocated()) co_return -EEXIST;  // only a new image is preallocated
      if (int rc = co_await set_l2_entry(gc + i, L2Entry::encode_normal(host + (i << cb_)),
                                         extended_ ? 0 : kBitmapAllAlloc, true);
          rc < 0)
        co_return rc;
    }
    const uint64_t len = n << cb_;
    if (mode == Preallocation::kFalloc) {
      if (int rc = co_await fd_.fallocate(0, host, len); rc < 0) co_return rc;
    } else if (mode == Preallocation::kFull) {
      for (uint64_t off = 0; off < len; off += zeros.size())
        if (int rc = co_await fd_.write_full(
                std::span<const uint8_t>(zeros).first(std::min<uint64_t>(zeros.size(), len - off)),
                host + off);
            rc < 0)
          co_return rc;
      unsynced_ = true;
    }
    file_end = std::max(file_end, host + len);
    gc += n;
  }
  // Metadata only: the clusters exist as a hole at the end of the file (a control-plane step
  // of creating an image, like create.cpp's truncation).
  struct stat st;
  if (::fstat(fd_.get(), &st) != 0) co_return -errno;
  if (uint64_t(st.st_size) < file_end && ::ftruncate(fd_.get(), off_t(file_end)) != 0)
    co_return -errno;
  co_return co_await flush();
}

Task<int> preallocate(BlockDevice& dev, Preallocation mode) {
  auto* img = dynamic_cast<Image*>(&dev);
  if (!img) co_return -ENOTSUP;
  co_return co_await img->preallocate(mode);
}

}  // namespace kiln::block::qcow2

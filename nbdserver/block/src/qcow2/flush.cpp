// Ordered write-back of metadata, and resize.
//
// A flush makes every write completed before it durable, in three steps:
//   1. write the dirty refcount blocks, then fdatasync (refcounts and guest data are durable);
//   2. write the dirty L2 slices and L1 chunks, then fdatasync. Mapping changes made after
//      step 1 began are written with their old value (Slice::Pending), since their refcount or
//      data may not be durable yet;
//   3. release the clusters that the tables written in step 2 no longer reference.
// At every instant the file is consistent: a table never points at a cluster whose refcount
// or contents are not on disk, and a refcount never drops while a table on disk points there.
//
// Between flushes, commit() puts mapping changes into the file before a write is acknowledged,
// so that what a client was told is written survives the death of the process; the next flush
// makes it durable. On version 3 images it marks the image dirty first (see commit()).
//
// A failed write-back poisons the image. Linux reports a failed write-back once: fdatasync
// returns EIO, the pages are marked clean (their data may never reach the disk), and the next
// fdatasync succeeds. Our slices are clean by then too. Retrying would report lost data as
// durable, or write tables that point at clusters whose refcounts never reached the disk. So
// after a failed metadata write of a flush or commit, or a failed fdatasync, the image writes
// nothing more: every later write, flush and FUA write fails with -EIO (reads keep working) and
// close leaves the dirty bit set, so that the next writable open recounts the refcounts.
#include <cerrno>
#include <cstring>

#include "qcow2/image.h"

namespace kiln::block::qcow2 {

namespace {
Task<void> write_one(HostFile& file, std::span<const uint8_t> data, uint64_t off, int* err) {
  int rc = co_await file.write_full(data, off);
  if (rc < 0 && *err == 0) *err = rc;
}
}  // namespace

Task<int> Image::write_buffers(std::vector<std::pair<uint64_t, std::vector<uint8_t>>>& writes) {
  int err = 0;
  if (fd_.can_write_now()) {
    // Slices of a few KiB into pages the cache holds: copied on this thread, one pwrite
    // each, they cost a fifth less CPU per copy-on-write than as io_uring writes, which ext4
    // hands to io-wq workers one by one (docs/block-layer.md, "Metadata writes").
    for (auto& [off, data] : writes)
      if (int rc = fd_.write_now(data, off); rc < 0 && err == 0) err = rc;
    co_return poison(err);
  }
  WaitGroup group(r_);
  for (auto& [off, data] : writes) r_.spawn(write_one(fd_, data, off, &err), &group);
  co_await group.wait();
  co_return poison(err);
}

Task<int> Image::write_meta(std::span<const uint8_t> data, uint64_t offset) {
  co_return poison(co_await fd_.write_full(data, offset));
}

Task<int> Image::sync_file() { co_return poison(co_await fd_.fsync(true)); }

Task<int> Image::write_refblocks() {
  co_await meta_write_mutex_.lock();
  LockGuard guard(meta_write_mutex_);
  std::vector<SliceRef> slices;
  std::vector<std::pair<uint64_t, std::vector<uint8_t>>> writes;
  const size_t sb = rb_cache_.slice_bytes();
  rb_cache_.for_each([&](const SliceRef& s) {
    if (!s->dirty || s->loading) return;
    slices.push_back(s);
    writes.emplace_back(s->offset, std::vector<uint8_t>(s->data.get(), s->data.get() + sb));
    s->dirty = false;
  });
  if (writes.empty()) co_return 0;
  if (int rc = co_await write_buffers(writes); rc < 0) {
    for (auto& s : slices) s->dirty = true;
    co_return rc;
  }
  co_return int(writes.size());
}

Task<int> Image::write_l2_and_l1(uint64_t safe) {
  co_await meta_write_mutex_.lock();
  LockGuard guard(meta_write_mutex_);
  auto settled = [safe](const Slice::Pending& p) { return p.gen <= safe; };
  std::vector<SliceRef> slices;
  std::vector<std::pair<uint64_t, std::vector<uint8_t>>> writes;
  const size_t sb = l2_cache_.slice_bytes();
  l2_cache_.for_each([&](const SliceRef& s) {
    if (!s->dirty || s->loading) return;
    std::vector<uint8_t> copy(s->data.get(), s->data.get() + sb);
    for (auto p = s->pending.rbegin(); p != s->pending.rend(); ++p)
      if (p->gen > safe) {
        store_be64(&copy[p->index * l2e_bytes_], p->old_entry);
        if (extended_) store_be64(&copy[p->index * l2e_bytes_ + 8], p->old_bitmap);
      }
    std::erase_if(s->pending, settled);
    s->dirty = !s->pending.empty();
    slices.push_back(s);
    writes.emplace_back(s->offset, std::move(copy));
  });

  std::set<uint64_t> chunks = std::move(l1_dirty_chunks_);
  l1_dirty_chunks_.clear();
  for (uint64_t chunk : chunks) {
    const uint64_t first = chunk * 512, last = std::min<uint64_t>(l1_.size(), first + 512);
    if (first >= last) continue;
    std::vector<uint8_t> bytes((last - first) * 8);
    for (uint64_t i = first; i < last; ++i) store_be64(&bytes[(i - first) * 8], l1_[i]);
    for (auto p = l1_pending_.rbegin(); p != l1_pending_.rend(); ++p) {
      if (p->index < first || p->index >= last || p->gen <= safe) continue;
      store_be64(&bytes[(p->index - first) * 8], p->old_entry);
      l1_dirty_chunks_.insert(chunk);
    }
    writes.emplace_back(h_.l1_table_offset + first * 8, std::move(bytes));
  }
  std::erase_if(l1_pending_, settled);

  if (writes.empty()) co_return 0;
  if (int rc = co_await write_buffers(writes); rc < 0) {
    for (auto& s : slices) s->dirty = true;
    l1_dirty_chunks_.insert(chunks.begin(), chunks.end());
    co_return rc;
  }
  co_return int(writes.size());
}

Task<int> Image::flush() {
  if (read_only_ || closed_) co_return 0;
  if (poisoned_) co_return -EIO;
  co_await flush_mutex_.lock();
  LockGuard guard(flush_mutex_);
  co_return co_await flush_locked();
}

Task<int> Image::flush_locked() {
  if (poisoned_) co_return -EIO;
  in_flush_ = true;
  struct Reset {
    bool* flag;
    ~Reset() { *flag = false; }
  } reset{&in_flush_};

  const uint64_t snapshot = gen_;
  bool sync = unsynced_;
  unsynced_ = false;
  int n = co_await write_refblocks();
  if (n > 0) sync = true;
  if (n >= 0 && sync) n = co_await sync_file();
  if (n < 0) {
    unsynced_ = true;
    co_return n;
  }
  durable_gen_ = std::max(durable_gen_, snapshot);

  n = co_await write_l2_and_l1(durable_gen_);
  if (n > 0 || (n == 0 && tables_unsynced_)) n = co_await sync_file();
  if (n < 0) co_return n;
  tables_unsynced_ = false;
  committed_gen_ = std::max(committed_gen_, snapshot);

  co_return co_await apply_frees(snapshot);
}

Task<int> Image::commit(uint64_t upto) {
  // Group commit: whoever holds the lock writes everything changed so far; those queued
  // behind it usually find their changes already in the file.
  while (committed_gen_ < upto) {
    co_await flush_mutex_.lock();
    LockGuard guard(flush_mutex_);
    if (poisoned_) co_return -EIO;  // nothing is written after a failed write-back
    if (committed_gen_ >= upto) break;
    if (h_.version >= 3) {
      // Version 3: mark the image dirty once (durably), then write refcounts and tables in
      // that order without syncing. A killed process leaves them consistent in the file;
      // after a power failure the dirty bit makes the next open recount the refcounts.
      if (!(h_.incompatible_features & kIncompatDirty)) {
        h_.incompatible_features |= kIncompatDirty;
        if (int rc = co_await write_header_fields(hdr::kIncompatibleFeatures, 8); rc < 0) {
          h_.incompatible_features &= ~kIncompatDirty;
          co_return rc;
        }
        set_dirty_ = true;
      }
      const uint64_t snapshot = gen_;
      int n = co_await write_refblocks();
      if (n >= 0) n = co_await write_l2_and_l1(snapshot);
      if (n < 0) co_return n;
      if (n > 0) tables_unsynced_ = true;
      committed_gen_ = std::max(committed_gen_, snapshot);
      continue;
    }
    // Version 2 has no dirty bit: the refcounts must be on disk before the tables.
    const uint64_t snapshot = gen_;
    unsynced_ = false;
    int n = co_await write_refblocks();
    if (n >= 0) n = co_await sync_file();
    if (n < 0) {
      unsynced_ = true;
      co_return n;
    }
    durable_gen_ = std::max(durable_gen_, snapshot);
    n = co_await write_l2_and_l1(snapshot);
    if (n < 0) co_return n;
    if (n > 0) tables_unsynced_ = true;
    committed_gen_ = std::max(committed_gen_, snapshot);
  }
  co_return 0;
}

Task<int> Image::make_room(SliceCache& cache) {
  // While a flush (or a resize, which holds the flush lock and may allocate) is running, the
  // cache may exceed its bound for a moment: waiting for it here could deadlock.
  // A poisoned image writes nothing back: its dirty slices stay, and the cache stays over its
  // bound (no new metadata changes are made once poisoned, so it does not grow further).
  if (cache.shrink() || in_flush_ || read_only_ || poisoned_ || flush_mutex_.locked()) co_return 0;
  // Only dirty slices are left: write them back in order, then evict.
  co_await flush_mutex_.lock();
  LockGuard guard(flush_mutex_);
  int rc = co_await flush_locked();
  cache.shrink();
  co_return rc;
}

Task<int> Image::resize(uint64_t new_size) {
  if (read_only_) co_return -EPERM;
  if (poisoned_) co_return -EIO;
  if (new_size < h_.size) co_return -ENOTSUP;
  if (new_size > kMaxVirtualSize) co_return -EFBIG;
  if (new_size == h_.size) co_return 0;
  co_await flush_mutex_.lock();
  LockGuard guard(flush_mutex_);

  const uint64_t per_l2 = cs_ * l2_entries_;
  const uint64_t needed = (new_size + per_l2 - 1) / per_l2;
  if (needed > l1_.size()) {
    if (needed * 8 > kMaxL1Bytes) co_return -EFBIG;
    // Settle everything first, so the new table is a plain copy of durable state.
    if (int rc = co_await flush_locked(); rc < 0) co_return rc;
    if (int rc = co_await flush_locked(); rc < 0) co_return rc;
    const uint64_t clusters = (needed * 8 + cs_ - 1) / cs_;
    std::vector<uint8_t> bytes(clusters * cs_, 0);
    for (size_t i = 0; i < l1_.size(); ++i) store_be64(&bytes[i * 8], l1_[i]);
    for (auto p = l1_pending_.rbegin(); p != l1_pending_.rend(); ++p)
      if (p->gen > durable_gen_) store_be64(&bytes[p->index * 8], p->old_entry);
    uint64_t host;
    if (int rc = co_await alloc_clusters(clusters, &host); rc < 0) co_return rc;
    if (int rc = co_await write_refblocks(); rc < 0) co_return rc;
    if (int rc = co_await write_meta(bytes, host); rc < 0) co_return rc;
    if (int rc = co_await sync_file(); rc < 0) co_return rc;
    const uint64_t old_offset = h_.l1_table_offset;
    const uint64_t old_clusters = (uint64_t(h_.l1_size) * 8 + cs_ - 1) / cs_;
    h_.l1_size = uint32_t(needed);
    h_.l1_table_offset = host;
    if (int rc = co_await write_header_fields(hdr::kL1Size, 12); rc < 0) co_return rc;
    l1_.resize(needed, 0);
    if (old_clusters)
      if (int rc = co_await free_now(old_offset, old_clusters * cs_); rc < 0) co_return rc;
  }
  const uint64_t old_size = h_.size;
  h_.size = new_size;
  if (int rc = co_await write_header_fields(hdr::kSize, 8); rc < 0) {
    h_.size = old_size;
    co_return rc;
  }
  co_return 0;
}

}  // namespace kiln::block::qcow2

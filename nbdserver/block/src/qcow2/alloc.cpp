// Refcounts and allocation. Allocation is serialised by alloc_mutex_ (it scans and updates
// refcount blocks across suspensions); the guest data written into new clusters is not.
//
// Ordering rules kept here (see docs/block-layer.md):
// - a cluster's refcount is raised in the cache before anything points at it, and the flush
//   writes refcount blocks (and syncs) before the tables that point at new clusters;
// - a new refcount block is written and synced before the refcount table entry that points at
//   it; a new refcount table is complete and synced before the header points at it;
// - a cluster that a table stops referencing is released only after that table is on disk.
#include <cerrno>
#include <cstring>

#include "qcow2/image.h"

namespace kiln::block::qcow2 {

Task<int> Image::refcount(uint64_t cluster, uint64_t* value) {
  *value = 0;
  const uint64_t rti = cluster / rb_entries_;
  if (rti >= reftable_.size()) co_return 0;
  const RefTableEntry rte{reftable_[rti]};
  if (rte.reserved_bits()) co_return -EIO;
  const uint64_t rb = rte.block_offset();
  if (!rb) co_return 0;
  if (rb % cs_) co_return -EIO;
  const uint64_t idx = cluster % rb_entries_;
  const uint64_t sb = rb_cache_.slice_bytes();
  const uint64_t per_slice = sb * 8 / h_.refcount_bits();
  SliceRef s;
  if (int rc = co_await load_slice(rb_cache_, rb + idx / per_slice * sb, &s); rc < 0) co_return rc;
  *value = get_refcount(s->data.get(), idx % per_slice, h_.refcount_order);
  co_return 0;
}

Task<int> Image::add_refcount(uint64_t cluster, int64_t delta) {
  const uint64_t rti = cluster / rb_entries_;
  if (rti >= reftable_.size() || !(RefTableEntry{reftable_[rti]}.block_offset())) {
    if (delta < 0) co_return -EIO;  // releasing a cluster that has no refcount
    if (int rc = co_await ensure_refblock(cluster); rc < 0) co_return rc;
  }
  if (RefTableEntry{reftable_[rti]}.reserved_bits()) co_return -EIO;
  const uint64_t rb = RefTableEntry{reftable_[rti]}.block_offset();
  if (rb % cs_) co_return -EIO;
  const uint64_t idx = cluster % rb_entries_;
  const uint64_t sb = rb_cache_.slice_bytes();
  const uint64_t per_slice = sb * 8 / h_.refcount_bits();
  SliceRef s;
  if (int rc = co_await load_slice(rb_cache_, rb + idx / per_slice * sb, &s); rc < 0) co_return rc;
  const uint64_t v = get_refcount(s->data.get(), idx % per_slice, h_.refcount_order);
  if (delta < 0 && v < uint64_t(-delta)) co_return -EIO;
  if (delta > 0 && max_refcount(h_.refcount_order) - v < uint64_t(delta)) co_return -ERANGE;
  const uint64_t nv = v + uint64_t(delta);
  set_refcount(s->data.get(), idx % per_slice, h_.refcount_order, nv);
  s->dirty = true;
  if (nv == 0 && cluster < free_hint_) free_hint_ = cluster;
  // A freed cluster can be reused for anything: compressed data no longer goes after its end.
  if (nv == 0 && compressed_tail_ && cluster == (compressed_tail_ - 1) >> cb_) compressed_tail_ = 0;
  co_return 0;
}

Task<int> Image::alloc_clusters(uint64_t count, uint64_t* host_offset) {
  co_await alloc_mutex_.lock();
  LockGuard guard(alloc_mutex_);
  co_return co_await alloc_clusters_locked(count, host_offset);
}

Task<int> Image::alloc_clusters_locked(uint64_t count, uint64_t* host_offset) {
  for (;;) {
    uint64_t start = free_hint_, run = 0, i = free_hint_;
    bool retry = false, prefix_used = true;
    while (run < count) {
      const uint64_t rti = i / rb_entries_;
      if (rti >= reftable_.size() || !(RefTableEntry{reftable_[rti]}.block_offset())) {
        // No refcount block yet: create it (it takes one of the clusters it describes).
        if (int rc = co_await ensure_refblock(i); rc < 0) co_return rc;
        retry = true;
        break;
      }
      uint64_t v;
      if (int rc = co_await refcount(i, &v); rc < 0) co_return rc;
      if (v == 0 && holds_fixed_metadata(i)) co_return -EIO;  // the refcounts are corrupt
      if (v == 0) {
        if (run++ == 0) start = i;
        prefix_used = false;
      } else {
        run = 0;
        if (prefix_used) free_hint_ = i + 1;
      }
      ++i;
    }
    if (retry) continue;
    for (uint64_t c = start; c < start + count; ++c)
      if (int rc = co_await add_refcount(c, 1); rc < 0) co_return rc;
    if (start == free_hint_) free_hint_ = start + count;
    *host_offset = start << cb_;
    co_return 0;
  }
}

// A cluster that always has a reference but whose refcount reads zero means the refcounts are
// corrupt (a hostile or damaged image): handing it out would overwrite the header or a table
// with guest data. This is QEMU's metadata overlap check for the structures known without
// reading anything; the allocator fails the request with EIO instead.
bool Image::holds_fixed_metadata(uint64_t cluster) const {
  return overlaps_fixed_metadata(cluster << cb_, 1);
}

bool Image::overlaps_fixed_metadata(uint64_t host, uint64_t len) const {
  if (len == 0) return false;
  const uint64_t first = host >> cb_, last = (host + len - 1) >> cb_;
  auto meets = [&](uint64_t off, uint64_t bytes) {
    return bytes && first <= (off + bytes - 1) >> cb_ && off >> cb_ <= last;
  };
  return first == 0 || meets(h_.l1_table_offset, uint64_t(h_.l1_size) * 8) ||
         meets(h_.refcount_table_offset, uint64_t(h_.refcount_table_clusters) << cb_) ||
         (h_.nb_snapshots && meets(h_.snapshots_offset, 1)) ||
         (h_.crypt_method == kCryptLuks && meets(h_.crypto_offset, h_.crypto_length));
}

Task<int> Image::ensure_refblock(uint64_t cluster) {
  const uint64_t rti = cluster / rb_entries_;
  if (rti >= reftable_.size())
    if (int rc = co_await grow_reftable(rti + 1); rc < 0) co_return rc;
  const RefTableEntry rte{reftable_[rti]};
  if (rte.reserved_bits()) co_return -EIO;
  if (rte.block_offset()) co_return 0;
  // Nothing in this block's range is allocated (its refcounts are all zero), so the block can
  // live in the cluster asked about and describe itself. A range without a block that holds
  // the header or a table is a corrupt refcount table: the block would overwrite it (and, at
  // cluster 0, leave the entry zero, so the allocator would ask again forever).
  if (holds_fixed_metadata(cluster)) co_return -EIO;
  std::vector<uint8_t> block(cs_, 0);
  set_refcount(block.data(), cluster % rb_entries_, h_.refcount_order, 1);
  const uint64_t off = cluster << cb_;
  if (int rc = co_await write_meta(block, off); rc < 0) co_return rc;
  if (int rc = co_await sync_file(); rc < 0) co_return rc;
  uint8_t be[8];
  store_be64(be, off);
  if (int rc = co_await write_meta(be, h_.refcount_table_offset + rti * sizeof(uint64_t)); rc < 0)
    co_return rc;
  if (int rc = co_await sync_file(); rc < 0) co_return rc;
  reftable_[rti] = off;
  rb_cache_.drop_range(off, off + cs_);
  co_return 0;
}

Task<int> Image::grow_reftable(uint64_t needed_entries) {
  const uint64_t per_cluster = cs_ / 8;
  const uint64_t old_clusters = h_.refcount_table_clusters;
  uint64_t new_clusters =
      std::max((needed_entries + per_cluster - 1) / per_cluster, old_clusters * 2);
  // Room for the table and for the refcount blocks that must describe it.
  const uint64_t extra = (new_clusters + 2) / rb_entries_ + 2;
  if (new_clusters * cs_ > kMaxRefTableBytes) co_return -EFBIG;

  // Find free space for table + blocks: clusters without a refcount block are free.
  uint64_t start = free_hint_, run = 0;
  for (uint64_t i = free_hint_; run < new_clusters + extra; ++i) {
    uint64_t v;
    if (int rc = co_await refcount(i, &v); rc < 0) co_return rc;
    if (v == 0 && holds_fixed_metadata(i)) co_return -EIO;  // the refcounts are corrupt
    if (v == 0) {
      if (run++ == 0) start = i;
    } else {
      run = 0;
    }
  }
  const uint64_t table_start = start, table_end = start + new_clusters;
  std::vector<uint64_t> table(new_clusters * per_cluster, 0);
  std::copy(reftable_.begin(), reftable_.end(), table.begin());

  // New refcount blocks go right after the table, one per uncovered block index.
  std::vector<std::pair<uint64_t, std::vector<uint8_t>>> blocks;  // (cluster, content)
  uint64_t next_block = table_end;
  auto block_for = [&](uint64_t cluster) -> uint8_t* {
    const uint64_t location = table[cluster / rb_entries_] >> cb_;
    for (auto& [c, content] : blocks)
      if (c == location) return content.data();
    return nullptr;
  };
  // Iterate: every cluster of [table_start, next_block) needs a refcount.
  for (uint64_t c = table_start; c < next_block || c < table_end; ++c) {
    const uint64_t rti = c / rb_entries_;
    if (table[rti] == 0) {
      if (next_block >= table_end + extra) co_return -EFBIG;
      table[rti] = next_block << cb_;
      blocks.emplace_back(next_block, std::vector<uint8_t>(cs_, 0));
      ++next_block;
    }
  }
  // Refcounts: clusters in new blocks are set there; clusters in existing blocks go through
  // the cache and are written below, before the header switches.
  for (uint64_t c = table_start; c < next_block; ++c) {
    if (uint8_t* b = block_for(c)) {
      set_refcount(b, c % rb_entries_, h_.refcount_order, 1);
    } else if (int rc = co_await add_refcount(c, 1); rc < 0) {
      co_return rc;
    }
  }
  for (auto& [c, content] : blocks)
    if (int rc = co_await write_meta(content, c << cb_); rc < 0) co_return rc;
  std::vector<uint8_t> raw(table.size() * 8);
  for (size_t i = 0; i < table.size(); ++i) store_be64(&raw[i * 8], table[i]);
  if (int rc = co_await write_meta(raw, table_start << cb_); rc < 0) co_return rc;
  if (int rc = co_await write_refblocks(); rc < 0) co_return rc;
  if (int rc = co_await sync_file(); rc < 0) co_return rc;

  const uint64_t old_offset = h_.refcount_table_offset;
  h_.refcount_table_offset = table_start << cb_;
  h_.refcount_table_clusters = uint32_t(new_clusters);
  if (int rc = co_await write_header_fields(hdr::kRefcountTableOffset, 12); rc < 0) {
    h_.refcount_table_offset = old_offset;
    h_.refcount_table_clusters = uint32_t(old_clusters);
    co_return rc;
  }
  reftable_ = std::move(table);
  if (free_hint_ >= table_start && free_hint_ < next_block) free_hint_ = next_block;
  for (uint64_t c = 0; c < old_clusters; ++c)
    if (int rc = co_await add_refcount((old_offset >> cb_) + c, -1); rc < 0) co_return rc;
  co_return 0;
}

Task<int> Image::prepare_l2(uint32_t l1i) {
  for (;;) {
    auto it = busy_l1_.find(l1i);
    if (it == busy_l1_.end()) break;
    co_await it->second->wait();
  }
  const L1Entry l1e{l1_[l1i]};
  if (l1e.writable_in_place()) co_return 0;
  if (l1e.reserved_bits()) co_return -EIO;
  busy_l1_.emplace(l1i, std::make_unique<WaitList>(r_));
  struct Release {
    Image* img;
    uint32_t i;
    ~Release() {
      auto it = img->busy_l1_.find(i);
      auto w = std::move(it->second);
      img->busy_l1_.erase(it);
      w->notify_all();
    }
  } release{this, l1i};

  // A new table is zeros; a table shared with a snapshot is copied (its entries keep their
  // clusters, whose refcounts already count both references).
  const uint64_t old = l1e.l2_offset();
  std::vector<uint8_t> table(cs_, 0);
  if (old) {
    if (int rc = co_await fd_.read_full(table, old); rc < 0) co_return rc;
  }
  uint64_t host;
  if (int rc = co_await alloc_clusters(1, &host); rc < 0) co_return rc;
  if (int rc = co_await fd_.write_full(table, host); rc < 0) {
    co_await free_now(host, cs_);
    co_return rc;
  }
  unsynced_ = true;
  l1_[l1i] = L1Entry::encode(host);
  ++gen_;
  l1_pending_.push_back({l1i, l1e.raw, gen_});
  l1_dirty_chunks_.insert(l1i / 512);
  if (old) defer_free(old);
  co_return 0;
}

void Image::defer_free(uint64_t entry) { frees_.push_back({entry, gen_}); }

Task<int> Image::free_now(uint64_t host_offset, uint64_t length) {
  int err = 0;
  for (uint64_t c = host_offset >> cb_; c <= (host_offset + length - 1) >> cb_; ++c)
    if (int rc = co_await add_refcount(c, -1); rc < 0 && err == 0) err = rc;
  co_return err;
}

Task<int> Image::apply_frees(uint64_t upto_gen) {
  std::vector<PendingFree> later;
  std::vector<PendingFree> now;
  for (auto& f : frees_) {
    // A cluster with an in-place write in flight is freed at a later flush (zero_cluster waits
    // for those writes before it changes an entry, so this is a second line of defence).
    const L2Entry e(f.entry, cb_);
    const bool busy = !e.compressed() && pinned(e.host());
    (f.gen <= upto_gen && !busy ? now : later).push_back(f);
  }
  frees_ = std::move(later);
  int err = 0;
  for (auto& f : now) {
    int rc;
    const L2Entry e(f.entry, cb_);
    if (e.compressed()) {
      CompressedRef c = e.compressed_range();
      rc = co_await free_now(c.offset, c.length);
    } else {
      rc = co_await free_now(e.host(), cs_);
    }
    if (rc < 0 && err == 0) err = rc;
  }
  co_return err;
}

}  // namespace kiln::block::qcow2

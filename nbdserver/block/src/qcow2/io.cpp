// The guest data path: mapping lookups, reads, writes with copy-on-write, zeroing, discard and
// block status. Data I/O never holds a lock; only allocation of a guest cluster is exclusive.
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>

#include "qcow2/image.h"

namespace kiln::block::qcow2 {

namespace {

bool is_zero(L2Kind k) { return k == L2Kind::kZeroPlain || k == L2Kind::kZeroAlloc; }

// Reads of two clusters of these kinds can be one read (or one memset, or one backing read).
bool same_read(L2Kind a, L2Kind b) {
  if (is_zero(a)) return is_zero(b);
  return a == b;
}

// What zero_partial writes: `n` zeros (n at most a cluster) from one read-only buffer of the
// largest cluster for the whole process, calloc'd (fresh pages that nothing writes), not a new
// zeroed vector per call. Under AddressSanitizer, whose allocator maps every block above 128 KiB
// afresh, the vector faulted in new pages at every call: 74k page faults in one kiln-io run of
// block.random_ops_serial (1500 commands on 2 MiB clusters).
std::span<const uint8_t> shared_zeros(uint64_t n) {
  static const auto* const buf = static_cast<const uint8_t*>(std::calloc(1u << kMaxClusterBits, 1));
  if (!buf || n > (1u << kMaxClusterBits)) throw std::bad_alloc();
  return {buf, static_cast<size_t>(n)};
}

}  // namespace

struct Image::ClusterLock {
  Image* img;
  uint64_t gc;
  ClusterLock(Image* i, uint64_t g) : img(i), gc(g) {}
  ClusterLock(ClusterLock&& o) noexcept : img(std::exchange(o.img, nullptr)), gc(o.gc) {}
  ClusterLock(const ClusterLock&) = delete;
  ~ClusterLock() {
    if (img) img->unlock_cluster(gc);
  }
};

Task<Image::ClusterLock> Image::lock_cluster(uint64_t gc) {
  for (;;) {
    auto it = busy_clusters_.find(gc);
    if (it == busy_clusters_.end()) {
      busy_clusters_.emplace(gc, std::make_unique<WaitList>(r_));
      co_return ClusterLock(this, gc);
    }
    co_await it->second->wait();
  }
}

void Image::unlock_cluster(uint64_t gc) {
  auto it = busy_clusters_.find(gc);
  auto waiters = std::move(it->second);
  busy_clusters_.erase(it);
  waiters->notify_all();
}

Task<int> Image::load_slice(SliceCache& cache, uint64_t offset, SliceRef* out) {
  bool made_room = false;
  for (;;) {
    SliceRef s = cache.find(offset);
    if (s) {
      if (s->loading) {
        co_await s->loaded->wait();
        continue;
      }
      *out = std::move(s);
      co_return 0;
    }
    if (cache.over_capacity() && !made_room) {
      made_room = true;
      if (int rc = co_await make_room(cache); rc < 0) co_return rc;
      continue;  // the slice may have been loaded meanwhile
    }
    s = cache.insert(offset);
    s->loading = true;
    s->loaded = std::make_unique<WaitList>(r_);
    int rc = co_await fd_.read_full({s->data.get(), cache.slice_bytes()}, offset);
    s->loading = false;
    auto waiters = std::move(s->loaded);
    if (rc < 0) cache.erase(offset);
    waiters->notify_all();
    if (rc < 0) co_return rc;
    *out = std::move(s);
    co_return 0;
  }
}

L2Entry Image::l2_entry_cached(uint64_t gc, bool* hit) {
  *hit = true;
  const uint64_t l1i = gc / l2_entries_;
  if (l1i >= l1_.size()) return decode_l2_zero();
  const L1Entry l1e{l1_[l1i]};
  const uint64_t l2 = l1e.l2_offset();
  if (!l2 || l1e.reserved_bits() || l2 % cs_) {
    *hit = !l2 && !l1e.reserved_bits();
    return decode_l2_zero();
  }
  const uint64_t byte = (gc % l2_entries_) * l2e_bytes_;
  const uint64_t sb = l2_cache_.slice_bytes();
  const Slice* s = l2_cache_.peek(l2 + byte / sb * sb);
  if (!s || s->loading) {
    *hit = false;
    return decode_l2_zero();
  }
  return decode_l2(s->data.get() + byte % sb);
}

Task<int> Image::l2_entry(uint64_t gc, L2Entry* entry) {
  *entry = decode_l2_zero();
  const uint64_t l1i = gc / l2_entries_;
  if (l1i >= l1_.size()) co_return 0;
  const L1Entry l1e{l1_[l1i]};
  const uint64_t l2 = l1e.l2_offset();
  if (l1e.reserved_bits() || l2 % cs_) co_return -EIO;  // corrupt L1 entry
  if (!l2) co_return 0;
  const uint64_t byte = (gc % l2_entries_) * l2e_bytes_;
  const uint64_t sb = l2_cache_.slice_bytes();
  SliceRef s;
  if (int rc = co_await load_slice(l2_cache_, l2 + byte / sb * sb, &s); rc < 0) co_return rc;
  *entry = decode_l2(s->data.get() + byte % sb);
  co_return 0;
}

Task<int> Image::read_backing(uint64_t offset, std::span<uint8_t> buf) {
  uint64_t have = 0;
  if (backing_ && offset < backing_->size())
    have = std::min<uint64_t>(buf.size(), backing_->size() - offset);
  if (have) {
    if (int rc = co_await backing_->read(offset, buf.first(have)); rc < 0) co_return rc;
  }
  if (have < buf.size()) std::memset(buf.data() + have, 0, buf.size() - have);
  co_return 0;
}

Task<int> Image::read_cluster_part(uint64_t gc, L2Entry m, L2Kind k, uint64_t in_off,
                                   std::span<uint8_t> buf) {
  if (!m.valid(h_.version)) co_return -EIO;
  switch (k) {
    case L2Kind::kNormal: {
      const int rc = co_await fd_.read_full(buf, m.host() + in_off);
      co_return rc < 0 ? rc : decrypt_data(buf, m.host() + in_off);
    }
    case L2Kind::kZeroPlain:
    case L2Kind::kZeroAlloc:
      std::memset(buf.data(), 0, buf.size());
      co_return 0;
    case L2Kind::kUnallocated:
      co_return co_await read_backing((gc << cb_) + in_off, buf);
    case L2Kind::kCompressed: {
      std::vector<uint8_t> cluster(cs_);
      if (int rc = co_await read_compressed(m, cluster); rc < 0) co_return rc;
      std::memcpy(buf.data(), cluster.data() + in_off, buf.size());
      co_return 0;
    }
    case L2Kind::kMixed:
      break;
  }
  co_return -EIO;
}

Task<int> Image::read_cluster_range(uint64_t gc, L2Entry m, uint64_t in_off,
                                    std::span<uint8_t> buf) {
  uint64_t pos = 0;
  while (pos < buf.size()) {
    L2Kind k;
    const uint64_t n = m.run(in_off + pos, buf.size() - pos, &k);
    if (int rc = co_await read_cluster_part(gc, m, k, in_off + pos, buf.subspan(pos, n)); rc < 0)
      co_return rc;
    pos += n;
  }
  co_return 0;
}

Task<int> Image::read(uint64_t offset, std::span<uint8_t> buf) {
  if (offset > h_.size || buf.size() > h_.size - offset) co_return -EINVAL;
  if (sector_unaligned(offset, buf.size())) co_return co_await read_unaligned(offset, buf);
  uint64_t pos = 0;
  while (pos < buf.size()) {
    // Gather a run of clusters of one kind whose storage is contiguous, and read it at once.
    const uint64_t off = offset + pos;
    uint64_t gc = cluster_of(off);
    bool hit;
    L2Entry m = l2_entry_cached(gc, &hit);
    if (!hit)
      if (int rc = co_await l2_entry(gc, &m); rc < 0) co_return rc;
    if (!m.valid(h_.version)) co_return -EIO;
    const uint64_t in_off = off & (cs_ - 1);
    const uint64_t in_cluster = std::min<uint64_t>(cs_ - in_off, buf.size() - pos);
    // With subclusters, the cluster may hold runs of several kinds: read the first one here.
    L2Kind k;
    uint64_t len = m.run(in_off, in_cluster, &k);
    if (len == in_cluster && k != L2Kind::kCompressed) {
      while (pos + len < buf.size()) {
        const L2Entry m2 = l2_entry_cached(gc + 1, &hit);
        if (!hit) break;
        if (!m2.valid(h_.version) || !same_read(k, m2.kind()) ||
            (k == L2Kind::kNormal && m2.host() != m.host() + (len + in_off)))
          break;
        ++gc;
        len += std::min<uint64_t>(cs_, buf.size() - pos - len);
      }
    }
    int rc = co_await read_cluster_part(cluster_of(off), m, k, in_off, buf.subspan(pos, len));
    if (rc < 0) co_return rc;
    pos += len;
  }
  co_return 0;
}

Task<int> Image::set_l2_entry(uint64_t gc, uint64_t entry, uint64_t bitmap, bool pending_alloc) {
  const uint64_t l2 = L1Entry{l1_[gc / l2_entries_]}.l2_offset();
  const uint64_t byte = (gc % l2_entries_) * l2e_bytes_;
  const uint64_t sb = l2_cache_.slice_bytes();
  SliceRef s;
  if (int rc = co_await load_slice(l2_cache_, l2 + byte / sb * sb, &s); rc < 0) co_return rc;
  uint8_t* p = s->data.get() + byte % sb;
  const uint64_t old = load_be64(p);
  const uint64_t old_bitmap = extended_ ? load_be64(p + 8) : 0;
  store_be64(p, entry);
  if (extended_) store_be64(p + 8, bitmap);
  s->dirty = true;
  ++gen_;
  if (pending_alloc)
    s->pending.push_back({uint32_t(byte % sb / l2e_bytes_), old, gen_, old_bitmap});
  co_return 0;
}

Task<void> Image::wait_unpinned(uint64_t host) {
  const size_t b = pin_bucket(host);
  if (!pins_[b]) co_return;
  ++draining_[b];  // new in-place writes to this bucket take the locked path meanwhile
  while (pins_[b]) co_await unpinned_.wait();
  --draining_[b];
}

Task<int> Image::write_cluster(uint64_t gc, uint64_t in_off, std::span<const uint8_t> data) {
  // Fast path: the cluster is ours alone; write in place. The pin is taken in the same step as
  // the lookup (no suspension between), so whoever later frees the cluster waits for it.
  bool hit;
  L2Entry m = l2_entry_cached(gc, &hit);
  if (!hit)
    if (int rc = co_await l2_entry(gc, &m); rc < 0) co_return rc;
  if (m.writable_in_place(in_off, data.size()) && !busy_clusters_.contains(gc)) {
    const uint64_t host = m.host();
    const size_t b = pin_bucket(host);
    if (!draining_[b]) {
      ++pins_[b];
      unsynced_ = true;
      const int rc = co_await write_data(data, host + in_off);
      if (--pins_[b] == 0 && draining_[b]) unpinned_.notify_all();
      co_return rc;
    }
  }

  ClusterLock lock = co_await lock_cluster(gc);
  if (int rc = co_await prepare_l2(uint32_t(gc / l2_entries_)); rc < 0) co_return rc;
  if (int rc = co_await l2_entry(gc, &m); rc < 0) co_return rc;
  // A hostile entry (an unaligned host offset, reserved bits) is refused as reads refuse it,
  // never written through.
  if (!m.valid(h_.version)) co_return -EIO;
  if (m.writable_in_place(in_off, data.size())) {
    // Allocated meanwhile (or pins drained): in place, under the lock.
    unsynced_ = true;
    co_return co_await write_data(data, m.host() + in_off);
  }
  // A cluster of ours (or none yet) with subclusters: only the touched subclusters are written.
  if (extended_ && !m.compressed() && (m.copied() || !m.host()))
    co_return co_await write_cluster_extended(gc, m, in_off, data);

  // A whole new cluster: the guest data, the rest copied from where it came from. Only the
  // head and the tail are read (a compressed cluster, or one with subclusters, is read whole).
  const bool full = in_off == 0 && data.size() == cs_;
  std::vector<uint8_t> cluster;
  if (!full) {
    cluster.resize(cs_);
    const uint64_t tail = in_off + data.size();
    if (m.compressed() || m.is_extended()) {
      if (int rc = co_await read_cluster_range(gc, m, 0, cluster); rc < 0) co_return rc;
    } else if (!is_zero(m.kind())) {  // zero clusters: zeros already
      std::span<uint8_t> all(cluster);
      if (in_off)
        if (int rc = co_await read_cluster_part(gc, m, m.kind(), 0, all.first(in_off)); rc < 0)
          co_return rc;
      if (tail < cs_)
        if (int rc = co_await read_cluster_part(gc, m, m.kind(), tail, all.subspan(tail)); rc < 0)
          co_return rc;
    }
    std::memcpy(cluster.data() + in_off, data.data(), data.size());
  }
  std::span<const uint8_t> payload = full ? data : std::span<const uint8_t>(cluster);

  // A preallocated zero cluster of ours is reused; anything else gets a new cluster.
  const bool reuse = m.kind() == L2Kind::kZeroAlloc && m.copied();
  uint64_t host = m.host();
  if (!reuse)
    if (int rc = co_await alloc_clusters(1, &host); rc < 0) co_return rc;
  if (int rc = co_await write_data(payload, host); rc < 0) {
    if (!reuse) co_await free_now(host, cs_);
    co_return rc;
  }
  unsynced_ = true;
  if (int rc = co_await set_l2_entry(gc, L2Entry::encode_normal(host), kBitmapAllAlloc, true);
      rc < 0)
    co_return rc;
  if (!reuse && m.allocated()) defer_free(m.raw());
  co_return 0;
}

Task<int> Image::write_cluster_extended(uint64_t gc, L2Entry m, uint64_t in_off,
                                        std::span<const uint8_t> data) {
  // The touched subclusters, whole: the guest data, and the partial subclusters at either end
  // filled from what they read as now (backing file or zeros). Nothing else of the cluster is
  // read or written. A partial subcluster that is already allocated is not copied: an
  // in-place write may be landing in its other bytes right now (it holds no lock), and
  // writing back what we read would undo it.
  const uint64_t scs = 1ull << scb_;
  const uint64_t end = in_off + data.size();
  uint64_t start = in_off & ~(scs - 1);
  uint64_t stop = (end + scs - 1) & ~(scs - 1);
  if (m.sub_kind(uint32_t(in_off >> scb_)) == L2Kind::kNormal) start = in_off;
  if (m.sub_kind(uint32_t((end - 1) >> scb_)) == L2Kind::kNormal) stop = end;
  std::vector<uint8_t> buf;
  std::span<const uint8_t> payload = data;
  if (start != in_off || stop != end) {
    buf.resize(stop - start);
    std::span<uint8_t> all(buf);
    if (start < in_off)
      if (int rc = co_await read_cluster_range(gc, m, start, all.first(in_off - start)); rc < 0)
        co_return rc;
    if (end < stop)
      if (int rc = co_await read_cluster_range(gc, m, end, all.subspan(end - start)); rc < 0)
        co_return rc;
    std::memcpy(buf.data() + (in_off - start), data.data(), data.size());
    payload = buf;
  }
  const bool fresh = !m.host();
  uint64_t host = m.host();
  if (fresh)
    if (int rc = co_await alloc_clusters(1, &host); rc < 0) co_return rc;
  if (int rc = co_await write_data(payload, host + start); rc < 0) {
    if (fresh) co_await free_now(host, cs_);
    co_return rc;
  }
  unsynced_ = true;
  const uint64_t mask = subcluster_mask(in_off, data.size(), scb_);
  const uint64_t bitmap = (m.bitmap() | mask) & ~(mask << 32);
  // Pending either way: the new allocation bits must not reach the disk before the data.
  co_return co_await set_l2_entry(gc, L2Entry::encode_normal(host), bitmap, true);
}

uint64_t Image::pin_in_place_run(uint64_t offset, uint64_t len) {
  const uint64_t first = cluster_of(offset);
  const uint64_t last = cluster_of(offset + len - 1);
  const uint64_t host = [&]() -> uint64_t {
    uint64_t first_host = 0;
    for (uint64_t gc = first; gc <= last; ++gc) {
      const uint64_t start = std::max(offset, gc << cb_);
      const uint64_t end = std::min(offset + len, (gc + 1) << cb_);
      bool hit;
      const L2Entry m = l2_entry_cached(gc, &hit);
      if (!hit || !m.writable_in_place(start & (cs_ - 1), end - start) ||
          busy_clusters_.contains(gc) || draining_[pin_bucket(m.host())])
        return 0;
      if (gc == first)
        first_host = m.host();
      else if (m.host() != first_host + ((gc - first) << cb_))
        return 0;
    }
    return first_host + (offset & (cs_ - 1));
  }();
  if (host)
    for (uint64_t gc = first; gc <= last; ++gc) ++pins_[pin_bucket(host + ((gc - first) << cb_))];
  return host;
}

void Image::unpin_run(uint64_t host, uint64_t offset, uint64_t len) {
  const uint64_t clusters = cluster_of(offset + len - 1) - cluster_of(offset) + 1;
  for (uint64_t i = 0; i < clusters; ++i) {
    const size_t b = pin_bucket(host + (i << cb_));
    if (--pins_[b] == 0 && draining_[b]) unpinned_.notify_all();
  }
}

Task<void> Image::write_part(uint64_t gc, uint64_t in_off, std::span<const uint8_t> data,
                             int* err) {
  int rc = co_await write_cluster(gc, in_off, data);
  if (rc < 0 && *err == 0) *err = rc;
}

Task<int> Image::write(uint64_t offset, std::span<const uint8_t> buf, unsigned flags) {
  if (read_only_) co_return -EPERM;
  if (poisoned_) co_return -EIO;
  if (offset > h_.size || buf.size() > h_.size - offset) co_return -ENOSPC;
  if (sector_unaligned(offset, buf.size())) co_return co_await write_unaligned(offset, buf, flags);
  Overlaps::Guard guard;  // encrypted: not while a read-modify-write holds these sectors
  if (overlaps_) guard = co_await overlaps_->enter(offset, offset + buf.size(), false);
  co_return co_await write_sectors(offset, buf, flags);
}

Task<int> Image::write_sectors(uint64_t offset, std::span<const uint8_t> buf, unsigned flags) {
  const uint64_t first = cluster_of(offset);
  const uint64_t last = buf.empty() ? first : cluster_of(offset + buf.size() - 1);
  int err = 0;
  if (first == last) {
    if (!buf.empty()) err = co_await write_cluster(first, offset & (cs_ - 1), buf);
  } else if (const uint64_t host = pin_in_place_run(offset, buf.size())) {
    // Allocated clusters that follow each other on the host (a sequential stream over an
    // allocated image): one write instead of one per cluster. For a buffered file each of
    // those went to an io_uring worker of its own.
    unsynced_ = true;
    err = co_await write_data(buf, host);
    unpin_run(host, offset, buf.size());
  } else {
    // Clusters are independent: write them concurrently.
    WaitGroup group(r_);
    uint64_t pos = 0;
    for (uint64_t gc = first; gc <= last; ++gc) {
      const uint64_t in_off = (offset + pos) & (cs_ - 1);
      const uint64_t len = std::min<uint64_t>(cs_ - in_off, buf.size() - pos);
      r_.spawn(write_part(gc, in_off, buf.subspan(pos, len), &err), &group);
      pos += len;
    }
    co_await group.wait();
  }
  if (err == 0 && committed_gen_ < gen_) err = co_await commit(gen_);
  if (err == 0 && (flags & kWriteFua)) err = co_await flush();
  co_return err;
}

// Returns 1 when the caller must write explicit zeros instead.
Task<int> Image::zero_cluster(uint64_t gc, bool unmap, bool fast, bool discard) {
  ClusterLock lock = co_await lock_cluster(gc);
  L2Entry m;
  if (int rc = co_await l2_entry(gc, &m); rc < 0) co_return rc;
  if (!m.valid(h_.version)) co_return -EIO;
  const bool allocated = m.allocated();
  const bool ours = m.copied() && m.host();

  // Extended entries say "zero" in the bitmap (every subcluster), standard ones in bit 0.
  const uint64_t zero_bitmap = extended_ ? kBitmapAllZero : 0;
  uint64_t next;
  if (h_.version >= 3) {
    if (discard) {
      if (!backing_ && !allocated) co_return 0;
      next = extended_ ? 0 : L2Entry::encode_zero();
    } else if (!unmap && ours) {
      // keep the cluster, read zeros
      next = extended_ ? L2Entry::encode_normal(m.host()) : L2Entry::encode_zero(m.host(), true);
    } else if (m.kind() == L2Kind::kUnallocated && !backing_ && m.empty()) {
      co_return 0;  // already reads as zeros
    } else {
      next = extended_ ? 0 : L2Entry::encode_zero();
    }
  } else {
    if (!discard && backing_) {
      // v2 cannot mark a cluster zero: only explicit zeros hide the backing file.
      co_return fast ? -ENOTSUP : 1;
    }
    if (!allocated) co_return 0;
    next = 0;
  }
  if (next == m.raw() && (!extended_ || zero_bitmap == m.bitmap())) co_return 0;
  if (int rc = co_await prepare_l2(uint32_t(gc / l2_entries_)); rc < 0) co_return rc;
  // An in-place write that looked the entry up before we took the lock may still be on its
  // way to the host cluster: once the entry changes, the cluster can be freed and reused. The
  // lock keeps new in-place writes of this cluster away meanwhile.
  if (m.host() && !m.compressed() && !m.zero()) co_await wait_unpinned(m.host());
  if (int rc = co_await l2_entry(gc, &m); rc < 0) co_return rc;  // the table may have moved
  if (int rc = co_await set_l2_entry(gc, next, zero_bitmap, false); rc < 0) co_return rc;
  const bool kept = L2Entry(next, cb_).host() != 0;
  if (allocated && !kept) defer_free(m.raw());
  co_return 0;
}

Task<int> Image::zero_subclusters(uint64_t gc, uint32_t mask) {
  ClusterLock lock = co_await lock_cluster(gc);
  L2Entry m;
  if (int rc = co_await l2_entry(gc, &m); rc < 0) co_return rc;
  if (!m.valid(h_.version)) co_return -EIO;
  // A compressed cluster has no subclusters, and a shared one cannot change in place.
  if (m.compressed() || (m.host() && !m.copied())) co_return 1;
  const uint64_t bits = (m.bitmap() & ~uint64_t(mask)) | (uint64_t(mask) << 32);
  if (bits == m.bitmap()) co_return 0;
  if (int rc = co_await prepare_l2(uint32_t(gc / l2_entries_)); rc < 0) co_return rc;
  if (int rc = co_await l2_entry(gc, &m); rc < 0) co_return rc;  // the table may have moved
  // The host cluster stays: an in-place write still on its way lands in a subcluster that now
  // reads as zeros, which is an order the overlapping requests allow.
  co_return co_await set_l2_entry(gc, m.raw(),
                                  (m.bitmap() & ~uint64_t(mask)) | (uint64_t(mask) << 32), false);
}

Task<void> Image::zero_part(uint64_t gc, bool unmap, bool fast, bool discard, int* err) {
  int rc = co_await zero_cluster(gc, unmap, fast, discard);
  if (rc == 1) {
    std::vector<uint8_t> zeros(cs_);
    uint64_t len = std::min<uint64_t>(cs_, h_.size - (gc << cb_));
    rc = co_await write_cluster(gc, 0, std::span<const uint8_t>(zeros).first(len));
  }
  if (rc < 0 && *err == 0) *err = rc;
}

Task<int> Image::zero_partial(uint64_t gc, uint64_t in_off, uint64_t len, bool fast) {
  // Nothing to do if it already reads as zeros.
  L2Entry m;
  if (int rc = co_await l2_entry(gc, &m); rc < 0) co_return rc;
  bool zero = m.valid(h_.version);
  for (uint64_t p = in_off; zero && p < in_off + len;) {
    L2Kind k;
    p += m.run(p, in_off + len - p, &k);
    zero = is_zero(k) || (k == L2Kind::kUnallocated && !backing_);
  }
  if (zero) co_return 0;
  // Whole subclusters become zero in the bitmap; the rest is written as zeros.
  const uint64_t scs = 1ull << scb_;
  const uint64_t a = (in_off + scs - 1) & ~(scs - 1);
  const uint64_t b = (in_off + len) & ~(scs - 1);
  if (extended_ && a < b && h_.version >= 3) {
    int rc = co_await zero_subclusters(gc, subcluster_mask(a, b - a, scb_));
    if (rc < 0) co_return rc;
    if (rc == 0) {
      if (in_off < a)
        if (int r2 = co_await zero_partial(gc, in_off, a - in_off, fast); r2 < 0) co_return r2;
      if (b < in_off + len)
        if (int r2 = co_await zero_partial(gc, b, in_off + len - b, fast); r2 < 0) co_return r2;
      co_return 0;
    }
  }
  if (fast) co_return -ENOTSUP;
  co_return co_await write_cluster(gc, in_off, shared_zeros(len));
}

Task<int> Image::write_zeroes(uint64_t offset, uint64_t length, unsigned flags) {
  if (read_only_) co_return -EPERM;
  if (poisoned_) co_return -EIO;
  if (offset > h_.size || length > h_.size - offset) co_return -ENOSPC;
  if (sector_unaligned(offset, length)) co_return co_await zero_unaligned(offset, length, flags);
  Overlaps::Guard guard;  // as write()
  if (overlaps_) guard = co_await overlaps_->enter(offset, offset + length, false);
  const bool fast = flags & kWriteFastZero;
  const bool unmap = !(flags & kWriteNoUnmap);
  uint64_t end = offset + length;
  // The last cluster may be partial: treat reaching the end of the disk as reaching its end.
  const uint64_t cluster_end = end == h_.size ? (end + cs_ - 1) & ~(cs_ - 1) : end;
  int err = 0;
  uint64_t pos = offset;
  WaitGroup group(r_);
  uint64_t spawned = 0;
  while (pos < end && err == 0) {
    const uint64_t in_off = pos & (cs_ - 1);
    const uint64_t gc = cluster_of(pos);
    const uint64_t next = std::min(end, (gc + 1) << cb_);
    if (in_off == 0 && ((gc + 1) << cb_) <= cluster_end) {
      r_.spawn(zero_part(gc, unmap, fast, false, &err), &group);
      if (++spawned % 64 == 0) co_await group.wait();  // bounded fan-out
    } else {
      // Partial cluster (at the end of the disk, a last partial subcluster counts as whole).
      const uint64_t scs = 1ull << scb_;
      uint64_t len = next - pos;
      if (extended_ && next == h_.size) len = ((in_off + len + scs - 1) & ~(scs - 1)) - in_off;
      if (int rc = co_await zero_partial(gc, in_off, len, fast); rc < 0) err = rc;
    }
    pos = next;
  }
  co_await group.wait();
  if (err == 0 && committed_gen_ < gen_) err = co_await commit(gen_);
  if (err == 0 && (flags & kWriteFua)) err = co_await flush();
  co_return err;
}

Task<int> Image::discard(uint64_t offset, uint64_t length) {
  if (read_only_) co_return -EPERM;
  if (poisoned_) co_return -EIO;
  if (offset > h_.size || length > h_.size - offset) co_return -EINVAL;
  Overlaps::Guard guard;  // as write()
  if (overlaps_) guard = co_await overlaps_->enter(offset, offset + length, false);
  uint64_t end = offset + length;
  if (end == h_.size) end = (end + cs_ - 1) & ~(cs_ - 1);
  // Only whole clusters (with extended L2 entries: whole subclusters) can be released; the
  // rest of the range is left as it is.
  const uint64_t first = (offset + cs_ - 1) >> cb_;
  const uint64_t last = end >> cb_;
  int err = 0;
  if (extended_ && h_.version >= 3) {
    const uint64_t scs = 1ull << scb_;
    const uint64_t a = (offset + scs - 1) & ~(scs - 1);
    const uint64_t b = end & ~(scs - 1);
    auto part = [&](uint64_t from, uint64_t to) -> Task<int> {
      if (from >= to) co_return 0;
      const int rc = co_await zero_subclusters(cluster_of(from),
                                               subcluster_mask(from & (cs_ - 1), to - from, scb_));
      co_return rc < 0 ? rc : 0;  // compressed or shared: left as it is
    };
    if (first > last) {  // inside one cluster
      co_return co_await part(a, b);
    }
    err = co_await part(a, std::min(b, first << cb_));
    if (err == 0 && last >= first) err = co_await part(std::max(a, last << cb_), b);
  }
  for (uint64_t gc = first; gc < last && err == 0; ++gc)
    co_await zero_part(gc, true, false, true, &err);
  co_return err;
}

void Image::status_of(uint64_t gc, uint32_t cb, L2Entry m, L2Kind k, uint64_t in_off, Extent* e) {
  *e = Extent{};
  e->offset = (gc << cb) + in_off;
  switch (k) {
    case L2Kind::kNormal:
      e->present = e->data = true;
      e->host_offset = m.host() + in_off;
      break;
    case L2Kind::kCompressed:
      e->present = e->data = e->compressed = true;
      break;
    case L2Kind::kZeroAlloc:
      e->host_offset = m.host() + in_off;
      [[fallthrough]];
    case L2Kind::kZeroPlain:
      e->present = e->zero = true;
      break;
    case L2Kind::kUnallocated:
    case L2Kind::kMixed:
      break;
  }
}

namespace {
bool mergeable(const Extent& a, const Extent& b) {
  if (a.present != b.present || a.zero != b.zero || a.data != b.data ||
      a.compressed != b.compressed || a.depth != b.depth)
    return false;
  if ((a.host_offset == Extent::kNoOffset) != (b.host_offset == Extent::kNoOffset)) return false;
  return a.host_offset == Extent::kNoOffset || a.host_offset + a.length == b.host_offset;
}
void append(std::vector<Extent>* out, const Extent& e) {
  if (!out->empty() && mergeable(out->back(), e) &&
      out->back().offset + out->back().length == e.offset)
    out->back().length += e.length;
  else
    out->push_back(e);
}
}  // namespace

Task<int> Image::unallocated_status(uint64_t pos, uint64_t end, std::vector<Extent>* out) {
  uint64_t covered = pos;
  if (backing_ && pos < backing_->size()) {
    std::vector<Extent> below;
    const uint64_t bend = std::min(end, backing_->size());
    if (int rc = co_await backing_->block_status(pos, bend - pos, &below); rc < 0) co_return rc;
    for (Extent x : below) {
      x.depth += 1;
      append(out, x);
    }
    covered = bend;
  }
  if (covered < end) {
    Extent x;
    x.offset = covered;
    x.length = end - covered;
    x.zero = true;
    // Past the end of a shorter backing file, this image itself supplies the zeros.
    x.depth = backing_ ? 0 : chain_length();
    append(out, x);
  }
  co_return 0;
}

Task<int> Image::block_status(uint64_t offset, uint64_t length, std::vector<Extent>* out) {
  if (offset > h_.size) co_return -EINVAL;
  length = std::min(length, h_.size - offset);
  const uint64_t end = offset + length;
  uint64_t pos = offset;
  while (pos < end) {
    const uint64_t gc = cluster_of(pos);
    // Gather the run of unallocated clusters (whole L2 tables at a time where L1 is empty).
    uint64_t run_end = pos;
    for (;;) {
      const uint64_t c = cluster_of(run_end);
      if (run_end >= end) break;
      const uint64_t l1i = c / l2_entries_;
      if (l1i < l1_.size() && l1_[l1i] == 0) {
        run_end = std::min(end, (l1i + 1) * l2_entries_ << cb_);
        continue;
      }
      // Cached entries are read without a co_await: a run of thousands of clusters must not
      // nest a coroutine resumption per cluster (builds without tail calls, such as ASan's,
      // would overflow the stack), and it is faster.
      bool hit;
      L2Entry e = l2_entry_cached(c, &hit);
      if (!hit)
        if (int rc = co_await l2_entry(c, &e); rc < 0) co_return rc;
      if (!e.empty()) break;
      run_end = std::min(end, (c + 1) << cb_);
    }
    if (run_end > pos) {
      if (int rc = co_await unallocated_status(pos, run_end, out); rc < 0) co_return rc;
      pos = run_end;
      continue;
    }
    bool hit;
    L2Entry m = l2_entry_cached(gc, &hit);
    if (!hit)
      if (int rc = co_await l2_entry(gc, &m); rc < 0) co_return rc;
    if (!m.valid(h_.version)) co_return -EIO;
    // One extent per run of subclusters of one kind (one per cluster without subclusters).
    const uint64_t stop = std::min(end, (gc + 1) << cb_);
    while (pos < stop) {
      const uint64_t in_off = pos & (cs_ - 1);
      L2Kind k;
      const uint64_t n = m.run(in_off, stop - pos, &k);
      if (k == L2Kind::kUnallocated) {
        if (int rc = co_await unallocated_status(pos, pos + n, out); rc < 0) co_return rc;
      } else {
        Extent x;
        status_of(gc, cb_, m, k, in_off, &x);
        x.length = n;
        if (luks_) x.host_offset = Extent::kNoOffset;  // as QEMU: no offset for encrypted data
        append(out, x);
      }
      pos += n;
    }
  }
  co_return 0;
}

}  // namespace kiln::block::qcow2

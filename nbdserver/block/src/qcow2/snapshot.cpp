// Internal snapshots: create, apply and delete on an image opened for writing by this process
// alone (kiln-img snapshot), and the snapshot table's serialisation.
//
// A snapshot is an L1 table of its own plus an entry in the snapshot table; the clusters it
// shares with the active image (L2 tables, data, compressed data) count one reference per
// L1 table that reaches them, and the active image's entries lose OFLAG_COPIED, so that the
// next guest write copies them (io.cpp, alloc.cpp's prepare_l2).
//
// Write order (docs/block-layer.md, "Internal snapshots"): refcounts are raised and synced
// before anything new points at the clusters, the new snapshot table is complete and synced
// before the header points at it, and refcounts are lowered only after nothing on disk points
// through the old structure. A process killed between two steps leaves leaks at most, except
// in the one window no order can close: a cluster's refcount and the COPIED flag of the entry
// pointing at it live in different clusters, and qemu-img check calls either half-done state
// a corruption. On version 3 images the dirty bit is set for the duration, so that the next
// writable open (QEMU's or Kiln's) recounts the refcounts and sets the flags from them.
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <set>
#include <string_view>

#include "kiln/block/qcow2_snapshot.h"
#include "qcow2/image.h"

namespace kiln::block::qcow2 {

namespace {
uint64_t align8(uint64_t v) { return (v + 7) & ~uint64_t{7}; }
}  // namespace

std::vector<uint8_t> serialize_snapshots(const std::vector<Snapshot>& snapshots) {
  std::vector<uint8_t> out;
  for (const Snapshot& s : snapshots) {
    const size_t at = out.size();
    out.resize(align8(at + 40 + s.extra.size() + s.id.size() + s.name.size()), 0);
    uint8_t* e = &out[at];
    store_be64(e, s.l1_table_offset);
    store_be32(e + 8, s.l1_size);
    store_be16(e + 12, uint16_t(s.id.size()));
    store_be16(e + 14, uint16_t(s.name.size()));
    store_be32(e + 16, s.date_sec);
    store_be32(e + 20, s.date_nsec);
    store_be64(e + 24, s.vm_clock_nsec);
    store_be32(e + 32, uint32_t(s.vm_state_size));  // as QEMU: the low bits (all in extra)
    store_be32(e + 36, uint32_t(s.extra.size()));
    if (!s.extra.empty())
      std::memcpy(e + 40, s.extra.data(), s.extra.size());  // no extra data: null
    std::memcpy(e + 40 + s.extra.size(), s.id.data(), s.id.size());
    std::memcpy(e + 40 + s.extra.size() + s.id.size(), s.name.data(), s.name.size());
  }
  return out;
}

// The operations, with access to the image's allocator and caches. Each returns 0 or -errno
// and, on error, says why in `why`.
struct SnapshotOps {
  Image& img;
  std::string why;

  uint64_t cs() const { return img.cs_; }
  uint64_t file_end() const {
    struct stat st;
    return fstat(img.fd(), &st) == 0 ? uint64_t(st.st_size) : 0;
  }
  int fail(int rc, std::string what) {
    if (why.empty()) why = std::move(what);
    return rc;
  }

  Task<int> sync() { co_return co_await img.sync_file(); }

  // Sets or clears the dirty bit (version 3 only) and syncs.
  Task<int> set_dirty(bool on) {
    if (img.h_.version < 3) co_return 0;
    const uint64_t old = img.h_.incompatible_features;
    img.h_.incompatible_features = on ? old | kIncompatDirty : old & ~kIncompatDirty;
    if (img.h_.incompatible_features == old) co_return 0;
    co_return co_await img.write_header_fields(hdr::kIncompatibleFeatures, 8);
  }

  // Reads the L2 table at `off`, which an entry of an L1 table points at (checked here: it may
  // come from a hostile snapshot table).
  Task<int> read_l2(uint64_t l1e, std::vector<uint8_t>* table) {
    const L1Entry e{l1e};
    const uint64_t off = e.l2_offset();
    if (e.reserved_bits() || off % cs() || off + cs() > file_end())
      co_return fail(-EINVAL, "L1 entry " + std::to_string(l1e) +
                                  " points at an L2 table outside the image or misaligned");
    table->resize(cs());
    if (int rc = co_await img.fd_.read_full(*table, off); rc < 0)
      co_return fail(rc, "cannot read the L2 table at " + std::to_string(off));
    co_return 0;
  }

  // The clusters `l1` reaches, one entry per reference: its L2 tables and the clusters (or
  // compressed bytes) their entries hold. Everything is checked before anything is changed: an
  // L2 table or data outside the file or misaligned, or an L2 table that one L1 table names
  // twice (it would be counted twice), is an error; this also bounds the work by the file.
  Task<int> reach(const std::vector<uint64_t>& l1, std::vector<uint64_t>* clusters) {
    clusters->clear();
    std::set<uint64_t> seen;
    std::vector<uint8_t> t;
    const uint64_t end = file_end();
    for (uint64_t raw : l1) {
      const uint64_t off = L1Entry{raw}.l2_offset();
      if (!off) continue;
      if (!seen.insert(off).second)
        co_return fail(-EINVAL,
                       "an L1 table names the L2 table at " + std::to_string(off) + " twice");
      if (int rc = co_await read_l2(raw, &t); rc < 0) co_return rc;
      clusters->push_back(off >> img.cb_);
      for (uint64_t j = 0; j < img.l2_entries_; ++j) {
        const L2Entry x = img.decode_l2(&t[j * img.l2e_bytes_]);
        if (!x.allocated()) continue;
        if (x.compressed()) {
          const CompressedRef c = x.compressed_range();
          if (c.offset >= end || c.length > end - c.offset)
            co_return fail(-EINVAL, "compressed cluster lies outside the image");
          for (uint64_t n = c.offset >> img.cb_; n <= (c.offset + c.length - 1) >> img.cb_; ++n)
            clusters->push_back(n);
        } else {
          if (!x.aligned() || x.host() >= end)
            co_return fail(-EINVAL, "L2 entry points outside the image or is misaligned");
          clusters->push_back(x.host() >> img.cb_);
        }
      }
    }
    co_return 0;
  }

  // Adds `delta` to the refcount of every cluster in `clusters` (from reach()), in the cache.
  // If one fails (a refcount would overflow its width or drop below zero), the ones done are
  // undone, so that nothing of it reaches the file.
  Task<int> change_refcounts(const std::vector<uint64_t>& clusters, int64_t delta) {
    for (size_t i = 0; i < clusters.size(); ++i) {
      if (int rc = co_await img.add_refcount(clusters[i], delta); rc < 0) {
        const uint64_t bad = clusters[i];
        while (i-- > 0) {
          const int back = co_await img.add_refcount(clusters[i], -delta);
          (void)back;  // cannot fail: the same refcounts were just raised (or lowered)
        }
        co_return fail(rc, "cannot change the refcount of cluster " + std::to_string(bad) +
                               (rc == -ERANGE ? " (refcount_bits too small)" : ""));
      }
    }
    co_return 0;
  }

  // An operation failed before it changed anything on disk but the dirty bit (its refcount
  // changes were undone in the cache): the image is clean again. Returns `rc`.
  Task<int> undone(int rc) {
    const int wrc = co_await write_refcounts();
    if (wrc == 0) {
      const int drc = co_await set_dirty(false);
      (void)drc;  // the failure reported is `rc`; a dirty bit left set only costs a recount
    }
    co_return rc;
  }

  // Writes the refcount blocks changed in the cache and syncs.
  Task<int> write_refcounts() {
    if (int rc = co_await img.write_refblocks(); rc < 0)
      co_return fail(rc, "cannot write the refcount blocks");
    co_return co_await sync();
  }

  // Makes OFLAG_COPIED of every L2 entry reachable from `l1` say whether its cluster's
  // refcount is one (never on compressed entries); rewrites the L2 tables that change, syncs,
  // and returns the L1 entries with their flags set the same way in `*out`.
  Task<int> fix_copied(const std::vector<uint64_t>& l1, std::vector<uint64_t>* out) {
    out->assign(l1.begin(), l1.end());
    std::vector<uint8_t> t;
    bool wrote = false;
    for (uint64_t& raw : *out) {
      const uint64_t off = L1Entry{raw}.l2_offset();
      if (!off) continue;
      uint64_t ref;
      if (int rc = co_await img.refcount(off >> img.cb_, &ref); rc < 0) co_return rc;
      raw = L1Entry::encode(off, ref == 1);
      if (int rc = co_await read_l2(raw, &t); rc < 0) co_return rc;
      bool changed = false;
      for (uint64_t j = 0; j < img.l2_entries_; ++j) {
        uint8_t* p = &t[j * img.l2e_bytes_];
        const L2Entry x = img.decode_l2(p);
        bool want = false;
        if (!x.compressed() && x.host()) {
          if (int rc = co_await img.refcount(x.host() >> img.cb_, &ref); rc < 0) co_return rc;
          want = ref == 1;
        }
        if (x.copied() == want) continue;
        store_be64(p, L2Entry::with_copied(x.raw(), want));
        changed = true;
      }
      if (!changed) continue;
      if (int rc = co_await img.write_meta(t, off); rc < 0)
        co_return fail(rc, "cannot write the L2 table at " + std::to_string(off));
      img.l2_cache_.drop_range(off, off + cs());
      wrote = true;
    }
    if (wrote) co_return co_await sync();
    co_return 0;
  }

  // Allocates clusters for `bytes` and writes them there (not synced). `*at` = 0 for no bytes.
  Task<int> write_new(const std::vector<uint8_t>& bytes, uint64_t* at, const char* what) {
    *at = 0;
    if (bytes.empty()) co_return 0;
    if (int rc = co_await img.alloc_clusters((bytes.size() + cs() - 1) / cs(), at); rc < 0)
      co_return fail(rc, std::string("cannot allocate the ") + what);
    if (int rc = co_await img.write_meta(bytes, *at); rc < 0)
      co_return fail(rc, std::string("cannot write the ") + what);
    co_return 0;
  }

  Task<int> free_clusters(uint64_t off, uint64_t bytes) {
    if (!off || !bytes) co_return 0;
    co_return co_await img.free_now(off, bytes);
  }

  static std::vector<uint8_t> l1_bytes(const std::vector<uint64_t>& l1) {
    std::vector<uint8_t> b(l1.size() * 8);
    for (size_t i = 0; i < l1.size(); ++i) store_be64(&b[i * 8], l1[i]);
    return b;
  }

  Task<int> read_l1(uint64_t off, uint32_t size, std::vector<uint64_t>* l1) {
    std::vector<uint8_t> b(uint64_t(size) * 8);
    if (int rc = co_await img.fd_.read_full(b, off); rc < 0)
      co_return fail(rc, "cannot read the snapshot's L1 table");
    l1->resize(size);
    for (size_t i = 0; i < size; ++i) (*l1)[i] = load_be64(&b[i * 8]);
    co_return 0;
  }

  // Replaces the snapshot table: the new one written and synced in new clusters, then the
  // header switched (nb_snapshots and snapshots_offset are adjacent: one write), then the old
  // table's clusters released.
  Task<int> write_table(std::vector<Snapshot> snapshots) {
    const std::vector<uint8_t> table = serialize_snapshots(snapshots);
    if (table.size() > kMaxSnapshotTableBytes)
      co_return fail(-EFBIG, "the snapshot table would be too large");
    uint64_t at;
    if (int rc = co_await write_new(table, &at, "snapshot table"); rc < 0) co_return rc;
    if (int rc = co_await write_refcounts(); rc < 0) co_return rc;
    const uint64_t old_off = img.h_.snapshots_offset;
    const uint64_t old_bytes = serialize_snapshots(img.snapshots_).size();
    img.h_.nb_snapshots = uint32_t(snapshots.size());
    img.h_.snapshots_offset = at;
    if (int rc = co_await img.write_header_fields(hdr::kNbSnapshots, 12); rc < 0)
      co_return fail(rc, "cannot update the header");
    img.snapshots_ = std::move(snapshots);
    if (int rc = co_await free_clusters(old_off, old_bytes); rc < 0)
      co_return fail(rc, "cannot release the old snapshot table");
    co_return co_await write_refcounts();
  }

  Task<int> create(const std::string& name) {
    if (img.snapshots_.size() >= kMaxSnapshots) co_return fail(-EFBIG, "");
    Snapshot s;
    uint64_t max_id = 0;
    for (const Snapshot& o : img.snapshots_) {
      uint64_t v = 0;
      std::from_chars(o.id.data(), o.id.data() + o.id.size(), v);
      max_id = std::max(max_id, v);
    }
    s.id = std::to_string(max_id + 1);
    s.name = name.substr(0, kMaxSnapshotName);
    timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    s.date_sec = uint32_t(now.tv_sec);
    s.date_nsec = uint32_t(now.tv_nsec / 1000 * 1000);  // QEMU keeps microseconds
    s.disk_size = img.h_.size;
    s.icount = 0;
    s.extra.assign(24, 0);  // vm_state_size (64 bits), disk_size, icount: as QEMU 7.2
    store_be64(&s.extra[8], s.disk_size);
    s.l1_size = img.h_.l1_size;

    std::vector<uint64_t> clusters;
    if (int rc = co_await reach(img.l1_, &clusters); rc < 0) co_return rc;
    if (int rc = co_await set_dirty(true); rc < 0) co_return fail(rc, "cannot mark the image");
    // 1. The snapshot's L1 table: the active one as it is.
    if (int rc = co_await write_new(l1_bytes(img.l1_), &s.l1_table_offset, "L1 table copy"); rc < 0)
      co_return rc;
    // 2. One more reference to everything the active image reaches, on disk first.
    if (const int rc = co_await change_refcounts(clusters, 1); rc < 0) {
      const int frc = co_await free_clusters(s.l1_table_offset, uint64_t(s.l1_size) * 8);
      (void)frc;  // undone in the cache like the refcounts
      const int urc = co_await undone(rc);
      co_return urc;
    }
    if (int rc = co_await write_refcounts(); rc < 0) co_return rc;
    // 3. The active entries lose OFLAG_COPIED (their refcounts are now at least two).
    std::vector<uint64_t> l1;
    if (int rc = co_await fix_copied(img.l1_, &l1); rc < 0) co_return rc;
    if (int rc = co_await write_active_l1(l1); rc < 0) co_return rc;
    // 4. The new table, then the header, then the old table released.
    std::vector<Snapshot> all = img.snapshots_;
    all.push_back(std::move(s));
    if (int rc = co_await write_table(std::move(all)); rc < 0) co_return rc;
    if (int rc = co_await set_dirty(false); rc < 0) co_return fail(rc, "cannot mark the image");
    co_return 0;
  }

  // Writes `l1` over the active L1 table in place (same size) and syncs.
  Task<int> write_active_l1(const std::vector<uint64_t>& l1) {
    if (l1 == img.l1_) co_return 0;
    if (int rc = co_await img.write_meta(l1_bytes(l1), img.h_.l1_table_offset); rc < 0)
      co_return fail(rc, "cannot write the L1 table");
    img.l1_ = l1;
    co_return co_await sync();
  }

  Task<int> apply(const Snapshot& s) {
    std::vector<uint64_t> snap_l1;
    if (int rc = co_await read_l1(s.l1_table_offset, s.l1_size, &snap_l1); rc < 0) co_return rc;
    const uint64_t needed = (s.disk_size + cs() * img.l2_entries_ - 1) / (cs() * img.l2_entries_);
    const uint64_t l1_size = std::max<uint64_t>({img.h_.l1_size, s.l1_size, needed});
    if (l1_size * 8 > kMaxL1Bytes) co_return fail(-EFBIG, "the snapshot's L1 table is too large");
    if (s.disk_size > kMaxVirtualSize) co_return fail(-EFBIG, "the snapshot's size is too large");

    std::vector<uint64_t> snap_clusters, old_clusters;
    if (int rc = co_await reach(snap_l1, &snap_clusters); rc < 0) co_return rc;
    if (int rc = co_await reach(img.l1_, &old_clusters); rc < 0) co_return rc;
    if (int rc = co_await set_dirty(true); rc < 0) co_return fail(rc, "cannot mark the image");
    // 1. One more reference to everything the snapshot reaches; their entries lose COPIED.
    if (const int rc = co_await change_refcounts(snap_clusters, 1); rc < 0) {
      const int urc = co_await undone(rc);
      co_return urc;
    }
    if (int rc = co_await write_refcounts(); rc < 0) co_return rc;
    std::vector<uint64_t> l1;
    if (int rc = co_await fix_copied(snap_l1, &l1); rc < 0) co_return rc;
    l1.resize(l1_size, 0);
    // 2. The active L1 becomes the snapshot's: in place when it has the size, or a new table
    //    that the header switches to together with the size (one write of bytes 24-47).
    const uint64_t old_l1_off = img.h_.l1_table_offset, old_l1_size = img.h_.l1_size;
    if (l1_size == img.h_.l1_size) {
      if (int rc = co_await write_active_l1(l1); rc < 0) co_return rc;
      if (img.h_.size != s.disk_size) {
        img.h_.size = s.disk_size;
        if (int rc = co_await img.write_header_fields(hdr::kSize, 8); rc < 0)
          co_return fail(rc, "cannot update the header");
      }
    } else {
      uint64_t at;
      if (int rc = co_await write_new(l1_bytes(l1), &at, "L1 table"); rc < 0) co_return rc;
      if (int rc = co_await write_refcounts(); rc < 0) co_return rc;
      img.h_.size = s.disk_size;
      img.h_.l1_size = uint32_t(l1_size);
      img.h_.l1_table_offset = at;
      if (int rc = co_await img.write_header_fields(hdr::kSize, 24); rc < 0)
        co_return fail(rc, "cannot update the header");
      img.l1_ = l1;
      if (int rc = co_await free_clusters(old_l1_off, old_l1_size * 8); rc < 0)
        co_return fail(rc, "cannot release the old L1 table");
    }
    // 3. The old active tables lose their reference; then COPIED where a refcount fell to 1.
    if (int rc = co_await change_refcounts(old_clusters, -1); rc < 0) co_return rc;
    if (int rc = co_await write_refcounts(); rc < 0) co_return rc;
    if (int rc = co_await fix_copied(img.l1_, &l1); rc < 0) co_return rc;
    if (int rc = co_await write_active_l1(l1); rc < 0) co_return rc;
    if (int rc = co_await set_dirty(false); rc < 0) co_return fail(rc, "cannot mark the image");
    co_return 0;
  }

  Task<int> remove(size_t index) {
    const Snapshot s = img.snapshots_[index];
    std::vector<uint64_t> snap_l1;
    if (int rc = co_await read_l1(s.l1_table_offset, s.l1_size, &snap_l1); rc < 0) co_return rc;
    std::vector<uint64_t> clusters;
    if (int rc = co_await reach(snap_l1, &clusters); rc < 0) co_return rc;
    if (int rc = co_await set_dirty(true); rc < 0) co_return fail(rc, "cannot mark the image");
    // 1. The table without it: from here on its clusters are leaks until released.
    std::vector<Snapshot> rest = img.snapshots_;
    rest.erase(rest.begin() + ptrdiff_t(index));
    if (int rc = co_await write_table(std::move(rest)); rc < 0) co_return rc;
    // 2. Its references released, its L1 table freed; then COPIED where a refcount is 1.
    if (int rc = co_await change_refcounts(clusters, -1); rc < 0) co_return rc;
    if (int rc = co_await free_clusters(s.l1_table_offset, uint64_t(s.l1_size) * 8); rc < 0)
      co_return fail(rc, "cannot release the snapshot's L1 table");
    if (int rc = co_await write_refcounts(); rc < 0) co_return rc;
    std::vector<uint64_t> l1;
    if (int rc = co_await fix_copied(img.l1_, &l1); rc < 0) co_return rc;
    if (int rc = co_await write_active_l1(l1); rc < 0) co_return rc;
    if (int rc = co_await set_dirty(false); rc < 0) co_return fail(rc, "cannot mark the image");
    co_return 0;
  }
};

namespace {

enum class Op { kCreate, kApply, kDelete };

bool has_duplicate_ids(const std::vector<Snapshot>& list) {
  std::set<std::string_view> ids;
  for (const Snapshot& s : list)
    if (!ids.insert(s.id).second) return true;
  return false;
}

Task<void> run(Reactor& r, const std::string& path, Op op, const std::string& arg) {
  OpenOptions o;
  o.format = "qcow2";
  o.open_backing = false;  // snapshots change this file's metadata only
  auto img = co_await Image::open(r, path, o, {});
  // Whatever the open repaired is on disk before the tables are walked from the file.
  if (int rc = co_await img->flush(); rc < 0) throw Error(-rc, strerror(-rc));
  SnapshotOps ops{*img, {}};
  int rc = 0;
  switch (op) {
    case Op::kCreate:
      if (has_duplicate_ids(img->snapshots())) {
        rc = -EINVAL;
        ops.why = "the snapshot table has two snapshots with the same id";
        break;
      }
      rc = co_await ops.create(arg);
      break;
    case Op::kApply:
    case Op::kDelete: {
      const auto& list = img->snapshots();
      size_t found = list.size();
      for (size_t i = 0; op == Op::kApply && i < list.size() && found == list.size(); ++i)
        if (list[i].id == arg) found = i;
      for (size_t i = 0; i < list.size() && found == list.size(); ++i)
        if (list[i].name == arg) found = i;
      if (found == list.size()) {
        co_await img->close();
        throw SnapshotNotFound("snapshot '" + printable(arg) + "' not found");
      }
      if (has_duplicate_ids(list)) {
        rc = -EINVAL;
        ops.why = "the snapshot table has two snapshots with the same id";
      } else if (op == Op::kApply) {
        rc = co_await ops.apply(list[found]);
      } else {
        rc = co_await ops.remove(found);
      }
      break;
    }
  }
  const int crc = co_await img->close();
  if (rc == 0) rc = crc;
  if (rc < 0) throw Error(-rc, ops.why.empty() ? strerror(-rc) : ops.why);
}

}  // namespace

void snapshot_create(Reactor& r, const std::string& path, const std::string& name) {
  r.run(run(r, path, Op::kCreate, name));
}
void snapshot_apply(Reactor& r, const std::string& path, const std::string& id_or_name) {
  r.run(run(r, path, Op::kApply, id_or_name));
}
void snapshot_delete(Reactor& r, const std::string& path, const std::string& name) {
  r.run(run(r, path, Op::kDelete, name));
}

}  // namespace kiln::block::qcow2

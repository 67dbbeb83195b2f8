// Before a downgrade to version 2 (kiln-img amend -o compat=0.10), zero clusters in the L2
// tables of the internal snapshots are expanded, as QEMU's qcow2_expand_zero_clusters() does
// for every L1 table: version 2 has no zero flag. (The active image's zero clusters are
// written as zeros through the data path by the caller first.)
//
//   - in an image without a backing file: unallocated (which reads as zeros too);
//   - over a backing file: a new cluster of zeros, whose refcount is that of the L2 table
//     (every L1 table sharing the table reaches it).
// A zero cluster that kept its host cluster lets go of it (its refcount drops by the table's
// references). Unlike QEMU 7.2, which writes zeros into that host cluster, nothing is written
// into it: it may be another snapshot's data (a write -z of a shared cluster keeps pointing
// at it), and QEMU's way destroys that snapshot's content (and leaves OFLAG_COPIED wrong).
//
// Order: the zeros and the new refcounts are on disk (synced) before an L2 table points at
// them, and references are dropped only once the table no longer points at the clusters;
// table by table, a crash leaves leaked clusters at worst. Each distinct L2 table is visited
// once, and every table and cluster must lie inside the file: the work is bounded by the file.
#include <sys/stat.h>

#include <cerrno>
#include <set>

#include "kiln/block/qcow2.h"
#include "qcow2/image.h"

namespace kiln::block::qcow2 {

struct ZeroExpansion {
  Image& img;
  std::string why;

  int fail(int rc, std::string what) {
    if (why.empty()) why = std::move(what);
    return rc;
  }

  Task<int> run() {
    struct stat st;
    if (fstat(img.fd(), &st) != 0) co_return fail(-errno, "cannot stat the image");
    const uint64_t end = uint64_t(st.st_size), cs = img.cs_;
    const bool backing = !img.h_.backing_file.empty();
    const std::vector<uint8_t> zeros(cs, 0);
    std::vector<uint8_t> t(cs), l1b;
    std::set<uint64_t> done;
    for (const Snapshot& s : img.snapshots_) {
      const uint64_t l1_bytes = uint64_t(s.l1_size) * 8;
      if (l1_bytes > kMaxL1Bytes || s.l1_table_offset % cs || s.l1_table_offset > end ||
          l1_bytes > end - s.l1_table_offset)
        co_return fail(-EINVAL, "snapshot '" + s.name + "' has an L1 table outside the image");
      l1b.resize(l1_bytes);
      if (int rc = co_await img.fd_.read_full(l1b, s.l1_table_offset); rc < 0)
        co_return fail(rc, "cannot read the L1 table of snapshot '" + s.name + "'");
      for (uint64_t i = 0; i < s.l1_size; ++i) {
        const uint64_t off = L1Entry{load_be64(&l1b[i * 8])}.l2_offset();
        if (!off || !done.insert(off).second) continue;
        if (off % cs || off > end - cs)
          co_return fail(-EINVAL, "L2 table at " + std::to_string(off) + " outside the image");
        if (int rc = co_await expand_table(off, end, backing, zeros, t); rc < 0) co_return rc;
      }
    }
    co_return 0;
  }

  Task<int> expand_table(uint64_t off, uint64_t end, bool backing,
                         const std::vector<uint8_t>& zeros, std::vector<uint8_t>& t) {
    const uint64_t cs = img.cs_;
    if (int rc = co_await img.fd_.read_full(t, off); rc < 0)
      co_return fail(rc, "cannot read the L2 table at " + std::to_string(off));
    uint64_t table_refs = 0;
    if (int rc = co_await img.refcount(off >> img.cb_, &table_refs); rc < 0)
      co_return fail(rc, "cannot read a refcount");
    if (table_refs == 0)
      co_return fail(-EINVAL, "L2 table at " + std::to_string(off) + " has a refcount of 0");
    std::vector<uint64_t> released;  // host clusters the table stops pointing at
    bool changed = false;
    for (uint64_t j = 0; j < img.l2_entries_; ++j) {
      uint8_t* p = &t[j * img.l2e_bytes_];
      const L2Entry x = img.decode_l2(p);
      if (!x.zero()) continue;
      changed = true;
      if (x.host()) {
        if (!x.aligned() || x.host() > end - cs)
          co_return fail(-EINVAL, "L2 entry points outside the image or is misaligned");
        released.push_back(x.host());
      }
      if (!backing) {
        store_be64(p, 0);
        continue;
      }
      uint64_t host;
      if (int rc = co_await img.alloc_clusters(1, &host); rc < 0)
        co_return fail(rc, "cannot allocate a cluster");
      if (table_refs > 1)
        if (int rc = co_await img.add_refcount(host >> img.cb_, int64_t(table_refs) - 1); rc < 0)
          co_return fail(rc, "cannot raise a refcount");
      if (int rc = co_await img.fd_.write_full(zeros, host); rc < 0)
        co_return fail(rc, "cannot write zeros at " + std::to_string(host));
      store_be64(p, L2Entry::encode_normal(host, table_refs == 1));
    }
    if (!changed) co_return 0;
    // New clusters: zeros and refcounts on disk before the table points at them.
    if (int rc = co_await img.write_refblocks(); rc < 0)
      co_return fail(rc, "cannot write the refcount blocks");
    if (int rc = co_await img.sync_file(); rc < 0) co_return fail(rc, "cannot sync");
    if (int rc = co_await img.write_meta(t, off); rc < 0)
      co_return fail(rc, "cannot write the L2 table at " + std::to_string(off));
    img.l2_cache_.drop_range(off, off + cs);
    if (int rc = co_await img.sync_file(); rc < 0) co_return fail(rc, "cannot sync");
    // Only now may the clusters the zero entries kept lose this table's references (they may
    // hold another snapshot's data: nothing is written into them).
    for (uint64_t host : released)
      if (int rc = co_await img.add_refcount(host >> img.cb_, -int64_t(table_refs)); rc < 0)
        co_return fail(rc, "cannot lower the refcount of cluster " + std::to_string(host));
    if (int rc = co_await img.write_refblocks(); rc < 0)
      co_return fail(rc, "cannot write the refcount blocks");
    co_return co_await img.sync_file();
  }
};

Task<int> expand_snapshot_zeros(BlockDevice& dev, std::string* why) {
  auto* img = dynamic_cast<Image*>(&dev);
  if (!img) co_return -ENOTSUP;
  if (img->header().version < 3 || img->snapshots().empty()) co_return 0;
  ZeroExpansion z{*img, {}};
  const int rc = co_await z.run();
  if (rc < 0 && why) *why = z.why;
  co_return rc;
}

}  // namespace kiln::block::qcow2

// Consistency check and repair, as `qemu-img check` does it: recount every reference from the
// header, the active and snapshot L1/L2 tables, the refcount structures and the bitmaps, and
// compare with the stored refcounts. Leaks (stored > counted) are harmless and repaired by
// lowering the count; a count below the references is corruption, repaired (-r all) by writing
// a fresh refcount structure past the end of the file and switching the header to it.
//
// Images are hostile, and a writable open of a dirty image runs this on a reactor thread, so
// the work is bounded by what the file really allocates, not by what its header or its length
// claim (check_counts.h): tables in holes are not read; each distinct L2 table is walked once,
// with the number of L1 entries (active and snapshot) that point at it; snapshot L1 tables are
// walked as the union of their ranges, each range weighted by how many snapshots cover it;
// repeated refcount blocks are compared once; findings of one kind beyond the first few are
// summarised in one line. What would still exceed the bounds is refused with a clear error.
#include <sys/stat.h>

#include <algorithm>
#include <cstring>

#include "qcow2/checker.h"

namespace kiln::block::qcow2 {

void Checker::reference(uint64_t offset, uint64_t length, const char* what, uint64_t n) {
  if (length == 0) return;
  const uint64_t first = offset >> cb, last = (offset + length - 1) >> cb;
  for (uint64_t c = first; c <= last; ++c) {
    if (c >= file_clusters) {
      problem(true, kPastEnd,
              std::string(what) + " at offset " + std::to_string(c << cb) +
                  " lies past the end of the image file");
      return;
    }
    if (!counted.add(c, n)) {
      stop("the image references more than " + std::to_string(kMaxSparseReferences / 2) +
           " clusters far beyond the data it holds");
      return;
    }
  }
}

// Reads `buf` at `offset`, only the parts that hold data (the rest is zeros).
Task<int> Checker::read(std::vector<uint8_t>& buf, uint64_t offset) {
  std::fill(buf.begin(), buf.end(), uint8_t{0});
  std::vector<std::pair<uint64_t, uint64_t>> pieces;
  extents.for_each_data(offset, buf.size(),
                        [&](uint64_t o, uint64_t n) { pieces.emplace_back(o, n); });
  for (auto [o, n] : pieces) {
    const int rc = co_await img.fd_.read_full({buf.data() + (o - offset), n}, o);
    if (rc < 0) {
      problem(false, kRead, "cannot read at offset " + std::to_string(o));
      co_return rc;
    }
  }
  co_return 0;
}

// An L1 entry (active or snapshot) found at `where`: checked, and its L2 table recorded.
bool Checker::l1_entry(uint64_t e, uint64_t where, uint64_t weight, bool active) {
  const L1Entry l1e{e};
  const uint64_t off = l1e.l2_offset();
  if (l1e.reserved_bits())
    problem(true, kReserved,
            "L1 entry at offset " + std::to_string(where) + " has reserved bits set");
  if (!off) return false;
  if (off % cs) {
    problem(true, kUnaligned, "L2 table offset " + std::to_string(off) + " is not cluster aligned");
    return false;
  }
  if ((off >> cb) >= file_clusters) {
    problem(true, kPastEnd, "L2 table at offset " + std::to_string(off) + " lies past the end");
    return false;
  }
  l2_refs.push_back({off, weight, active ? 1u : 0u});
  if (l2_refs.size() >= (4u << 20) && l2_refs.size() % (4u << 20) == 0) merge_l2_refs();
  return true;
}

// Sorts the recorded L2 tables and merges repeats (so the list stays as long as the number
// of distinct tables).
void Checker::merge_l2_refs() {
  std::sort(l2_refs.begin(), l2_refs.end(),
            [](const L2Ref& a, const L2Ref& b) { return a.offset < b.offset; });
  size_t out = 0;
  for (size_t i = 0; i < l2_refs.size(); ++i) {
    if (out && l2_refs[out - 1].offset == l2_refs[i].offset) {
      L2Ref& r = l2_refs[out - 1];
      r.weight = std::min<uint64_t>(r.weight + l2_refs[i].weight, UINT32_MAX);
      r.active += l2_refs[i].active;
    } else {
      l2_refs[out++] = l2_refs[i];
    }
  }
  l2_refs.resize(out);
}

Task<void> Checker::walk_active_l1() {
  const uint64_t l1_offset = img.h_.l1_table_offset, l1_size = img.h_.l1_size;
  reference(l1_offset, l1_size * 8, "L1 table");
  if (l1_size == 0) co_return;
  std::vector<uint8_t> l1(l1_size * 8);
  if (co_await read(l1, l1_offset) < 0) co_return;
  for (uint64_t i = 0; i < l1_size; ++i) {
    const uint64_t e = load_be64(&l1[i * 8]);
    if (l1_entry(e, l1_offset + i * 8, 1, true)) copied.push_back({l1_offset, i, e});
  }
}

// Snapshot L1 tables, as the union of their ranges: a range covered by k tables is read once
// and its entries weigh k. (The tables are cluster aligned, so a cluster is referenced by as
// many tables as cover its first byte.)
Task<void> Checker::walk_snapshot_l1s() {
  std::vector<std::pair<uint64_t, int>> events;
  for (const Snapshot& s : img.snapshots_) {
    if (!s.l1_size) continue;
    events.emplace_back(s.l1_table_offset, 1);
    events.emplace_back(s.l1_table_offset + uint64_t(s.l1_size) * 8, -1);
  }
  std::sort(events.begin(), events.end());
  struct Segment {
    uint64_t start, end, weight;
  };
  std::vector<Segment> segments;
  int64_t depth = 0;
  uint64_t union_bytes = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    depth += events[i].second;
    const uint64_t start = events[i].first;
    const uint64_t end = i + 1 < events.size() ? events[i + 1].first : start;
    if (depth > 0 && end > start) {
      segments.push_back({start, end, uint64_t(depth)});
      union_bytes += end - start;
    }
  }
  if (union_bytes > budget) {
    stop("the snapshot L1 tables cover " + std::to_string(union_bytes) +
         " bytes, more than the image file holds");
    co_return;
  }
  for (const Segment& s : segments) {
    for (uint64_t c = (s.start + cs - 1) >> cb; (c << cb) < s.end; ++c)
      reference(c << cb, 1, "snapshot L1 table", s.weight);
    std::vector<std::pair<uint64_t, uint64_t>> pieces;
    extents.for_each_data(s.start, s.end - s.start,
                          [&](uint64_t o, uint64_t n) { pieces.emplace_back(o, n); });
    std::vector<uint8_t> buf;
    for (auto [o, n] : pieces) {
      for (uint64_t pos = o; pos < o + n && !stopped;) {
        const uint64_t len = std::min<uint64_t>(o + n - pos, 1u << 20);
        buf.resize(len);
        if (co_await read(buf, pos) < 0) break;
        for (uint64_t i = 0; i + 8 <= len; i += 8)
          l1_entry(load_be64(&buf[i]), pos + i, s.weight, false);
        pos += len;
      }
    }
  }
}

// Every distinct L2 table once, its references weighed by the L1 entries that point at it.
Task<void> Checker::walk_l2_tables() {
  merge_l2_refs();
  std::vector<uint8_t> l2(cs);
  for (const L2Ref& t : l2_refs) {
    if (stopped) co_return;
    reference(t.offset, cs, "L2 table", t.weight);
    if (!extents.any_data(t.offset, cs)) continue;  // all entries zero
    if (co_await read(l2, t.offset) < 0) continue;
    uint64_t prev_host = 0;  // fragmentation is counted within one L2 table, as QEMU does
    const uint64_t eb = img.l2e_bytes_;
    for (uint64_t j = 0; j < cs / eb; ++j) {
      const L2Entry x = img.decode_l2(&l2[j * eb]);
      if (x.empty()) continue;
      if (const char* why = x.bitmap_error())
        problem(true, kOther, std::string("L2 entry: ") + why);
      if (x.compressed()) {
        const CompressedRef c = x.compressed_range();
        if (x.copied()) problem(true, kCopied, "compressed cluster has the copied flag set");
        reference(c.offset, c.length, "compressed cluster", t.weight);
        res.allocated_clusters += t.active;
        res.compressed_clusters += t.active;
        res.fragmented_clusters += t.active;  // compressed clusters are fragmented by nature
        continue;
      }
      const uint64_t host = x.host();
      if (x.reserved_bits()) problem(true, kReserved, "L2 entry has reserved bits set");
      if (x.zero() && img.h_.version < 3)
        problem(true, kOther, "zero cluster in a version 2 image");
      if (!host) continue;
      if (host % cs) {
        problem(true, kUnaligned,
                "cluster offset " + std::to_string(host) + " is not cluster aligned");
        continue;
      }
      reference(host, cs, "data cluster", t.weight);
      if (t.active) {
        // fix_copied() rewrites the 8-byte descriptor at index * 8.
        copied.push_back({t.offset, j * (eb / 8), x.raw()});
        res.allocated_clusters += t.active;  // preallocated zero clusters count too
        if (prev_host && prev_host + cs != host) res.fragmented_clusters += t.active;
        prev_host = host;
      }
    }
  }
}

Task<void> Checker::walk_bitmaps() {
  const Header& h = img.h_;
  if (!h.has_bitmaps_ext || !(h.autoclear_features & kAutoclearBitmaps)) co_return;
  if (h.bitmap_directory_size > (64u << 20)) {
    problem(true, kOther, "bitmap directory is too large");
    co_return;
  }
  reference(h.bitmap_directory_offset, h.bitmap_directory_size, "bitmap directory");
  std::vector<uint8_t> dir(h.bitmap_directory_size);
  if (co_await read(dir, h.bitmap_directory_offset) < 0) co_return;
  uint64_t pos = 0, walked = 0;
  for (uint32_t b = 0; b < h.nb_bitmaps && pos + 24 <= dir.size() && !stopped; ++b) {
    const uint64_t table = load_be64(&dir[pos]);
    const uint32_t size = load_be32(&dir[pos + 8]);
    const uint16_t name = load_be16(&dir[pos + 18]);
    const uint32_t extra = load_be32(&dir[pos + 20]);
    pos = (pos + 24 + extra + name + 7) & ~uint64_t{7};
    if (uint64_t(size) * 8 > (64u << 20)) continue;
    walked += uint64_t(size) * 8;
    if (walked > budget) {
      stop("the bitmap tables hold more than the image file holds");
      co_return;
    }
    reference(table, uint64_t(size) * 8, "bitmap table");
    std::vector<uint8_t> t(uint64_t(size) * 8);
    if (co_await read(t, table) < 0) continue;
    for (uint32_t i = 0; i < size; ++i) {
      const uint64_t off = load_be64(&t[i * 8]) & 0x00fffffffffffe00ull;
      if (off) reference(off, cs, "bitmap data");
    }
  }
}

// Counts every reference; the refcount structures' own only `with_refcount_structures`.
Task<void> Checker::count(bool with_refcount_structures) {
  struct stat st {};
  fstat(img.fd_.get(), &st);
  const uint64_t size = uint64_t(st.st_size), allocated = uint64_t(st.st_blocks) * 512;
  file_clusters = (size + cs - 1) >> cb;
  budget = allocated + kSlackBytes;
  extents.load(img.fd_.get(), size);
  // Every reference is an 8-byte entry of a table in the allocated part of the file (a
  // compressed one may span a few clusters): the dense counters cover as many clusters.
  counted.reset(std::min(file_clusters, allocated / 2 + (1u << 20)), kMaxSparseReferences);
  res.total_clusters = (img.h_.size + cs - 1) >> cb;
  reference(0, cs, "header");
  if (img.h_.crypt_method == kCryptLuks)
    reference(img.h_.crypto_offset, img.h_.crypto_length, "LUKS header");
  co_await walk_active_l1();
  if (img.h_.nb_snapshots) {
    // The table's size is the sum of its entries' sizes.
    uint64_t bytes = 0;
    for (auto& s : img.snapshots_)
      bytes = (bytes + 40 + s.extra.size() + s.id.size() + s.name.size() + 7) & ~uint64_t{7};
    reference(img.h_.snapshots_offset, bytes, "snapshot table");
    co_await walk_snapshot_l1s();
  }
  if (!stopped) co_await walk_l2_tables();
  if (!stopped) co_await walk_bitmaps();
  l2_refs = {};
  if (with_refcount_structures && !stopped) {
    reference(img.h_.refcount_table_offset, uint64_t(img.h_.refcount_table_clusters) * cs,
              "refcount table");
    for (uint64_t e : img.reftable_) {
      const RefTableEntry rte{e};
      const uint64_t off = rte.block_offset();
      if (rte.reserved_bits())
        problem(true, kReserved, "refcount table entry has reserved bits set");
      if (!off) continue;
      if (off % cs) {
        problem(true, kUnaligned,
                "refcount block offset " + std::to_string(off) + " is not aligned");
        continue;
      }
      reference(off, cs, "refcount block");
    }
  }
  counted.finalize();
  res.image_end_offset = counted.end_of_nonzero() << cb;
}

}  // namespace kiln::block::qcow2

// Consistency check and repair, as `qemu-img check` does it: recount every reference from the
// header, the active and snapshot L1/L2 tables, the refcount structures and the bitmaps, and
// compare with the stored refcounts. Leaks (stored > counted) are harmless and repaired by
// lowering the count; a count below the references is corruption, repaired (-r all) by writing
// a fresh refcount structure past the end of the file and switching the header to it.
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "qcow2/image.h"

namespace kiln::block::qcow2 {

struct Checker {
  Image& img;
  CheckResult& res;
  uint64_t cs;
  uint32_t cb;
  uint64_t file_clusters = 0;
  std::vector<uint64_t> counted;  // references per host cluster
  struct CopiedFix {
    uint64_t table_offset;  // L1 table or L2 table
    uint64_t index;
    uint64_t entry;
  };
  std::vector<CopiedFix> copied;  // active entries that point at a cluster (checked after)

  Checker(Image& i, CheckResult& r) : img(i), res(r), cs(i.cs_), cb(i.cb_) {}

  void problem(bool corruption, const std::string& msg) {
    (corruption ? res.corruptions : res.check_errors)++;
    res.messages.push_back((corruption ? "ERROR " : "") + msg);
  }
  void reference(uint64_t offset, uint64_t length, const char* what) {
    if (length == 0) return;
    const uint64_t first = offset >> cb, last = (offset + length - 1) >> cb;
    for (uint64_t c = first; c <= last; ++c) {
      if (c >= file_clusters) {
        problem(true, std::string(what) + " at offset " + std::to_string(c << cb) +
                          " lies past the end of the image file");
        return;
      }
      counted[c]++;
    }
  }

  Task<int> read(std::vector<uint8_t>& buf, uint64_t offset) {
    int rc = co_await img.r_.read_full(img.fd_, buf, offset);
    if (rc < 0) problem(false, "cannot read at offset " + std::to_string(offset));
    co_return rc;
  }

  Task<void> walk_l1(uint64_t l1_offset, uint32_t l1_size, bool active) {
    reference(l1_offset, uint64_t(l1_size) * 8, "L1 table");
    if (l1_size == 0) co_return;
    std::vector<uint8_t> l1(uint64_t(l1_size) * 8);
    if (co_await read(l1, l1_offset) < 0) co_return;
    std::vector<uint8_t> l2(cs);
    for (uint32_t i = 0; i < l1_size; ++i) {
      uint64_t prev_host = 0;  // fragmentation is counted within one L2 table, as QEMU does
      const uint64_t e = load_be64(&l1[i * 8]);
      const uint64_t off = e & kL1OffsetMask;
      if (e & kL1ReservedMask)
        problem(true, "L1 entry " + std::to_string(i) + " has reserved bits set");
      if (!off) continue;
      if (off % cs) {
        problem(true, "L2 table offset " + std::to_string(off) + " is not cluster aligned");
        continue;
      }
      if ((off >> cb) >= file_clusters) {
        problem(true, "L2 table at offset " + std::to_string(off) + " lies past the end");
        continue;
      }
      reference(off, cs, "L2 table");
      if (active) copied.push_back({l1_offset, i, e});
      if (co_await read(l2, off) < 0) continue;
      for (uint64_t j = 0; j < cs / 8; ++j) {
        const uint64_t x = load_be64(&l2[j * 8]);
        if (x & kOflagCompressed) {
          CompressedRef c = decode_compressed(x, cb);
          if (x & kOflagCopied) problem(true, "compressed cluster has the copied flag set");
          reference(c.offset, c.length, "compressed cluster");
          if (active) {
            res.allocated_clusters++;
            res.compressed_clusters++;
            res.fragmented_clusters++;  // compressed clusters are fragmented by nature
          }
          continue;
        }
        const uint64_t host = x & kL2OffsetMask;
        if (x & kL2StandardReservedMask) problem(true, "L2 entry has reserved bits set");
        if ((x & kOflagZero) && img.h_.version < 3)
          problem(true, "zero cluster in a version 2 image");
        if (!host) continue;
        if (host % cs) {
          problem(true, "cluster offset " + std::to_string(host) + " is not cluster aligned");
          continue;
        }
        reference(host, cs, "data cluster");
        if (active) {
          copied.push_back({off, j, x});
          res.allocated_clusters++;  // preallocated zero clusters count too
          if (prev_host && prev_host + cs != host) res.fragmented_clusters++;
          prev_host = host;
        }
      }
    }
  }

  Task<void> walk_bitmaps() {
    const Header& h = img.h_;
    if (!h.has_bitmaps_ext || !(h.autoclear_features & kAutoclearBitmaps)) co_return;
    if (h.bitmap_directory_size > (64u << 20)) {
      problem(true, "bitmap directory is too large");
      co_return;
    }
    reference(h.bitmap_directory_offset, h.bitmap_directory_size, "bitmap directory");
    std::vector<uint8_t> dir(h.bitmap_directory_size);
    if (co_await read(dir, h.bitmap_directory_offset) < 0) co_return;
    uint64_t pos = 0;
    for (uint32_t b = 0; b < h.nb_bitmaps && pos + 24 <= dir.size(); ++b) {
      const uint64_t table = load_be64(&dir[pos]);
      const uint32_t size = load_be32(&dir[pos + 8]);
      const uint16_t name = load_be16(&dir[pos + 18]);
      const uint32_t extra = load_be32(&dir[pos + 20]);
      pos = (pos + 24 + extra + name + 7) & ~uint64_t{7};
      if (uint64_t(size) * 8 > (64u << 20)) continue;
      reference(table, uint64_t(size) * 8, "bitmap table");
      std::vector<uint8_t> t(uint64_t(size) * 8);
      if (co_await read(t, table) < 0) continue;
      for (uint32_t i = 0; i < size; ++i) {
        const uint64_t off = load_be64(&t[i * 8]) & 0x00fffffffffffe00ull;
        if (off) reference(off, cs, "bitmap data");
      }
    }
  }

  // Counts every reference. Returns the refcount structures' own references separately.
  Task<void> count(bool with_refcount_structures) {
    struct stat st;
    fstat(img.fd_, &st);
    file_clusters = (uint64_t(st.st_size) + cs - 1) >> cb;
    counted.assign(file_clusters, 0);
    res.total_clusters = (img.h_.size + cs - 1) >> cb;
    reference(0, cs, "header");
    co_await walk_l1(img.h_.l1_table_offset, img.h_.l1_size, true);
    if (img.h_.nb_snapshots) {
      // The table's size is the sum of its entries' sizes.
      uint64_t bytes = 0;
      for (auto& s : img.snapshots_)
        bytes = (bytes + 40 + 16 + s.id.size() + s.name.size() + 7) & ~uint64_t{7};
      reference(img.h_.snapshots_offset, bytes, "snapshot table");
      for (auto& s : img.snapshots_) co_await walk_l1(s.l1_table_offset, s.l1_size, false);
    }
    co_await walk_bitmaps();
    if (with_refcount_structures) {
      reference(img.h_.refcount_table_offset, uint64_t(img.h_.refcount_table_clusters) * cs,
                "refcount table");
      for (uint64_t e : img.reftable_) {
        const uint64_t off = e & kRefTableOffsetMask;
        if (e & kRefTableReservedMask) problem(true, "refcount table entry has reserved bits set");
        if (!off) continue;
        if (off % cs) {
          problem(true, "refcount block offset " + std::to_string(off) + " is not aligned");
          continue;
        }
        reference(off, cs, "refcount block");
      }
    }
    for (uint64_t c = file_clusters; c-- > 0;)
      if (counted[c]) {
        res.image_end_offset = (c + 1) << cb;
        break;
      }
  }

  // Compares stored refcounts with the counted ones; with `fix_leaks`, lowers leaked counts.
  Task<void> compare(bool fix_leaks) {
    const uint64_t rb_entries = img.rb_entries_;
    const uint32_t order = img.h_.refcount_order;
    std::vector<uint8_t> block(cs);
    uint64_t covered = 0;
    for (uint64_t rti = 0; rti < img.reftable_.size(); ++rti) {
      const uint64_t off = img.reftable_[rti] & kRefTableOffsetMask;
      const uint64_t first = rti * rb_entries;
      if (!off || off % cs || (off >> cb) >= file_clusters) {
        for (uint64_t c = first; c < std::min(first + rb_entries, file_clusters); ++c)
          if (counted[c]) {
            problem(true, "cluster " + std::to_string(c) +
                              " refcount=0 reference=" + std::to_string(counted[c]));
          }
        covered = first + rb_entries;
        continue;
      }
      if (co_await read(block, off) < 0) continue;
      bool changed = false;
      for (uint64_t i = 0; i < rb_entries; ++i) {
        const uint64_t c = first + i;
        const uint64_t stored = get_refcount(block.data(), i, order);
        const uint64_t want = c < file_clusters ? counted[c] : 0;
        if (stored && ((c + 1) << cb) > res.image_end_offset) res.image_end_offset = (c + 1) << cb;
        if (stored == want) continue;
        if (stored > want) {
          res.leaks++;
          res.messages.push_back("Leaked cluster " + std::to_string(c) + " refcount=" +
                                 std::to_string(stored) + " reference=" + std::to_string(want));
          if (fix_leaks) {
            set_refcount(block.data(), i, order, want);
            changed = true;
            res.leaks_fixed++;
          }
        } else {
          problem(true, "cluster " + std::to_string(c) + " refcount=" + std::to_string(stored) +
                            " reference=" + std::to_string(want));
        }
      }
      if (changed) {
        // (A co_await inside a short-circuit condition is miscompiled by GCC 12.)
        const int rc = co_await img.write_meta(block, off);
        if (rc < 0) problem(false, "cannot write refcount block");
      }
      covered = first + rb_entries;
    }
    for (uint64_t c = covered; c < file_clusters; ++c)
      if (counted[c])
        problem(true, "cluster " + std::to_string(c) + " refcount=0 reference=" +
                          std::to_string(counted[c]) + " (no refcount block)");
  }

  // Writes a new refcount table and blocks from `counted` past the end of the file.
  Task<int> rebuild() {
    const uint64_t rb_entries = img.rb_entries_;
    const uint64_t start = file_clusters;
    uint64_t blocks = 1, tclusters = 1;
    for (;;) {
      const uint64_t end = start + tclusters + blocks;
      const uint64_t nb = (end + rb_entries - 1) / rb_entries;
      const uint64_t nt = (nb * 8 + cs - 1) / cs;
      if (nb == blocks && nt == tclusters) break;
      blocks = nb;
      tclusters = nt;
    }
    if (tclusters * cs > kMaxRefTableBytes) co_return -EFBIG;
    const uint64_t end = start + tclusters + blocks;
    counted.resize(end, 0);
    for (uint64_t c = start; c < end; ++c) counted[c] = 1;
    std::vector<uint8_t> table(tclusters * cs, 0), data(blocks * cs, 0);
    const uint32_t order = img.h_.refcount_order;
    for (uint64_t b = 0; b < blocks; ++b) {
      store_be64(&table[b * 8], (start + tclusters + b) << cb);
      for (uint64_t i = 0; i < rb_entries && b * rb_entries + i < end; ++i) {
        const uint64_t v = counted[b * rb_entries + i];
        if (v > max_refcount(order)) co_return -ERANGE;
        set_refcount(&data[b * cs], i, order, v);
      }
    }
    if (int rc = co_await img.write_meta(data, (start + tclusters) << cb); rc < 0) co_return rc;
    if (int rc = co_await img.write_meta(table, start << cb); rc < 0) co_return rc;
    if (int rc = co_await img.sync_file(); rc < 0) co_return rc;
    img.h_.refcount_table_offset = start << cb;
    img.h_.refcount_table_clusters = uint32_t(tclusters);
    if (int rc = co_await img.write_header_fields(hdr::kRefcountTableOffset, 12); rc < 0)
      co_return rc;
    img.reftable_.assign(blocks + (tclusters * cs / 8 - blocks), 0);
    for (uint64_t b = 0; b < blocks; ++b) img.reftable_[b] = (start + tclusters + b) << cb;
    img.rb_cache_.drop_range(0, ~uint64_t{0});
    img.free_hint_ = 0;
    co_return 0;
  }

  // Sets or clears the copied flag of active entries by the (now correct) refcounts.
  Task<int> fix_copied(bool repair) {
    for (auto& f : copied) {
      const uint64_t host = f.entry & kL2OffsetMask;
      uint64_t rc_value;
      if (int rc = co_await img.refcount(host >> cb, &rc_value); rc < 0) co_return rc;
      const bool want = rc_value == 1;
      if (want == bool(f.entry & kOflagCopied)) continue;
      problem(true, "OFLAG_COPIED cluster at offset " + std::to_string(host) +
                        " refcount=" + std::to_string(rc_value));
      if (!repair) continue;
      uint8_t be[8];
      store_be64(be, want ? f.entry | kOflagCopied : f.entry & ~kOflagCopied);
      if (int rc = co_await img.write_meta(be, f.table_offset + f.index * 8); rc < 0) co_return rc;
      if (f.table_offset == img.h_.l1_table_offset) img.l1_[f.index] = load_be64(be);
      res.corruptions_fixed++;
    }
    co_return 0;
  }
};

Task<void> run_check(Image& img, Repair repair, CheckResult* out) {
  if (!img.read_only_) {
    co_await img.flush();
    co_await img.flush();
  }
  const bool can_repair = repair != Repair::kNone && !img.read_only_;
  CheckResult first;
  {
    Checker c(img, first);
    co_await c.count(true);
    co_await c.compare(can_repair);
    const uint64_t refcount_errors = first.corruptions;
    co_await c.fix_copied(false);
    if (can_repair && repair == Repair::kAll && first.corruptions) {
      if (refcount_errors) {
        CheckResult scratch;
        Checker fresh(img, scratch);
        co_await fresh.count(false);
        if (int rc = co_await fresh.rebuild(); rc < 0)
          first.messages.push_back("ERROR cannot rebuild the refcount structure");
        else
          first.corruptions_fixed += refcount_errors;
      }
      CheckResult scratch;
      Checker flags(img, scratch);
      co_await flags.count(true);
      co_await flags.fix_copied(true);
      first.corruptions_fixed += scratch.corruptions_fixed;
    }
    if (can_repair) {
      const int rc = co_await img.sync_file();
      if (rc < 0) {
        first.check_errors++;
        first.messages.push_back("cannot sync the repairs: " + std::string(strerror(-rc)));
      }
    }
    img.l2_cache_.drop_range(0, ~uint64_t{0});
    img.rb_cache_.drop_range(0, ~uint64_t{0});
  }
  if (!can_repair || (first.leaks_fixed == 0 && first.corruptions_fixed == 0)) {
    *out = std::move(first);
    co_return;
  }
  // Report the state after repair, with what was fixed.
  CheckResult after;
  Checker c(img, after);
  co_await c.count(true);
  co_await c.compare(false);
  co_await c.fix_copied(false);
  after.leaks_fixed = first.leaks_fixed;
  after.corruptions_fixed = first.corruptions_fixed;
  std::vector<std::string> msgs = std::move(first.messages);
  msgs.insert(msgs.end(), after.messages.begin(), after.messages.end());
  after.messages = std::move(msgs);
  *out = std::move(after);
}

CheckResult check(Reactor& r, const std::string& path, Repair repair, bool lock) {
  OpenOptions o;
  o.lock = lock;
  o.read_only = repair == Repair::kNone;
  o.open_backing = false;
  auto img = r.run(Image::open(r, path, o, {}));
  CheckResult res;
  r.run(run_check(*img, repair, &res));
  if (!o.read_only) r.run(img->close());
  return res;
}

}  // namespace kiln::block::qcow2

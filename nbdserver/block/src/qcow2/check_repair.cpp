// Comparing the recounted references with the stored refcounts, and repairing: leaks lowered
// in place, a refcount structure rebuilt past the end of the file, COPIED flags set from the
// refcounts. run_check() is what kiln-img check and the open of a dirty image run.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_set>

#include "qcow2/checker.h"

namespace kiln::block::qcow2 {

void Checker::unreferenced_range(uint64_t first, uint64_t end, const char* why) {
  counted.for_each_nonzero(first, std::min(end, file_clusters), [&](uint64_t c, uint64_t n) {
    problem(true, kRefcount,
            "cluster " + std::to_string(c) + " refcount=0 reference=" + std::to_string(n) + why);
  });
}

// Compares stored refcounts with the counted ones; with `fix_leaks`, lowers leaked counts.
// Each distinct refcount block is read and compared once: a block that several refcount
// table entries point at (already a corruption: it is referenced more than once) counts for
// the first range only, the others are compared as if they had no block.
Task<void> Checker::compare(bool fix_leaks) {
  const uint64_t rb_entries = img.rb_entries_;
  const uint32_t order = img.h_.refcount_order;
  std::vector<uint8_t> block(cs);
  std::unordered_set<uint64_t> blocks_seen;
  uint64_t covered = 0;
  for (uint64_t rti = 0; rti < img.reftable_.size(); ++rti) {
    const uint64_t off = RefTableEntry{img.reftable_[rti]}.block_offset();
    const uint64_t first = rti * rb_entries;
    covered = first + rb_entries;
    if (!off || off % cs || (off >> cb) >= file_clusters || !blocks_seen.insert(off).second ||
        !extents.any_data(off, cs)) {
      unreferenced_range(first, first + rb_entries, "");
      continue;
    }
    if (co_await read(block, off) < 0) continue;
    bool changed = false;
    for (uint64_t i = 0; i < rb_entries; ++i) {
      const uint64_t c = first + i;
      const uint64_t stored = get_refcount(block.data(), i, order);
      const uint64_t want = c < file_clusters ? counted.get(c) : 0;
      if (stored && ((c + 1) << cb) > res.image_end_offset) res.image_end_offset = (c + 1) << cb;
      if (stored == want) continue;
      if (stored > want) {
        res.leaks++;
        note(kLeak, "Leaked cluster " + std::to_string(c) + " refcount=" + std::to_string(stored) +
                        " reference=" + std::to_string(want));
        if (fix_leaks) {
          set_refcount(block.data(), i, order, want);
          changed = true;
          res.leaks_fixed++;
        }
      } else {
        problem(true, kRefcount,
                "cluster " + std::to_string(c) + " refcount=" + std::to_string(stored) +
                    " reference=" + std::to_string(want));
      }
    }
    if (changed) {
      // (A co_await inside a short-circuit condition is miscompiled by GCC 12.)
      const int rc = co_await img.write_meta(block, off);
      if (rc < 0) problem(false, kOther, "cannot write refcount block");
    }
  }
  if (covered < file_clusters) unreferenced_range(covered, file_clusters, " (no refcount block)");
}

// Writes a new refcount table and blocks from `counted` past the end of the file. Only the
// blocks of ranges that hold references are written; the others stay unallocated (zero).
Task<int> Checker::rebuild() {
  const uint64_t rb_entries = img.rb_entries_;
  const uint32_t order = img.h_.refcount_order;
  const uint64_t start = file_clusters;
  std::vector<uint64_t> used;  // block indices with references, ascending
  counted.for_each_nonzero(0, file_clusters, [&](uint64_t c, uint64_t) {
    if (used.empty() || used.back() != c / rb_entries) used.push_back(c / rb_entries);
  });
  // The new table and blocks need refcounts too, in blocks that may be new themselves.
  uint64_t tclusters = 1, nblocks = used.size() + 1;
  std::vector<uint64_t> all;
  for (int round = 0;; ++round) {
    if (round > 64) co_return -EFBIG;
    const uint64_t end = start + tclusters + nblocks;
    all = used;
    for (uint64_t b = start / rb_entries; b <= (end - 1) / rb_entries; ++b)
      if (all.empty() || all.back() < b) all.push_back(b);
    const uint64_t nt = ((all.back() + 1) * 8 + cs - 1) / cs;
    if (nt * cs > kMaxRefTableBytes) co_return -EFBIG;
    if (all.size() == nblocks && nt == tclusters) break;
    nblocks = all.size();
    tclusters = nt;
  }
  if (nblocks * cs > budget) co_return -EFBIG;
  const uint64_t new_end = start + tclusters + nblocks;
  std::vector<uint8_t> table(tclusters * cs, 0), data(cs);
  for (uint64_t k = 0; k < nblocks; ++k) {
    const uint64_t b = all[k], at = start + tclusters + k;
    store_be64(&table[b * 8], at << cb);
    std::fill(data.begin(), data.end(), uint8_t{0});
    int err = 0;
    counted.for_each_nonzero(b * rb_entries, (b + 1) * rb_entries, [&](uint64_t c, uint64_t v) {
      if (v > max_refcount(order)) err = -ERANGE;
      set_refcount(data.data(), c - b * rb_entries, order, v);
    });
    if (err) co_return err;
    for (uint64_t c = std::max(start, b * rb_entries); c < std::min(new_end, (b + 1) * rb_entries);
         ++c)
      set_refcount(data.data(), c - b * rb_entries, order, 1);
    if (int rc = co_await img.write_meta(data, at << cb); rc < 0) co_return rc;
  }
  if (int rc = co_await img.write_meta(table, start << cb); rc < 0) co_return rc;
  if (int rc = co_await img.sync_file(); rc < 0) co_return rc;
  img.h_.refcount_table_offset = start << cb;
  img.h_.refcount_table_clusters = uint32_t(tclusters);
  if (int rc = co_await img.write_header_fields(hdr::kRefcountTableOffset, 12); rc < 0)
    co_return rc;
  img.reftable_.assign(tclusters * cs / 8, 0);
  for (uint64_t k = 0; k < nblocks; ++k) img.reftable_[all[k]] = (start + tclusters + k) << cb;
  img.rb_cache_.drop_range(0, ~uint64_t{0});
  img.free_hint_ = 0;
  co_return 0;
}

// Sets or clears the copied flag of active entries by the (now correct) refcounts.
Task<int> Checker::fix_copied(bool repair) {
  for (auto& f : copied) {
    // Active L1 entries and standard L2 entries keep the offset in the same bits (an L1 entry
    // with reserved bit 62 set is no compressed descriptor).
    const uint64_t host = f.entry & kL2OffsetMask;
    uint64_t rc_value;
    if (int rc = co_await img.refcount(host >> cb, &rc_value); rc < 0) co_return rc;
    const bool want = rc_value == 1;
    if (want == bool(f.entry & kOflagCopied)) continue;
    problem(true, kCopied,
            "OFLAG_COPIED cluster at offset " + std::to_string(host) +
                " refcount=" + std::to_string(rc_value));
    if (!repair) continue;
    uint8_t be[8];
    store_be64(be, L2Entry::with_copied(f.entry, want));
    if (int rc = co_await img.write_meta(be, f.table_offset + f.index * 8); rc < 0) co_return rc;
    if (f.table_offset == img.h_.l1_table_offset) img.l1_[f.index] = load_be64(be);
    res.corruptions_fixed++;
  }
  co_return 0;
}

Task<void> run_check(Image& img, Repair repair, CheckResult* out) {
  if (!img.read_only_) {
    co_await img.flush();
    co_await img.flush();
  }
  bool can_repair = repair != Repair::kNone && !img.read_only_;
  CheckResult first;
  {
    Checker c(img, first);
    co_await c.count(true);
    if (c.stopped) {  // incomplete counts: nothing can be compared, let alone repaired
      c.summarize();
      *out = std::move(first);
      co_return;
    }
    co_await c.compare(can_repair);
    const uint64_t refcount_errors = first.corruptions;
    co_await c.fix_copied(false);
    c.summarize();
    if (can_repair && repair == Repair::kAll && first.corruptions) {
      bool refcounts_right = true;  // COPIED flags are set from the refcounts: only if right
      if (refcount_errors) {
        CheckResult scratch;
        Checker fresh(img, scratch);
        co_await fresh.count(false);
        const int rc = fresh.stopped ? -EFBIG : co_await fresh.rebuild();
        if (rc < 0) {
          refcounts_right = false;
          first.messages.push_back("ERROR cannot rebuild the refcount structure: " +
                                   std::string(strerror(-rc)));
        } else {
          first.corruptions_fixed += refcount_errors;
        }
      }
      if (refcounts_right) {
        CheckResult scratch;
        Checker flags(img, scratch);
        co_await flags.count(true);
        if (!flags.stopped) co_await flags.fix_copied(true);
        first.corruptions_fixed += scratch.corruptions_fixed;
      }
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
  if (!c.stopped) {
    co_await c.compare(false);
    co_await c.fix_copied(false);
  }
  c.summarize();
  after.leaks_fixed = first.leaks_fixed;
  after.corruptions_fixed = first.corruptions_fixed;
  std::vector<std::string> msgs = std::move(first.messages);
  msgs.insert(msgs.end(), after.messages.begin(), after.messages.end());
  after.messages = std::move(msgs);
  *out = std::move(after);
}

std::string check_stopped_reason(const CheckResult& r) {
  for (const std::string& m : r.messages)
    if (m.rfind(Checker::kStopped, 0) == 0) return m.substr(Checker::kStopped.size());
  return "";
}

CheckResult check(Reactor& r, const std::string& path, Repair repair, bool lock,
                  const std::optional<std::string>& key_secret) {
  OpenOptions o;
  o.key_secret = key_secret;
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

// The checker (kiln-img check, and the repair a writable open of a dirty image runs): its state
// and steps. check.cpp recounts the references; check_repair.cpp compares them with the
// stored refcounts and repairs. check.cpp says what bounds the work on hostile images.
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "qcow2/check_counts.h"
#include "qcow2/image.h"

namespace kiln::block::qcow2 {

struct Checker {
  // Table bytes a check may walk beyond what the file allocates (ranges in holes read as zeros
  // and cost no I/O, but their entries would still cost time).
  static constexpr uint64_t kSlackBytes = 256u << 20;
  // References beyond the dense counters that are listed before the check gives up.
  static constexpr uint64_t kMaxSparseReferences = 8u << 20;
  // Findings shown per kind; the rest are counted in one summary line.
  static constexpr uint64_t kShownPerKind = 10;

  enum Kind : size_t {
    kLeak,
    kRefcount,
    kPastEnd,
    kUnaligned,
    kReserved,
    kCopied,
    kRead,
    kOther,
    kKindCount
  };
  static constexpr std::array<const char*, kKindCount> kKindNames = {
      "leaked clusters",
      "refcount errors",
      "references past the end of the file",
      "unaligned offsets",
      "entries with reserved bits set",
      "OFLAG_COPIED errors",
      "read errors",
      "other errors"};

  // The message that says why a check stopped before it was complete.
  static constexpr std::string_view kStopped = "check stopped: ";

  Image& img;
  CheckResult& res;
  uint64_t cs;
  uint32_t cb;
  uint64_t file_clusters = 0;
  uint64_t budget = 0;   // bytes of tables that may be walked (see kSlackBytes)
  bool stopped = false;  // a bound was hit: the counts are incomplete, nothing may be repaired
  FileExtents extents;
  RefCounts counted;
  std::array<uint64_t, kKindCount> seen{};
  struct CopiedFix {
    uint64_t table_offset;  // L1 table or L2 table
    uint64_t index;
    uint64_t entry;
  };
  std::vector<CopiedFix> copied;  // active entries that point at a cluster (checked after)
  struct L2Ref {
    uint64_t offset;
    uint64_t weight;  // L1 entries (active and snapshot) that point at this table
    uint64_t active;  // of those, entries of the active L1 table
  };
  std::vector<L2Ref> l2_refs;

  Checker(Image& i, CheckResult& r) : img(i), res(r), cs(i.cs_), cb(i.cb_) {}

  void note(Kind kind, std::string msg) {
    if (++seen[kind] <= kShownPerKind) res.messages.push_back(std::move(msg));
  }
  void problem(bool corruption, Kind kind, const std::string& msg) {
    (corruption ? res.corruptions : res.check_errors)++;
    note(kind, (corruption ? "ERROR " : "") + msg);
  }
  void stop(const std::string& why) {
    if (stopped) return;
    stopped = true;
    res.check_errors++;
    res.messages.push_back(std::string(kStopped) + why);
  }
  // One line for each kind with more findings than were shown.
  void summarize() {
    for (size_t k = 0; k < kKindCount; ++k)
      if (seen[k] > kShownPerKind)
        res.messages.push_back((k == kLeak ? "" : "ERROR ") +
                               std::to_string(seen[k] - kShownPerKind) + " more " + kKindNames[k] +
                               " not listed");
    seen = {};
  }

  // Counts `n` references to each cluster of [offset, offset + length).
  void reference(uint64_t offset, uint64_t length, const char* what, uint64_t n = 1);

  // Reads `buf` at `offset`, only the parts that hold data (the rest is zeros).
  Task<int> read(std::vector<uint8_t>& buf, uint64_t offset);

  // An L1 entry (active or snapshot) found at `where`: checked, and its L2 table recorded.
  bool l1_entry(uint64_t e, uint64_t where, uint64_t weight, bool active);

  // Sorts the recorded L2 tables and merges repeats (so the list stays as long as the number
  // of distinct tables).
  void merge_l2_refs();

  Task<void> walk_active_l1();

  // Snapshot L1 tables, as the union of their ranges: a range covered by k tables is read once
  // and its entries weigh k. (The tables are cluster aligned, so a cluster is referenced by as
  // many tables as cover its first byte.)
  Task<void> walk_snapshot_l1s();

  // Every distinct L2 table once, its references weighed by the L1 entries that point at it.
  Task<void> walk_l2_tables();

  Task<void> walk_bitmaps();

  // Counts every reference; the refcount structures' own only `with_refcount_structures`.
  Task<void> count(bool with_refcount_structures);

  void unreferenced_range(uint64_t first, uint64_t end, const char* why);

  // Compares stored refcounts with the counted ones; with `fix_leaks`, lowers leaked counts.
  // Each distinct refcount block is read and compared once: a block that several refcount
  // table entries point at (already a corruption: it is referenced more than once) counts for
  // the first range only, the others are compared as if they had no block.
  Task<void> compare(bool fix_leaks);

  // Writes a new refcount table and blocks from `counted` past the end of the file. Only the
  // blocks of ranges that hold references are written; the others stay unallocated (zero).
  Task<int> rebuild();

  // Sets or clears the copied flag of active entries by the (now correct) refcounts.
  Task<int> fix_copied(bool repair);
};

}  // namespace kiln::block::qcow2

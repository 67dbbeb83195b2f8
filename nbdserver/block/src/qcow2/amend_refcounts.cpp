// A new refcount width for a closed image (kiln-img amend -o refcount_bits=N), as qemu-img
// amend changes it: the refcount table and blocks are rewritten in the new width, with every
// refcount as it was (leaks included: this is no repair), no L1 or L2 table is touched.
//
// Crash safety, in the order of the writes: (1) the new table and blocks go past the end of
// the file, where nothing references them, and are synced; (2) one write of the first sector
// switches the header's refcount order, table offset and table size together, synced; (3) the
// old table and blocks are freed in the new blocks, synced. Killed before (2), the image is
// the old one with unreferenced bytes past its end; between (2) and (3) the new one with the
// old structures leaked (kiln-img check -r leaks frees them).
//
// The work is bounded by the file, not by what the header claims: refcount blocks must be
// distinct clusters inside the file (holes are not read), a refcount must be for a cluster
// inside the file, and the new table must fit QEMU's 8 MiB limit. Everything that could refuse
// the change (a refcount too large for the new width, a damaged structure) is found by a
// first pass that writes nothing.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <unordered_set>
#include <vector>

#include "kiln/block/qcow2.h"
#include "kiln/common/fd.h"
#include "lock.h"
#include "qcow2/format.h"

namespace kiln::block::qcow2 {
namespace {

class Rewidth {
 public:
  Rewidth(Reactor& r, int fd, const std::string& path) : r_(r), fd_(fd), path_(path) {}

  void run(uint32_t new_order);

 private:
  [[noreturn]] void corrupt(const std::string& what) const {
    throw Error(Reason::kCorrupt, EINVAL, path_ + ": " + what);
  }
  void read(std::span<uint8_t> buf, uint64_t off) {
    const int rc = r_.run(r_.read_full(fd_, buf, off));
    if (rc < 0) throw Error(-rc, path_ + ": cannot read at offset " + std::to_string(off));
  }
  void write(std::span<const uint8_t> buf, uint64_t off) {
    const int rc = r_.run(r_.write_full(fd_, buf, off));
    if (rc < 0)
      throw Error(-rc, path_ + ": cannot write at offset " + std::to_string(off) + ": " +
                           std::strerror(-rc));
  }
  void sync() {
    const int rc = r_.run(r_.fsync(fd_, false));
    if (rc < 0) throw Error(-rc, path_ + ": cannot sync: " + std::strerror(-rc));
  }
  // Whether [off, off + len) holds no data in the file (a hole reads as zeros: not read).
  bool hole(uint64_t off, uint64_t len) const {
    const off_t d = ::lseek(fd_, off_t(off), SEEK_DATA);
    return (d < 0 && errno == ENXIO) || (d >= 0 && uint64_t(d) >= off + len);
  }
  void read_header();
  // The old refcount of cluster `c` (through a one-block cache).
  uint64_t old_refcount(uint64_t c);
  // Pass 1: checks every stored refcount against the new width and the file, and notes which
  // blocks of the new width hold any (ascending).
  void scan(uint32_t new_order);

  Reactor& r_;
  const int fd_;
  const std::string& path_;
  std::vector<uint8_t> first_;  // the header cluster as read
  Header h_;
  uint32_t cb_ = 0;
  uint64_t cs_ = 0;
  uint64_t file_clusters_ = 0;
  std::vector<uint64_t> old_table_;  // block offsets (0: none)
  uint64_t old_entries_ = 0;         // refcounts per old block
  uint64_t cached_block_ = ~uint64_t{0};
  std::vector<uint8_t> block_;
  std::vector<uint64_t> used_blocks_;  // new-width block indices with a refcount, ascending
  uint64_t used_end_ = 0;              // one past the last cluster with a refcount
};

void Rewidth::read_header() {
  first_.assign(hdr::kV3Length, 0);
  read(first_, 0);
  const uint32_t bits = load_be32(&first_[hdr::kClusterBits]);
  if (load_be32(&first_[0]) != kMagic || bits < kMinClusterBits || bits > kMaxClusterBits)
    corrupt("not a qcow2 image");
  first_.assign(size_t{1} << bits, 0);
  read(first_, 0);
  if (auto err = parse_header(first_, &h_)) corrupt(*err);
  if (h_.incompatible_features & (kIncompatDirty | kIncompatCorrupt))
    throw Error(Reason::kCorrupt, EINVAL,
                path_ + ": the image is " +
                    (h_.incompatible_features & kIncompatCorrupt ? "marked corrupt"
                                                                 : "dirty (not closed cleanly)") +
                    ": repair it first (kiln-img check -r all)");
  cb_ = h_.cluster_bits;
  cs_ = h_.cluster_size();
  struct stat st;
  if (::fstat(fd_, &st) != 0) throw Error(errno, path_ + ": cannot stat: " + strerror(errno));
  file_clusters_ = (uint64_t(st.st_size) + cs_ - 1) >> cb_;
}

uint64_t Rewidth::old_refcount(uint64_t c) {
  const uint64_t bi = c / old_entries_;
  if (bi >= old_table_.size()) return 0;
  if (bi != cached_block_) {
    cached_block_ = bi;
    const uint64_t off = old_table_[bi];
    std::fill(block_.begin(), block_.end(), uint8_t{0});
    if (off && !hole(off, cs_)) read(block_, off);
  }
  return get_refcount(block_.data(), c % old_entries_, h_.refcount_order);
}

void Rewidth::scan(uint32_t new_order) {
  const uint64_t table_bytes = uint64_t(h_.refcount_table_clusters) << cb_;
  if (table_bytes > kMaxRefTableBytes) corrupt("refcount table too large");
  if (h_.refcount_table_offset % cs_ ||
      (h_.refcount_table_offset >> cb_) + h_.refcount_table_clusters > file_clusters_)
    corrupt("the refcount table lies outside the file");
  std::vector<uint8_t> table(table_bytes);
  read(table, h_.refcount_table_offset);
  old_table_.resize(table_bytes / 8);
  std::unordered_set<uint64_t> seen;
  for (size_t i = 0; i < old_table_.size(); ++i) {
    const uint64_t off = RefTableEntry{load_be64(&table[i * 8])}.block_offset();
    if (off && (off % cs_ || (off >> cb_) >= file_clusters_))
      corrupt("refcount block at offset " + std::to_string(off) + " lies outside the file");
    if (off && !seen.insert(off).second)
      corrupt("refcount block at offset " + std::to_string(off) + " is used twice");
    old_table_[i] = off;
  }
  old_entries_ = uint64_t{1} << (cb_ + 3 - h_.refcount_order);
  block_.resize(cs_);
  const uint64_t new_entries = uint64_t{1} << (cb_ + 3 - new_order);
  const uint64_t max_new = max_refcount(new_order);
  for (size_t bi = 0; bi < old_table_.size(); ++bi) {
    if (!old_table_[bi] || hole(old_table_[bi], cs_)) continue;
    old_refcount(bi * old_entries_);  // loads the block
    for (uint64_t j = 0; j < old_entries_; ++j) {
      // Zero bytes of narrow refcounts are skipped whole: a mostly empty block costs little.
      if (h_.refcount_order < 3 && block_[(j << h_.refcount_order) / 8] == 0) {
        j += (8u >> h_.refcount_order) - 1;
        continue;
      }
      const uint64_t v = get_refcount(block_.data(), j, h_.refcount_order);
      if (!v) continue;
      const uint64_t c = bi * old_entries_ + j;
      if (c >= file_clusters_)
        corrupt("cluster " + std::to_string(c) +
                " has a refcount but lies past the end of the file");
      if (v > max_new) {
        char msg[160];
        std::snprintf(msg, sizeof msg,
                      "Cannot decrease refcount entry width to %u bits: Cluster at offset "
                      "%#" PRIx64 " has a refcount of %" PRIu64,
                      1u << new_order, c << cb_, v);
        throw Error(Reason::kInvalidArgument, EINVAL, msg);
      }
      used_end_ = c + 1;
      if (used_blocks_.empty() || used_blocks_.back() != c / new_entries)
        used_blocks_.push_back(c / new_entries);
    }
  }
}

void Rewidth::run(uint32_t new_order) {
  read_header();
  if (h_.version < 3)
    throw Error(Reason::kUnsupported, EINVAL,
                "Refcount widths other than 16 bits require compatibility level 1.1 or "
                "above (use compat=1.1 or greater)");
  if (new_order == h_.refcount_order) return;
  scan(new_order);

  // Layout past the end of the file: the table, then the blocks. They need refcounts too, in
  // blocks that may be new themselves: grow until the count is stable (as check's rebuild).
  const uint64_t new_entries = uint64_t{1} << (cb_ + 3 - new_order);
  const uint64_t start = file_clusters_;
  uint64_t tclusters = 1, nblocks = used_blocks_.size() + 1;
  std::vector<uint64_t> all;
  for (int round = 0;; ++round) {
    if (round > 64) throw Error(EFBIG, path_ + ": cannot lay out the new refcount structures");
    const uint64_t end = start + tclusters + nblocks;
    all = used_blocks_;
    for (uint64_t b = start / new_entries; b <= (end - 1) / new_entries; ++b)
      if (all.empty() || all.back() < b) all.push_back(b);
    const uint64_t nt = ((all.back() + 1) * 8 + cs_ - 1) >> cb_;
    if (nt * cs_ > kMaxRefTableBytes)
      throw Error(Reason::kUnsupported, EFBIG,
                  path_ + ": the refcount table in " + std::to_string(1u << new_order) +
                      "-bit width would exceed 8 MiB (use a larger cluster size)");
    if (all.size() == nblocks && nt == tclusters) break;
    nblocks = all.size();
    tclusters = nt;
  }
  const uint64_t new_end = start + tclusters + nblocks;

  // (1) The new blocks and table, synced before anything points at them.
  std::vector<uint8_t> table(tclusters * cs_, 0), data(cs_);
  for (uint64_t k = 0; k < nblocks; ++k) {
    const uint64_t b = all[k], at = start + tclusters + k;
    store_be64(&table[b * 8], at << cb_);
    std::fill(data.begin(), data.end(), uint8_t{0});
    const uint64_t first = b * new_entries, last = (b + 1) * new_entries;
    for (uint64_t c = first; c < std::min(last, used_end_); ++c)
      if (const uint64_t v = old_refcount(c)) set_refcount(data.data(), c - first, new_order, v);
    for (uint64_t c = std::max(start, first); c < std::min(new_end, last); ++c)
      set_refcount(data.data(), c - first, new_order, 1);
    write(data, at << cb_);
  }
  write(table, start << cb_);
  sync();

  // (2) The switch: refcount table offset and size (bytes 48..59) and the refcount order
  // (96..99), in one write inside the first sector.
  store_be64(&first_[hdr::kRefcountTableOffset], start << cb_);
  store_be32(&first_[hdr::kRefcountTableClusters], uint32_t(tclusters));
  store_be32(&first_[hdr::kRefcountOrder], new_order);
  write(std::span<const uint8_t>(first_).subspan(
            hdr::kRefcountTableOffset, hdr::kRefcountOrder + 4 - hdr::kRefcountTableOffset),
        hdr::kRefcountTableOffset);
  sync();

  // (3) The old table and blocks are free now: their refcounts drop by one in the new blocks.
  std::vector<uint64_t> old;
  for (uint64_t i = 0; i < h_.refcount_table_clusters; ++i)
    old.push_back((h_.refcount_table_offset >> cb_) + i);
  for (uint64_t off : old_table_)
    if (off) old.push_back(off >> cb_);
  std::sort(old.begin(), old.end());
  uint64_t loaded = ~uint64_t{0}, loaded_at = 0;
  bool changed = false;
  auto put = [&] {
    if (changed) write(data, loaded_at);
    changed = false;
  };
  for (uint64_t c : old) {
    const uint64_t b = c / new_entries;
    if (b != loaded) {
      put();
      loaded = b;
      loaded_at = load_be64(&table[b * 8]);
      if (loaded_at) read(data, loaded_at);
    }
    if (!loaded_at) continue;  // a refcount of 0 already (a damaged image): nothing to free
    const uint64_t v = get_refcount(data.data(), c % new_entries, new_order);
    if (v) {
      set_refcount(data.data(), c % new_entries, new_order, v - 1);
      changed = true;
    }
  }
  put();
  sync();
}

}  // namespace

void change_refcount_bits(Reactor& r, const std::string& path, uint32_t bits) {
  if (bits == 0 || bits > 64 || !std::has_single_bit(bits))
    throw Error(Reason::kInvalidArgument, EINVAL,
                "Refcount width must be a power of two and may not exceed 64 bits");
  common::Fd file(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!file) throw Error(errno, path + ": cannot open: " + strerror(errno));
  lock_image_file(file.get(), path, true);
  const UnlockOnExit unlock{file.get()};
  Rewidth(r, file.get(), path).run(uint32_t(std::countr_zero(bits)));
}

}  // namespace kiln::block::qcow2

// The qcow2 driver. One Image per open file; the backing chain hangs off `backing_`.
//
// Split by job: image.cpp (open, validation, close), io.cpp (the guest data path), alloc.cpp
// (refcounts, cluster and L2 table allocation), flush.cpp (ordered metadata write-back, resize),
// compress.cpp (compressed clusters), create.cpp, check.cpp. The on-disk format is format.h;
// table entries are decoded and encoded only by entry.h. docs/block-layer.md explains the
// write ordering that keeps the image consistent at every instant.
#pragma once

#include <sys/stat.h>

#include <array>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "crypto/cipher.h"
#include "crypto/luks.h"
#include "host_file.h"
#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"
#include "kiln/common/fd.h"
#include "qcow2/cache.h"
#include "qcow2/format.h"
#include "qcow2/overlap.h"

namespace kiln::block::qcow2 {

// Files already on the chain being opened, to refuse loops.
using ChainIds = std::vector<std::pair<dev_t, ino_t>>;

class Image;
// check.cpp: checks (and repairs) refcounts and tables of an open image.
Task<void> run_check(Image& img, Repair repair, CheckResult* out);
// Why a check stopped before it was complete (a bound on hostile images), or "".
std::string check_stopped_reason(const CheckResult& r);

class Image final : public BlockDevice {
 public:
  // `format_probed`: the caller found "qcow2" by probing the content, so the header may be a
  // guest's forgery inside a raw disk: a backing file is refused rather than opened.
  static Task<std::unique_ptr<Image>> open(Reactor& r, const std::string& path,
                                           const OpenOptions& opt, ChainIds chain,
                                           bool format_probed = false);
  ~Image() override;

  uint64_t size() const override { return h_.size; }
  const Capabilities& caps() const override { return caps_; }
  const char* format() const override { return "qcow2"; }
  const std::string& filename() const override { return path_; }
  uint32_t chain_length() const override { return backing_ ? 1 + backing_->chain_length() : 0; }

  Task<int> read(uint64_t offset, std::span<uint8_t> buf) override;
  Task<int> write(uint64_t offset, std::span<const uint8_t> buf, unsigned flags) override;
  Task<int> flush() override;
  Task<int> discard(uint64_t offset, uint64_t length) override;
  Task<int> write_zeroes(uint64_t offset, uint64_t length, unsigned flags) override;
  Task<int> block_status(uint64_t offset, uint64_t length, std::vector<Extent>* out) override;
  Task<int> resize(uint64_t new_size) override;
  Task<int> close() override;
  void start_writeback() override { fd_.start_writeback(); }
  // make_empty.cpp: every cluster of the active table unallocated (kiln-img commit).
  Task<int> make_empty();
  Task<void> set_read_only(bool read_only) override;  // live.cpp

  // Live snapshot and commit (live.cpp): the backing device, taken out of or put under this
  // image while no request is in flight.
  BlockDevice* backing() { return backing_.get(); }
  std::unique_ptr<BlockDevice> take_backing() { return std::move(backing_); }
  void set_backing(std::unique_ptr<BlockDevice> b) { backing_ = std::move(b); }

  const Header& header() const { return h_; }
  const std::vector<Snapshot>& snapshots() const { return snapshots_; }
  int fd() const { return fd_.get(); }
  // The LUKS header of an encrypted image (crypt_method 2), or null.
  const crypto::LuksHeader* luks() const { return luks_ ? &*luks_ : nullptr; }
  Reactor& reactor() { return r_; }

  // --- compressed clusters written by Kiln (compress.cpp) ---
  // Compresses one guest cluster (`data`: the cluster, or what of the last cluster lies
  // before the end of the disk; zeros beyond) with the image's compression type into `out`,
  // which stays empty if the result would not be smaller than a cluster. Touches nothing
  // mutable: worker threads call it.
  int compress_cluster(std::span<const uint8_t> data, std::vector<uint8_t>* out) const;
  // Writes guest cluster `gc` (`data` as above) as `compressed` (from compress_cluster), or
  // uncompressed when `compressed` is empty. As in QEMU, only a cluster that is unallocated
  // (or a zero cluster without host cluster) may be written so: -EEXIST otherwise.
  Task<int> write_compressed(uint64_t gc, std::span<const uint8_t> data,
                             std::span<const uint8_t> compressed);
  // Preallocates every guest cluster of a new image (preallocate.cpp).
  Task<int> preallocate(Preallocation mode);

 private:
  friend struct Checker;
  friend struct SnapshotOps;    // snapshot.cpp
  friend struct ZeroExpansion;  // expand_zeros.cpp
  friend Task<void> run_check(Image& img, Repair repair, CheckResult* out);

  Image(Reactor& r, std::string path, HostFile file, Header h, const OpenOptions& opt);
  Task<void> load_tables();

  // --- mapping (io.cpp) ---
  uint64_t cluster_of(uint64_t off) const { return off >> cb_; }
  // The L2 entry of guest cluster `gc` (empty if unallocated), or -errno.
  Task<int> l2_entry(uint64_t gc, L2Entry* entry);
  L2Entry l2_entry_cached(uint64_t gc, bool* hit);
  // Decodes the entry (8 or 16 bytes) at `p` in an L2 table of this image.
  L2Entry decode_l2(const uint8_t* p) const {
    return extended_ ? L2Entry::extended(load_be64(p), load_be64(p + 8), cb_)
                     : L2Entry(load_be64(p), cb_);
  }
  L2Entry decode_l2_zero() const {
    return extended_ ? L2Entry::extended(0, 0, cb_) : L2Entry(0, cb_);
  }
  Task<int> load_slice(SliceCache& cache, uint64_t offset, SliceRef* out);
  // Reads [in_off, in_off + buf.size()) of guest cluster `gc`, all of kind `k` in entry `m`.
  Task<int> read_cluster_part(uint64_t gc, L2Entry m, L2Kind k, uint64_t in_off,
                              std::span<uint8_t> buf);
  // The same for a range whose subclusters may differ in kind.
  Task<int> read_cluster_range(uint64_t gc, L2Entry m, uint64_t in_off, std::span<uint8_t> buf);
  Task<int> read_backing(uint64_t offset, std::span<uint8_t> buf);
  Task<int> read_task(uint64_t offset, std::span<uint8_t> buf);
  Task<int> write_cluster(uint64_t gc, uint64_t in_off, std::span<const uint8_t> data);
  // write() of whole sectors, once the request may start (overlap.h).
  Task<int> write_sectors(uint64_t offset, std::span<const uint8_t> buf, unsigned flags);
  Task<int> zero_cluster(uint64_t gc, bool unmap, bool fast, bool discard);
  // Extended L2: marks subclusters `mask` of `gc` as zero (their allocation bits cleared).
  // Returns 1 when the caller must write explicit zeros instead.
  Task<int> zero_subclusters(uint64_t gc, uint32_t mask);
  Task<int> write_cluster_extended(uint64_t gc, L2Entry m, uint64_t in_off,
                                   std::span<const uint8_t> data);
  // Zeroes [in_off, in_off + len) of `gc`, part of a cluster (write_zeroes' head and tail).
  Task<int> zero_partial(uint64_t gc, uint64_t in_off, uint64_t len, bool fast);
  // Block status of [pos, end), which this image leaves unallocated: the backing file's.
  Task<int> unallocated_status(uint64_t pos, uint64_t end, std::vector<Extent>* out);
  Task<void> write_part(uint64_t gc, uint64_t in_off, std::span<const uint8_t> data, int* err);
  // When every cluster of [offset, offset + len) (two or more) is ours, its entry cached,
  // writable in place for its part and contiguous on the host with the previous one: pins
  // them all and returns the host offset of `offset`. 0 otherwise, nothing pinned. No
  // suspension between the lookups and the pins, as in write_cluster's fast path.
  uint64_t pin_in_place_run(uint64_t offset, uint64_t len);
  void unpin_run(uint64_t host, uint64_t offset, uint64_t len);
  Task<void> zero_part(uint64_t gc, bool unmap, bool fast, bool discard, int* err);
  // The status of the bytes of kind `k` at `in_off` of cluster `gc`.
  static void status_of(uint64_t gc, uint32_t cb, L2Entry m, L2Kind k, uint64_t in_off, Extent* e);
  // Sets the L2 entry of `gc` (whose table must exist and be ours; `bitmap` is ignored unless
  // the image has extended entries); records `gen` as pending when the new entry points at a
  // cluster allocated since the last flush.
  Task<int> set_l2_entry(uint64_t gc, uint64_t entry, uint64_t bitmap, bool pending_alloc);

  // Per-guest-cluster exclusion for allocating and metadata-changing operations.
  struct ClusterLock;
  Task<ClusterLock> lock_cluster(uint64_t gc);
  void unlock_cluster(uint64_t gc);

  // In-place writes in flight, counted per host cluster (hashed into kPinBuckets counters: no
  // allocation on the fast path; a collision only makes a waiter wait a little longer). Before
  // an entry stops pointing at a host cluster (zero, discard), its owner waits until no in-place
  // write can still land there; a deferred free of a pinned cluster is put off to a later flush.
  static constexpr size_t kPinBuckets = 256;
  size_t pin_bucket(uint64_t host) const { return (host >> cb_) & (kPinBuckets - 1); }
  bool pinned(uint64_t host) const { return pins_[pin_bucket(host)] != 0; }
  Task<void> wait_unpinned(uint64_t host);

  // --- allocation and refcounts (alloc.cpp) ---
  Task<int> refcount(uint64_t cluster, uint64_t* value);
  Task<int> add_refcount(uint64_t cluster, int64_t delta);
  Task<int> alloc_clusters(uint64_t count, uint64_t* host_offset);
  Task<int> alloc_clusters_locked(uint64_t count, uint64_t* host_offset);
  Task<int> ensure_refblock(uint64_t cluster);
  // Whether a cluster holds a structure the header points at (header, L1 table, refcount
  // table, snapshot table, LUKS header): such a cluster is never free, whatever refcounts say.
  bool holds_fixed_metadata(uint64_t cluster) const;
  // Whether host bytes [host, host + len) share a cluster with one of those structures. Guest
  // data is never written there: an L2 entry of a hostile image can name a table's cluster as
  // its own, and a guest write through it would rewrite that table.
  bool overlaps_fixed_metadata(uint64_t host, uint64_t len) const;
  Task<int> grow_reftable(uint64_t needed_entries);
  // Makes the L2 table of L1 index `l1i` exist and be exclusively ours (copies a shared one).
  Task<int> prepare_l2(uint32_t l1i);
  void defer_free(uint64_t entry);  // an L2 entry that no longer references its clusters
  Task<int> apply_frees(uint64_t upto_gen);
  Task<int> free_now(uint64_t host_offset, uint64_t length);

  // --- write-back (flush.cpp) ---
  Task<int> flush_locked();
  // Puts every mapping change up to `upto` into the file (page cache), ordered after the
  // refcounts they rely on, so that an acknowledged write survives the death of the process.
  Task<int> commit(uint64_t upto);
  Task<int> write_buffers(std::vector<std::pair<uint64_t, std::vector<uint8_t>>>& writes);
  Task<int> write_refblocks();
  // Writes dirty L2 slices and L1 chunks; changes newer than `safe` keep their old value.
  Task<int> write_l2_and_l1(uint64_t safe);
  Task<int> make_room(SliceCache& cache);
  Task<int> write_header_fields(size_t offset, size_t length);
  // Write-back I/O: metadata writes and fdatasync. A failure poisons the image (see flush.cpp):
  // the kernel reports a lost write-back once, so nothing may claim durability afterwards.
  Task<int> write_meta(std::span<const uint8_t> data, uint64_t offset);
  Task<int> sync_file();
  int poison(int rc) {
    if (rc < 0 && !poisoned_) poisoned_ = rc;
    return rc;
  }

  // --- compressed clusters (compress.cpp) ---
  Task<int> read_compressed(L2Entry entry, std::span<uint8_t> cluster);

  // --- encryption (crypt.cpp) ---
  // Reads and validates the LUKS header area and unlocks it with opt_.key_secret. Throws.
  Task<void> open_encryption();
  // Writes guest data at host offset `host` (encrypted first when the image is) / decrypts
  // guest data just read from there. Both need whole 512-byte sectors.
  Task<int> write_data(std::span<const uint8_t> data, uint64_t host);
  int decrypt_data(std::span<uint8_t> buf, uint64_t host);
  // Encrypted images are read and written in whole sectors: requests that are not go through
  // these (a bounce buffer; writes read-modify-write, holding their sectors in overlaps_).
  bool sector_unaligned(uint64_t offset, uint64_t length) const {
    return luks_ && ((offset | length) & (crypto::kSectorSize - 1));
  }
  Task<int> read_unaligned(uint64_t offset, std::span<uint8_t> buf);
  Task<int> write_unaligned(uint64_t offset, std::span<const uint8_t> buf, unsigned flags);
  Task<int> zero_unaligned(uint64_t offset, uint64_t length, unsigned flags);

  Reactor& r_;
  std::string path_;
  HostFile fd_;  // the image file (O_DIRECT with --cache=none): all its I/O goes through here
  Header h_;
  Capabilities caps_;
  OpenOptions opt_;
  bool read_only_;
  uint32_t cb_;          // cluster bits
  uint64_t cs_;          // cluster size
  bool extended_;        // extended L2 entries (subclusters)
  uint64_t l2e_bytes_;   // bytes per L2 entry: 8, or 16 when extended_
  uint32_t scb_;         // subcluster bits (cluster bits without extended L2 entries)
  uint64_t l2_entries_;  // entries per L2 table
  uint64_t rb_entries_;  // entries per refcount block

  std::vector<Snapshot> snapshots_;
  std::vector<uint64_t> l1_;
  std::vector<Slice::Pending> l1_pending_;
  std::set<uint64_t> l1_dirty_chunks_;  // 4 KiB chunks of the L1 table to write
  std::vector<uint64_t> reftable_;
  SliceCache l2_cache_;
  SliceCache rb_cache_;
  std::unique_ptr<BlockDevice> backing_;

  std::unordered_map<uint64_t, std::unique_ptr<WaitList>> busy_clusters_;
  std::array<uint32_t, kPinBuckets> pins_{};      // in-place writes in flight
  std::array<uint32_t, kPinBuckets> draining_{};  // waiters in wait_unpinned(): no new pins
  WaitList unpinned_;
  std::unordered_map<uint32_t, std::unique_ptr<WaitList>> busy_l1_;
  AsyncMutex alloc_mutex_;
  AsyncMutex flush_mutex_;
  AsyncMutex meta_write_mutex_;  // metadata writes land in the order they were snapshotted
  uint64_t free_hint_ = 0;       // no free cluster below this index

  uint64_t gen_ = 0;              // bumped by every mapping change
  uint64_t durable_gen_ = 0;      // refcounts and data of changes up to here are on disk
  uint64_t committed_gen_ = 0;    // tables up to here are in the file (maybe not yet synced)
  bool tables_unsynced_ = false;  // tables written by a commit since the last flush
  bool set_dirty_ = false;        // we set the dirty bit (v3 commits); cleared on close
  struct PendingFree {
    uint64_t entry;  // the old L2 entry (standard or compressed) or a bare cluster offset
    uint64_t gen;
  };
  std::vector<PendingFree> frees_;
  bool unsynced_ = false;  // data written since the last fsync
  int poisoned_ = 0;       // the first failed write-back: every later write and flush fails
  bool closed_ = false;
  bool in_flush_ = false;
  // Where the next compressed cluster's bytes go: the end of the last one, inside a host
  // cluster that compressed data already holds (0: start a new cluster). QEMU packs them so.
  uint64_t compressed_tail_ = 0;

  std::optional<crypto::LuksHeader> luks_;
  std::unique_ptr<crypto::SectorCipher> cipher_;  // null while locked (header_only)
  std::unique_ptr<Overlaps> overlaps_;  // encrypted images: writes that overlap an RMW wait
};

}  // namespace kiln::block::qcow2

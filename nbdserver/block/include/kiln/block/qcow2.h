// qcow2 operations that tools need beyond the BlockDevice interface: create, info, check, map.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/block/device.h"

namespace kiln::block::qcow2 {

struct CreateOptions {
  uint64_t size = 0;  // 0: the backing file's size
  uint32_t cluster_size = 65536;
  uint32_t version = 3;  // 2 = compat 0.10, 3 = compat 1.1
  uint32_t refcount_bits = 16;
  bool lazy_refcounts = false;
  bool extended_l2 = false;    // 16-byte L2 entries, 32 subclusters per cluster
  std::string backing_file;    // stored as given
  std::string backing_format;  // required with backing_file
  std::string compression_type = "zlib";
  // Encryption (qemu's encrypt.*): "" (none) or "luks"; "aes" is refused. With "luks",
  // `key_secret` is the passphrase of key slot 0.
  std::string encrypt_format;
  std::optional<std::string> key_secret;
  std::string encrypt_cipher_alg = "aes-256";  // aes-128 or aes-256 (xts-plain64)
  std::string encrypt_hash_alg = "sha256";     // sha1, sha256, sha512
  uint32_t encrypt_iter_time_ms = 2000;        // PBKDF2 time for the key slot
};

// Creates a qcow2 image laid out as `qemu-img create` does. Throws Error.
void create(Reactor& reactor, const std::string& path, const CreateOptions& options);

struct SnapshotInfo {
  std::string id, name;
  uint64_t vm_state_size = 0;
  uint32_t date_sec = 0, date_nsec = 0;
  uint64_t vm_clock_nsec = 0;
  uint64_t disk_size = 0;
  uint64_t icount = ~uint64_t{0};  // all ones: not recorded (older QEMU)
};

// The LUKS header of an encrypted image, as qemu-img info shows it.
struct EncryptInfo {
  struct Slot {
    bool active = false;
    uint32_t iters = 0, stripes = 0;
    uint64_t key_offset = 0;
  };
  std::string ivgen_alg, hash_alg, cipher_alg, uuid, cipher_mode;
  std::vector<Slot> slots;
  uint64_t payload_offset = 0;
  uint32_t master_key_iters = 0;
};

struct Info {
  std::string filename;
  uint64_t virtual_size = 0;
  uint64_t actual_size = 0;  // bytes allocated on the host file system
  uint32_t cluster_size = 0;
  uint32_t version = 0;
  uint32_t refcount_bits = 0;
  bool lazy_refcounts = false;
  bool corrupt = false;
  bool dirty = false;
  bool extended_l2 = false;
  std::string compression_type;
  std::string backing_file;           // as stored
  std::string full_backing_filename;  // resolved
  std::string backing_format;
  std::vector<SnapshotInfo> snapshots;
  bool encrypted = false;
  std::optional<EncryptInfo> encrypt;  // LUKS (no key needed to read the header)
};

// Reads the header of a qcow2 image (no backing opened). Throws Error.
// `lock` false: no advisory locks (qemu-img's -U).
Info read_info(Reactor& reactor, const std::string& path, bool lock = true);

enum class Repair { kNone, kLeaks, kAll };

struct CheckResult {
  uint64_t corruptions = 0;
  uint64_t leaks = 0;
  uint64_t check_errors = 0;
  uint64_t corruptions_fixed = 0;
  uint64_t leaks_fixed = 0;
  uint64_t image_end_offset = 0;
  uint64_t total_clusters = 0;      // guest clusters
  uint64_t allocated_clusters = 0;  // guest clusters with data in this image
  uint64_t fragmented_clusters = 0;
  uint64_t compressed_clusters = 0;
  std::vector<std::string> messages;  // one line per problem found
};

// Checks refcounts and tables of a qcow2 image, optionally repairing. Throws Error if the
// image cannot be opened at all.
// `lock` false (qemu-img's -U) is allowed only without repair.
// `key_secret`: the passphrase of an encrypted image (as QEMU, check needs it).
CheckResult check(Reactor& reactor, const std::string& path, Repair repair, bool lock = true,
                  const std::optional<std::string>& key_secret = std::nullopt);

// header_update.cpp: changes to a closed image's header that move no data (kiln-img rebase -u,
// amend). Takes the image's write lock; refuses dirty or corrupt images. Throws Error.
struct HeaderChange {
  std::optional<std::string> backing_file;    // "" removes the backing file and its format
  std::optional<std::string> backing_format;  // "" removes the format extension
  std::optional<bool> lazy_refcounts;
  // 2 or 3. Going to 2 needs refcount_bits=16, no incompatible features and no bitmaps (the
  // caller has removed zero clusters first).
  std::optional<uint32_t> version;
};
void update_header(Reactor& reactor, const std::string& path, const HeaderChange& change);

// amend_refcounts.cpp: rewrites the refcount table and blocks of a closed v3 image in the
// width `bits` (1 to 64, a power of two), every refcount kept, as qemu-img amend -o
// refcount_bits does; crash-safe (new structures synced before the header switches to them).
// Takes the image's write lock; refuses dirty or corrupt images, version 2, and a refcount that
// the new width cannot hold (qemu-img's message; nothing written). Throws Error.
void change_refcount_bits(Reactor& reactor, const std::string& path, uint32_t bits);

// make_empty.cpp: unallocates every cluster of a qcow2 image's active L1 table (the guest then
// sees its backing file), as an overlay is left after kiln-img commit, and flushes. The caller
// must be the image's only user (opened writable, nothing in flight). -ENOTSUP for raw.
Task<int> make_empty(BlockDevice& image);

// expand_zeros.cpp: before a downgrade to version 2, the zero clusters of the internal
// snapshots' L2 tables become explicit zeros (or unallocated without a backing file), as
// QEMU's qcow2_expand_zero_clusters() does; the caller expands the active image's own through
// the data path. `image` is a v3 qcow2 device opened writable without its backing file, used
// by nobody else. 0 or -errno (`*why` then says what failed).
Task<int> expand_snapshot_zeros(BlockDevice& image, std::string* why);

// A name taken from an image (backing file, format) made safe for a one-line message: bytes
// outside printable ASCII (and backslashes) become \xNN, so a hostile header can neither break
// the line nor send escape sequences to a terminal.
std::string printable(std::string_view name);

// -o preallocation: metadata (tables and host clusters, a hole in the file), falloc (the
// clusters' blocks reserved), full (written with zeros).
enum class Preallocation { kOff, kMetadata, kFalloc, kFull };
// Preallocates every guest cluster of a new qcow2 image `dev` (opened writable), laid out as
// QEMU does; -EEXIST if a cluster is already allocated, -ENOTSUP for other formats.
Task<int> preallocate(BlockDevice& dev, Preallocation mode);

// --- compressed clusters (kiln-img convert -c) ---
// The cluster size of an open qcow2 device, 0 for any other format.
uint32_t cluster_size(const BlockDevice& dev);
// The bytes a write can allocate on its own in a qcow2 device: the subcluster size with
// extended L2 entries, else the cluster size; 0 for other formats.
uint32_t allocation_unit(const BlockDevice& dev);
// Compresses one guest cluster of qcow2 device `dev` as the image stores them (its
// compression_type; `data` is the cluster, or what of the disk's last cluster lies before the
// end): `out` gets the compressed bytes, or stays empty if they would not be smaller than a
// cluster. Pure and thread-safe: worker threads run it. -ENOTSUP for a device other than qcow2.
int compress_cluster(const BlockDevice& dev, std::span<const uint8_t> data,
                     std::vector<uint8_t>* out);
// Writes guest cluster `cluster` as `compressed` (from compress_cluster; empty: uncompressed).
// Only into a cluster that holds nothing yet (-EEXIST otherwise), as QEMU requires.
Task<int> write_compressed(BlockDevice& dev, uint64_t cluster, std::span<const uint8_t> data,
                           std::span<const uint8_t> compressed);
// The same, compressing on the calling thread.
Task<int> write_compressed(BlockDevice& dev, uint64_t cluster, std::span<const uint8_t> data);

}  // namespace kiln::block::qcow2

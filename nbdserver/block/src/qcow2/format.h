// The qcow2 on-disk format (docs/interop/qcow2.txt in QEMU is the contract), described once:
// header fields and offsets, header extensions, snapshot table entries, refcount block
// entries (table entries: entry.h).
// Everything on disk is big-endian; the parsed structures are in host order.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kiln/block/endian.h"
#include "qcow2/entry.h"

namespace kiln::block::qcow2 {

using block::load_be16;
using block::load_be32;
using block::load_be64;
using block::store_be16;
using block::store_be32;
using block::store_be64;

constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
constexpr uint32_t kMinClusterBits = 9;
constexpr uint32_t kMaxClusterBits = 21;
// Extended L2 entries: subclusters (cluster / 32) of at least 512 bytes, as QEMU requires.
constexpr uint32_t kMinExtendedClusterBits = 14;
constexpr uint32_t kMaxBackingNameLength = 1023;
constexpr uint64_t kMaxL1Bytes = 32u << 20;       // as QEMU: bigger L1 tables are refused
constexpr uint64_t kMaxRefTableBytes = 8u << 20;  // as QEMU
constexpr uint32_t kMaxSnapshots = 65536;
constexpr uint64_t kMaxSnapshotTableBytes = 64u << 20;
constexpr uint64_t kMaxVirtualSize = 1ull << 62;

// Header field offsets (bytes).
namespace hdr {
constexpr size_t kMagic = 0, kVersion = 4, kBackingFileOffset = 8, kBackingFileSize = 16,
                 kClusterBits = 20, kSize = 24, kCryptMethod = 32, kL1Size = 36,
                 kL1TableOffset = 40, kRefcountTableOffset = 48, kRefcountTableClusters = 56,
                 kNbSnapshots = 60, kSnapshotsOffset = 64, kIncompatibleFeatures = 72,
                 kCompatibleFeatures = 80, kAutoclearFeatures = 88, kRefcountOrder = 96,
                 kHeaderLength = 100, kCompressionType = 104;
constexpr size_t kV2Length = 72;
constexpr size_t kV3MinLength = 104;
constexpr size_t kV3Length = 112;  // with compression_type and its padding, as QEMU writes
}  // namespace hdr

// Feature bits.
constexpr uint64_t kIncompatDirty = 1ull << 0;
constexpr uint64_t kIncompatCorrupt = 1ull << 1;
constexpr uint64_t kIncompatDataFile = 1ull << 2;
constexpr uint64_t kIncompatCompression = 1ull << 3;
constexpr uint64_t kIncompatExtendedL2 = 1ull << 4;
// crypt_method values.
constexpr uint32_t kCryptNone = 0, kCryptAes = 1, kCryptLuks = 2;
constexpr uint64_t kIncompatKnown = kIncompatDirty | kIncompatCorrupt | kIncompatDataFile |
                                    kIncompatCompression | kIncompatExtendedL2;
constexpr uint64_t kCompatLazyRefcounts = 1ull << 0;
constexpr uint64_t kAutoclearBitmaps = 1ull << 0;

// Header extension types.
constexpr uint32_t kExtEnd = 0x00000000;
constexpr uint32_t kExtBackingFormat = 0xe2792aca;
constexpr uint32_t kExtFeatureTable = 0x6803f857;
constexpr uint32_t kExtBitmaps = 0x23852875;
constexpr uint32_t kExtEncryption = 0x0537be77;
constexpr uint32_t kExtDataFile = 0x44415441;

// Table entries: entry.h.

enum class Compression : uint8_t { kZlib = 0, kZstd = 1 };

struct FeatureName {
  uint8_t type, bit;
  std::string name;
};

// The feature name table extension as QEMU writes it into v3 images (48-byte entries).
std::vector<uint8_t> qemu_feature_table();
// Appends one header extension to `b`: type, length, the data padded to 8 bytes.
void append_extension(std::vector<uint8_t>& b, uint32_t type, const void* data, size_t len);

struct Header {
  uint32_t version = 3;
  uint64_t backing_file_offset = 0;
  uint32_t backing_file_size = 0;
  uint32_t cluster_bits = 16;
  uint64_t size = 0;
  uint32_t crypt_method = 0;
  uint32_t l1_size = 0;
  uint64_t l1_table_offset = 0;
  uint64_t refcount_table_offset = 0;
  uint32_t refcount_table_clusters = 0;
  uint32_t nb_snapshots = 0;
  uint64_t snapshots_offset = 0;
  uint64_t incompatible_features = 0;
  uint64_t compatible_features = 0;
  uint64_t autoclear_features = 0;
  uint32_t refcount_order = 4;
  uint32_t header_length = hdr::kV2Length;
  Compression compression = Compression::kZlib;

  // From the first cluster beyond the fixed header.
  std::string backing_file;
  std::optional<std::string> backing_format;
  std::vector<FeatureName> feature_names;
  bool has_bitmaps_ext = false;
  uint32_t nb_bitmaps = 0;
  uint64_t bitmap_directory_size = 0, bitmap_directory_offset = 0;
  bool has_encryption_ext = false;
  uint64_t crypto_offset = 0, crypto_length = 0;  // the LUKS header area (encryption extension)
  bool has_data_file_ext = false;
  uint64_t extensions_end = 0;  // first byte after the extension area

  uint64_t cluster_size() const { return 1ull << cluster_bits; }
  uint32_t refcount_bits() const { return 1u << refcount_order; }
  std::string feature_name(uint8_t type, uint8_t bit) const;
};

// Parses and validates the header from the image's first bytes (at least the first cluster, or
// the whole file if shorter). Returns an error message or nullopt; fills `out`.
std::optional<std::string> parse_header(std::span<const uint8_t> first_cluster, Header* out);

// Whether these bytes start with the qcow2 magic and a version other than 2 and 3: a format
// Kiln does not read (unsupported), rather than a damaged header.
inline bool is_unknown_version(std::span<const uint8_t> first) {
  if (first.size() < 8 || load_be32(first.data()) != kMagic) return false;
  const uint32_t v = load_be32(first.data() + 4);
  return v != 2 && v != 3;
}

// Writes the fixed header (not the extensions) into `buf`, which must hold header_length bytes.
void serialize_header(const Header& h, uint8_t* buf);

struct Snapshot {
  uint64_t l1_table_offset = 0;
  uint32_t l1_size = 0;
  std::string id, name;
  uint32_t date_sec = 0, date_nsec = 0;
  uint64_t vm_clock_nsec = 0;
  uint64_t vm_state_size = 0;
  uint64_t disk_size = 0;          // from the extra data; the image's size when absent (as QEMU)
  uint64_t icount = ~uint64_t{0};  // from the extra data; all ones when absent
  std::vector<uint8_t> extra;      // the extra data as stored, rewritten unchanged
};

// Parses `count` snapshot table entries. Returns an error message or nullopt. `*table_bytes`
// (if not null) receives the bytes the entries take.
std::optional<std::string> parse_snapshots(std::span<const uint8_t> table, uint32_t count,
                                           std::vector<Snapshot>* out,
                                           uint64_t* table_bytes = nullptr);
// The on-disk bytes of a snapshot table (snapshot.cpp): entries 8-byte aligned, extra data
// as parsed, or QEMU 7.2's 24 bytes (vm_state_size, disk_size, icount) for a new entry.
std::vector<uint8_t> serialize_snapshots(const std::vector<Snapshot>& snapshots);

// Refcount block entries of any width from 1 to 64 bits.
inline uint64_t get_refcount(const uint8_t* block, uint64_t index, uint32_t order) {
  switch (order) {
    case 0:
    case 1:
    case 2: {
      const uint32_t bits = 1u << order;
      const uint64_t bit = index * bits;
      return (block[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
    }
    case 3:
      return block[index];
    case 4:
      return load_be16(block + 2 * index);
    case 5:
      return load_be32(block + 4 * index);
    default:
      return load_be64(block + 8 * index);
  }
}
inline void set_refcount(uint8_t* block, uint64_t index, uint32_t order, uint64_t value) {
  switch (order) {
    case 0:
    case 1:
    case 2: {
      const uint32_t bits = 1u << order;
      const uint64_t bit = index * bits;
      const uint8_t mask = uint8_t(((1u << bits) - 1) << (bit % 8));
      block[bit / 8] = uint8_t((block[bit / 8] & ~mask) | ((value << (bit % 8)) & mask));
      break;
    }
    case 3:
      block[index] = uint8_t(value);
      break;
    case 4:
      store_be16(block + 2 * index, uint16_t(value));
      break;
    case 5:
      store_be32(block + 4 * index, uint32_t(value));
      break;
    default:
      store_be64(block + 8 * index, value);
  }
}
inline uint64_t max_refcount(uint32_t order) {
  return order == 6 ? ~uint64_t{0} : (1ull << (1u << order)) - 1;
}

}  // namespace kiln::block::qcow2

// qcow2 table entries, decoded and encoded in one place (docs/interop/qcow2.txt, "Cluster
// mapping"): L2 entries (what a guest cluster is), L1 entries (where an L2 table is) and
// refcount table entries. Everything that reads or writes these bits goes through here: the
// data path (io.cpp), allocation and frees (alloc.cpp), compressed reads (compress.cpp) and
// check/repair (check*.cpp).
//
// Extended L2 entries (issue 11) will make an L2 entry 16 bytes: this 64-bit descriptor (same
// layout, except that bit 0 is reserved) followed by a 64-bit subcluster bitmap. The kind then
// becomes per subcluster; compressed entries stay as they are (their bitmap is reserved). To
// make room: callers find entries through kL2EntryBytes and decode through L2Entry only, so
// that the bitmap and the per-subcluster status can be added here.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kiln::block::qcow2 {

// Bits shared by L1 and L2 entries.
constexpr uint64_t kOflagCopied = 1ull << 63;      // refcount is exactly one
constexpr uint64_t kOflagCompressed = 1ull << 62;  // L2: a compressed cluster descriptor
constexpr uint64_t kOflagZero = 1ull << 0;         // L2 standard descriptor: reads as zeros
constexpr uint64_t kL1OffsetMask = 0x00fffffffffffe00ull;
constexpr uint64_t kL2OffsetMask = 0x00fffffffffffe00ull;
constexpr uint64_t kRefTableOffsetMask = 0xfffffffffffffe00ull;
constexpr uint64_t kL1ReservedMask = 0x7f000000000001ffull;
constexpr uint64_t kL2StandardReservedMask = 0x3f000000000001feull;
constexpr uint64_t kRefTableReservedMask = 0x1ffull;
// Host offsets (standard clusters, tables) have 56 bits; compressed offsets must stay below.
constexpr uint64_t kMaxHostOffsetBits = 56;

// Size of one L2 entry on disk (16 with extended L2 entries, not supported yet).
constexpr size_t kL2EntryBytes = 8;

// A compressed cluster's bytes in the image file.
struct CompressedRef {
  uint64_t offset;  // byte offset of the compressed data
  uint64_t length;  // bytes to read: up to the end of the last 512-byte sector used
};

enum class L2Kind : uint8_t {
  kUnallocated,  // reads from the backing file (or zeros)
  kZeroPlain,    // reads as zeros, no host cluster
  kZeroAlloc,    // reads as zeros, host cluster preallocated
  kNormal,       // data at host()
  kCompressed,   // compressed data at compressed_range()
};

// One L2 entry. Decoding never fails: hostile bits are reported by reserved_bits(), aligned()
// and valid(), and each caller decides (the data path refuses with -EIO, check reports).
class L2Entry {
 public:
  constexpr L2Entry(uint64_t raw, uint32_t cluster_bits) : raw_(raw), cluster_bits_(cluster_bits) {}

  constexpr uint64_t raw() const { return raw_; }
  constexpr L2Kind kind() const {
    if (raw_ & kOflagCompressed) return L2Kind::kCompressed;
    if (raw_ & kOflagZero) return host() ? L2Kind::kZeroAlloc : L2Kind::kZeroPlain;
    return host() ? L2Kind::kNormal : L2Kind::kUnallocated;
  }
  constexpr bool compressed() const { return raw_ & kOflagCompressed; }
  constexpr bool zero() const { return !compressed() && (raw_ & kOflagZero); }
  constexpr bool copied() const { return raw_ & kOflagCopied; }
  // A standard entry's host cluster (kNormal, kZeroAlloc), or 0.
  constexpr uint64_t host() const { return compressed() ? 0 : raw_ & kL2OffsetMask; }
  // Holds a host cluster (or compressed bytes) that a refcount counts.
  constexpr bool allocated() const { return compressed() || host() != 0; }
  // Ours alone and holding data: a guest write may go to host() in place.
  constexpr bool writable_in_place() const {
    return (raw_ & (kOflagCopied | kOflagCompressed | kOflagZero)) == kOflagCopied && host();
  }

  // The bits qcow2.txt reserves that are set: for standard descriptors bits 1-8 and 56-61, for
  // compressed ones the offset bits from 56 up (only small clusters have them).
  constexpr uint64_t reserved_bits() const {
    if (!compressed()) return raw_ & kL2StandardReservedMask;
    const uint32_t x = offset_bits();
    return x > kMaxHostOffsetBits ? raw_ & (((1ull << x) - 1) & ~((1ull << kMaxHostOffsetBits) - 1))
                                  : 0;
  }
  // A standard entry's host offset is a multiple of the cluster size.
  constexpr bool aligned() const { return (host() & ((1ull << cluster_bits_) - 1)) == 0; }
  // Whether the data path may use the entry in an image of `version`: a standard descriptor
  // with no reserved bits, an aligned host cluster and, in version 2, no zero flag. Compressed
  // descriptors are checked when they are read (their length is bounded there).
  constexpr bool valid(uint32_t version) const {
    if (compressed()) return true;
    return !reserved_bits() && aligned() && (version >= 3 || !(raw_ & kOflagZero));
  }

  // Compressed descriptor: x = 62 - (cluster_bits - 8) bits of byte offset, then the number
  // of 512-byte sectors beyond the one holding the offset.
  constexpr CompressedRef compressed_range() const {
    const uint32_t x = offset_bits();
    const uint64_t offset = raw_ & ((1ull << x) - 1);
    const uint64_t sectors = ((raw_ >> x) & ((1ull << (cluster_bits_ - 8)) - 1)) + 1;
    return {offset, sectors * 512 - (offset & 511)};
  }

  // --- encoders ---
  static constexpr uint64_t encode_normal(uint64_t host, bool copied = true) {
    return host | (copied ? kOflagCopied : 0);
  }
  // A zero cluster; with a host cluster kept preallocated (kZeroAlloc) if `host` is not 0.
  static constexpr uint64_t encode_zero(uint64_t host = 0, bool copied = false) {
    return host | kOflagZero | (copied ? kOflagCopied : 0);
  }
  // The descriptor of `length` compressed bytes at `offset` (which must fit the offset field,
  // and the sectors the field's width: at most one cluster's worth beyond the first sector).
  static constexpr uint64_t encode_compressed(uint64_t offset, uint64_t length,
                                              uint32_t cluster_bits) {
    const uint32_t x = 62 - (cluster_bits - 8);
    const uint64_t extra = ((offset & 511) + length + 511) / 512 - 1;
    return kOflagCompressed | (extra << x) | offset;
  }
  static constexpr uint64_t with_copied(uint64_t raw, bool copied) {
    return copied ? raw | kOflagCopied : raw & ~kOflagCopied;
  }

 private:
  constexpr uint32_t offset_bits() const { return 62 - (cluster_bits_ - 8); }

  uint64_t raw_;
  uint32_t cluster_bits_;
};

// One L1 entry: where an L2 table is.
struct L1Entry {
  uint64_t raw;
  constexpr uint64_t l2_offset() const { return raw & kL1OffsetMask; }
  constexpr uint64_t reserved_bits() const { return raw & kL1ReservedMask; }
  constexpr bool copied() const { return raw & kOflagCopied; }
  // The L2 table is ours alone: entries may change in place.
  constexpr bool writable_in_place() const { return copied() && l2_offset(); }
  static constexpr uint64_t encode(uint64_t l2_offset, bool copied = true) {
    return l2_offset | (copied ? kOflagCopied : 0);
  }
};

// One refcount table entry: where a refcount block is.
struct RefTableEntry {
  uint64_t raw;
  constexpr uint64_t block_offset() const { return raw & kRefTableOffsetMask; }
  constexpr uint64_t reserved_bits() const { return raw & kRefTableReservedMask; }
};

}  // namespace kiln::block::qcow2

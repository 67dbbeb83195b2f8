// qcow2 table entries, decoded and encoded in one place (docs/interop/qcow2.txt, "Cluster
// mapping"): L2 entries (what a guest cluster is), L1 entries (where an L2 table is) and
// refcount table entries. Everything that reads or writes these bits goes through here: the
// data path (io.cpp), allocation and frees (alloc.cpp), compressed reads (compress.cpp) and
// check/repair (check*.cpp).
//
// Extended L2 entries (incompatible feature bit 4) make an L2 entry 16 bytes: this 64-bit
// descriptor (same layout, except that bit 0 is reserved) followed by a 64-bit subcluster
// bitmap: bits 0-31 say which of the 32 subclusters are allocated (data at host() plus the
// subcluster's offset), bits 32-63 which read as zeros; a subcluster with neither reads from
// the backing file. The kind is then per subcluster (sub_kind()); compressed entries stay
// whole clusters and their bitmap is reserved (must be 0).
#pragma once

#include <algorithm>
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

// Size of one L2 entry on disk: 8, or 16 with extended L2 entries (descriptor, then bitmap).
constexpr size_t kL2EntryBytes = 8;
constexpr size_t kL2ExtendedEntryBytes = 16;
constexpr uint32_t kSubclusters = 32;  // per cluster, with extended L2 entries
// Extended entries have no zero flag: bit 0 is reserved too.
constexpr uint64_t kL2ExtendedReservedMask = kL2StandardReservedMask | kOflagZero;
constexpr uint64_t kBitmapAllAlloc = 0xffffffffull;
constexpr uint64_t kBitmapAllZero = 0xffffffffull << 32;

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
  kMixed,        // extended entries only: the subclusters differ (see sub_kind())
};

// The subclusters a byte range inside one cluster touches, as a bitmap (bit i: subcluster i).
constexpr uint32_t subcluster_mask(uint64_t in_off, uint64_t len, uint32_t sc_bits) {
  if (len == 0) return 0;
  const uint32_t first = uint32_t(in_off >> sc_bits);
  const uint32_t last = uint32_t((in_off + len - 1) >> sc_bits);
  const uint64_t upto = last == 31 ? 0xffffffffull : (1ull << (last + 1)) - 1;
  return uint32_t(upto & ~((1ull << first) - 1));
}

// One L2 entry. Decoding never fails: hostile bits are reported by reserved_bits(), aligned(),
// bitmap_error() and valid(), and each caller decides (the data path refuses with -EIO, check
// reports).
class L2Entry {
 public:
  constexpr L2Entry() = default;
  constexpr L2Entry(uint64_t raw, uint32_t cluster_bits) : raw_(raw), cluster_bits_(cluster_bits) {}
  // An extended entry: descriptor and subcluster bitmap.
  static constexpr L2Entry extended(uint64_t raw, uint64_t bitmap, uint32_t cluster_bits) {
    L2Entry e(raw, cluster_bits);
    e.bitmap_ = bitmap;
    e.extended_ = true;
    return e;
  }

  constexpr uint64_t raw() const { return raw_; }
  constexpr uint64_t bitmap() const { return bitmap_; }
  constexpr bool is_extended() const { return extended_; }
  constexpr uint32_t alloc_bits() const { return uint32_t(bitmap_); }
  constexpr uint32_t zero_bits() const { return uint32_t(bitmap_ >> 32); }
  // Nothing set at all: the cluster and every subcluster are unallocated.
  constexpr bool empty() const { return raw_ == 0 && bitmap_ == 0; }
  // The kind of the whole cluster; kMixed for an extended entry whose subclusters differ.
  constexpr L2Kind kind() const {
    if (raw_ & kOflagCompressed) return L2Kind::kCompressed;
    if (extended_) {
      const L2Kind k = sub_kind(0);
      const uint64_t b = bitmap_;
      const bool uniform = (b & kBitmapAllAlloc) == 0 || (b & kBitmapAllAlloc) == kBitmapAllAlloc;
      const bool uniform_zero = (b & kBitmapAllZero) == 0 || (b & kBitmapAllZero) == kBitmapAllZero;
      return uniform && uniform_zero ? k : L2Kind::kMixed;
    }
    if (raw_ & kOflagZero) return host() ? L2Kind::kZeroAlloc : L2Kind::kZeroPlain;
    return host() ? L2Kind::kNormal : L2Kind::kUnallocated;
  }
  // The kind of subcluster `sc` (0-31); for a standard entry, the cluster's.
  constexpr L2Kind sub_kind(uint32_t sc) const {
    if (!extended_ || (raw_ & kOflagCompressed)) return kind();
    if ((bitmap_ >> sc) & 1) return L2Kind::kNormal;
    if ((bitmap_ >> (32 + sc)) & 1) return host() ? L2Kind::kZeroAlloc : L2Kind::kZeroPlain;
    return L2Kind::kUnallocated;
  }
  // Bytes from `in_off` (inside the cluster, at most `len`) whose subclusters all have the
  // kind of the subcluster at `in_off`; that kind in `*k`.
  constexpr uint64_t run(uint64_t in_off, uint64_t len, L2Kind* k) const {
    *k = sub_kind(uint32_t(in_off >> sc_bits()));
    if (!extended_ || compressed()) return len;
    const uint64_t sc_size = 1ull << sc_bits();
    uint64_t n = std::min(len, sc_size - (in_off & (sc_size - 1)));
    while (n < len && sub_kind(uint32_t((in_off + n) >> sc_bits())) == *k)
      n = std::min(len, n + sc_size);
    return n;
  }
  constexpr uint32_t sc_bits() const { return extended_ ? cluster_bits_ - 5 : cluster_bits_; }
  constexpr bool compressed() const { return raw_ & kOflagCompressed; }
  constexpr bool zero() const { return !compressed() && (raw_ & kOflagZero); }
  constexpr bool copied() const { return raw_ & kOflagCopied; }
  // A standard entry's host cluster (kNormal, kZeroAlloc), or 0.
  constexpr uint64_t host() const { return compressed() ? 0 : raw_ & kL2OffsetMask; }
  // Holds a host cluster (or compressed bytes) that a refcount counts.
  constexpr bool allocated() const { return compressed() || host() != 0; }
  // Ours alone and holding data: a guest write may go to host() in place (with extended
  // entries: every subcluster allocated). Never for an entry that is not valid (reserved
  // bits, an unaligned host offset, an impossible bitmap), which reads refuse too: a hostile
  // entry is not written through to wherever it points.
  constexpr bool writable_in_place() const {
    return (raw_ & (kOflagCopied | kOflagCompressed | kOflagZero)) == kOflagCopied && host() &&
           (!extended_ || alloc_bits() == 0xffffffffu) && sound();
  }
  // The same for the bytes [in_off, in_off + len) of the cluster: with extended entries only
  // the subclusters they touch need to be allocated.
  constexpr bool writable_in_place(uint64_t in_off, uint64_t len) const {
    if (!extended_) return writable_in_place();
    const uint32_t need = subcluster_mask(in_off, len, sc_bits());
    return (raw_ & (kOflagCopied | kOflagCompressed)) == kOflagCopied && host() &&
           (alloc_bits() & need) == need && sound();
  }

  // The bits qcow2.txt reserves that are set: for standard descriptors bits 1-8 and 56-61, for
  // compressed ones the offset bits from 56 up (only small clusters have them).
  constexpr uint64_t reserved_bits() const {
    if (!compressed())
      return raw_ & (extended_ ? kL2ExtendedReservedMask : kL2StandardReservedMask);
    const uint32_t x = offset_bits();
    return x > kMaxHostOffsetBits ? raw_ & (((1ull << x) - 1) & ~((1ull << kMaxHostOffsetBits) - 1))
                                  : 0;
  }
  // A standard entry's host offset is a multiple of the cluster size.
  constexpr bool aligned() const { return (host() & ((1ull << cluster_bits_) - 1)) == 0; }
  // Whether the data path may use the entry in an image of `version`: a standard descriptor
  // with no reserved bits, an aligned host cluster and, in version 2, no zero flag. Compressed
  // descriptors are checked when they are read (their length is bounded there).
  // Extended entries: bitmap_error() must also be null.
  constexpr bool valid(uint32_t version) const {
    if (compressed()) return !bitmap_error();
    return sound() && (version >= 3 || !(raw_ & kOflagZero));
  }
  // valid() for a standard descriptor, whatever the version.
  constexpr bool sound() const { return !bitmap_error() && !reserved_bits() && aligned(); }
  // What is wrong with an extended entry's bitmap (qcow2.txt's invalid combinations), or null.
  constexpr const char* bitmap_error() const {
    if (!extended_) return nullptr;
    if (compressed())
      return bitmap_ ? "compressed cluster has a non-zero subcluster bitmap" : nullptr;
    if (alloc_bits() & zero_bits()) return "subcluster is marked both allocated and zero";
    if (alloc_bits() && !host())
      return "subcluster is allocated but the cluster has no host offset";
    return nullptr;
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

  uint64_t raw_ = 0;
  uint64_t bitmap_ = 0;
  uint32_t cluster_bits_ = 16;
  bool extended_ = false;
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

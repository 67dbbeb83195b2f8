// The qcow2 table-entry decoder and encoders (qcow2/entry.h) against docs/interop/qcow2.txt:
// every L2 kind, the reserved bits, the compressed descriptor across the cluster-size range,
// and L1 and refcount table entries.
#include <gtest/gtest.h>

#include <string>

#include "qcow2/entry.h"

using namespace kiln::block::qcow2;

namespace {

constexpr uint32_t kCb = 16;  // 64 KiB clusters
constexpr uint64_t kHost = 5ull << kCb;

}  // namespace

TEST(Qcow2Entry, EveryKind) {
  const L2Entry unallocated(0, kCb);
  EXPECT_EQ(unallocated.kind(), L2Kind::kUnallocated);
  EXPECT_FALSE(unallocated.allocated());
  EXPECT_FALSE(unallocated.zero());

  // Copied with a zero offset is no allocation (only external data files use offset 0).
  EXPECT_EQ(L2Entry(kOflagCopied, kCb).kind(), L2Kind::kUnallocated);

  const L2Entry zero_plain(kOflagZero, kCb);
  EXPECT_EQ(zero_plain.kind(), L2Kind::kZeroPlain);
  EXPECT_TRUE(zero_plain.zero());
  EXPECT_FALSE(zero_plain.allocated());
  EXPECT_EQ(zero_plain.host(), 0u);

  const L2Entry zero_alloc(kOflagCopied | kHost | kOflagZero, kCb);
  EXPECT_EQ(zero_alloc.kind(), L2Kind::kZeroAlloc);
  EXPECT_TRUE(zero_alloc.zero());
  EXPECT_TRUE(zero_alloc.allocated());
  EXPECT_EQ(zero_alloc.host(), kHost);
  EXPECT_FALSE(zero_alloc.writable_in_place());  // reads zeros: a write must clear the flag

  const L2Entry normal(kOflagCopied | kHost, kCb);
  EXPECT_EQ(normal.kind(), L2Kind::kNormal);
  EXPECT_EQ(normal.host(), kHost);
  EXPECT_TRUE(normal.copied());
  EXPECT_TRUE(normal.writable_in_place());
  EXPECT_FALSE(L2Entry(kHost, kCb).writable_in_place());  // shared with a snapshot: COW

  const L2Entry compressed(kOflagCompressed | (1ull << 54) | 0x12345, kCb);
  EXPECT_EQ(compressed.kind(), L2Kind::kCompressed);
  EXPECT_TRUE(compressed.allocated());
  EXPECT_FALSE(compressed.zero());  // bit 0 is part of the offset here
  EXPECT_EQ(compressed.host(), 0u);
  EXPECT_FALSE(compressed.writable_in_place());
  // Bit 0 of a compressed descriptor is an offset bit, not the zero flag.
  EXPECT_EQ(L2Entry(kOflagCompressed | 1, kCb).kind(), L2Kind::kCompressed);
}

TEST(Qcow2Entry, ReservedBitsOfStandardDescriptors) {
  // qcow2.txt: bits 1-8 and 56-61 are reserved; 0 (zero), 9-55 (offset), 62, 63 are not.
  for (uint32_t bit = 0; bit < 64; ++bit) {
    const uint64_t raw = kHost | (1ull << bit);
    if (bit == 62) continue;  // makes it a compressed descriptor
    const bool reserved = (bit >= 1 && bit <= 8) || (bit >= 56 && bit <= 61);
    const L2Entry e(raw, kCb);
    EXPECT_EQ(e.reserved_bits() != 0, reserved) << "bit " << bit;
    if (reserved) {
      EXPECT_EQ(e.reserved_bits(), 1ull << bit);
      EXPECT_FALSE(e.valid(3)) << "bit " << bit;
    }
  }
  EXPECT_TRUE(L2Entry(kHost | kOflagCopied, kCb).valid(3));
}

TEST(Qcow2Entry, ValidityOfStandardDescriptors) {
  // The host offset must be cluster aligned (bits 9-15 are offset bits, but not for 64 KiB).
  const L2Entry unaligned(kHost | 512, kCb);
  EXPECT_FALSE(unaligned.aligned());
  EXPECT_FALSE(unaligned.valid(3));
  // Nor may a write go through it, even marked COPIED (reads refuse it too).
  EXPECT_FALSE(L2Entry(kOflagCopied | kHost | 512, kCb).writable_in_place());
  EXPECT_FALSE(L2Entry(kOflagCopied | kHost | (1ull << 56), kCb).writable_in_place());
  EXPECT_TRUE(L2Entry(kHost | 512, 9).valid(3));  // 512-byte clusters: aligned
  // The zero flag exists from version 3 on.
  EXPECT_TRUE(L2Entry(kOflagZero, kCb).valid(3));
  EXPECT_FALSE(L2Entry(kOflagZero, kCb).valid(2));
  EXPECT_TRUE(L2Entry(kHost, kCb).valid(2));
  // Compressed descriptors have no alignment: any byte offset is allowed.
  EXPECT_TRUE(L2Entry(kOflagCompressed | 0x12345, kCb).valid(2));
}

TEST(Qcow2Entry, CompressedDescriptorAcrossClusterSizes) {
  for (uint32_t cb = 9; cb <= 21; ++cb) {
    SCOPED_TRACE("cluster_bits " + std::to_string(cb));
    // qcow2.txt: x = 62 - (cluster_bits - 8); bits 0..x-1 offset, x..61 additional sectors.
    const uint32_t x = 62 - (cb - 8);
    const uint64_t sector_field_max = (1ull << (62 - x)) - 1;
    EXPECT_EQ(sector_field_max + 1, 1ull << (cb - 8));  // up to two clusters of sectors

    // The smallest: one sector at an aligned offset.
    CompressedRef r = L2Entry(kOflagCompressed | 4096, cb).compressed_range();
    EXPECT_EQ(r.offset, 4096u);
    EXPECT_EQ(r.length, 512u);

    // The largest sector count, from an offset in the middle of a sector: the length runs to
    // the end of the last sector.
    const uint64_t offset = (7ull << 20) + 100;
    const uint64_t raw = kOflagCompressed | (sector_field_max << x) | offset;
    r = L2Entry(raw, cb).compressed_range();
    EXPECT_EQ(r.offset, offset);
    EXPECT_EQ(r.length, (sector_field_max + 1) * 512 - 100);
    EXPECT_EQ(r.length, (2ull << cb) - 100);
    // The copied flag is no part of the descriptor.
    EXPECT_EQ(L2Entry(raw | kOflagCopied, cb).compressed_range().length, r.length);

    // The encoder is the inverse, for every length that ends in the last sector.
    EXPECT_EQ(L2Entry::encode_compressed(r.offset, r.length, cb), raw);
    EXPECT_EQ(L2Entry::encode_compressed(offset, 1, cb), kOflagCompressed | offset);
    EXPECT_EQ(L2Entry::encode_compressed(offset, 412, cb), kOflagCompressed | offset);
    EXPECT_EQ(L2Entry::encode_compressed(offset, 413, cb), kOflagCompressed | (1ull << x) | offset);

    // The offset field is x bits wide; bits from 56 up must be zero (small clusters only).
    const uint64_t high = x > 56 ? 1ull << (x - 1) : 0;
    if (high) {
      const L2Entry e(kOflagCompressed | high | 4096, cb);
      EXPECT_EQ(e.reserved_bits(), high);
      EXPECT_EQ(e.compressed_range().offset, high | 4096);
    } else {
      EXPECT_EQ(L2Entry(kOflagCompressed | (sector_field_max << x) | ((1ull << x) - 1), cb)
                    .reserved_bits(),
                0u);
    }
  }
  // The example worked by hand: 64 KiB clusters, x = 54, 3 additional sectors.
  const CompressedRef c = L2Entry(kOflagCompressed | (3ull << 54) | 0x12345, 16).compressed_range();
  EXPECT_EQ(c.offset, 0x12345u);
  EXPECT_EQ(c.length, 4 * 512 - (0x12345 & 511));
}

TEST(Qcow2Entry, EncodersRoundTrip) {
  EXPECT_EQ(L2Entry::encode_normal(kHost), kHost | kOflagCopied);
  EXPECT_EQ(L2Entry(L2Entry::encode_normal(kHost, false), kCb).kind(), L2Kind::kNormal);
  EXPECT_FALSE(L2Entry(L2Entry::encode_normal(kHost, false), kCb).copied());
  EXPECT_EQ(L2Entry::encode_zero(), kOflagZero);
  EXPECT_EQ(L2Entry(L2Entry::encode_zero(), kCb).kind(), L2Kind::kZeroPlain);
  const L2Entry za(L2Entry::encode_zero(kHost, true), kCb);
  EXPECT_EQ(za.kind(), L2Kind::kZeroAlloc);
  EXPECT_EQ(za.host(), kHost);
  EXPECT_TRUE(za.copied());
  EXPECT_EQ(L2Entry::with_copied(kHost, true), kHost | kOflagCopied);
  EXPECT_EQ(L2Entry::with_copied(kHost | kOflagCopied | kOflagZero, false), kHost | kOflagZero);
  static_assert(L2Entry(L2Entry::encode_normal(1ull << 20), 20).writable_in_place());
}

TEST(Qcow2Entry, L1AndRefcountTableEntries) {
  const L1Entry l1{kOflagCopied | kHost};
  EXPECT_EQ(l1.l2_offset(), kHost);
  EXPECT_TRUE(l1.copied());
  EXPECT_TRUE(l1.writable_in_place());
  EXPECT_EQ(l1.reserved_bits(), 0u);
  EXPECT_EQ(L1Entry::encode(kHost), l1.raw);
  EXPECT_FALSE(L1Entry{kOflagCopied}.writable_in_place());
  // L1 reserves bits 0-8 and 56-62 (bit 62 has no meaning in L1).
  for (uint32_t bit : {0u, 8u, 56u, 62u})
    EXPECT_EQ(L1Entry{kHost | (1ull << bit)}.reserved_bits(), 1ull << bit) << bit;
  EXPECT_EQ(L1Entry{kHost | (1ull << 55)}.reserved_bits(), 0u);

  // Refcount table: bits 0-8 reserved, 9-63 the block's offset.
  EXPECT_EQ(RefTableEntry{(1ull << 63) | kHost}.block_offset(), (1ull << 63) | kHost);
  EXPECT_EQ(RefTableEntry{kHost | 1}.reserved_bits(), 1u);
  EXPECT_EQ(RefTableEntry{kHost | 1}.block_offset(), kHost);
}

// Extended L2 entries (qcow2.txt, "Extended L2 Entries"): the kind is per subcluster, from
// the allocation bits (0-31) and the zero bits (32-63).
TEST(Qcow2Entry, ExtendedSubclusterKinds) {
  const uint64_t desc = L2Entry::encode_normal(kHost);
  // Subcluster 0 allocated, 1 zero, 2 neither (reads from the backing file).
  const L2Entry mixed = L2Entry::extended(desc, (1ull << 0) | (1ull << (32 + 1)), kCb);
  EXPECT_TRUE(mixed.valid(3));
  EXPECT_EQ(mixed.kind(), L2Kind::kMixed);
  EXPECT_EQ(mixed.sub_kind(0), L2Kind::kNormal);
  EXPECT_EQ(mixed.sub_kind(1), L2Kind::kZeroAlloc);
  EXPECT_EQ(mixed.sub_kind(2), L2Kind::kUnallocated);
  EXPECT_EQ(mixed.host(), kHost);
  EXPECT_TRUE(mixed.allocated());  // the host cluster is referenced whatever the bitmap says
  EXPECT_FALSE(mixed.writable_in_place());
  const uint64_t sc = 1ull << (kCb - 5);  // 2 KiB subclusters
  EXPECT_TRUE(mixed.writable_in_place(0, sc));
  EXPECT_TRUE(mixed.writable_in_place(100, sc - 100));
  EXPECT_FALSE(mixed.writable_in_place(sc - 1, 2));  // touches subcluster 1
  EXPECT_EQ(L2Entry::extended(kHost, 1, kCb).writable_in_place(0, 1), false);  // not COPIED

  // Runs of one kind.
  L2Kind k;
  EXPECT_EQ(mixed.run(0, 64 << 10, &k), sc);
  EXPECT_EQ(k, L2Kind::kNormal);
  EXPECT_EQ(mixed.run(sc + 5, 64 << 10, &k), sc - 5);
  EXPECT_EQ(k, L2Kind::kZeroAlloc);
  EXPECT_EQ(mixed.run(2 * sc, (64 << 10) - 2 * sc, &k), (64u << 10) - 2 * sc);
  EXPECT_EQ(k, L2Kind::kUnallocated);
  EXPECT_EQ(mixed.run(2 * sc, 10, &k), 10u);

  // Uniform bitmaps are whole-cluster kinds.
  EXPECT_EQ(L2Entry::extended(desc, kBitmapAllAlloc, kCb).kind(), L2Kind::kNormal);
  EXPECT_TRUE(L2Entry::extended(desc, kBitmapAllAlloc, kCb).writable_in_place());
  EXPECT_EQ(L2Entry::extended(desc, kBitmapAllZero, kCb).kind(), L2Kind::kZeroAlloc);
  EXPECT_EQ(L2Entry::extended(0, kBitmapAllZero, kCb).kind(), L2Kind::kZeroPlain);
  EXPECT_EQ(L2Entry::extended(0, 0, kCb).kind(), L2Kind::kUnallocated);
  EXPECT_TRUE(L2Entry::extended(0, 0, kCb).empty());
  EXPECT_FALSE(L2Entry::extended(0, kBitmapAllZero, kCb).empty());
  // A host cluster with no subcluster allocated reads from the backing file.
  EXPECT_EQ(L2Entry::extended(desc, 0, kCb).kind(), L2Kind::kUnallocated);
}

TEST(Qcow2Entry, ExtendedInvalidCombinations) {
  const uint64_t desc = L2Entry::encode_normal(kHost);
  // Allocated and zero at once.
  const L2Entry both = L2Entry::extended(desc, (1ull << 3) | (1ull << (32 + 3)), kCb);
  EXPECT_FALSE(both.valid(3));
  EXPECT_NE(both.bitmap_error(), nullptr);
  // Allocated without a host cluster.
  const L2Entry no_host = L2Entry::extended(0, 1, kCb);
  EXPECT_FALSE(no_host.valid(3));
  EXPECT_NE(no_host.bitmap_error(), nullptr);
  // Zero bits without a host cluster are fine (zero plain subclusters).
  EXPECT_TRUE(L2Entry::extended(0, 1ull << 40, kCb).valid(3));
  // Bit 0 of the descriptor is reserved with extended entries (no zero flag).
  const L2Entry zero_flag = L2Entry::extended(desc | kOflagZero, 1, kCb);
  EXPECT_NE(zero_flag.reserved_bits(), 0u);
  EXPECT_FALSE(zero_flag.valid(3));
  // A compressed cluster's bitmap is reserved.
  const uint64_t comp = L2Entry::encode_compressed(0x12345, 1000, kCb);
  EXPECT_TRUE(L2Entry::extended(comp, 0, kCb).valid(3));
  EXPECT_EQ(L2Entry::extended(comp, 0, kCb).kind(), L2Kind::kCompressed);
  EXPECT_FALSE(L2Entry::extended(comp, 1, kCb).valid(3));
  EXPECT_NE(L2Entry::extended(comp, 1ull << 63, kCb).bitmap_error(), nullptr);
}

TEST(Qcow2Entry, SubclusterMask) {
  const uint32_t scb = 11;  // 2 KiB subclusters of a 64 KiB cluster
  EXPECT_EQ(subcluster_mask(0, 0, scb), 0u);
  EXPECT_EQ(subcluster_mask(0, 1, scb), 1u);
  EXPECT_EQ(subcluster_mask(0, 2048, scb), 1u);
  EXPECT_EQ(subcluster_mask(2047, 2, scb), 3u);
  EXPECT_EQ(subcluster_mask(0, 64 << 10, scb), 0xffffffffu);
  EXPECT_EQ(subcluster_mask(31 * 2048, 2048, scb), 0x80000000u);
  EXPECT_EQ(subcluster_mask(4096, 3 * 2048, scb), 0x1cu);
}

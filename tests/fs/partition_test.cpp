// Partition tables and filesystem probes on disks built in memory.
#include "kiln/fs/partition.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <cstring>

#include "disk_format.h"
#include "kiln/fs/filesystem.h"
#include "mem_source.h"

namespace kiln::fs {
namespace {

using testing::MemSource;

constexpr uint64_t kMiB = 1 << 20;

void put32(std::vector<uint8_t>& b, size_t off, uint32_t v) { std::memcpy(&b[off], &v, 4); }
void put64(std::vector<uint8_t>& b, size_t off, uint64_t v) { std::memcpy(&b[off], &v, 8); }

void mbr_entry(std::vector<uint8_t>& b, uint64_t sector, int i, uint8_t type, uint32_t start,
               uint32_t count) {
  size_t e = sector * 512 + 446 + 16 * static_cast<size_t>(i);
  b[e + 4] = type;
  put32(b, e + 8, start);
  put32(b, e + 12, count);
  b[sector * 512 + 510] = 0x55;
  b[sector * 512 + 511] = 0xaa;
}

TEST(Partition, EmptyDiskHasNoTable) {
  MemSource src(4 * kMiB);
  PartitionTable t = read_partition_table(src);
  EXPECT_EQ(t.scheme, "none");
  EXPECT_TRUE(t.partitions.empty());
}

TEST(Partition, MbrPrimaryExtendedLogical) {
  MemSource src(64 * kMiB);
  auto& b = src.bytes_;
  mbr_entry(b, 0, 0, 0x83, 2048, 8192);       // 1
  mbr_entry(b, 0, 1, 0x05, 16384, 65536);     // extended container, sectors 16384..81919
  mbr_entry(b, 0, 3, 0x82, 100000, 10000);    // 4
  mbr_entry(b, 16384, 0, 0x83, 2048, 4096);   // 5 at 18432
  mbr_entry(b, 16384, 1, 0x05, 8192, 20000);  // next EBR at 16384+8192
  mbr_entry(b, 24576, 0, 0x07, 2048, 4096);   // 6 at 26624
  PartitionTable t = read_partition_table(src);
  EXPECT_EQ(t.scheme, "mbr");
  ASSERT_EQ(t.partitions.size(), 4u);
  EXPECT_EQ(t.partitions[0].number, 1);
  EXPECT_EQ(t.partitions[0].offset, 2048u * 512);
  EXPECT_EQ(t.partitions[1].number, 4);
  EXPECT_EQ(t.partitions[2].number, 5);
  EXPECT_EQ(t.partitions[2].offset, 18432u * 512);
  EXPECT_EQ(t.partitions[2].kind, "logical");
  EXPECT_EQ(t.partitions[3].number, 6);
  EXPECT_EQ(t.partitions[3].offset, 26624u * 512);
  EXPECT_EQ(t.partitions[3].mbr_type, 0x07);
}

void expect_error(MemSource& src, const char* needle) {
  try {
    read_partition_table(src);
    FAIL() << "no error, expected one containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(e.reason(), Reason::kCorrupt) << e.what();
  }
}

TEST(Partition, MbrPastTheEnd) {
  MemSource src(8 * kMiB);
  mbr_entry(src.bytes_, 0, 0, 0x83, 2048, 16384);  // 8 MiB + 1 MiB > 8 MiB
  expect_error(src, "partition 1 (sectors 2048-18431) extends past the end of the disk");
}

TEST(Partition, LogicalOutsideExtended) {
  MemSource src(64 * kMiB);
  mbr_entry(src.bytes_, 0, 0, 0x0f, 2048, 8192);
  mbr_entry(src.bytes_, 2048, 0, 0x83, 2048, 8192);  // ends at 12288 > 10240
  expect_error(src, "partition 5");
}

TEST(Partition, EbrLoop) {
  MemSource src(64 * kMiB);
  mbr_entry(src.bytes_, 0, 0, 0x05, 2048, 32768);
  mbr_entry(src.bytes_, 2048, 0, 0x83, 64, 64);
  mbr_entry(src.bytes_, 2048, 1, 0x05, 4096, 64);
  mbr_entry(src.bytes_, 6144, 0, 0x83, 64, 64);
  mbr_entry(src.bytes_, 6144, 1, 0x05, 0, 64);  // back to the first EBR
  expect_error(src, "loops");
}

TEST(Partition, TwoExtendedRefused) {
  MemSource src(64 * kMiB);
  mbr_entry(src.bytes_, 0, 0, 0x05, 2048, 4096);
  mbr_entry(src.bytes_, 0, 1, 0x05, 8192, 4096);
  mbr_entry(src.bytes_, 2048, 0, 0x83, 64, 64);
  expect_error(src, "more than one extended");
}

// A GPT with one partition, both headers and arrays, correct CRCs, in sectors of `ss` bytes.
struct GptDisk {
  uint32_t ss;
  MemSource src{16 * kMiB};
  uint64_t last;
  uint64_t array_sectors;

  explicit GptDisk(uint32_t sector_size = 512)
      : ss(sector_size), last(16 * kMiB / sector_size - 1), array_sectors(16384 / sector_size) {
    auto& b = src.bytes_;
    mbr_entry(b, 0, 0, 0xee, 1, static_cast<uint32_t>(last));
    std::vector<uint8_t> entries(128 * 128);
    // Linux filesystem type GUID 0FC63DAF-8483-4772-8E79-3D69D8477DE4, mixed-endian.
    const uint8_t type[16] = {0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47,
                              0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4};
    std::memcpy(&entries[128 * 1], type, 16);  // entry index 1 = partition 2
    entries[128 * 1 + 16] = 0x42;
    put64(entries, 128 * 1 + 32, 2048 * 512 / ss);
    put64(entries, 128 * 1 + 40, 4096 * 512 / ss - 1);
    const char16_t name[] = u"root";
    std::memcpy(&entries[128 * 1 + 56], name, 8);
    write_header(1, last, 2, entries);
    write_header(last, 1, last - array_sectors, entries);
  }
  uint64_t backup_entries() const { return (last - array_sectors) * ss; }
  void write_header(uint64_t lba, uint64_t alt, uint64_t entries_lba,
                    const std::vector<uint8_t>& entries) {
    auto& b = src.bytes_;
    std::memcpy(&b[entries_lba * ss], entries.data(), entries.size());
    std::vector<uint8_t> h(ss);
    std::memcpy(h.data(), "EFI PART", 8);
    put32(h, 8, 0x10000);
    put32(h, 12, 92);
    put64(h, 24, lba);
    put64(h, 32, alt);
    put64(h, 40, 2 + array_sectors);
    put64(h, 48, last - array_sectors - 1);
    h[56] = 0x99;  // disk GUID
    put64(h, 72, entries_lba);
    put32(h, 80, 128);
    put32(h, 84, 128);
    put32(h, 88,
          static_cast<uint32_t>(crc32(0, entries.data(), static_cast<uInt>(entries.size()))));
    put32(h, 16, static_cast<uint32_t>(crc32(0, h.data(), 92)));
    std::memcpy(&b[lba * ss], h.data(), ss);
  }
};

TEST(Partition, GptValid) {
  GptDisk d;
  PartitionTable t = read_partition_table(d.src);
  EXPECT_EQ(t.scheme, "gpt");
  ASSERT_EQ(t.partitions.size(), 1u);
  EXPECT_EQ(t.partitions[0].number, 2);
  EXPECT_EQ(t.partitions[0].offset, 2048u * 512);
  EXPECT_EQ(t.partitions[0].length, 2048u * 512);
  EXPECT_EQ(t.partitions[0].type_guid, "0fc63daf-8483-4772-8e79-3d69d8477de4");
  EXPECT_EQ(t.partitions[0].name, "root");
}

TEST(Partition, Gpt4KiBSectors) {
  GptDisk d(4096);
  PartitionTable t = read_partition_table(d.src);
  EXPECT_EQ(t.scheme, "gpt");
  EXPECT_EQ(t.sector_size, 4096u);
  ASSERT_EQ(t.partitions.size(), 1u);
  EXPECT_EQ(t.partitions[0].offset, 2048u * 512);
  EXPECT_EQ(t.partitions[0].length, 2048u * 512);
}

TEST(Partition, GptPrimaryHeaderCrc) {
  GptDisk d;
  d.src.bytes_[512 + 40] ^= 1;  // first usable LBA, under the CRC
  expect_error(d.src, "primary GPT header is corrupt: its header CRC is wrong");
}

TEST(Partition, GptBackupEntriesCrc) {
  GptDisk d;
  d.src.bytes_[d.backup_entries() + 128 + 60] ^= 1;  // a name byte in the backup array
  expect_error(d.src, "backup GPT header");
}

TEST(Partition, GptBackupMissing) {
  GptDisk d;
  std::memset(&d.src.bytes_[d.last * 512], 0, 512);
  expect_error(d.src, "backup GPT header");
}

TEST(Partition, FatBootSectorIsNotAnMbr) {
  MemSource src(8 * kMiB);
  auto& b = src.bytes_;
  b[0] = 0xeb;
  b[1] = 0x3c;
  b[2] = 0x90;
  b[11] = 0x00;  // 512 bytes per sector
  b[12] = 0x02;
  b[13] = 4;     // sectors per cluster
  b[14] = 4;     // reserved
  b[16] = 2;     // FATs
  b[19] = 0x00;  // 16384 sectors
  b[20] = 0x40;
  std::memcpy(&b[54], "FAT16   ", 8);
  std::memcpy(&b[43], "MYLABEL    ", 11);
  b[510] = 0x55;
  b[511] = 0xaa;
  PartitionTable t = read_partition_table(src);
  EXPECT_EQ(t.scheme, "none");
  FsInfo fs = probe_filesystem(src, 0, src.size());
  EXPECT_EQ(fs.type, "vfat");
  EXPECT_EQ(fs.label, "MYLABEL");
  EXPECT_EQ(fs.size, 16384u * 512);
}

TEST(Probe, ExtVariants) {
  MemSource src(4 * kMiB);
  auto& b = src.bytes_;
  b[1024 + 0x38] = 0x53;
  b[1024 + 0x39] = 0xef;
  put32(b, 1024 + 0x04, 4096);  // blocks
  put32(b, 1024 + 0x18, 0);     // 1 KiB blocks
  std::memcpy(&b[1024 + 0x78], "rootfs", 6);
  EXPECT_EQ(probe_filesystem(src, 0, src.size()).type, "ext2");
  put32(b, 1024 + 0x5c, 0x4);  // has_journal
  EXPECT_EQ(probe_filesystem(src, 0, src.size()).type, "ext3");
  put32(b, 1024 + 0x60, 0x40 | 0x2);  // extents, filetype
  FsInfo fs = probe_filesystem(src, 0, src.size());
  EXPECT_EQ(fs.type, "ext4");
  EXPECT_EQ(fs.label, "rootfs");
  EXPECT_EQ(fs.size, 4u * kMiB);
  // Too short a range to hold the superblock: nothing.
  EXPECT_EQ(probe_filesystem(src, 0, 1500).type, "");
}

}  // namespace
}  // namespace kiln::fs

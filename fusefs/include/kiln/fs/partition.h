// Partition tables (MBR with extended/logical partitions, GPT) and the filesystems found in
// them, read from a Source. Everything read from the disk is checked: a table that points
// past the end of the disk, overlapping or looping extended partitions, and GPT headers or
// entry arrays with a wrong CRC are errors, never guesses.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln::fs {

class Source;

struct Partition {
  int number = 0;         // 1-based; 0 = the whole disk (no partition table)
  uint64_t offset = 0;    // bytes
  uint64_t length = 0;    // bytes
  std::string kind;       // "primary", "logical" (MBR), "gpt", "disk"
  uint8_t mbr_type = 0;   // MBR system id (0x83 Linux, ...)
  std::string type_guid;  // GPT partition type GUID, lower case
  std::string part_guid;  // GPT unique partition GUID
  std::string name;       // GPT partition name (UTF-16LE decoded; non-ASCII as '?')
};

struct PartitionTable {
  std::string scheme;  // "mbr", "gpt" or "none" (the whole disk is one filesystem or unknown)
  uint32_t sector_size = 512;
  std::string disk_id;  // GPT disk GUID, or the MBR disk signature as 8 hex digits
  // Data partitions only (MBR extended containers are not listed), by number.
  std::vector<Partition> partitions;
};

// Reads the partition table. Throws Error naming the disk and what is wrong with the table.
PartitionTable read_partition_table(Source& source);

// What a byte range holds, found by magic numbers (never by the partition type).
struct FsInfo {
  std::string type;  // "ext2", "ext3", "ext4", "vfat", "xfs", "btrfs", "swap", "ntfs",
                     // "iso9660", "LVM2_member", "crypto_LUKS", or "" when unknown
  std::string label;
  std::string uuid;
  uint64_t size = 0;  // bytes the filesystem says it spans (0 if unknown)
};

// Probes [offset, offset+length) of `source`. Throws Error only on an I/O error.
FsInfo probe_filesystem(Source& source, uint64_t offset, uint64_t length);

// The ext magic number is at offset 1080 (superblock at 1024 + 56).
bool is_ext_type(const std::string& type);

}  // namespace kiln::fs

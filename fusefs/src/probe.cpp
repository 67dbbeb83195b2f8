// Which filesystem a byte range holds, by the magic numbers each format defines, with its
// label, UUID and size. Used by `kiln-fs list` and to pick the filesystem to open.
#include <algorithm>
#include <cstring>
#include <vector>

#include "disk_format.h"
#include "kiln/fs/filesystem.h"
#include "kiln/fs/partition.h"
#include "kiln/fs/source.h"

namespace kiln::fs {
namespace {

using disk::load_le16;
using disk::load_le32;
using disk::load_le64;

// The ext2/3/4 superblock (see e2fsprogs' lib/ext2fs/ext2_fs.h), at byte 1024.
namespace ext {
constexpr uint64_t kOffset = 1024;
constexpr size_t kSize = 1024;
constexpr size_t kBlocksCountLo = 0x04;
constexpr size_t kLogBlockSize = 0x18;
constexpr size_t kMagic = 0x38;
constexpr size_t kFeatureCompat = 0x5c;
constexpr size_t kFeatureIncompat = 0x60;
constexpr size_t kFeatureRoCompat = 0x64;
constexpr size_t kUuid = 0x68;
constexpr size_t kVolumeName = 0x78;  // 16 bytes
constexpr size_t kBlocksCountHi = 0x150;
constexpr uint16_t kMagicValue = 0xef53;
constexpr uint32_t kCompatHasJournal = 0x4;
constexpr uint32_t kIncompatJournalDev = 0x8;
constexpr uint32_t kIncompat64bit = 0x80;
// Incompatible features beyond ext3's (filetype, recover, journal_dev, meta_bg): ext4's.
constexpr uint32_t kIncompatExt3 = 0x2 | 0x4 | 0x8 | 0x10;
// Read-only compatible features beyond ext3's (sparse_super, large_file, btree_dir).
constexpr uint32_t kRoCompatExt3 = 0x1 | 0x2 | 0x4;
}  // namespace ext

std::string uuid_string(const uint8_t* u) {
  char buf[40];
  std::snprintf(buf, sizeof buf,
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
                u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
                u[15]);
  return buf;
}

std::string text_field(const uint8_t* p, size_t n) {
  std::string s(reinterpret_cast<const char*>(p), strnlen(reinterpret_cast<const char*>(p), n));
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  return s;
}

std::string trim_right(std::string s) {
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

class Reader {
 public:
  Reader(Source& src, uint64_t offset, uint64_t length)
      : src_(src), offset_(offset), length_(length) {}
  // Bytes at `at` inside the range, or an empty vector if the range is too short.
  std::vector<uint8_t> get(uint64_t at, size_t n) {
    if (at > length_ || n > length_ - at) return {};
    std::vector<uint8_t> buf(n);
    int rc = src_.pread(buf.data(), n, offset_ + at);
    if (rc < 0)
      throw Error(Reason::kIo, src_.name() + ": read error at offset " +
                                   std::to_string(offset_ + at) + ": " + std::strerror(-rc));
    return buf;
  }

 private:
  Source& src_;
  uint64_t offset_, length_;
};

bool probe_ext(Reader& r, FsInfo* info) {
  auto sb = r.get(ext::kOffset, ext::kSize);
  if (sb.empty() || load_le16(&sb[ext::kMagic]) != ext::kMagicValue) return false;
  const uint32_t compat = load_le32(&sb[ext::kFeatureCompat]);
  const uint32_t incompat = load_le32(&sb[ext::kFeatureIncompat]);
  const uint32_t ro_compat = load_le32(&sb[ext::kFeatureRoCompat]);
  if (incompat & ext::kIncompatJournalDev) {
    info->type = "jbd";  // an external journal, not a filesystem
  } else if ((incompat & ~ext::kIncompatExt3) || (ro_compat & ~ext::kRoCompatExt3)) {
    info->type = "ext4";
  } else {
    info->type = (compat & ext::kCompatHasJournal) ? "ext3" : "ext2";
  }
  info->uuid = uuid_string(&sb[ext::kUuid]);
  info->label = text_field(&sb[ext::kVolumeName], 16);
  uint64_t blocks = load_le32(&sb[ext::kBlocksCountLo]);
  if (incompat & ext::kIncompat64bit) blocks |= uint64_t{load_le32(&sb[ext::kBlocksCountHi])} << 32;
  const uint32_t log = load_le32(&sb[ext::kLogBlockSize]);
  if (log <= 6) info->size = blocks << (10 + log);
  return true;
}

bool probe_fat(Reader& r, FsInfo* info) {
  auto b = r.get(0, 512);
  if (b.empty() || b[510] != 0x55 || b[511] != 0xaa) return false;
  const uint16_t bytes_per_sector = load_le16(&b[11]);
  const uint8_t sectors_per_cluster = b[13];
  if (bytes_per_sector < 512 || bytes_per_sector > 4096 ||
      (bytes_per_sector & (bytes_per_sector - 1)) != 0 || sectors_per_cluster == 0 ||
      (sectors_per_cluster & (sectors_per_cluster - 1)) != 0 || b[16] == 0 /* FATs */)
    return false;
  size_t label_off, serial_off;
  if (std::memcmp(&b[82], "FAT32   ", 8) == 0) {
    label_off = 71;
    serial_off = 67;
  } else if (std::memcmp(&b[54], "FAT", 3) == 0) {
    label_off = 43;
    serial_off = 39;
  } else {
    return false;
  }
  info->type = "vfat";
  char serial[16];
  const uint32_t s = load_le32(&b[serial_off]);
  std::snprintf(serial, sizeof serial, "%04X-%04X", s >> 16, s & 0xffff);
  info->uuid = serial;
  std::string label = trim_right(text_field(&b[label_off], 11));
  info->label = label == "NO NAME" ? "" : label;
  uint64_t sectors = load_le16(&b[19]);
  if (sectors == 0) sectors = load_le32(&b[32]);
  info->size = sectors * bytes_per_sector;
  return true;
}

bool probe_others(Reader& r, FsInfo* info) {
  if (auto b = r.get(0, 512); !b.empty()) {
    if (std::memcmp(b.data(), "XFSB", 4) == 0) {
      info->type = "xfs";
      info->uuid = uuid_string(&b[32]);
      info->label = text_field(&b[108], 12);
      uint32_t bs = __builtin_bswap32(load_le32(&b[4]));
      uint64_t blocks = __builtin_bswap64(load_le64(&b[8]));
      info->size = blocks * bs;
      return true;
    }
    if (std::memcmp(b.data(), "LUKS\xba\xbe", 6) == 0) {
      info->type = "crypto_LUKS";
      info->uuid = text_field(&b[168], 40);
      return true;
    }
    if (std::memcmp(&b[3], "NTFS    ", 8) == 0) {
      info->type = "ntfs";
      return true;
    }
  }
  if (auto b = r.get(512, 512); !b.empty() && std::memcmp(&b[0], "LABELONE", 8) == 0 &&
                                std::memcmp(&b[24], "LVM2 001", 8) == 0) {
    info->type = "LVM2_member";
    return true;
  }
  if (auto b = r.get(65536, 4096); !b.empty() && std::memcmp(&b[64], "_BHRfS_M", 8) == 0) {
    info->type = "btrfs";
    info->uuid = uuid_string(&b[32]);
    info->label = text_field(&b[0x12b], 256);
    info->size = load_le64(&b[0x70]);
    return true;
  }
  if (auto b = r.get(0, 4096); !b.empty() && (std::memcmp(&b[4086], "SWAPSPACE2", 10) == 0 ||
                                              std::memcmp(&b[4086], "SWAP-SPACE", 10) == 0)) {
    info->type = "swap";
    info->uuid = uuid_string(&b[1024 + 12]);
    info->label = text_field(&b[1024 + 28], 16);
    return true;
  }
  if (auto b = r.get(32768, 8); !b.empty() && std::memcmp(&b[1], "CD001", 5) == 0) {
    info->type = "iso9660";
    return true;
  }
  return false;
}

}  // namespace

FsInfo probe_filesystem(Source& source, uint64_t offset, uint64_t length) {
  Reader r(source, offset, length);
  FsInfo info;
  if (probe_ext(r, &info) || probe_fat(r, &info) || probe_others(r, &info)) return info;
  return {};
}

}  // namespace kiln::fs

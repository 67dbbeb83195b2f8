// Partition tables: GPT (protective MBR, both headers and both entry arrays checked against
// their CRCs), MBR with an extended partition's chain of EBRs, or none.
#include "kiln/fs/partition.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <set>
#include <vector>

#include "disk_format.h"
#include "kiln/fs/filesystem.h"
#include "kiln/fs/source.h"

namespace kiln::fs {
namespace {

using namespace disk;

std::vector<uint8_t> read_bytes(Source& src, uint64_t offset, size_t len) {
  std::vector<uint8_t> buf(len);
  if (offset > src.size() || len > src.size() - offset)
    throw Error(Reason::kIo, src.name() + ": the partition table points past the end of the disk");
  int rc = src.pread(buf.data(), len, offset);
  if (rc < 0)
    throw Error(Reason::kIo, src.name() + ": read error at offset " + std::to_string(offset) +
                                 ": " + std::strerror(-rc));
  return buf;
}

uint32_t crc32_of(const uint8_t* p, size_t len) {
  return static_cast<uint32_t>(::crc32(::crc32(0L, Z_NULL, 0), p, static_cast<uInt>(len)));
}

// GUIDs are stored mixed-endian: the first three fields little-endian.
std::string guid_string(const uint8_t* g) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%08x-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x", load_le32(g),
                load_le16(g + 4), load_le16(g + 6), g[8], g[9], g[10], g[11], g[12], g[13], g[14],
                g[15]);
  return buf;
}

bool is_zero(const uint8_t* p, size_t n) {
  return std::all_of(p, p + n, [](uint8_t b) { return b == 0; });
}

std::string gpt_name(const uint8_t* p) {
  std::string out;
  for (size_t i = 0; i < gpt::kNameUnits; ++i) {
    uint16_t u = load_le16(p + 2 * i);
    if (u == 0) break;
    out += (u >= 0x20 && u < 0x7f) ? static_cast<char>(u) : '?';
  }
  return out;
}

struct GptHeader {
  uint64_t my_lba, alternate_lba, first_usable, last_usable, entries_lba;
  uint32_t num_entries, entry_size, entries_crc;
  std::string disk_guid;
  std::vector<uint8_t> entries;
};

// Reads and checks one GPT header and its entry array. Returns an empty string, or what is
// wrong with it.
std::string read_gpt_header(Source& src, uint32_t ss, uint64_t lba, GptHeader* h) {
  const uint64_t disk_sectors = src.size() / ss;
  if (lba >= disk_sectors)
    return "it lies past the end of the disk (LBA " + std::to_string(lba) + ")";
  std::vector<uint8_t> s = read_bytes(src, lba * ss, ss);
  if (std::memcmp(s.data(), gpt::kSignature, 8) != 0) return "its signature is missing";
  uint32_t hsize = load_le32(&s[gpt::kHeaderSizeOff]);
  if (hsize < gpt::kMinHeaderSize || hsize > ss)
    return "its header size " + std::to_string(hsize) + " is invalid";
  uint32_t stored = load_le32(&s[gpt::kHeaderCrcOff]);
  store_le32(&s[gpt::kHeaderCrcOff], 0);
  if (crc32_of(s.data(), hsize) != stored) return "its header CRC is wrong";
  h->my_lba = load_le64(&s[gpt::kMyLbaOff]);
  h->alternate_lba = load_le64(&s[gpt::kAlternateLbaOff]);
  h->first_usable = load_le64(&s[gpt::kFirstUsableOff]);
  h->last_usable = load_le64(&s[gpt::kLastUsableOff]);
  h->entries_lba = load_le64(&s[gpt::kEntriesLbaOff]);
  h->num_entries = load_le32(&s[gpt::kNumEntriesOff]);
  h->entry_size = load_le32(&s[gpt::kEntrySizeOff]);
  h->entries_crc = load_le32(&s[gpt::kEntriesCrcOff]);
  h->disk_guid = guid_string(&s[gpt::kDiskGuidOff]);
  if (h->my_lba != lba) return "it names LBA " + std::to_string(h->my_lba) + " as its own";
  if (h->entry_size < gpt::kMinEntrySize || h->entry_size > gpt::kMaxEntrySize ||
      h->entry_size % 8 != 0)
    return "its entry size " + std::to_string(h->entry_size) + " is invalid";
  if (h->num_entries > gpt::kMaxEntries ||
      uint64_t{h->num_entries} * h->entry_size > gpt::kMaxArrayBytes)
    return "it has too many entries (" + std::to_string(h->num_entries) + ")";
  if (h->first_usable > h->last_usable || h->last_usable >= disk_sectors)
    return "its usable range (LBA " + std::to_string(h->first_usable) + "-" +
           std::to_string(h->last_usable) + ") does not fit the disk (" +
           std::to_string(disk_sectors) + " sectors)";
  const uint64_t array_bytes = uint64_t{h->num_entries} * h->entry_size;
  const uint64_t array_sectors = (array_bytes + ss - 1) / ss;
  if (h->entries_lba >= disk_sectors || array_sectors > disk_sectors - h->entries_lba)
    return "its entry array lies past the end of the disk";
  h->entries = read_bytes(src, h->entries_lba * ss, static_cast<size_t>(array_bytes));
  if (crc32_of(h->entries.data(), h->entries.size()) != h->entries_crc)
    return "the CRC of its partition entry array is wrong";
  return "";
}

PartitionTable read_gpt(Source& src, uint32_t ss) {
  PartitionTable t;
  t.scheme = "gpt";
  t.sector_size = ss;
  const std::string& disk = src.name();
  GptHeader primary{}, backup{};
  std::string why = read_gpt_header(src, ss, 1, &primary);
  if (!why.empty())
    throw Error(Reason::kCorrupt, disk + ": the primary GPT header is corrupt: " + why +
                                      " (repair the table with sgdisk or gdisk)");
  why = read_gpt_header(src, ss, primary.alternate_lba, &backup);
  if (!why.empty())
    throw Error(Reason::kCorrupt,
                disk + ": the backup GPT header at LBA " + std::to_string(primary.alternate_lba) +
                    " is corrupt: " + why + " (repair the table with sgdisk or gdisk)");
  if (backup.alternate_lba != 1 || backup.entries_crc != primary.entries_crc ||
      backup.num_entries != primary.num_entries || backup.entry_size != primary.entry_size ||
      backup.disk_guid != primary.disk_guid)
    throw Error(Reason::kCorrupt,
                disk +
                    ": the primary and backup GPT headers disagree (repair the table with "
                    "sgdisk or gdisk)");
  t.disk_id = primary.disk_guid;
  const uint64_t disk_sectors = src.size() / ss;
  for (uint32_t i = 0; i < primary.num_entries; ++i) {
    const uint8_t* e = &primary.entries[size_t{i} * primary.entry_size];
    if (is_zero(e + gpt::kTypeGuidOff, 16)) continue;
    uint64_t first = load_le64(e + gpt::kFirstLbaOff);
    uint64_t last = load_le64(e + gpt::kLastLbaOff);
    const int number = static_cast<int>(i) + 1;
    if (last < first)
      throw Error(Reason::kCorrupt,
                  disk + ": GPT partition " + std::to_string(number) + " ends before it starts");
    if (last >= disk_sectors)
      throw Error(Reason::kCorrupt, disk + ": GPT partition " + std::to_string(number) +
                                        " (sectors " + std::to_string(first) + "-" +
                                        std::to_string(last) +
                                        ") extends past the end of the disk (" +
                                        std::to_string(disk_sectors) + " sectors)");
    if (first < primary.first_usable || last > primary.last_usable)
      throw Error(Reason::kCorrupt, disk + ": GPT partition " + std::to_string(number) +
                                        " lies outside the table's usable range");
    Partition p;
    p.number = number;
    p.offset = first * ss;
    p.length = (last - first + 1) * ss;
    p.kind = "gpt";
    p.type_guid = guid_string(e + gpt::kTypeGuidOff);
    p.part_guid = guid_string(e + gpt::kPartGuidOff);
    p.name = gpt_name(e + gpt::kNameOff);
    t.partitions.push_back(std::move(p));
  }
  return t;
}

struct MbrEntry {
  uint8_t status, type;
  uint32_t start, sectors;
};

MbrEntry mbr_entry(const std::vector<uint8_t>& s, size_t i) {
  const uint8_t* e = &s[mbr::kEntriesOffset + i * mbr::kEntrySize];
  return {e[mbr::kStatus], e[mbr::kType], load_le32(e + mbr::kStartLba),
          load_le32(e + mbr::kSectors)};
}

void check_inside(const std::string& disk, int number, uint64_t start, uint64_t sectors,
                  uint64_t limit_start, uint64_t limit_sectors, const char* container) {
  if (start < limit_start || sectors > limit_start + limit_sectors - start ||
      start - limit_start > limit_sectors)
    throw Error(Reason::kCorrupt, disk + ": partition " + std::to_string(number) + " (sectors " +
                                      std::to_string(start) + "-" +
                                      std::to_string(start + sectors - 1) +
                                      ") extends past the end of the " + container + " (" +
                                      std::to_string(limit_start + limit_sectors) + " sectors)");
}

void read_logical(Source& src, const std::string& disk, uint64_t ext_start, uint64_t ext_sectors,
                  PartitionTable* t) {
  constexpr uint64_t ss = 512;
  std::set<uint64_t> seen;
  uint64_t ebr = ext_start;
  int number = 5;
  for (int count = 0;; ++count) {
    if (count >= mbr::kMaxLogical)
      throw Error(Reason::kCorrupt,
                  disk + ": more than " + std::to_string(mbr::kMaxLogical) +
                      " logical partitions (a loop in the extended partition's chain?)");
    if (!seen.insert(ebr).second)
      throw Error(Reason::kCorrupt, disk +
                                        ": the chain of logical partitions loops (EBR at sector " +
                                        std::to_string(ebr) + ")");
    std::vector<uint8_t> s = read_bytes(src, ebr * ss, ss);
    if (s[mbr::kSignatureOffset] != 0x55 || s[mbr::kSignatureOffset + 1] != 0xaa)
      throw Error(Reason::kCorrupt, disk + ": the extended boot record at sector " +
                                        std::to_string(ebr) + " has no 0x55AA signature");
    MbrEntry data = mbr_entry(s, 0);
    MbrEntry next = mbr_entry(s, 1);
    if (data.type != mbr::kTypeEmpty && data.sectors != 0) {
      uint64_t start = ebr + data.start;
      check_inside(disk, number, start, data.sectors, ext_start, ext_sectors, "extended partition");
      Partition p;
      p.number = number++;
      p.offset = start * ss;
      p.length = uint64_t{data.sectors} * ss;
      p.kind = "logical";
      p.mbr_type = data.type;
      t->partitions.push_back(std::move(p));
    }
    if (next.type == mbr::kTypeEmpty || next.sectors == 0) break;
    if (!mbr::is_extended(next.type))
      throw Error(
          Reason::kCorrupt, disk + ": the extended boot record at sector " + std::to_string(ebr) +
                                " links to a partition of type 0x" +
                                [&] {
                                  char b[4];
                                  std::snprintf(b, sizeof b, "%02x", next.type);
                                  return std::string(b);
                                }() +
                                " instead of the next EBR");
    uint64_t next_ebr = ext_start + next.start;
    check_inside(disk, number, next_ebr, next.sectors, ext_start, ext_sectors,
                 "extended partition");
    ebr = next_ebr;
  }
}

PartitionTable read_mbr(Source& src, const std::vector<uint8_t>& s0) {
  constexpr uint64_t ss = 512;
  PartitionTable t;
  t.scheme = "mbr";
  const std::string& disk = src.name();
  char id[16];
  std::snprintf(id, sizeof id, "%08x", load_le32(&s0[mbr::kDiskSignatureOffset]));
  t.disk_id = id;
  const uint64_t disk_sectors = src.size() / ss;
  bool have_extended = false;
  for (size_t i = 0; i < mbr::kEntries; ++i) {
    MbrEntry e = mbr_entry(s0, i);
    const int number = static_cast<int>(i) + 1;
    if (e.type == mbr::kTypeEmpty || e.sectors == 0) continue;
    check_inside(disk, number, e.start, e.sectors, 0, disk_sectors, "disk");
    if (mbr::is_extended(e.type)) {
      if (have_extended)
        throw Error(Reason::kCorrupt, disk + ": the MBR has more than one extended partition");
      have_extended = true;
      read_logical(src, disk, e.start, e.sectors, &t);
      continue;
    }
    Partition p;
    p.number = number;
    p.offset = uint64_t{e.start} * ss;
    p.length = uint64_t{e.sectors} * ss;
    p.kind = "primary";
    p.mbr_type = e.type;
    t.partitions.push_back(std::move(p));
  }
  std::sort(t.partitions.begin(), t.partitions.end(),
            [](const Partition& a, const Partition& b) { return a.number < b.number; });
  return t;
}

// A boot sector is taken for an MBR only if every entry is plausible: status 0x00 or 0x80,
// and a non-empty entry starts after sector 0. A FAT or NTFS boot sector also ends in 0x55AA.
bool plausible_mbr(const std::vector<uint8_t>& s0) {
  if (s0[mbr::kSignatureOffset] != 0x55 || s0[mbr::kSignatureOffset + 1] != 0xaa) return false;
  int used = 0;
  for (size_t i = 0; i < mbr::kEntries; ++i) {
    MbrEntry e = mbr_entry(s0, i);
    if (e.status != 0x00 && e.status != 0x80) return false;
    if (e.type == mbr::kTypeEmpty) continue;
    if (e.start == 0 && e.type != mbr::kTypeGptProtective) return false;
    ++used;
  }
  return used > 0;
}

bool has_protective_entry(const std::vector<uint8_t>& s0) {
  for (size_t i = 0; i < mbr::kEntries; ++i)
    if (mbr_entry(s0, i).type == mbr::kTypeGptProtective) return true;
  return false;
}

}  // namespace

bool is_ext_type(const std::string& type) {
  return type == "ext2" || type == "ext3" || type == "ext4";
}

PartitionTable read_partition_table(Source& src) {
  PartitionTable none;
  none.scheme = "none";
  if (src.size() < 512) return none;
  std::vector<uint8_t> s0 = read_bytes(src, 0, 512);
  // A filesystem that starts at sector 0 (FAT, NTFS) has a boot sector that can look like an
  // MBR; a probe that recognises one wins over a table.
  if (!plausible_mbr(s0)) return none;
  FsInfo whole = probe_filesystem(src, 0, src.size());
  if (!whole.type.empty() && !has_protective_entry(s0)) return none;
  if (has_protective_entry(s0)) {
    // GPT with 512-byte sectors, or 4 KiB sectors (the header is at LBA 1 either way).
    for (uint32_t ss : {512u, 4096u}) {
      if (src.size() < 2 * uint64_t{ss}) continue;
      std::vector<uint8_t> h = read_bytes(src, ss, 8);
      if (std::memcmp(h.data(), gpt::kSignature, 8) == 0) return read_gpt(src, ss);
    }
    throw Error(Reason::kCorrupt,
                src.name() +
                    ": the MBR is a GPT protective MBR but the primary GPT header is "
                    "missing (repair the table with sgdisk or gdisk)");
  }
  return read_mbr(src, s0);
}

}  // namespace kiln::fs

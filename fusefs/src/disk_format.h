// On-disk layouts of the MBR, the extended boot record and GPT, described once. All fields
// are little-endian on disk; access goes through load_le* below, never through casts.
#pragma once

#include <cstdint>
#include <cstring>

namespace kiln::fs::disk {

inline uint16_t load_le16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
inline uint32_t load_le32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;  // x86-64 and aarch64 hosts are little-endian (checked below)
}
inline uint64_t load_le64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline void store_le32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "kiln-fs assumes a little-endian host");

// MBR (and EBR): 446 bytes of boot code, four 16-byte entries, signature 0x55 0xAA.
namespace mbr {
constexpr size_t kEntriesOffset = 446;
constexpr size_t kEntrySize = 16;
constexpr size_t kEntries = 4;
constexpr size_t kSignatureOffset = 510;
constexpr size_t kDiskSignatureOffset = 440;
// Entry fields.
constexpr size_t kStatus = 0;    // 0x00 or 0x80 (bootable)
constexpr size_t kType = 4;      // system id
constexpr size_t kStartLba = 8;  // le32
constexpr size_t kSectors = 12;  // le32
static_assert(kEntriesOffset + kEntries * kEntrySize == kSignatureOffset);

constexpr uint8_t kTypeEmpty = 0x00;
constexpr uint8_t kTypeGptProtective = 0xee;
inline bool is_extended(uint8_t type) { return type == 0x05 || type == 0x0f || type == 0x85; }
// Beyond this, an EBR chain is refused (Linux stops at 256 partitions in all).
constexpr int kMaxLogical = 128;
}  // namespace mbr

// GPT header (UEFI 2.10, 5.3.2), at LBA 1 and at the LBA its "alternate" field names.
namespace gpt {
constexpr char kSignature[8] = {'E', 'F', 'I', ' ', 'P', 'A', 'R', 'T'};
constexpr size_t kSignatureOff = 0;
constexpr size_t kRevisionOff = 8;       // le32
constexpr size_t kHeaderSizeOff = 12;    // le32
constexpr size_t kHeaderCrcOff = 16;     // le32, computed with this field zeroed
constexpr size_t kMyLbaOff = 24;         // le64
constexpr size_t kAlternateLbaOff = 32;  // le64
constexpr size_t kFirstUsableOff = 40;   // le64
constexpr size_t kLastUsableOff = 48;    // le64
constexpr size_t kDiskGuidOff = 56;      // 16 bytes
constexpr size_t kEntriesLbaOff = 72;    // le64
constexpr size_t kNumEntriesOff = 80;    // le32
constexpr size_t kEntrySizeOff = 84;     // le32
constexpr size_t kEntriesCrcOff = 88;    // le32
constexpr size_t kMinHeaderSize = 92;
static_assert(kEntriesCrcOff + 4 == kMinHeaderSize);

// Partition entry.
constexpr size_t kTypeGuidOff = 0;
constexpr size_t kPartGuidOff = 16;
constexpr size_t kFirstLbaOff = 32;  // le64
constexpr size_t kLastLbaOff = 40;   // le64, inclusive
constexpr size_t kAttributesOff = 48;
constexpr size_t kNameOff = 56;  // 36 UTF-16LE code units
constexpr size_t kNameUnits = 36;
constexpr size_t kMinEntrySize = 128;
static_assert(kNameOff + kNameUnits * 2 == kMinEntrySize);

// Limits on untrusted tables: the entry array at most 1 MiB, entries at most 4 KiB each.
constexpr uint32_t kMaxEntries = 8192;
constexpr uint32_t kMaxEntrySize = 4096;
constexpr uint64_t kMaxArrayBytes = 1u << 20;
}  // namespace gpt

}  // namespace kiln::fs::disk

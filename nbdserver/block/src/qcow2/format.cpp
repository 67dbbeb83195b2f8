#include "qcow2/format.h"

#include <cstring>
#include <string>

#include "kiln/block/qcow2.h"

namespace kiln::block::qcow2 {

namespace {
std::string hex(uint64_t v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%#llx", static_cast<unsigned long long>(v));
  return buf;
}
uint64_t align8(uint64_t v) { return (v + 7) & ~uint64_t{7}; }
}  // namespace

std::string printable(std::string_view name) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(name.size());
  for (unsigned char c : name) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::vector<uint8_t> qemu_feature_table() {
  struct Feature {
    uint8_t type, bit;
    const char* name;
  };
  static constexpr Feature kFeatures[] = {
      {0, 0, "dirty bit"},        {0, 1, "corrupt bit"},         {0, 2, "external data file"},
      {0, 3, "compression type"}, {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
      {2, 0, "bitmaps"},          {2, 1, "raw external data"},
  };
  std::vector<uint8_t> table;
  for (const Feature& f : kFeatures) {
    uint8_t e[48] = {f.type, f.bit};
    std::memcpy(e + 2, f.name, std::strlen(f.name));
    table.insert(table.end(), e, e + 48);
  }
  return table;
}

void append_extension(std::vector<uint8_t>& b, uint32_t type, const void* data, size_t len) {
  const size_t pos = b.size();
  b.resize(pos + 8 + ((len + 7) & ~size_t{7}), 0);
  store_be32(&b[pos], type);
  store_be32(&b[pos + 4], uint32_t(len));
  if (len) std::memcpy(&b[pos + 8], data, len);
}

std::string Header::feature_name(uint8_t type, uint8_t bit) const {
  for (const auto& f : feature_names)
    if (f.type == type && f.bit == bit) return f.name;
  return {};
}

std::optional<std::string> parse_header(std::span<const uint8_t> b, Header* out) {
  Header h;
  if (b.size() < hdr::kV2Length) return "file too short for a qcow2 header";
  if (load_be32(&b[hdr::kMagic]) != kMagic) return "bad qcow2 magic";
  h.version = load_be32(&b[hdr::kVersion]);
  if (h.version != 2 && h.version != 3)
    return "unsupported qcow2 version " + std::to_string(h.version);
  h.backing_file_offset = load_be64(&b[hdr::kBackingFileOffset]);
  h.backing_file_size = load_be32(&b[hdr::kBackingFileSize]);
  h.cluster_bits = load_be32(&b[hdr::kClusterBits]);
  if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits)
    return "cluster_bits " + std::to_string(h.cluster_bits) + " out of range (9..21)";
  const uint64_t cs = h.cluster_size();
  h.size = load_be64(&b[hdr::kSize]);
  if (h.size > kMaxVirtualSize) return "virtual size too large";
  h.crypt_method = load_be32(&b[hdr::kCryptMethod]);
  h.l1_size = load_be32(&b[hdr::kL1Size]);
  h.l1_table_offset = load_be64(&b[hdr::kL1TableOffset]);
  h.refcount_table_offset = load_be64(&b[hdr::kRefcountTableOffset]);
  h.refcount_table_clusters = load_be32(&b[hdr::kRefcountTableClusters]);
  h.nb_snapshots = load_be32(&b[hdr::kNbSnapshots]);
  h.snapshots_offset = load_be64(&b[hdr::kSnapshotsOffset]);

  if (h.version == 3) {
    if (b.size() < hdr::kV3MinLength) return "file too short for a qcow2 v3 header";
    h.incompatible_features = load_be64(&b[hdr::kIncompatibleFeatures]);
    h.compatible_features = load_be64(&b[hdr::kCompatibleFeatures]);
    h.autoclear_features = load_be64(&b[hdr::kAutoclearFeatures]);
    h.refcount_order = load_be32(&b[hdr::kRefcountOrder]);
    h.header_length = load_be32(&b[hdr::kHeaderLength]);
    if (h.header_length < hdr::kV3MinLength || h.header_length % 8 != 0 || h.header_length > cs ||
        h.header_length > b.size())
      return "invalid header_length " + std::to_string(h.header_length);
    if (h.header_length > hdr::kCompressionType) {
      uint8_t ct = b[hdr::kCompressionType];
      if (ct > 1) return "unknown compression type " + std::to_string(ct);
      h.compression = static_cast<Compression>(ct);
    }
    if ((h.incompatible_features & kIncompatCompression) && h.compression == Compression::kZlib)
      return "compression type bit set but compression_type field is zlib";
    if (!(h.incompatible_features & kIncompatCompression) && h.compression != Compression::kZlib)
      return "compression_type field set without the compression type bit";
  }
  if (h.refcount_order > 6)
    return "refcount_order " + std::to_string(h.refcount_order) + " out of range (0..6)";

  // Header extensions: between the fixed header and the end of the first cluster.
  uint64_t pos = h.version == 2 ? hdr::kV2Length : h.header_length;
  const uint64_t limit = std::min<uint64_t>(cs, b.size());
  bool ended = false;
  while (pos + 8 <= limit) {
    uint32_t type = load_be32(&b[pos]);
    uint32_t len = load_be32(&b[pos + 4]);
    pos += 8;
    if (type == kExtEnd) {
      ended = true;
      break;
    }
    if (len > limit - pos) return "header extension " + hex(type) + " runs past the first cluster";
    const uint8_t* d = &b[pos];
    switch (type) {
      case kExtBackingFormat:
        if (h.backing_format) return "duplicate backing format extension";
        if (len > 16) return "backing format name too long";
        h.backing_format = std::string(reinterpret_cast<const char*>(d), len);
        break;
      case kExtFeatureTable:
        for (uint32_t i = 0; i + 48 <= len; i += 48) {
          const char* n = reinterpret_cast<const char*>(d + i + 2);
          h.feature_names.push_back({d[i], d[i + 1], std::string(n, strnlen(n, 46))});
        }
        break;
      case kExtBitmaps:
        if (len < 24) return "bitmaps extension too short";
        h.has_bitmaps_ext = true;
        h.nb_bitmaps = load_be32(d);
        h.bitmap_directory_size = load_be64(d + 8);
        h.bitmap_directory_offset = load_be64(d + 16);
        break;
      case kExtEncryption:
        if (h.has_encryption_ext) return "duplicate encryption header extension";
        if (len != 16) return "encryption header extension has the wrong length";
        h.has_encryption_ext = true;
        h.crypto_offset = load_be64(d);
        h.crypto_length = load_be64(d + 8);
        break;
      case kExtDataFile:
        h.has_data_file_ext = true;
        break;
      default:
        break;  // unknown extensions are ignored (and never rewritten)
    }
    pos = align8(pos + len);
  }
  if (!ended && h.version == 3 && pos + 8 <= limit)
    return "header extension area is not terminated";
  h.extensions_end = pos;

  if (h.backing_file_offset) {
    if (h.backing_file_size > kMaxBackingNameLength)
      return "backing file name too long (" + std::to_string(h.backing_file_size) + " bytes)";
    if (h.backing_file_size == 0) return "empty backing file name";
    if (h.backing_file_offset > cs || h.backing_file_size > cs - h.backing_file_offset ||
        h.backing_file_offset + h.backing_file_size > b.size())
      return "backing file name lies outside the first cluster";
    h.backing_file.assign(reinterpret_cast<const char*>(&b[h.backing_file_offset]),
                          h.backing_file_size);
    if (h.backing_file.find('\0') != std::string::npos)
      return "backing file name contains a NUL byte";
  }
  *out = std::move(h);
  return std::nullopt;
}

void serialize_header(const Header& h, uint8_t* b) {
  std::memset(b, 0,
              h.version == 2 ? hdr::kV2Length : std::min<size_t>(h.header_length, hdr::kV3Length));
  store_be32(b + hdr::kMagic, kMagic);
  store_be32(b + hdr::kVersion, h.version);
  store_be64(b + hdr::kBackingFileOffset, h.backing_file_offset);
  store_be32(b + hdr::kBackingFileSize, h.backing_file_size);
  store_be32(b + hdr::kClusterBits, h.cluster_bits);
  store_be64(b + hdr::kSize, h.size);
  store_be32(b + hdr::kCryptMethod, h.crypt_method);
  store_be32(b + hdr::kL1Size, h.l1_size);
  store_be64(b + hdr::kL1TableOffset, h.l1_table_offset);
  store_be64(b + hdr::kRefcountTableOffset, h.refcount_table_offset);
  store_be32(b + hdr::kRefcountTableClusters, h.refcount_table_clusters);
  store_be32(b + hdr::kNbSnapshots, h.nb_snapshots);
  store_be64(b + hdr::kSnapshotsOffset, h.snapshots_offset);
  if (h.version >= 3) {
    store_be64(b + hdr::kIncompatibleFeatures, h.incompatible_features);
    store_be64(b + hdr::kCompatibleFeatures, h.compatible_features);
    store_be64(b + hdr::kAutoclearFeatures, h.autoclear_features);
    store_be32(b + hdr::kRefcountOrder, h.refcount_order);
    store_be32(b + hdr::kHeaderLength, h.header_length);
    if (h.header_length > hdr::kCompressionType && h.compression != Compression::kZlib)
      b[hdr::kCompressionType] = static_cast<uint8_t>(h.compression);
  }
}

std::optional<std::string> parse_snapshots(std::span<const uint8_t> t, uint32_t count,
                                           std::vector<Snapshot>* out, uint64_t* table_bytes) {
  uint64_t pos = 0;
  out->clear();
  for (uint32_t i = 0; i < count; ++i) {
    if (pos + 40 > t.size()) return "snapshot table truncated";
    const uint8_t* e = &t[pos];
    Snapshot s;
    s.l1_table_offset = load_be64(e);
    s.l1_size = load_be32(e + 8);
    uint16_t id_len = load_be16(e + 12), name_len = load_be16(e + 14);
    s.date_sec = load_be32(e + 16);
    s.date_nsec = load_be32(e + 20);
    s.vm_clock_nsec = load_be64(e + 24);
    s.vm_state_size = load_be32(e + 32);
    uint32_t extra = load_be32(e + 36);
    if (extra > 1024) return "snapshot extra data too large";
    pos += 40;
    if (pos + extra + id_len + name_len > t.size()) return "snapshot table truncated";
    if (extra >= 8) s.vm_state_size = load_be64(&t[pos]);
    if (extra >= 16) s.disk_size = load_be64(&t[pos + 8]);
    if (extra >= 24) s.icount = load_be64(&t[pos + 16]);
    s.extra.assign(t.data() + pos, t.data() + pos + extra);
    pos += extra;
    s.id.assign(reinterpret_cast<const char*>(&t[pos]), id_len);
    pos += id_len;
    s.name.assign(reinterpret_cast<const char*>(&t[pos]), name_len);
    pos = align8(pos + name_len);
    out->push_back(std::move(s));
  }
  if (table_bytes) *table_bytes = pos;
  return std::nullopt;
}

}  // namespace kiln::block::qcow2

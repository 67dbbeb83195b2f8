// Changes to a closed image's header that move no data: the backing file name and format,
// lazy refcounts, the version (kiln-img rebase -u and amend). The header cluster is rewritten
// the way QEMU rewrites it (fixed header, backing format extension, the extensions kept from
// before, the feature name table for v3, end marker, backing file name), in one write.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "kiln/block/qcow2.h"
#include "kiln/common/fd.h"
#include "lock.h"
#include "qcow2/format.h"

namespace kiln::block::qcow2 {
namespace {

struct RawExt {
  uint32_t type;
  std::vector<uint8_t> data;
};

// The extensions of a header that parse_header() accepted, as they are on disk.
std::vector<RawExt> raw_extensions(const std::vector<uint8_t>& b, const Header& h) {
  std::vector<RawExt> out;
  uint64_t pos = h.version == 2 ? hdr::kV2Length : h.header_length;
  while (pos + 8 <= h.extensions_end) {
    const uint32_t type = load_be32(&b[pos]);
    const uint32_t len = load_be32(&b[pos + 4]);
    pos += 8;
    if (type == kExtEnd) break;
    out.push_back({type, std::vector<uint8_t>(b.begin() + long(pos), b.begin() + long(pos + len))});
    pos = (pos + len + 7) & ~uint64_t{7};
  }
  return out;
}

}  // namespace

void update_header(Reactor& r, const std::string& path, const HeaderChange& c) {
  common::Fd file(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!file) throw Error(errno, path + ": cannot open: " + strerror(errno));
  const int fd = file.get();
  lock_image_file(fd, path, true);
  const UnlockOnExit unlock{fd};

  // The cluster size is in the first bytes; the header is the whole first cluster.
  std::vector<uint8_t> b(hdr::kV3Length, 0);
  int rc = r.run(r.read_full(fd, b, 0));
  if (rc < 0) throw Error(-rc, path + ": cannot read the header: " + strerror(-rc));
  const uint32_t bits = load_be32(&b[hdr::kClusterBits]);
  if (load_be32(&b[0]) != kMagic || bits < kMinClusterBits || bits > kMaxClusterBits)
    throw Error(Reason::kCorrupt, EINVAL, path + ": not a qcow2 image");
  b.assign(size_t{1} << bits, 0);
  rc = r.run(r.read_full(fd, b, 0));
  if (rc < 0) throw Error(-rc, path + ": cannot read the header: " + strerror(-rc));
  Header h;
  if (auto err = parse_header(b, &h)) throw Error(Reason::kCorrupt, EINVAL, path + ": " + *err);
  if (h.incompatible_features & (kIncompatDirty | kIncompatCorrupt))
    throw Error(Reason::kCorrupt, EINVAL,
                path + ": the image is " +
                    (h.incompatible_features & kIncompatCorrupt ? "marked corrupt"
                                                                : "dirty (not closed cleanly)") +
                    ": repair it first (kiln-img check -r all)");
  const uint64_t cs = h.cluster_size();

  Header n = h;
  if (c.backing_file) {
    if (c.backing_file->size() > kMaxBackingNameLength)
      throw Error(EINVAL, path + ": backing file name is too long");
    n.backing_file = *c.backing_file;
    n.backing_format =
        n.backing_file.empty() ? std::nullopt : std::optional<std::string>(c.backing_format);
    if (n.backing_format && n.backing_format->empty()) n.backing_format.reset();
  } else if (c.backing_format) {
    n.backing_format = *c.backing_format;
    if (n.backing_format->empty()) n.backing_format.reset();
  }
  if (n.backing_format && n.backing_format->size() > 16)
    throw Error(EINVAL, path + ": backing format name is too long");
  if (c.version && *c.version != h.version) {
    if (*c.version == 2) {
      // Callers make the image fit version 2 first (zero clusters expanded); these are the
      // header's own conditions.
      if (h.refcount_order != 4)
        throw Error(Reason::kUnsupported, EINVAL, path + ": compat=0.10 requires refcount_bits=16");
      if (h.incompatible_features)
        throw Error(Reason::kUnsupported, EINVAL,
                    path + ": Cannot downgrade an image with incompatible features");
      if (h.has_bitmaps_ext || (h.autoclear_features & kAutoclearBitmaps))
        throw Error(Reason::kUnsupported, EINVAL,
                    path + ": Cannot downgrade an image with bitmaps");
      n.version = 2;
      n.header_length = hdr::kV2Length;
      n.compatible_features = n.incompatible_features = n.autoclear_features = 0;
    } else if (*c.version == 3) {
      n.version = 3;
      n.header_length = hdr::kV3Length;
      n.refcount_order = 4;
      n.compression = Compression::kZlib;
    } else {
      throw Error(EINVAL, path + ": unknown version " + std::to_string(*c.version));
    }
  }
  if (c.lazy_refcounts) {
    if (*c.lazy_refcounts && n.version < 3)
      throw Error(Reason::kUnsupported, EINVAL,
                  path + ": Lazy refcounts only supported with compatibility level 1.1 and above");
    n.compatible_features = *c.lazy_refcounts ? n.compatible_features | kCompatLazyRefcounts
                                              : n.compatible_features & ~kCompatLazyRefcounts;
  }

  // Fixed header: the old bytes (fields past those Kiln knows stay), then the known fields.
  const size_t fixed = n.version == 2 ? hdr::kV2Length : n.header_length;
  std::vector<uint8_t> head(fixed, 0);
  std::memcpy(head.data(), b.data(),
              std::min<size_t>(fixed, h.version == 2 ? hdr::kV2Length : h.header_length));
  if (n.version == 3 && h.version == 2)
    std::memset(head.data() + hdr::kV2Length, 0, fixed - hdr::kV2Length);
  // Extensions, in QEMU's order: backing format, encryption and data file, feature table,
  // the rest as they were.
  if (!n.backing_file.empty() && n.backing_format)
    append_extension(head, kExtBackingFormat,
                     reinterpret_cast<const uint8_t*>(n.backing_format->data()),
                     n.backing_format->size());
  const std::vector<RawExt> old = raw_extensions(b, h);
  for (const RawExt& e : old)
    if (e.type == kExtEncryption || e.type == kExtDataFile)
      append_extension(head, e.type, e.data.data(), e.data.size());
  if (n.version >= 3) {
    std::vector<uint8_t> table;
    for (const RawExt& e : old)
      if (e.type == kExtFeatureTable) table = e.data;
    if (table.empty() || h.version == 2) {
      table = qemu_feature_table();
    }
    append_extension(head, kExtFeatureTable, table.data(), table.size());
  }
  for (const RawExt& e : old)
    if (e.type != kExtBackingFormat && e.type != kExtEncryption && e.type != kExtDataFile &&
        e.type != kExtFeatureTable)
      append_extension(head, e.type, e.data.data(), e.data.size());
  head.resize(head.size() + 8, 0);  // end of extensions
  n.backing_file_offset = n.backing_file.empty() ? 0 : head.size();
  n.backing_file_size = uint32_t(n.backing_file.size());
  head.insert(head.end(), n.backing_file.begin(), n.backing_file.end());
  if (head.size() > cs)
    throw Error(EINVAL, path + ": the header and the backing file name do not fit in a cluster");
  serialize_header(n, head.data());

  // What the old header used is cleared too (a shorter backing name leaves no tail behind).
  const uint64_t old_end =
      std::max<uint64_t>(h.extensions_end, h.backing_file_offset + h.backing_file_size);
  head.resize(std::max<uint64_t>(head.size(), std::min(old_end, cs)), 0);
  rc = r.run(r.write_full(fd, head, 0));
  if (rc == 0) rc = r.run(r.fsync(fd, false));
  if (rc < 0) throw Error(-rc, path + ": cannot write the header: " + strerror(-rc));
}

}  // namespace kiln::block::qcow2

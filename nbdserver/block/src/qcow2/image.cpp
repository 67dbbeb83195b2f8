#include "qcow2/image.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "allowed_dirs.h"
#include "kiln/common/fd.h"
#include "lock.h"
#include "raw.h"

namespace kiln::block::qcow2 {

namespace {

// A system call failed: the reason is the errno's.
[[noreturn]] void fail(int err, const std::string& path, const std::string& what) {
  throw Error(err, path + ": " + what);
}
// The image breaks the format or a limit (hostile or damaged): kCorrupt, whatever the errno.
[[noreturn]] void corrupt(int err, const std::string& path, const std::string& what) {
  throw Error(Reason::kCorrupt, err, path + ": " + what);
}
// Valid qcow2 that Kiln does not read (or will not, by policy): kUnsupported.
[[noreturn]] void unsupported(const std::string& path, const std::string& what) {
  throw Error(Reason::kUnsupported, ENOTSUP, path + ": " + what);
}

std::string dirname_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

struct Range {
  uint64_t start, end;
  const char* name;
};

}  // namespace

Image::Image(Reactor& r, std::string path, HostFile file, Header h, const OpenOptions& opt)
    : r_(r),
      path_(std::move(path)),
      fd_(std::move(file)),
      h_(std::move(h)),
      opt_(opt),
      read_only_(opt.read_only),
      cb_(h_.cluster_bits),
      cs_(h_.cluster_size()),
      extended_(h_.incompatible_features & kIncompatExtendedL2),
      l2e_bytes_(extended_ ? kL2ExtendedEntryBytes : kL2EntryBytes),
      scb_(extended_ ? cb_ - 5 : cb_),
      l2_entries_(cs_ / l2e_bytes_),
      rb_entries_(cs_ * 8 / h_.refcount_bits()),
      l2_cache_(std::min<uint64_t>(cs_, 4096), opt.l2_cache_bytes),
      rb_cache_(std::min<uint64_t>(cs_, 4096), opt.refcount_cache_bytes),
      unpinned_(r),
      alloc_mutex_(r),
      flush_mutex_(r),
      meta_write_mutex_(r) {
  caps_.read_only = read_only_;
  caps_.preferred_block = static_cast<uint32_t>(std::min<uint64_t>(cs_, 65536));
}

Image::~Image() = default;

Task<std::unique_ptr<Image>> Image::open(Reactor& r, const std::string& path,
                                         const OpenOptions& opt, ChainIds chain,
                                         bool format_probed) {
  check_allowed_path(path, opt.allowed_dirs);
  HostFile file(r, open_host_file(path, opt.read_only, opt.direct), opt.direct);
  const int fd = file.get();
  check_allowed_fd(fd, path, opt.allowed_dirs);
  struct stat st;
  if (fstat(fd, &st) < 0) fail(errno, path, strerror(errno));
  for (auto& id : chain)
    if (id.first == st.st_dev && id.second == st.st_ino)
      corrupt(ELOOP, path, "backing chain loops back to this file");
  chain.emplace_back(st.st_dev, st.st_ino);
  if (opt.lock || !opt.read_only) lock_image_file(fd, path, !opt.read_only);
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);

  // The header and its extensions lie in the first cluster, whose size the header gives: a
  // page first, then the rest of the cluster if it is larger, instead of zeroing and reading
  // 2 MiB on every open (a whole kiln-fs inject opens two images).
  std::vector<uint8_t> first(std::min<uint64_t>(file_size, 4096));
  if (int rc = co_await file.read_full(first, 0); rc < 0)
    fail(-rc, path, std::string("cannot read header: ") + strerror(-rc));
  if (first.size() >= hdr::kClusterBits + 4) {
    const uint32_t bits = load_be32(&first[hdr::kClusterBits]);
    const size_t had = first.size();
    if (bits >= kMinClusterBits && bits <= kMaxClusterBits &&
        std::min<uint64_t>(file_size, uint64_t{1} << bits) > had) {
      first.resize(std::min<uint64_t>(file_size, uint64_t{1} << bits));
      if (int rc = co_await file.read_full(std::span(first).subspan(had), had); rc < 0)
        fail(-rc, path, std::string("cannot read header: ") + strerror(-rc));
    }
  }
  Header h;
  if (auto err = parse_header(first, &h)) {
    if (is_unknown_version(first)) throw Error(Reason::kUnsupported, EINVAL, path + ": " + *err);
    corrupt(EINVAL, path, *err);
  }
  const uint64_t cs = h.cluster_size();

  // A guest that owns a raw disk can write a qcow2 header into it that names a host file as
  // backing (format raw): opened through probing, the host file would show through the
  // guest's disk and be copied into it. Refuse before anything is read or written through the
  // header; the user who knows the image is qcow2 says so. (External data files, the other
  // way a header can name a host file, are refused for every image below.)
  if (format_probed && !h.backing_file.empty() && opt.open_backing)
    fail(EPERM, path,
         "the image format was probed (no format given) and it names a backing file '" +
             printable(h.backing_file) + "'" +
             (h.backing_format ? " (format " + printable(*h.backing_format) + ")" : std::string()) +
             "; refusing to open it, since a guest could have written this header into a raw "
             "disk. If you trust this image, give its format explicitly (-f qcow2 / "
             "--format=qcow2)");

  // Features we cannot honour are refused at open, by name.
  // Encryption: LUKS (crypt.cpp) only. The legacy AES-CBC is refused, in QEMU's words.
  if (h.crypt_method == kCryptAes)
    unsupported(path,
                "Use of AES-CBC encrypted qcow2 images is no longer supported (encrypted "
                "images are not supported except encrypt.format=luks)");
  if (h.crypt_method > kCryptLuks)
    corrupt(EINVAL, path, "unknown encryption method " + std::to_string(h.crypt_method));
  if (h.crypt_method == kCryptLuks && !h.has_encryption_ext)
    corrupt(EINVAL, path, "LUKS encrypted image has no encryption header extension");
  if (h.crypt_method != kCryptLuks && h.has_encryption_ext)
    corrupt(EINVAL, path, "encryption header extension in an image that is not encrypted");
  if (h.crypt_method == kCryptLuks && h.size % crypto::kSectorSize)
    corrupt(EINVAL, path, "encrypted image size is not a multiple of 512 bytes");
  if (h.incompatible_features & kIncompatDataFile || h.has_data_file_ext)
    unsupported(path, "external data files are not supported");
  const bool extended = h.incompatible_features & kIncompatExtendedL2;
  // As QEMU: a subcluster is at least 512 bytes, and the feature needs version 3.
  if (extended && h.cluster_bits < kMinExtendedClusterBits)
    unsupported(path, "extended L2 entries with clusters smaller than 16 KiB are not supported");
  if (uint64_t unknown = h.incompatible_features & ~kIncompatKnown) {
    int bit = __builtin_ctzll(unknown);
    std::string name = h.feature_name(0, static_cast<uint8_t>(bit));
    unsupported(path, "unsupported incompatible feature " +
                          (name.empty() ? "bit " + std::to_string(bit) : "'" + name + "'"));
  }
  if ((h.incompatible_features & kIncompatCorrupt) && !opt.read_only)
    corrupt(EROFS, path, "image is marked corrupt: open it read-only, or repair it (check -r all)");

  // Tables must be aligned, inside the file, of sane size, and must not overlap.
  if (file_size < cs) corrupt(EINVAL, path, "file is truncated (shorter than one cluster)");
  const uint64_t file_end = (file_size + cs - 1) & ~(cs - 1);
  auto check_table = [&](uint64_t off, uint64_t bytes, const char* name) {
    if (off % cs) corrupt(EINVAL, path, std::string(name) + " is not cluster aligned");
    if (off == 0 && bytes) corrupt(EINVAL, path, std::string(name) + " overlaps the header");
    if (off > file_end || bytes > file_end - off)
      corrupt(EINVAL, path, std::string(name) + " lies past the end of the file");
  };
  const uint64_t l2_entries = cs / (extended ? kL2ExtendedEntryBytes : kL2EntryBytes);
  const uint64_t needed_l1 = (h.size + cs * l2_entries - 1) / (cs * l2_entries);
  if (uint64_t(h.l1_size) * 8 > kMaxL1Bytes) corrupt(EFBIG, path, "L1 table is too large");
  if (h.l1_size < needed_l1) corrupt(EINVAL, path, "L1 table is too small for the virtual size");
  check_table(h.l1_table_offset, uint64_t(h.l1_size) * 8, "L1 table");
  if (uint64_t(h.refcount_table_clusters) * cs > kMaxRefTableBytes)
    corrupt(EFBIG, path, "refcount table is too large");
  if (h.refcount_table_clusters == 0) corrupt(EINVAL, path, "image has no refcount table");
  check_table(h.refcount_table_offset, uint64_t(h.refcount_table_clusters) * cs, "refcount table");
  if (h.crypt_method == kCryptLuks) {
    if (h.crypto_length < crypto::kLuksHeaderBytes || h.crypto_length > crypto::kMaxLuksAreaBytes)
      corrupt(EINVAL, path,
              "LUKS header area length " + std::to_string(h.crypto_length) + " is invalid");
    check_table(h.crypto_offset, h.crypto_length, "LUKS header");
  }
  if (h.nb_snapshots > kMaxSnapshots) corrupt(EFBIG, path, "too many snapshots");
  if (h.nb_snapshots) check_table(h.snapshots_offset, 40, "snapshot table");

  std::vector<Snapshot> snapshots;
  uint64_t snap_bytes = 0;
  if (h.nb_snapshots) {
    std::vector<uint8_t> t(std::min(file_size - h.snapshots_offset, kMaxSnapshotTableBytes));
    if (int rc = co_await r.read_full(fd, t, h.snapshots_offset); rc < 0)
      fail(-rc, path, "cannot read the snapshot table");
    if (auto err = parse_snapshots(t, h.nb_snapshots, &snapshots, &snap_bytes))
      corrupt(EINVAL, path, *err);
    check_table(h.snapshots_offset, snap_bytes, "snapshot table");
    for (auto& s : snapshots) {
      if (uint64_t(s.l1_size) * 8 > kMaxL1Bytes)
        corrupt(EFBIG, path, "snapshot L1 table too large");
      check_table(s.l1_table_offset, uint64_t(s.l1_size) * 8, "snapshot L1 table");
      if (s.extra.size() < 16) s.disk_size = h.size;  // as QEMU: the image's size
      if (s.disk_size > kMaxVirtualSize) corrupt(EINVAL, path, "snapshot size too large");
    }
  }
  // A snapshot opened instead of the active image (read-only): its L1 table and size.
  if (!opt.snapshot.empty()) {
    if (!opt.read_only)
      fail(EINVAL, path, "snapshot '" + printable(opt.snapshot) + "' can only be opened read-only");
    const Snapshot* sn = nullptr;
    for (auto& s : snapshots)
      if (!sn && s.id == opt.snapshot) sn = &s;
    for (auto& s : snapshots)
      if (!sn && s.name == opt.snapshot) sn = &s;
    if (!sn) fail(ENOENT, path, "snapshot '" + printable(opt.snapshot) + "' not found");
    const uint64_t sn_needed = (sn->disk_size + cs * l2_entries - 1) / (cs * l2_entries);
    if (sn->l1_size < sn_needed)
      corrupt(EINVAL, path, "snapshot L1 table is too small for the snapshot's size");
    h.l1_table_offset = sn->l1_table_offset;
    h.l1_size = sn->l1_size;
    h.size = sn->disk_size;
  }
  std::vector<Range> ranges = {
      {0, cs, "header"},
      {h.l1_table_offset, h.l1_table_offset + std::max<uint64_t>(uint64_t(h.l1_size) * 8, 1),
       "L1 table"},
      {h.refcount_table_offset, h.refcount_table_offset + uint64_t(h.refcount_table_clusters) * cs,
       "refcount table"},
  };
  if (snap_bytes)
    ranges.push_back({h.snapshots_offset, h.snapshots_offset + snap_bytes, "snapshot table"});
  if (h.crypt_method == kCryptLuks)
    ranges.push_back({h.crypto_offset, h.crypto_offset + h.crypto_length, "LUKS header"});
  const size_t fixed_ranges = ranges.size();
  // Snapshot L1 tables against the structures above (not against each other: check.cpp
  // counts shared clusters; comparing all pairs would be quadratic in nb_snapshots).
  for (auto& s : snapshots)
    if (s.l1_size && s.l1_table_offset != h.l1_table_offset)
      ranges.push_back(
          {s.l1_table_offset, s.l1_table_offset + uint64_t(s.l1_size) * 8, "snapshot L1 table"});
  for (size_t i = 0; i < fixed_ranges; ++i)
    for (size_t j = i + 1; j < ranges.size(); ++j) {
      // Compare whole clusters: tables own the clusters they start in.
      uint64_t a0 = ranges[i].start & ~(cs - 1), a1 = (ranges[i].end + cs - 1) & ~(cs - 1);
      uint64_t b0 = ranges[j].start & ~(cs - 1), b1 = (ranges[j].end + cs - 1) & ~(cs - 1);
      if (a0 < b1 && b0 < a1)
        corrupt(EINVAL, path, std::string(ranges[i].name) + " overlaps the " + ranges[j].name);
    }

  std::unique_ptr<Image> img(new Image(r, path, std::move(file), std::move(h), opt));
  img->snapshots_ = std::move(snapshots);
  if (img->h_.crypt_method == kCryptLuks) co_await img->open_encryption();
  co_await img->load_tables();

  if (!img->read_only_) {
    if (img->h_.incompatible_features & kIncompatDirty) {
      // Refcounts may lag behind the tables (lazy refcounts, unclean shutdown): rebuild them.
      CheckResult res;
      co_await run_check(*img, Repair::kAll, &res);
      if (img->poisoned_)
        fail(-img->poisoned_, path,
             std::string("image is dirty and repairing its refcounts failed: ") +
                 strerror(-img->poisoned_));
      // `res` describes the image after the repair: any corruption left is one it could not fix.
      if (res.check_errors || res.corruptions) {
        std::string why = check_stopped_reason(res);
        for (const std::string& m : res.messages)
          if (why.empty() && m.rfind("ERROR cannot rebuild", 0) == 0) why = m.substr(6);
        corrupt(EIO, path,
                "image is dirty and its refcounts could not be repaired" +
                    (why.empty() ? std::string() : ": " + why));
      }
      img->h_.incompatible_features &= ~kIncompatDirty;
      if (int rc = co_await img->write_header_fields(hdr::kIncompatibleFeatures, 8); rc < 0)
        fail(-rc, path, "cannot clear the dirty bit");
    }
    // We do not maintain bitmaps or any auto-clear feature: clear their bits before writing.
    if (img->h_.autoclear_features) {
      img->h_.autoclear_features = 0;
      if (int rc = co_await img->write_header_fields(hdr::kAutoclearFeatures, 8); rc < 0)
        fail(-rc, path, "cannot update the header");
    }
  }

  if (!img->h_.backing_file.empty() && opt.open_backing) {
    const Header& hh = img->h_;
    if (!hh.backing_format)
      unsupported(path,
                  "backing file '" + printable(hh.backing_file) +
                      "' has no recorded format (backing format extension); refusing to probe it");
    if (chain.size() >= opt.max_chain_depth)
      corrupt(ELOOP, path,
              "backing chain is deeper than " + std::to_string(opt.max_chain_depth) + " images");
    std::string bpath = hh.backing_file;
    if (bpath.find(':') != std::string::npos && bpath.find('/') == std::string::npos)
      unsupported(path, "backing file '" + printable(bpath) + "' is not a local file");
    if (bpath[0] != '/') bpath = dirname_of(path) + "/" + bpath;
    OpenOptions bopt = opt;
    bopt.read_only = true;
    bopt.snapshot.clear();  // a snapshot shares the image's backing file, as it is
    if (*hh.backing_format == "qcow2") {
      img->backing_ = co_await Image::open(r, bpath, bopt, chain);
    } else if (*hh.backing_format == "raw") {
      img->backing_ = open_raw(r, bpath, true, bopt.lock, bopt.allowed_dirs, bopt.direct);
    } else {
      unsupported(path, "backing format '" + printable(*hh.backing_format) + "' is not supported");
    }
  }
  co_return img;
}

Task<void> Image::load_tables() {
  std::vector<uint8_t> buf(uint64_t(h_.l1_size) * 8);
  if (int rc = co_await fd_.read_full(buf, h_.l1_table_offset); rc < 0)
    fail(-rc, path_, "cannot read the L1 table");
  l1_.resize(h_.l1_size);
  for (size_t i = 0; i < l1_.size(); ++i) l1_[i] = load_be64(&buf[i * 8]);

  buf.assign(uint64_t(h_.refcount_table_clusters) * cs_, 0);
  if (int rc = co_await fd_.read_full(buf, h_.refcount_table_offset); rc < 0)
    fail(-rc, path_, "cannot read the refcount table");
  reftable_.resize(buf.size() / 8);
  for (size_t i = 0; i < reftable_.size(); ++i) reftable_[i] = load_be64(&buf[i * 8]);
}

Task<int> Image::write_header_fields(size_t offset, size_t length) {
  uint8_t buf[hdr::kV3Length + 8];
  serialize_header(h_, buf);
  int rc = co_await write_meta(std::span<const uint8_t>(buf + offset, length), offset);
  if (rc < 0) co_return rc;
  co_return co_await sync_file();
}

Task<int> Image::close() {
  if (closed_) co_return 0;
  int rc = 0;
  if (!read_only_) {
    // The second flush writes the refcount decrements that the first one released.
    rc = co_await flush();
    if (rc == 0) rc = co_await flush();
    if (rc == 0 && set_dirty_) {  // everything is consistent on disk again
      h_.incompatible_features &= ~kIncompatDirty;
      rc = co_await write_header_fields(hdr::kIncompatibleFeatures, 8);
      set_dirty_ = false;
    }
  }
  if (backing_) {
    int brc = co_await backing_->close();
    if (rc == 0) rc = brc;
  }
  closed_ = true;
  co_return rc;
}

}  // namespace kiln::block::qcow2

// Image creation, laid out as qemu-img lays out a new image: the header cluster (with the
// backing format and feature name extensions, then the backing file name), the refcount table,
// the refcount blocks, and the L1 table, all refcounted.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "crypto/cipher.h"
#include "crypto/luks.h"
#include "kiln/block/qcow2.h"
#include "kiln/common/fd.h"
#include "lock.h"
#include "qcow2/format.h"
#include "raw.h"

namespace kiln::block::qcow2 {

namespace {

uint64_t div_up(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

std::string dirname_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

void create(Reactor& r, const std::string& path, const CreateOptions& o) {
  const uint32_t cs = o.cluster_size;
  if (cs < 512 || cs > (2u << 20) || (cs & (cs - 1)))
    throw Error(EINVAL, "cluster size must be a power of two between 512 and 2M");
  if (o.version != 2 && o.version != 3) throw Error(EINVAL, "compat must be 0.10 or 1.1");
  const uint32_t rb = o.refcount_bits;
  if (rb == 0 || rb > 64 || (rb & (rb - 1)))
    throw Error(EINVAL, "refcount bits must be a power of two between 1 and 64");
  if (o.version == 2 && rb != 16)
    throw Error(EINVAL, "compat=0.10 images only support refcount bits 16");
  if (o.extended_l2 && o.version == 2)
    throw Error(EINVAL, "extended L2 entries require compat=1.1");
  // As QEMU: 32 subclusters of at least 512 bytes.
  if (o.extended_l2 && cs < (1u << kMinExtendedClusterBits))
    throw Error(EINVAL,
                "extended L2 entries are only supported with cluster sizes of at least 16 KiB");
  if (o.version == 2 && o.lazy_refcounts)
    throw Error(EINVAL, "lazy refcounts require compat=1.1 or later");
  Compression comp;
  if (o.compression_type == "zlib")
    comp = Compression::kZlib;
  else if (o.compression_type == "zstd")
    comp = Compression::kZstd;
  else
    throw Error(EINVAL, "unknown compression type '" + o.compression_type + "'");
  if (comp != Compression::kZlib && o.version == 2)
    throw Error(EINVAL, "compression type zstd requires compat=1.1");
  if (!o.backing_file.empty() && o.backing_format.empty())
    throw Error(EINVAL, "a backing file needs its format (-F raw|qcow2)");
  if (o.backing_file.size() > kMaxBackingNameLength)
    throw Error(EINVAL, "backing file name is too long");

  // Encryption: the LUKS header area is made (and its key derived) before the file is touched.
  std::vector<uint8_t> luks;
  if (o.encrypt_format == "aes")
    throw Error(Reason::kUnsupported, ENOTSUP,
                "Use of AES-CBC encrypted qcow2 images is no longer supported; use "
                "encrypt.format=luks");
  if (!o.encrypt_format.empty() && o.encrypt_format != "luks")
    throw Error(EINVAL, "unknown encryption format '" + o.encrypt_format + "' (luks)");
  if (o.encrypt_format == "luks") {
    if (!o.key_secret) throw Error(EINVAL, "Parameter 'encrypt.key-secret' is required for cipher");
    crypto::LuksCreateOptions lo;
    lo.cipher_alg = o.encrypt_cipher_alg;
    lo.hash = o.encrypt_hash_alg;
    lo.iter_time_ms = o.encrypt_iter_time_ms;
    std::vector<uint8_t> master_key;
    const std::string& pass = *o.key_secret;
    luks = crypto::create_luks(lo, {reinterpret_cast<const uint8_t*>(pass.data()), pass.size()},
                               &master_key);
    crypto::wipe(master_key.data(), master_key.size());  // the header holds it, under the key
  }

  uint64_t size = o.size;
  if (!o.backing_file.empty() && size == 0) {
    std::string bpath = o.backing_file;
    if (bpath[0] != '/') bpath = dirname_of(path) + "/" + bpath;
    OpenOptions bo;
    bo.format = o.backing_format;
    bo.read_only = true;
    bo.open_backing = false;
    auto dev = r.run(open_image(r, bpath, bo));
    size = dev->size();
  }
  if (!luks.empty() && size % crypto::kSectorSize)
    throw Error(EINVAL, "encrypted image size must be a multiple of 512 bytes");
  if (size > kMaxVirtualSize)
    throw Error(Reason::kInvalidArgument, EFBIG, "image size is too large");

  Header h;
  h.version = o.version;
  h.cluster_bits = uint32_t(__builtin_ctz(cs));
  h.size = size;
  h.refcount_order = uint32_t(__builtin_ctz(rb));
  h.header_length = o.version == 2 ? hdr::kV2Length : hdr::kV3Length;
  h.compression = comp;
  if (!luks.empty()) h.crypt_method = kCryptLuks;
  if (comp != Compression::kZlib) h.incompatible_features |= kIncompatCompression;
  if (o.lazy_refcounts) h.compatible_features |= kCompatLazyRefcounts;
  if (o.extended_l2) h.incompatible_features |= kIncompatExtendedL2;

  // The header cluster: fixed header, extensions, end marker, backing file name.
  std::vector<uint8_t> head(h.header_length, 0);
  if (!o.backing_file.empty())
    append_extension(head, kExtBackingFormat, o.backing_format.data(), o.backing_format.size());
  size_t crypto_ext = 0;  // where the encryption extension's offset goes, once it is known (QEMU's
                          // order: after the backing format)
  if (!luks.empty()) {
    const uint8_t zero[16] = {};
    crypto_ext = head.size() + 8;
    append_extension(head, kExtEncryption, zero, sizeof zero);
  }
  const std::vector<uint8_t> features = qemu_feature_table();
  if (o.version >= 3 && head.size() + 8 + features.size() + 8 + o.backing_file.size() <= cs)
    append_extension(head, kExtFeatureTable, features.data(), features.size());
  head.resize(head.size() + 8, 0);  // end of extensions
  if (!o.backing_file.empty()) {
    h.backing_file_offset = head.size();
    h.backing_file_size = uint32_t(o.backing_file.size());
    head.insert(head.end(), o.backing_file.begin(), o.backing_file.end());
  }
  if (head.size() > cs) throw Error(EINVAL, "header and backing file name do not fit in a cluster");

  // Metadata clusters: header, refcount table, refcount blocks, L1 table.
  const uint64_t l2_covers =
      uint64_t(cs) * (cs / (o.extended_l2 ? kL2ExtendedEntryBytes : kL2EntryBytes));
  h.l1_size = uint32_t(div_up(size, l2_covers));
  if (uint64_t(h.l1_size) * 8 > kMaxL1Bytes)
    throw Error(Reason::kInvalidArgument, EFBIG, "image size is too large");
  const uint64_t l1_clusters = div_up(uint64_t(h.l1_size) * 8, cs);
  const uint64_t luks_clusters = div_up(luks.size(), cs);  // after the L1 table, as QEMU
  const uint64_t rb_entries = uint64_t(cs) * 8 / rb;
  uint64_t rt_clusters = 1, rb_count = 1;
  for (;;) {
    const uint64_t total = 1 + rt_clusters + rb_count + l1_clusters + luks_clusters;
    const uint64_t need_rb = div_up(total, rb_entries);
    const uint64_t need_rt = div_up(need_rb * 8, cs);
    if (need_rb == rb_count && need_rt == rt_clusters) break;
    rb_count = need_rb;
    rt_clusters = need_rt;
  }
  h.refcount_table_offset = uint64_t(cs);
  h.refcount_table_clusters = uint32_t(rt_clusters);
  const uint64_t rb_start = 1 + rt_clusters;
  const uint64_t l1_start = rb_start + rb_count;
  h.l1_table_offset = h.l1_size ? l1_start * cs : 0;
  if (!h.l1_size) h.l1_table_offset = l1_start * cs;  // qemu-img points it past the blocks too
  const uint64_t luks_start = l1_start + l1_clusters;
  const uint64_t total = luks_start + luks_clusters;
  if (!luks.empty()) {
    store_be64(&head[crypto_ext], luks_start * cs);
    store_be64(&head[crypto_ext + 8], luks.size());
  }
  serialize_header(h, head.data());

  std::vector<uint8_t> reftable(rt_clusters * cs, 0);
  std::vector<uint8_t> blocks(rb_count * cs, 0);
  for (uint64_t i = 0; i < rb_count; ++i) store_be64(&reftable[i * 8], (rb_start + i) * cs);
  for (uint64_t c = 0; c < total; ++c)
    set_refcount(&blocks[(c / rb_entries) * cs], c % rb_entries, h.refcount_order, 1);

  // Truncate only once the locks are ours: an image in use by someone else stays intact.
  common::Fd file(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!file) throw Error(errno, path + ": cannot create: " + strerror(errno));
  const int fd = file.get();
  lock_image_file(fd, path, true);
  const UnlockOnExit unlock{fd};
  if (ftruncate(fd, 0) < 0) throw Error(errno, path + ": cannot truncate: " + strerror(errno));
  auto io = [&]() -> Task<int> {
    std::vector<uint8_t> cluster0(cs, 0);
    std::memcpy(cluster0.data(), head.data(), head.size());
    if (int rc = co_await r.write_full(fd, cluster0, 0); rc < 0) co_return rc;
    if (int rc = co_await r.write_full(fd, reftable, cs); rc < 0) co_return rc;
    if (int rc = co_await r.write_full(fd, blocks, rb_start * cs); rc < 0) co_return rc;
    std::vector<uint8_t> l1(std::max<uint64_t>(uint64_t(h.l1_size) * 8, 0), 0);
    if (!l1.empty())
      if (int rc = co_await r.write_full(fd, l1, l1_start * cs); rc < 0) co_return rc;
    if (!luks.empty()) {
      luks.resize(luks_clusters * cs, 0);
      if (int rc = co_await r.write_full(fd, luks, luks_start * cs); rc < 0) co_return rc;
    }
    co_return co_await r.fsync(fd, false);
  };
  int rc = r.run(io());
  file.reset();  // written and fsync'ed: close's result adds nothing
  if (rc < 0) throw Error(-rc, path + ": cannot write: " + strerror(-rc));
}

}  // namespace kiln::block::qcow2

// Compressed clusters: raw deflate (zlib, 4 KiB window as QEMU writes) or a zstd frame.
// Decompression stops once a whole cluster is produced; trailing bytes are another cluster's.
//
// Writing (kiln-img convert -c): compress_cluster() runs on worker threads; write_compressed()
// runs on the reactor and packs the compressed bytes one after the other into host clusters
// as QEMU does (a host cluster's refcount counts the compressed clusters that touch it).
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "qcow2/image.h"

namespace kiln::block::qcow2 {

namespace {

int inflate_cluster(std::span<const uint8_t> in, std::span<uint8_t> out) {
  z_stream z{};
  if (inflateInit2(&z, -12) != Z_OK) return -ENOMEM;
  z.next_in = const_cast<Bytef*>(in.data());
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  int rc = inflate(&z, Z_FINISH);
  const bool ok = (rc == Z_STREAM_END || rc == Z_BUF_ERROR) && z.avail_out == 0;
  inflateEnd(&z);
  return ok ? 0 : -EIO;
}

int zstd_cluster(std::span<const uint8_t> in, std::span<uint8_t> out) {
  ZSTD_DCtx* ctx = ZSTD_createDCtx();
  if (!ctx) return -ENOMEM;
  ZSTD_inBuffer ib{in.data(), in.size(), 0};
  ZSTD_outBuffer ob{out.data(), out.size(), 0};
  int result = -EIO;
  while (ob.pos < ob.size) {
    size_t rc = ZSTD_decompressStream(ctx, &ob, &ib);
    if (ZSTD_isError(rc)) break;
    if (ob.pos == ob.size) {
      result = 0;
      break;
    }
    if (rc == 0 || ib.pos == ib.size) break;  // frame ended (or input ran out) too early
  }
  ZSTD_freeDCtx(ctx);
  return result;
}

// Per-thread compression state: a deflate stream and a zstd context are costly to set up, and a
// worker compresses thousands of clusters.
struct Deflater {
  z_stream z{};
  bool ok = false;
  Deflater() {
    // As QEMU: default level, raw deflate with a 4 KiB window (what its reader expects).
    ok = deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) == Z_OK;
  }
  ~Deflater() {
    if (ok) deflateEnd(&z);
  }
};

struct ZstdCompressor {
  ZSTD_CCtx* ctx = ZSTD_createCCtx();
  ~ZstdCompressor() { ZSTD_freeCCtx(ctx); }
};

// Compressed size in `out` (at most out.size()), 0 if it does not fit, or -errno.
long deflate_cluster(std::span<const uint8_t> in, std::span<uint8_t> out) {
  thread_local Deflater d;
  if (!d.ok || deflateReset(&d.z) != Z_OK) return -ENOMEM;
  d.z.next_in = const_cast<Bytef*>(in.data());
  d.z.avail_in = static_cast<uInt>(in.size());
  d.z.next_out = out.data();
  d.z.avail_out = static_cast<uInt>(out.size());
  const int rc = deflate(&d.z, Z_FINISH);
  if (rc == Z_STREAM_END) return long(out.size() - d.z.avail_out);
  return rc == Z_OK || rc == Z_BUF_ERROR ? 0 : -EIO;
}

long zstd_compress_cluster(std::span<const uint8_t> in, std::span<uint8_t> out) {
  thread_local ZstdCompressor c;
  if (!c.ctx) return -ENOMEM;
  ZSTD_CCtx_reset(c.ctx, ZSTD_reset_session_only);
  const size_t n = ZSTD_compress2(c.ctx, out.data(), out.size(), in.data(), in.size());
  if (ZSTD_isError(n)) return ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall ? 0 : -EIO;
  return long(n);
}

}  // namespace

int Image::compress_cluster(std::span<const uint8_t> data, std::vector<uint8_t>* out) const {
  out->clear();
  if (data.size() > cs_) return -EINVAL;
  std::vector<uint8_t> padded;
  std::span<const uint8_t> in = data;
  if (data.size() < cs_) {  // the last cluster of a disk that ends inside it
    padded.assign(cs_, 0);
    std::memcpy(padded.data(), data.data(), data.size());
    in = padded;
  }
  // As QEMU: worth it only if it saves at least a byte of the cluster.
  out->resize(cs_ - 1);
  const long n = h_.compression == Compression::kZstd ? zstd_compress_cluster(in, *out)
                                                      : deflate_cluster(in, *out);
  out->resize(n > 0 ? size_t(n) : 0);
  return n < 0 ? int(n) : 0;
}

Task<int> Image::write_compressed(uint64_t gc, std::span<const uint8_t> data,
                                  std::span<const uint8_t> compressed) {
  if (read_only_) co_return -EPERM;
  if (poisoned_) co_return -EIO;
  // QEMU refuses compression with encryption: compressed clusters would bypass the cipher.
  if (h_.crypt_method != kCryptNone) co_return -ENOTSUP;
  if (gc >= (h_.size + cs_ - 1) >> cb_) co_return -EINVAL;
  if (data.empty() || data.size() > std::min<uint64_t>(cs_, h_.size - (gc << cb_)))
    co_return -EINVAL;
  if (compressed.size() >= cs_) co_return -EINVAL;
  L2Entry m;
  if (compressed.empty()) {
    // Did not shrink: written as a normal cluster, under the same rule.
    if (int rc = co_await l2_entry(gc, &m); rc < 0) co_return rc;
    if (m.allocated()) co_return -EEXIST;
    int rc = co_await write_cluster(gc, 0, data);
    if (rc == 0 && committed_gen_ < gen_) rc = co_await commit(gen_);
    co_return rc;
  }

  // The guest cluster's lock, as lock_cluster() takes it (its holder type is io.cpp's own).
  for (;;) {
    auto it = busy_clusters_.find(gc);
    if (it == busy_clusters_.end()) break;
    co_await it->second->wait();
  }
  busy_clusters_.emplace(gc, std::make_unique<WaitList>(r_));
  struct Unlock {
    Image* img;
    uint64_t gc;
    ~Unlock() {
      if (img) img->unlock_cluster(gc);
    }
  } lock{this, gc};
  if (int rc = co_await prepare_l2(uint32_t(gc / l2_entries_)); rc < 0) co_return rc;
  if (int rc = co_await l2_entry(gc, &m); rc < 0) co_return rc;
  if (!m.valid(h_.version)) co_return -EIO;
  if (m.allocated()) co_return -EEXIST;

  const uint64_t n = compressed.size();
  uint64_t off = 0;
  {
    co_await alloc_mutex_.lock();
    LockGuard guard(alloc_mutex_);
    const uint64_t tail = compressed_tail_;
    const uint64_t used = tail & (cs_ - 1);
    bool placed = false;
    // Into the rest of the current cluster (one more compressed cluster touches it), or
    // across its end when the next host cluster is the one allocated now.
    if (tail && used && n <= cs_ - used) {
      int rc = co_await add_refcount(tail >> cb_, 1);
      if (rc < 0 && rc != -ERANGE) co_return rc;  // -ERANGE: narrow refcounts, start afresh
      if (rc == 0) off = tail, placed = true;
    }
    if (!placed) {
      uint64_t host;
      if (int rc = co_await alloc_clusters_locked(1, &host); rc < 0) co_return rc;
      off = host;
      if (tail && used && host == (tail | (cs_ - 1)) + 1) {
        int rc = co_await add_refcount(tail >> cb_, 1);
        if (rc < 0 && rc != -ERANGE) {
          co_await free_now(host, cs_);
          co_return rc;
        }
        if (rc == 0) off = tail;
      }
    }
    if ((off + n) >> (62 - (cb_ - 8))) {  // past what a descriptor's offset field holds
      co_await free_now(off, n);
      compressed_tail_ = 0;
      co_return -EFBIG;
    }
    compressed_tail_ = off + n;
  }
  // With O_DIRECT, a write of part of a sector is a read-modify-write of the whole sector:
  // two compressed clusters sharing a sector must not be written at once.
  std::optional<LockGuard> direct_guard;
  if (opt_.direct) {
    co_await alloc_mutex_.lock();
    direct_guard.emplace(alloc_mutex_);
  }
  if (int rc = co_await fd_.write_full(compressed, off); rc < 0) {
    co_await free_now(off, n);
    co_return rc;
  }
  direct_guard.reset();
  unsynced_ = true;
  // Compressed descriptors never carry the copied flag, and extended entries have no bitmap.
  if (int rc = co_await set_l2_entry(gc, L2Entry::encode_compressed(off, n, cb_), 0, true); rc < 0)
    co_return rc;
  lock.img->unlock_cluster(gc);
  lock.img = nullptr;
  if (committed_gen_ < gen_) co_return co_await commit(gen_);
  co_return 0;
}

Task<int> Image::read_compressed(L2Entry entry, std::span<uint8_t> cluster) {
  const CompressedRef ref = entry.compressed_range();
  if (ref.length > 2 * cs_ + 512) co_return -EIO;
  std::vector<uint8_t> in(ref.length);
  if (int rc = co_await fd_.read_full(in, ref.offset); rc < 0) co_return rc;
  co_return h_.compression == Compression::kZstd ? zstd_cluster(in, cluster)
                                                 : inflate_cluster(in, cluster);
}

// --- the public entry points (kiln/block/qcow2.h) ---

uint32_t cluster_size(const BlockDevice& dev) {
  const auto* img = dynamic_cast<const Image*>(&dev);
  return img ? uint32_t(img->header().cluster_size()) : 0;
}

uint32_t allocation_unit(const BlockDevice& dev) {
  const auto* img = dynamic_cast<const Image*>(&dev);
  if (!img) return 0;
  const Header& h = img->header();
  const uint32_t bits =
      (h.incompatible_features & kIncompatExtendedL2) ? h.cluster_bits - 5 : h.cluster_bits;
  return 1u << bits;
}

int compress_cluster(const BlockDevice& dev, std::span<const uint8_t> data,
                     std::vector<uint8_t>* out) {
  const auto* img = dynamic_cast<const Image*>(&dev);
  if (!img) return -ENOTSUP;
  return img->compress_cluster(data, out);
}

Task<int> write_compressed(BlockDevice& dev, uint64_t cluster, std::span<const uint8_t> data,
                           std::span<const uint8_t> compressed) {
  auto* img = dynamic_cast<Image*>(&dev);
  if (!img) co_return -ENOTSUP;
  co_return co_await img->write_compressed(cluster, data, compressed);
}

Task<int> write_compressed(BlockDevice& dev, uint64_t cluster, std::span<const uint8_t> data) {
  std::vector<uint8_t> out;
  if (int rc = compress_cluster(dev, data, &out); rc < 0) co_return rc;
  co_return co_await write_compressed(dev, cluster, data, out);
}

}  // namespace kiln::block::qcow2

// Compressed clusters: raw deflate (zlib, 4 KiB window as QEMU writes) or a zstd frame.
// Decompression stops once a whole cluster is produced; trailing bytes are another cluster's.
#include <zlib.h>
#include <zstd.h>

#include <cerrno>

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

}  // namespace

Task<int> Image::read_compressed(L2Entry entry, std::span<uint8_t> cluster) {
  const CompressedRef ref = entry.compressed_range();
  if (ref.length > 2 * cs_ + 512) co_return -EIO;
  std::vector<uint8_t> in(ref.length);
  if (int rc = co_await fd_.read_full(in, ref.offset); rc < 0) co_return rc;
  co_return h_.compression == Compression::kZstd ? zstd_cluster(in, cluster)
                                                 : inflate_cluster(in, cluster);
}

}  // namespace kiln::block::qcow2

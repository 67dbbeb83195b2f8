// kiln-img convert -O raw: copies the guest view of an image (through its backing chain) to a
// raw file, leaving holes where the source reads as zeros.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "img_commands.h"
#include "kiln/block/device.h"
#include "tool_util.h"

namespace kiln::block::cli {
namespace {

using kiln::block::BlockDevice;
using kiln::block::Extent;
using kiln::block::Task;

constexpr uint64_t kCopyChunk = 2u << 20;
constexpr uint64_t kStatusChunk = uint64_t{1} << 30;
// Like qemu-img convert's default -S 4k: runs of zeros this long become holes.
constexpr size_t kSparseBlock = 4096;

bool all_zero(const uint8_t* p, size_t n) {
  return n == 0 || (p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0);
}

// Writes `buf` at `offset`, skipping aligned blocks of zeros.
Task<int> write_sparse(kiln::block::Reactor& reactor, int fd, const std::vector<uint8_t>& buf,
                       size_t len, uint64_t offset) {
  size_t pos = 0;
  while (pos < len) {
    size_t block_end =
        std::min<size_t>(len, (offset + pos) / kSparseBlock * kSparseBlock + kSparseBlock - offset);
    if (all_zero(buf.data() + pos, block_end - pos)) {
      pos = block_end;
      continue;
    }
    // Extend the run over following non-zero blocks to write them in one go.
    size_t end = block_end;
    while (end < len) {
      size_t next = std::min(len, end + kSparseBlock);
      if (all_zero(buf.data() + end, next - end)) break;
      end = next;
    }
    int rc = co_await reactor.write_full(fd, std::span<const uint8_t>(buf.data() + pos, end - pos),
                                         offset + pos);
    if (rc < 0) co_return rc;
    pos = end;
  }
  co_return 0;
}

Task<void> copy(kiln::block::Reactor& reactor, BlockDevice& dev, int fd, const std::string& src) {
  std::vector<uint8_t> buf(kCopyChunk);
  const uint64_t size = dev.size();
  for (uint64_t off = 0; off < size;) {
    std::vector<Extent> extents;
    uint64_t len = std::min(kStatusChunk, size - off);
    int rc = co_await dev.block_status(off, len, &extents);
    if (rc < 0)
      throw ToolError("error while reading block status of '" + src + "' at offset " +
                      std::to_string(off) + ": " + std::strerror(-rc));
    uint64_t covered = off;
    for (const Extent& e : extents) {
      if (e.offset != covered || e.length == 0 || e.length > off + len - e.offset)
        throw ToolError("block status of '" + src + "' returned an inconsistent extent at " +
                        std::to_string(e.offset));
      covered += e.length;
      if (e.zero) continue;
      for (uint64_t pos = e.offset; pos < e.offset + e.length;) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(kCopyChunk, e.offset + e.length - pos));
        rc = co_await dev.read(pos, std::span<uint8_t>(buf.data(), n));
        if (rc < 0)
          throw ToolError("error while reading '" + src + "' at offset " + std::to_string(pos) +
                          ": " + std::strerror(-rc));
        rc = co_await write_sparse(reactor, fd, buf, n, pos);
        if (rc < 0) throw ToolError(std::string("error while writing: ") + std::strerror(-rc));
        pos += n;
      }
    }
    off = covered;
  }
}

}  // namespace

int img_convert(const Args& args) {
  const std::string format = args.get_or("-f", "");
  const std::string out_format = args.get_or("-O", "raw");
  // Only -U reads a source that someone else may be writing; -q and -p are about output.
  const bool force_share = args.flag("-U");
  if (args.positional().size() != 2)
    throw ToolError("Expecting a source and a destination file name");
  if (out_format != "raw")
    throw ToolError("convert supports only the output format 'raw' (got '" + out_format + "')");
  std::string src = args.positional()[0], dst = args.positional()[1];

  auto& reactor = kiln::block::Reactor::current();
  kiln::block::OpenOptions opts;
  opts.format = valid_format(format);
  opts.read_only = true;
  opts.lock = !force_share;
  auto dev = reactor.run(kiln::block::open_image(reactor, src, opts));

  kiln::common::Fd fd(::open(dst.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (fd.get() < 0) throw ToolError("Could not create '" + dst + "': " + std::strerror(errno));
  try {
    kiln::block::lock_image_file(fd.get(), dst, true);
  } catch (const kiln::block::Error& e) {
    throw ToolError(e.what());
  }
  if (::ftruncate(fd.get(), 0) != 0 || ::ftruncate(fd.get(), static_cast<off_t>(dev->size())) != 0)
    throw ToolError("Could not resize '" + dst + "': " + std::strerror(errno));
  reactor.run(copy(reactor, *dev, fd.get(), src));
  int rc = reactor.run(reactor.fsync(fd.get(), false));
  if (rc < 0) throw ToolError("error while writing '" + dst + "': " + std::strerror(-rc));
  if (fd.close() != 0)
    throw ToolError("error while writing '" + dst + "': " + std::strerror(errno));
  reactor.run(dev->close());
  return 0;
}

}  // namespace kiln::block::cli

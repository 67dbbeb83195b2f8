// kiln-img compare: whether two images show the guest the same bytes, reported and exited as
// qemu-img compare does (0 identical, 1 different, 2 open error, 3 block status error, 4 read
// error). Block status drives the walk: ranges that read as zeros on both sides are never
// read, and a side that reads as zeros is not read either (the other is checked for zeros).
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "img_commands.h"
#include "img_ops_util.h"
#include "img_progress.h"
#include "kiln/block/device.h"
#include "tool_util.h"

namespace kiln::block::cli {
namespace {

using kiln::block::BlockDevice;
using kiln::block::Extent;
using kiln::block::Task;

constexpr int kIdentical = 0, kDifferent = 1, kStatusError = 3, kReadError = 4;
// qemu-img compares and reports differences in 512-byte sectors of each chunk.
constexpr uint64_t kSector = 512;

struct Side {
  BlockDevice* dev;
  std::string name;
  ExtentCursor cur;
};

// The first sector (from the start of the chunk) where a and b differ, or `len`.
uint64_t first_difference(const uint8_t* a, const uint8_t* b, uint64_t len) {
  for (uint64_t pos = 0; pos < len; pos += kSector) {
    const uint64_t n = std::min(kSector, len - pos);
    if (std::memcmp(a + pos, b + pos, n) != 0) return pos;
  }
  return len;
}

// The first sector holding a non-zero byte, or `len`.
uint64_t first_nonzero(const uint8_t* a, uint64_t len) {
  for (uint64_t pos = 0; pos < len; pos += kSector) {
    const uint64_t n = std::min(kSector, len - pos);
    if (!all_zero(a + pos, n)) return pos;
  }
  return len;
}

struct Result {
  int code = kIdentical;
  std::string message;        // stdout (unless -q) for 0/1, stderr for errors
  bool size_warning = false;  // "Warning: Image size mismatch!" comes first on stdout
};

// Whether two extents say the same thing about their ranges (compare -s): the allocation, the
// kind of content, and whether it has a host offset — the block status qemu-img compares.
bool same_status(const Extent& a, const Extent& b) {
  return a.present == b.present && a.zero == b.zero && a.data == b.data &&
         (a.host_offset == Extent::kNoOffset) == (b.host_offset == Extent::kNoOffset);
}

Task<Result> read_into(Side& s, uint64_t off, std::span<uint8_t> buf) {
  int rc = co_await s.dev->read(off, buf);
  if (rc < 0)
    co_return Result{kReadError, "Error while reading offset " + std::to_string(off) + " of " +
                                     s.name + ": " + std::strerror(-rc)};
  co_return Result{};
}

Result mismatch(uint64_t off) {
  return {kDifferent, "Content mismatch at offset " + std::to_string(off) + "!"};
}

Task<Result> extra_part(Side& over, uint64_t off, uint64_t end, std::vector<uint8_t>& buf) {
  while (off < end) {
    Extent e;
    if (co_await over.cur.at(off, end, &e) < 0)
      co_return Result{kStatusError, "Sector allocation test failed for " + over.name};
    uint64_t chunk = e.length;
    if (e.present && !e.zero) {
      chunk = std::min<uint64_t>(chunk, buf.size());
      Result r = co_await read_into(over, off, std::span<uint8_t>(buf.data(), chunk));
      if (r.code) co_return r;
      if (uint64_t at = first_nonzero(buf.data(), chunk); at < chunk) co_return mismatch(off + at);
    }
    off += chunk;
  }
  co_return Result{kIdentical, "Images are identical."};
}

Task<Result> compare(Side& a, Side& b, bool strict, Progress& progress) {
  const uint64_t size_a = a.dev->size(), size_b = b.dev->size();
  if (strict && size_a != size_b) co_return Result{kDifferent, "Strict mode: Image size mismatch!"};
  const uint64_t common = std::min(size_a, size_b);
  std::vector<uint8_t> buf_a(kCopyBuffer), buf_b(kCopyBuffer);
  uint64_t off = 0;
  while (off < common) {
    progress.update(off, common);
    Extent ea, eb;
    int rc = co_await a.cur.at(off, common, &ea);
    if (rc < 0) co_return Result{kStatusError, "Sector allocation test failed for " + a.name};
    rc = co_await b.cur.at(off, common, &eb);
    if (rc < 0) co_return Result{kStatusError, "Sector allocation test failed for " + b.name};
    uint64_t chunk = std::min(ea.length, eb.length);
    // qemu-img's block status also says whether the range reaches the end of the image.
    if (strict && (!same_status(ea, eb) ||
                   (ea.offset + ea.length == size_a) != (eb.offset + eb.length == size_b)))
      co_return Result{kDifferent,
                       "Strict mode: Offset " + std::to_string(off) + " block status mismatch!"};
    if (ea.zero && eb.zero) {
      off += chunk;
      continue;
    }
    chunk = std::min<uint64_t>(chunk, kCopyBuffer);
    const auto n = static_cast<size_t>(chunk);
    if (ea.zero || eb.zero) {
      Side& s = ea.zero ? b : a;
      Result r = co_await read_into(s, off, std::span<uint8_t>(buf_a.data(), n));
      if (r.code) co_return r;
      if (uint64_t at = first_nonzero(buf_a.data(), chunk); at < chunk)
        co_return mismatch(off + at);
    } else {
      Result r = co_await read_into(a, off, std::span<uint8_t>(buf_a.data(), n));
      if (r.code) co_return r;
      r = co_await read_into(b, off, std::span<uint8_t>(buf_b.data(), n));
      if (r.code) co_return r;
      if (uint64_t at = first_difference(buf_a.data(), buf_b.data(), chunk); at < chunk)
        co_return mismatch(off + at);
    }
    off += chunk;
  }
  if (size_a == size_b) co_return Result{kIdentical, "Images are identical."};
  // As qemu-img: a warning, then the longer image's extra part must read as zeros where it is
  // allocated (in any image of its chain).
  Result r = co_await extra_part(size_a > size_b ? a : b, off, std::max(size_a, size_b), buf_a);
  r.size_warning = true;
  co_return r;
}

}  // namespace

int img_compare(const Args& args) {
  const std::string fmt1 = args.get_or("-f", ""), fmt2 = args.get_or("-F", "");
  const bool strict = args.flag("-s");
  const bool quiet = args.flag("-q");
  const bool force_share = args.flag("-U");
  if (args.positional().size() != 2) throw ToolError("Expecting two image file names");
  const std::string file1 = args.positional()[0], file2 = args.positional()[1];

  auto& reactor = kiln::block::Reactor::current();
  auto open = [&](const std::string& path, const std::string& fmt) {
    kiln::block::OpenOptions opts;
    opts.read_only = true;
    opts.lock = !force_share;
    return open_or_exit(reactor, path, fmt, opts, kOpenFailed);
  };
  auto dev1 = open(file1, fmt1);
  auto dev2 = open(file2, fmt2);
  Side a{dev1.get(), file1, ExtentCursor(*dev1)};
  Side b{dev2.get(), file2, ExtentCursor(*dev2)};
  // As qemu-img: no progress with -q; 100% only for identical images, before the result.
  Progress progress(args.flag("-p") && !quiet, 2.0);
  Result r = reactor.run(compare(a, b, strict, progress));
  if (r.code == kIdentical) progress.update(1, 1);
  reactor.run(dev2->close());
  reactor.run(dev1->close());
  if (r.size_warning && !quiet) std::printf("Warning: Image size mismatch!\n");
  if (r.code == kIdentical || r.code == kDifferent) {
    if (!quiet) std::printf("%s\n", r.message.c_str());
    progress.end();
    return r.code;
  }
  progress.end();
  throw ToolError(r.message, r.code);
}

}  // namespace kiln::block::cli

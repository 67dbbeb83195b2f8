// kiln-img rebase: gives a qcow2 image another backing file. With -u only the header changes
// (the caller vouches that the new backing file has the same content). In safe mode every
// range the image does not allocate itself and where the old chain and the new backing file
// differ is first copied from the old chain into the image, so the guest sees the same bytes
// afterwards, as qemu-img rebase does.
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "img_commands.h"
#include "img_ops_util.h"
#include "img_progress.h"
#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"
#include "tool_util.h"

namespace kiln::block::cli {
namespace {

// Reads [off, off + buf.size()) of a backing view: zeros past its end, or everywhere if there
// is no backing file.
Task<int> read_view(BlockDevice* dev, uint64_t off, std::span<uint8_t> buf) {
  std::fill(buf.begin(), buf.end(), uint8_t{0});
  if (!dev || off >= dev->size()) co_return 0;
  const uint64_t n = std::min<uint64_t>(buf.size(), dev->size() - off);
  co_return co_await dev->read(off, buf.first(n));
}

struct Rebase {
  BlockDevice& image;
  BlockDevice* old_view;  // null: no backing file before
  BlockDevice* new_view;  // null: no backing file after
  uint64_t unit;          // the image's allocation unit (cluster or subcluster)
  std::string name;
  Progress* progress;
};

// Copies the old view into the image over [start, end), which the image leaves unallocated,
// in whole allocation units wherever the two views differ.
Task<void> fix_range(Rebase& r, uint64_t start, uint64_t end, std::vector<uint8_t>& a,
                     std::vector<uint8_t>& b) {
  for (uint64_t off = start; off < end;) {
    const auto n = static_cast<size_t>(std::min<uint64_t>(a.size(), end - off));
    int rc = co_await read_view(r.old_view, off, std::span<uint8_t>(a.data(), n));
    if (rc < 0)
      throw ToolError("error while reading the old backing file at offset " + std::to_string(off) +
                      ": " + std::strerror(-rc));
    rc = co_await read_view(r.new_view, off, std::span<uint8_t>(b.data(), n));
    if (rc < 0)
      throw ToolError("error while reading the new backing file at offset " + std::to_string(off) +
                      ": " + std::strerror(-rc));
    for (size_t pos = 0; pos < n;) {
      size_t u = static_cast<size_t>(std::min<uint64_t>(r.unit, n - pos));
      if (std::memcmp(a.data() + pos, b.data() + pos, u) == 0) {
        pos += u;
        continue;
      }
      size_t len = u;  // the run of differing units, written at once
      while (pos + len < n) {
        const auto v = static_cast<size_t>(std::min<uint64_t>(r.unit, n - pos - len));
        if (std::memcmp(a.data() + pos + len, b.data() + pos + len, v) == 0) break;
        len += v;
      }
      rc = co_await r.image.write(off + pos, std::span<const uint8_t>(a.data() + pos, len), 0);
      if (rc < 0)
        throw ToolError("error while writing '" + r.name + "' at offset " +
                        std::to_string(off + pos) + ": " + std::strerror(-rc));
      pos += len;
    }
    off += n;
  }
}

Task<void> rebase_safe(Rebase& r) {
  std::vector<uint8_t> a(kCopyBuffer), b(kCopyBuffer);
  ExtentCursor cur(r.image);
  const uint64_t size = r.image.size();
  for (uint64_t off = 0; off < size;) {
    r.progress->update(off, size);
    Extent e;
    int rc = co_await cur.at(off, size, &e);
    if (rc < 0)
      throw ToolError("error while reading block status of '" + r.name +
                      "': " + std::strerror(-rc));
    // Ranges the image allocates itself (data or zeros) do not depend on the backing file.
    if (!e.present) co_await fix_range(r, off, off + e.length, a, b);
    off += e.length;
  }
}

}  // namespace

int img_rebase(const Args& args) {
  const std::string format = args.get_or("-f", "");
  const bool unsafe = args.flag("-u");
  const auto backing_arg = args.get("-b");
  const std::string backing_format = args.get_or("-F", "");
  // As qemu-img: nothing but -p's progress (not with -q); -u shows 0% and 100%.
  Progress progress(args.flag("-p") && !args.flag("-q"), 2.0);
  if (args.positional().size() != 1) throw ToolError("Expecting one image file name");
  if (!unsafe && !backing_arg)
    throw ToolError("Must specify backing file (-b) or use unsafe mode (-u)");
  const std::string file = args.positional()[0];
  const std::string backing = backing_arg.value_or("");
  if (!backing.empty() && backing_format.empty())
    throw ToolError("Could not change the backing file to '" + backing +
                    "': backing format must be specified");
  if (!backing_format.empty()) valid_format(backing_format);
  auto& reactor = kiln::block::Reactor::current();
  const std::string fmt = unsafe && format.empty() ? kiln::block::probe_format(file)
                                                   : top_format(reactor, file, format);
  if (fmt != "qcow2")
    throw ToolError("Could not change the backing file to '" + backing +
                    "': Operation not supported (the image is " + fmt + ")");

  progress.update(0, 1);
  if (!unsafe) {
    kiln::block::OpenOptions ro;
    ro.read_only = true;
    std::unique_ptr<BlockDevice> old_view, new_view;
    if (auto old = backing_of(reactor, {file, fmt, ""}))
      old_view = open_or_exit(reactor, old->path, old->format, ro);
    if (!backing.empty())
      new_view = open_or_exit(reactor, path_combine(file, backing), backing_format, ro);
    kiln::block::OpenOptions rw;
    rw.open_backing = false;  // read through old_view; its ranges are what gets copied
    auto image = open_or_exit(reactor, file, fmt, rw);
    const auto info = kiln::block::qcow2::read_info(reactor, file, false);
    Rebase r{*image,         old_view.get(),
             new_view.get(), info.extended_l2 ? info.cluster_size / 32 : info.cluster_size,
             file,           &progress};
    reactor.run(rebase_safe(r));
    int rc = reactor.run(image->close());
    if (rc < 0) throw ToolError("Could not flush '" + file + "': " + std::strerror(-rc));
    if (new_view) reactor.run(new_view->close());
    if (old_view) reactor.run(old_view->close());
  }
  kiln::block::qcow2::HeaderChange change;
  change.backing_file = backing;
  change.backing_format = backing.empty() ? "" : backing_format;
  try {
    kiln::block::qcow2::update_header(reactor, file, change);
  } catch (const kiln::block::Error& e) {
    throw ToolError("Could not change the backing file to '" + backing + "': " + e.what());
  }
  progress.finish();
  return 0;
}

}  // namespace kiln::block::cli

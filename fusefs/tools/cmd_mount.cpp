// kiln-fs mount: opens the filesystem and hands it to the FUSE layer (fusefs/fuse), then
// closes it — which writes everything back — once the mount is gone.
#include <cstdio>
#include <string>

#include "commands.h"
#include "kiln/fs/filesystem.h"
#include "kiln/fs/fuse.h"

namespace kiln::fs::cli {

namespace {
constexpr size_t kWriteBuffer = size_t{64} << 20;
// A flush point when the buffer holds this much: one request adds at most 1 MiB of data and
// some metadata, so the buffer never reaches its limit and spills on its own.
constexpr size_t kWriteBackAt = kWriteBuffer - (size_t{16} << 20);
}  // namespace

int cmd_mount(const Args& args) {
  OpenOptions open;
  // Less than injection's unbounded buffer: a mount may write gigabytes.
  open.write_buffer_bytes = kWriteBuffer;
  if (auto p = args.get("--partition")) open.partition = parse_partition(*p);
  open.read_only = args.flag("--ro");
  open.bitmaps = OpenOptions::Bitmaps::kNone;  // fuse_mount reads them
  const bool allow_other = args.flag("--allow-other");
  const bool foreground = args.flag("--foreground");
  const auto busy_wait = args.number("--busy-wait", 0, 1000);
  if (args.positional().size() != 2) throw UsageError("mount takes IMAGE and DIR");
  ImageArg arg = image_arg(args, args.positional()[0]);
  const std::string image = arg.image;
  open.format = std::move(arg.format);
  open.key_secret = std::move(arg.key_secret);
  const std::string dir = args.positional()[1];
  auto fs = Filesystem::open(image, open);
  FuseMountOptions fo;
  fo.mountpoint = dir;
  fo.read_only = open.read_only;
  fo.allow_other = allow_other;
  fo.foreground = foreground;
  if (busy_wait) fo.busy_wait_us = static_cast<int>(*busy_wait);
  fo.fsname = image;
  // Closed when the mount ends (inside umount for a fuseblk mount), so that the image is
  // complete and unlocked when umount returns.
  bool closed = false;
  fo.close_image = [&]() -> int {
    closed = true;
    try {
      fs->close();
    } catch (const Error& e) {
      std::fprintf(stderr, "kiln-fs: %s\n", e.what());
      return 1;
    }
    return 0;
  };
  if (!open.read_only) {
    fo.buffer_nearly_full = [&] { return fs->pending_write_bytes() >= kWriteBackAt; };
    fo.write_back = [&] { return fs->write_back(); };
    fo.write_data = [&](uint64_t offset, const void* data, size_t len) {
      return fs->write_through(offset, data, len);
    };
  }
  int rc = fuse_mount(fs->handle(), fo);
  if (!closed) fs->close();
  return rc == 0 ? 0 : 1;
}

}  // namespace kiln::fs::cli

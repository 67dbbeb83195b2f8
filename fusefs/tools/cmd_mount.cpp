// kiln-fs mount: opens the filesystem and hands it to the FUSE layer (fusefs/fuse), then
// closes it — which writes everything back — once the mount is gone.
#include <getopt.h>

#include <cstdio>
#include <string>

#include "commands.h"
#include "kiln/fs/filesystem.h"

#if defined(KILN_FS_HAVE_FUSE) && __has_include("kiln/fs/fuse.h")
#include "kiln/fs/fuse.h"
#define KILN_FS_MOUNT 1
#endif

namespace kiln::fs::tool {

int cmd_mount(int argc, char** argv) {
  enum { kRo = 256, kAllowOther, kFormat };
  static const option kLong[] = {{"partition", required_argument, nullptr, 'p'},
                                 {"ro", no_argument, nullptr, kRo},
                                 {"read-only", no_argument, nullptr, kRo},
                                 {"allow-other", no_argument, nullptr, kAllowOther},
                                 {"foreground", no_argument, nullptr, 'f'},
                                 {"format", required_argument, nullptr, kFormat},
                                 {nullptr, 0, nullptr, 0}};
  OpenOptions open;
  // Less than injection's unbounded buffer: a mount may write gigabytes.
  open.write_buffer_bytes = size_t{64} << 20;
  bool allow_other = false, foreground = false;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, ":p:f", kLong, nullptr)) != -1) {
    switch (c) {
      case 'p':
        open.partition = parse_partition(optarg);
        break;
      case kRo:
        open.read_only = true;
        break;
      case kAllowOther:
        allow_other = true;
        break;
      case 'f':
        foreground = true;
        break;
      case kFormat:
        open.format = optarg;
        break;
      default:
        bad_option(c, argv[optind - 1]);
    }
  }
  if (optind != argc - 2) throw UsageError("mount takes IMAGE and DIR");
  const std::string image = argv[optind];
  const std::string dir = argv[optind + 1];
#ifdef KILN_FS_MOUNT
  auto fs = Filesystem::open(image, open);
  FuseMountOptions fo;
  fo.mountpoint = dir;
  fo.read_only = open.read_only;
  fo.allow_other = allow_other;
  fo.foreground = foreground;
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
  int rc = fuse_mount(fs->handle(), fo);
  if (!closed) fs->close();
  return rc == 0 ? 0 : 1;
#else
  (void)allow_other;
  (void)foreground;
  throw Error("kiln-fs was built without the FUSE mount (fusefs/fuse is missing)");
#endif
}

}  // namespace kiln::fs::tool

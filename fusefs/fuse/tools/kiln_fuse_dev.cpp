// kiln-fuse-dev: mounts a raw ext2/3/4 image file through kiln::fs::fuse_mount, with
// libext2fs's own unix_io_manager. A development and test driver; users run `kiln-fs mount`.
#include <ext2fs/ext2fs.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "kiln/fs/fuse.h"

namespace {

int usage() {
  std::fprintf(stderr,
               "usage: kiln-fuse-dev IMAGE DIR [--ro] [--allow-other] [-f|--foreground] "
               "[-d|--debug]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  kiln::fs::FuseMountOptions opts;
  std::string image;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--ro") {
      opts.read_only = true;
    } else if (a == "--allow-other") {
      opts.allow_other = true;
    } else if (a == "-f" || a == "--foreground") {
      opts.foreground = true;
    } else if (a == "-d" || a == "--debug") {
      opts.debug = true;
    } else if (!a.empty() && a[0] == '-') {
      return usage();
    } else if (image.empty()) {
      image = a;
    } else if (opts.mountpoint.empty()) {
      opts.mountpoint = a;
    } else {
      return usage();
    }
  }
  if (image.empty() || opts.mountpoint.empty()) return usage();
  initialize_ext2_error_table();
  opts.fsname = image;
  ext2_filsys fs = nullptr;
  int flags = EXT2_FLAG_64BITS;
  if (!opts.read_only) flags |= EXT2_FLAG_RW;
  errcode_t rc = ext2fs_open(image.c_str(), flags, 0, 0, unix_io_manager, &fs);
  if (rc) {
    std::fprintf(stderr, "kiln-fuse-dev: %s: %s\n", image.c_str(), error_message(rc));
    return 1;
  }
  // Closed inside the unmount (fuseblk) or once the session ends, as kiln-fs does.
  opts.close_image = [&]() -> int {
    if (errcode_t crc = ext2fs_close_free(&fs)) {
      std::fprintf(stderr, "kiln-fuse-dev: closing %s: %s\n", image.c_str(), error_message(crc));
      return 1;
    }
    return 0;
  };
  int status = kiln::fs::fuse_mount(fs, opts);
  if (fs) {
    rc = ext2fs_close_free(&fs);
    if (rc) {
      std::fprintf(stderr, "kiln-fuse-dev: closing %s: %s\n", image.c_str(), error_message(rc));
      status = 1;
    }
  }
  return status;
}

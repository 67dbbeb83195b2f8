// Live snapshot and commit support (kiln/block/live.h): switching an open image between
// read-only and writable, and opening an overlay on top of an already open device.
#include "kiln/block/live.h"

#include <sys/stat.h>

#include <climits>
#include <cstdlib>
#include <cstring>

#include "allowed_dirs.h"
#include "qcow2/image.h"
#include "reopen.h"

namespace kiln::block {

namespace qcow2 {

Task<void> Image::set_read_only(bool ro) {
  if (ro == read_only_) co_return;
  if (closed_) throw Error(EBADF, path_ + ": image is closed");
  if (ro) {
    // As close(): the second flush writes the refcount decrements the first one released;
    // then the dirty bit goes, so that readers see a clean image.
    int rc = co_await flush();
    if (rc == 0) rc = co_await flush();
    if (rc == 0 && set_dirty_) {
      h_.incompatible_features &= ~kIncompatDirty;
      rc = co_await write_header_fields(hdr::kIncompatibleFeatures, 8);
      if (rc == 0) set_dirty_ = false;
    }
    if (rc < 0) throw Error(-rc, path_ + ": cannot flush: " + strerror(-rc));
    reopen_image_file(fd_.get(), path_, false, fd_.direct());
    read_only_ = caps_.read_only = opt_.read_only = true;
    co_return;
  }
  if (h_.incompatible_features & kIncompatCorrupt)
    throw Error(Reason::kCorrupt, EROFS, path_ + ": image is marked corrupt");
  // Opened read-only, a dirty image's refcounts were not repaired: writing on them is unsafe.
  if (h_.incompatible_features & kIncompatDirty)
    throw Error(Reason::kCorrupt, EUCLEAN,
                path_ + ": image is dirty (not closed cleanly); repair it first (check -r all)");
  if (poisoned_) throw Error(EIO, path_ + ": an earlier write-back failed");
  reopen_image_file(fd_.get(), path_, true, fd_.direct());
  read_only_ = caps_.read_only = opt_.read_only = false;
  // As open() for a writable image: auto-clear features we do not maintain are cleared.
  if (h_.autoclear_features) {
    h_.autoclear_features = 0;
    if (int rc = co_await write_header_fields(hdr::kAutoclearFeatures, 8); rc < 0)
      throw Error(-rc, path_ + ": cannot update the header: " + strerror(-rc));
  }
}

}  // namespace qcow2

namespace {

std::string real(const std::string& path) {
  char buf[PATH_MAX];
  if (!::realpath(path.c_str(), buf)) throw Error(errno, path + ": " + strerror(errno));
  return buf;
}

std::string dirname_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

void create_overlay(const std::string& path, const std::string& backing,
                    const std::string& backing_format, uint64_t size, uint32_t cluster_size,
                    bool extended_l2, const std::vector<std::string>& allowed_dirs) {
  if (path.empty() || path.size() >= PATH_MAX)
    throw Error(Reason::kInvalidArgument, EINVAL, "invalid overlay path");
  check_allowed_path(dirname_of(path), allowed_dirs);
  struct stat st;
  if (lstat(path.c_str(), &st) == 0)
    throw Error(Reason::kExists, EEXIST, path + ": exists (not replacing it)");
  if (errno != ENOENT) throw Error(errno, path + ": " + strerror(errno));
  qcow2::CreateOptions o;
  o.size = size;
  o.cluster_size = cluster_size;
  o.extended_l2 = extended_l2;
  o.backing_file = real(backing);
  o.backing_format = backing_format;
  Reactor r(64);
  qcow2::create(r, path, o);
}

BlockDevice* backing_of(BlockDevice& top) {
  auto* img = dynamic_cast<qcow2::Image*>(&top);
  return img ? img->backing() : nullptr;
}

std::unique_ptr<BlockDevice> take_backing(BlockDevice& top) {
  auto* img = dynamic_cast<qcow2::Image*>(&top);
  if (!img || !img->backing())
    throw Error(Reason::kInvalidArgument, EINVAL, top.filename() + ": has no backing image");
  return img->take_backing();
}

Task<std::unique_ptr<BlockDevice>> open_overlay(Reactor& r, const std::string& path, OpenOptions o,
                                                const BlockDevice& backing) {
  o.format = "qcow2";
  o.open_backing = false;
  auto img = co_await qcow2::Image::open(r, path, o, {});
  const qcow2::Header& h = img->header();
  if (h.backing_file.empty() || !h.backing_format)
    throw Error(Reason::kInvalidArgument, EINVAL, path + ": names no backing image");
  std::string named = h.backing_file;
  if (named[0] != '/') named = dirname_of(path) + "/" + named;
  if (real(named) != real(backing.filename()) || *h.backing_format != backing.format())
    throw Error(
        Reason::kInvalidArgument, EINVAL,
        path + ": its backing is not " + backing.filename() + " (" + backing.format() + ")");
  if (img->size() != backing.size())
    throw Error(Reason::kInvalidArgument, EINVAL,
                path + ": its size differs from its backing image's");
  co_return img;
}

void attach_backing(BlockDevice& overlay, std::unique_ptr<BlockDevice> backing) {
  auto* img = dynamic_cast<qcow2::Image*>(&overlay);
  if (!img) throw Error(Reason::kInvalidArgument, EINVAL, overlay.filename() + ": not qcow2");
  img->set_backing(std::move(backing));
}

}  // namespace kiln::block

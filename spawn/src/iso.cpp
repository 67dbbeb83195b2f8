// write_iso: an ISO9660 image with Rock Ridge and Joliet through libisofs, from memory.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstdint>
// libisofs.h needs the fixed-width integer types first; no libburn here.
#define LIBISOFS_WITHOUT_LIBBURN 1
#include <libisofs/libisofs.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "kiln/spawn/configdrive.h"
#include "kiln/spawn/error.h"
#include "util.h"

namespace kiln::spawn {

namespace {

void check(int rc, const std::string& what) {
  if (rc < 0) throw system_error("config drive: " + what + ": " + iso_error_to_msg(rc));
}

void init_libisofs() {
  static std::once_flag once;
  std::call_once(once, [] {
    check(iso_init(), "initialising libisofs");
    // Errors come back as return codes; nothing is printed.
    char never[] = "NEVER", fatal[] = "FATAL", prefix[] = "libisofs: ";
    iso_set_msgs_severities(never, fatal, prefix);
  });
}

struct ImageRef {
  IsoImage* p = nullptr;
  ~ImageRef() {
    if (p) iso_image_unref(p);
  }
};
struct OptsRef {
  IsoWriteOpts* p = nullptr;
  ~OptsRef() {
    if (p) iso_write_opts_free(p);
  }
};
struct SourceRef {
  burn_source* p = nullptr;
  bool finished = false;
  ~SourceRef() {
    if (!p) return;
    if (!finished && !p->read && p->cancel) p->cancel(p);  // version >= 1
    p->free_data(p);
    std::free(p);
  }
};

// The directory node for `dir` ("a/b"), created on the way.
IsoDir* directory(IsoImage* image, std::map<std::string, IsoDir*>& dirs, const std::string& dir) {
  if (dir.empty()) return iso_image_get_root(image);
  if (auto it = dirs.find(dir); it != dirs.end()) return it->second;
  size_t slash = dir.rfind('/');
  IsoDir* parent = directory(image, dirs, slash == std::string::npos ? "" : dir.substr(0, slash));
  std::string name = slash == std::string::npos ? dir : dir.substr(slash + 1);
  IsoDir* d = nullptr;
  check(iso_image_add_new_dir(image, parent, name.c_str(), &d), "adding directory " + dir);
  iso_node_set_permissions(reinterpret_cast<IsoNode*>(d), 0555);
  dirs[dir] = d;
  return d;
}

}  // namespace

void write_iso(const std::map<std::string, std::string>& files, const std::string& path,
               const std::string& label) {
  init_libisofs();
  ImageRef image;
  check(iso_image_new(label.c_str(), &image.p), "creating the image");
  iso_image_set_publisher_id(image.p, "Kiln");
  iso_image_set_application_id(image.p, "kiln-spawn config drive");
  std::map<std::string, IsoDir*> dirs;
  for (const auto& [name, content] : files) {
    if (name.empty() || name.front() == '/' || name.find("..") != std::string::npos)
      throw invalid("config drive: bad path '" + name + "'");
    size_t slash = name.rfind('/');
    IsoDir* dir = directory(image.p, dirs, slash == std::string::npos ? "" : name.substr(0, slash));
    std::string base = slash == std::string::npos ? name : name.substr(slash + 1);
    // The stream owns a malloc'ed copy and frees it.
    auto* buf = static_cast<unsigned char*>(std::malloc(content.empty() ? 1 : content.size()));
    if (!buf) throw system_error("config drive: out of memory");
    std::memcpy(buf, content.data(), content.size());
    IsoStream* stream = nullptr;
    int rc = iso_memory_stream_new(buf, content.size(), &stream);
    if (rc < 0) std::free(buf);
    check(rc, "adding " + name);
    IsoFile* file = nullptr;
    rc = iso_image_add_new_file(image.p, dir, base.c_str(), stream, &file);
    if (rc < 0) iso_stream_unref(stream);  // on success the file took the reference
    check(rc, "adding " + name);
    iso_node_set_permissions(reinterpret_cast<IsoNode*>(file), 0444);
  }

  OptsRef opts;
  check(iso_write_opts_new(&opts.p, 2), "write options");  // 2: Rock Ridge and Joliet
  check(iso_write_opts_set_rockridge(opts.p, 1), "Rock Ridge");
  check(iso_write_opts_set_joliet(opts.p, 1), "Joliet");
  check(iso_write_opts_set_allow_lowercase(opts.p, 1), "lower-case names");
  check(iso_write_opts_set_allow_deep_paths(opts.p, 1), "deep paths");
  check(iso_write_opts_set_always_gmt(opts.p, 1), "GMT timestamps");
  // The label must read "config-2" exactly (cloud-init and udev look for LABEL=config-2), as
  // genisoimage -V writes it, although ISO 9660 allows only upper case there.
  check(iso_write_opts_set_relaxed_vol_atts(opts.p, 1), "volume id as given");

  std::string tmp = path + ".tmp";
  TempFile guard(tmp);
  // User data, keys: 0600 whatever the umask (the caller gives it to QEMU's user).
  Fd out(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (out.get() < 0) throw errno_error("cannot create " + tmp, errno);
  if (::fchmod(out.get(), 0600) != 0) throw errno_error("cannot chmod " + tmp, errno);
  SourceRef src;
  check(iso_image_create_burn_source(image.p, opts.p, &src.p), "starting the image writer");
  std::vector<unsigned char> block(2048);
  uint64_t off = 0;
  for (;;) {
    int n = src.p->read ? src.p->read(src.p, block.data(), 2048)
                        : src.p->read_xt(src.p, block.data(), 2048);
    if (n < 0) throw system_error("config drive: the image writer failed");
    if (n == 0) {
      src.finished = true;
      break;
    }
    write_all(out.get(), block.data(), static_cast<size_t>(n), off, tmp);
    off += static_cast<uint64_t>(n);
  }
  if (::fsync(out.get()) != 0) throw errno_error("cannot sync " + tmp, errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) throw errno_error("cannot rename " + tmp, errno);
  guard.release();
}

}  // namespace kiln::spawn

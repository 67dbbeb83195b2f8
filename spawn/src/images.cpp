#include "kiln/spawn/images.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <vector>

#include "download.h"
#include "hashes.h"
#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"
#include "kiln/common/random.h"
#include "kiln/spawn/error.h"
#include "perms.h"
#include "util.h"

namespace kiln::spawn {

void check_name(const std::string& what, const std::string& name) {
  if (name.empty() || name.size() > kMaxNameLength)
    throw invalid(what + " name must be 1 to " + std::to_string(kMaxNameLength) +
                  " characters long");
  auto ok = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  };
  if (!std::all_of(name.begin(), name.end(), ok) || name[0] == '.' || name[0] == '_' ||
      name[0] == '-')
    throw invalid(what + " name '" + name +
                  "' may contain only letters, digits, '.', '_' and '-', and must start with a "
                  "letter or digit");
}

namespace {

constexpr size_t kCopyChunk = 1 << 20;

struct XxhState {
  XXH3_state_t* st = XXH3_createState();
  XxhState() {
    if (!st) throw system_error("out of memory");
    XXH3_128bits_reset(st);
  }
  ~XxhState() { XXH3_freeState(st); }
  void update(const void* p, size_t n) { XXH3_128bits_update(st, p, n); }
  std::string hex() {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
    static const char* kHex = "0123456789abcdef";
    std::string out;
    for (unsigned char b : c.digest) {
      out += kHex[b >> 4];
      out += kHex[b & 15];
    }
    return out;
  }
};

// A progress line on stderr, at most ten times a second.
class Progress {
 public:
  Progress(bool enabled, std::string label, uint64_t total)
      : enabled_(enabled), label_(std::move(label)), total_(total) {}
  void update(uint64_t done) {
    if (!enabled_) return;
    auto now = std::chrono::steady_clock::now();
    if (done < total_ && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    int pct = total_ ? static_cast<int>(done * 100 / total_) : 100;
    std::fprintf(stderr, "\rkiln-spawn: %s: %3d%% (%llu/%llu MiB)", label_.c_str(), pct,
                 static_cast<unsigned long long>(done >> 20),
                 static_cast<unsigned long long>(total_ >> 20));
    shown_ = true;
  }
  ~Progress() {
    if (shown_) std::fprintf(stderr, "\n");
  }

 private:
  bool enabled_;
  std::string label_;
  uint64_t total_;
  bool shown_ = false;
  std::chrono::steady_clock::time_point last_{};
};

// Copies src to a new file dst (sparse: all-zero chunks are skipped), fsyncs it, and feeds
// the content to `h` (XxhState or ImageHashes).
template <class Hasher>
void copy_file(const std::string& src, const std::string& dst, bool progress,
               const std::string& label, Hasher& h, const std::function<bool()>& interrupted = {}) {
  Fd in(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.get() < 0) throw errno_error("cannot open " + src, errno);
  struct stat st {};
  if (fstat(in.get(), &st) != 0) throw errno_error("cannot stat " + src, errno);
  if (!S_ISREG(st.st_mode)) throw invalid(src + " is not a regular file");
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size > kMaxImageBytes) throw invalid(src + " is larger than 4 TiB");
  Fd out(::open(dst.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, kPrivateFile));
  if (out.get() < 0) throw errno_error("cannot create " + dst, errno);
  Progress bar(progress, label, size);
  std::vector<uint8_t> buf(kCopyChunk);
  uint64_t off = 0;
  while (off < size) {
    if (interrupted && interrupted()) throw system_error("interrupted while copying " + src);
    ssize_t n = ::pread(in.get(), buf.data(), std::min<uint64_t>(buf.size(), size - off),
                        static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw errno_error("cannot read " + src, errno);
    }
    if (n == 0) throw system_error(src + " shrank while it was being copied");
    h.update(buf.data(), static_cast<size_t>(n));
    bool zero = std::all_of(buf.begin(), buf.begin() + n, [](uint8_t b) { return b == 0; });
    if (!zero) write_all(out.get(), buf.data(), static_cast<size_t>(n), off, dst);
    off += static_cast<uint64_t>(n);
    bar.update(off);
  }
  if (::ftruncate(out.get(), static_cast<off_t>(size)) != 0)
    throw errno_error("cannot size " + dst, errno);
  if (::fsync(out.get()) != 0) throw errno_error("cannot sync " + dst, errno);
}

// Glance's core attributes: a property may not take their names (Glance answers 403).
const char* const kReservedProperties[] = {"id",
                                           "name",
                                           "status",
                                           "visibility",
                                           "protected",
                                           "os_hidden",
                                           "checksum",
                                           "os_hash_algo",
                                           "os_hash_value",
                                           "owner",
                                           "size",
                                           "virtual_size",
                                           "created_at",
                                           "updated_at",
                                           "disk_format",
                                           "container_format",
                                           "min_disk",
                                           "min_ram",
                                           "tags",
                                           "direct_url",
                                           "locations",
                                           "self",
                                           "file",
                                           "schema",
                                           "kiln_digest"};

}  // namespace

std::pair<std::string, std::string> parse_property(const std::string& text) {
  auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0)
    throw invalid("--property must be KEY=VALUE, not '" + text + "'");
  std::string key = text.substr(0, eq), value = text.substr(eq + 1);
  if (key.size() > kMaxPropertyLength || value.size() > kMaxPropertyLength)
    throw invalid("property '" + key.substr(0, 40) + "': keys and values are at most " +
                  std::to_string(kMaxPropertyLength) + " characters");
  auto printable = [](unsigned char c) { return c >= 0x20 && c != 0x7f; };
  if (!std::all_of(key.begin(), key.end(), printable) ||
      !std::all_of(value.begin(), value.end(), printable))
    throw invalid("property '" + key + "': control characters are not allowed");
  for (const char* r : kReservedProperties)
    if (key == r) throw invalid("property '" + key + "' is reserved (an image attribute)");
  return {key, value};
}

std::string file_digest(const std::string& path) {
  Fd in(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.get() < 0) throw errno_error("cannot open " + path, errno);
  XxhState h;
  std::vector<uint8_t> buf(kCopyChunk);
  for (;;) {
    ssize_t n = ::read(in.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw errno_error("cannot read " + path, errno);
    }
    if (n == 0) break;
    h.update(buf.data(), static_cast<size_t>(n));
  }
  return h.hex();
}

ImageStore::ImageStore(Store& store)
    : store_(store), images_dir_(store.dir() + "/images"), base_dir_(store.dir() + "/_base") {
  // Tenants' images: only kiln-spawn and kiln-nbd (root) open them; QEMU reads the base
  // through kiln-nbd, never from here.
  make_dir(images_dir_, kPrivateDir);
  make_dir(base_dir_, kPrivateDir);
}

std::string ImageStore::image_path(const Image& image) const {
  return images_dir_ + "/" + image.id;
}

std::string ImageStore::base_path(const std::string& digest) const {
  return base_dir_ + "/" + digest;
}

Image ImageStore::get(const std::string& ref) {
  auto img = store_.find_image(ref);
  if (!img) throw not_found("image '" + ref + "' not found");
  return *img;
}

void ImageStore::check_new(const std::string& name, const ImageOptions& opt) {
  check_name("image", name);
  if (!opt.disk_format.empty() && opt.disk_format != "qcow2" && opt.disk_format != "raw")
    throw invalid("--disk-format must be qcow2 or raw, not '" + opt.disk_format + "'");
  parse_checksum(opt.checksum);
  if (opt.properties.size() > kMaxProperties)
    throw invalid("at most " + std::to_string(kMaxProperties) + " properties");
  if (store_.find_image(name)) throw exists("image '" + name + "' already exists");
}

Image ImageStore::create(const std::string& name, const std::string& file,
                         const ImageOptions& opt) {
  check_new(name, opt);
  Image img;
  img.id = common::new_uuid();
  img.name = name;
  // Copy first, then inspect the copy: what is registered is exactly what was checked.
  std::string tmp = temp_path(img.id);
  TempFile guard(tmp);
  ImageHashes h;
  copy_file(file, tmp, opt.progress, "copying " + name + " into the image store", h,
            opt.interrupted);
  h.finish();
  verify_checksum(parse_checksum(opt.checksum), h);
  img.digest = h.xxh3();
  img.checksum = h.md5();
  img.os_hash_value = h.sha512();
  return register_file(std::move(img), tmp, guard, file, opt);
}

Image ImageStore::create_from_url(const std::string& name, const std::string& url,
                                  const ImageOptions& opt) {
  check_new(name, opt);
  if (!is_supported_url(url))
    throw invalid("unsupported URL '" + url + "': only file://, http:// and https:// are accepted");
  Image img;
  img.id = common::new_uuid();
  img.name = name;
  std::string tmp = images_dir_ + "/.tmp-" + img.id;
  TempFile guard(tmp);
  Fd out(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, kPrivateFile));
  if (out.get() < 0) throw errno_error("cannot create " + tmp, errno);
  ImageHashes h;
  uint64_t off = 0;
  DownloadOptions d{opt.max_bytes, opt.progress, opt.interrupted};
  download(url, d, [&](const void* p, size_t n) {
    h.update(p, n);
    write_all(out.get(), p, n, off, tmp);
    off += n;
  });
  if (::fsync(out.get()) != 0) throw errno_error("cannot sync " + tmp, errno);
  out = Fd();
  h.finish();
  try {
    verify_checksum(parse_checksum(opt.checksum), h);
  } catch (const Error& e) {
    throw Error(e.reason(), url + ": " + e.what());
  }
  img.digest = h.xxh3();
  img.checksum = h.md5();
  img.os_hash_value = h.sha512();
  return register_file(std::move(img), tmp, guard, url, opt);
}

std::string ImageStore::temp_path(const std::string& id) const {
  return images_dir_ + "/.tmp-" + id;
}

Image ImageStore::adopt(const std::string& name, const std::string& id, const ImageOptions& opt) {
  const std::string tmp = temp_path(id);
  TempFile guard(tmp);
  check_new(name, opt);
  Image img;
  img.id = id;
  img.name = name;
  Fd in(::open(tmp.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.get() < 0) throw errno_error("cannot open " + tmp, errno);
  ImageHashes h;
  std::vector<uint8_t> buf(kCopyChunk);
  for (uint64_t off = 0;;) {
    if (opt.interrupted && opt.interrupted())
      throw system_error("interrupted while hashing " + tmp);
    ssize_t n = ::pread(in.get(), buf.data(), buf.size(), static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw errno_error("cannot read " + tmp, errno);
    }
    if (n == 0) break;
    h.update(buf.data(), static_cast<size_t>(n));
    off += static_cast<uint64_t>(n);
  }
  h.finish();
  img.digest = h.xxh3();
  img.checksum = h.md5();
  img.os_hash_value = h.sha512();
  return register_file(std::move(img), tmp, guard, tmp, opt);
}

Image ImageStore::register_file(Image img, const std::string& tmp, TempFile& guard,
                                const std::string& source, const ImageOptions& opt) {
  std::string probed;
  try {
    probed = block::probe_format(tmp);
  } catch (const block::Error& e) {
    throw invalid("cannot read " + source + ": " + e.what());
  }
  if (!opt.disk_format.empty() && opt.disk_format != probed)
    throw invalid(source + " is a " + probed + " image by its content, not " + opt.disk_format);
  img.disk_format = probed;
  struct stat st {};
  if (::stat(tmp.c_str(), &st) != 0) throw errno_error("cannot stat " + tmp, errno);
  img.size = static_cast<uint64_t>(st.st_size);
  if (probed == "qcow2") {
    auto& reactor = block::Reactor::current();
    try {
      // The backing file first, for a message that names it; then a probed, read-only open,
      // which runs every check the block layer has for hostile images (external data files,
      // encryption, unknown features, tables outside the file).
      block::qcow2::Info info = block::qcow2::read_info(reactor, tmp);
      if (!info.backing_file.empty())
        throw invalid(source + " has a backing file (" + info.backing_file +
                      "); register a self-contained image");
      block::OpenOptions oo;
      oo.read_only = true;
      oo.open_backing = false;
      auto dev = reactor.run(block::open_image(reactor, tmp, oo));
      img.virtual_size = dev->size();
      reactor.run(dev->close());
    } catch (const block::Error& e) {
      throw invalid(source + ": not a usable qcow2 image: " + e.what());
    }
  } else {
    img.virtual_size = img.size;
  }
  img.os_hash_algo = "sha512";
  img.min_disk = opt.min_disk;
  img.min_ram = opt.min_ram;
  img.properties = opt.properties;
  img.created_at = utc_now();
  store_.write([&] {
    if (store_.find_image(img.name)) throw exists("image '" + img.name + "' already exists");
    if (::rename(tmp.c_str(), image_path(img).c_str()) != 0)
      throw errno_error("cannot rename " + tmp, errno);
    guard.release();
    store_.put(img);
  });
  sync_dir(images_dir_);
  return img;
}

void ImageStore::remove(const std::string& ref) {
  Image img;
  store_.write([&] {
    img = get(ref);
    auto users = store_.instances_of_image(img.id);
    if (!users.empty()) {
      std::string names;
      for (const auto& i : users) names += (names.empty() ? "" : ", ") + i.name;
      throw busy("image '" + img.name + "' is in use by instance(s): " + names);
    }
    store_.remove_image(img.id);
  });
  std::filesystem::remove(image_path(img));
  prune_base(img.digest);
}

std::string ImageStore::ensure_base(const Image& image, bool progress, bool* filled) {
  *filled = false;
  std::string path = base_path(image.digest);
  FileLock lock(path + ".lock");
  if (::access(path.c_str(), F_OK) == 0) return path;
  // Only the lock holder writes temporary copies: any that exist were left by a process that
  // died while filling the cache.
  std::string prefix = image.digest + ".tmp.";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(base_dir_, ec))
    if (e.path().filename().string().rfind(prefix, 0) == 0) std::filesystem::remove(e.path(), ec);
  // An image registered on another host of a shared store has its file there only.
  if (::access(image_path(image).c_str(), F_OK) != 0)
    throw not_found("image " + image.name + " (" + image.id +
                    ") is not in this host's image store: kiln-spawn image-cache " + image.name +
                    " FILE here copies it in");
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  TempFile guard(tmp);
  XxhState h;
  copy_file(image_path(image), tmp, progress, "caching image " + image.name + " as a base", h);
  std::string digest = h.hex();
  if (digest != image.digest)
    throw system_error("image " + image.name + " is corrupt in the image store (digest " + digest +
                       ", registered " + image.digest + ")");
  // Read-only: a base is never written (kiln-nbd opens it read-only under the overlays).
  if (::chmod(tmp.c_str(), 0400) != 0) throw errno_error("cannot chmod " + tmp, errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) throw errno_error("cannot rename " + tmp, errno);
  guard.release();
  sync_dir(base_dir_);
  *filled = true;
  return path;
}

bool ImageStore::cache(const std::string& ref, const std::string& file, bool progress) {
  Image image = get(ref);
  const std::string path = image_path(image);
  FileLock lock(path + ".lock");
  if (::access(path.c_str(), F_OK) == 0) return false;
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  TempFile guard(tmp);
  XxhState h;
  copy_file(file, tmp, progress, "copying " + file + " into the image store", h);
  if (h.hex() != image.digest)
    throw invalid(file + " is not image " + image.name + " (digest " + h.hex() + ", registered " +
                  image.digest + ")");
  if (::rename(tmp.c_str(), path.c_str()) != 0) throw errno_error("cannot rename " + tmp, errno);
  guard.release();
  sync_dir(images_dir_);
  return true;
}

void ImageStore::prune_base(const std::string& digest) {
  std::string path = base_path(digest);
  FileLock lock(path + ".lock");
  bool unused = false;
  store_.write([&] {
    bool image_uses = false;
    for (const auto& i : store_.images()) image_uses |= i.digest == digest;
    unused = !image_uses && store_.instances_of_digest(digest).empty();
  });
  if (!unused) return;
  // The lock file stays: a process waiting on it must find the same file that others lock.
  ::unlink(path.c_str());
}

}  // namespace kiln::spawn

// A remote export (nbd://, nbd+unix://) as a Source, through libnbd. libnbd handles are
// thread-safe; requests are split to stay under the server's maximum payload.
//
// libnbd is loaded with dlopen() on first use: it pulls in GnuTLS, libxml2 and ICU, whose
// loading and relocation cost a few milliseconds at every start of kiln-fs — as much as a
// whole local injection — and local images never need them.
#include <libnbd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "kiln/common/shared_library.h"
#include "kiln/fs/filesystem.h"
#include "kiln/fs/source.h"

namespace kiln::fs {
namespace {

constexpr size_t kMaxRequest = 4u << 20;  // under every server's limit (32 MiB for most)

// The libnbd functions we call, resolved from the shared library.
// clang-format off
#define KILN_NBD_FUNCTIONS(X) \
  X(nbd_create) X(nbd_close) X(nbd_get_error) X(nbd_get_errno) X(nbd_set_uri_allow_transports) \
  X(nbd_connect_uri) X(nbd_get_size) X(nbd_is_read_only) X(nbd_can_flush) \
  X(nbd_pread) X(nbd_pwrite) X(nbd_flush) X(nbd_shutdown)
// clang-format on

struct Nbd {
#define KILN_NBD_DECLARE(name) decltype(&::name) name = nullptr;
  KILN_NBD_FUNCTIONS(KILN_NBD_DECLARE)
#undef KILN_NBD_DECLARE
};

// Resolved once (a function-local static: thread-safe); the library stays loaded.
const Nbd& nbd() {
  static const std::pair<Nbd, std::string> loaded = [] {
    std::pair<Nbd, std::string> out;
    common::SharedLibrary lib("libnbd.so.0", "libnbd (package libnbd0)");
#define KILN_NBD_RESOLVE(name) lib.resolve(out.first.name, #name);
    KILN_NBD_FUNCTIONS(KILN_NBD_RESOLVE)
#undef KILN_NBD_RESOLVE
    out.second = lib.error();
    return out;
  }();
  // libnbd is not installed
  if (!loaded.second.empty()) throw Error(Reason::kUnsupported, loaded.second);
  return loaded.first;
}

std::string nbd_error_text() {
  const char* e = nbd().nbd_get_error();
  return e ? e : "unknown libnbd error";
}

int nbd_errno_or(int fallback) {
  int e = nbd().nbd_get_errno();
  return e > 0 ? e : fallback;
}

class NbdSource final : public Source {
 public:
  NbdSource(std::string uri, bool read_only) : uri_(std::move(uri)), read_only_(read_only) {}
  ~NbdSource() override {
    if (h_) nbd().nbd_close(h_);
  }

  void open() {
    h_ = nbd().nbd_create();
    if (!h_) throw Error(Reason::kIo, uri_ + ": " + nbd_error_text());
    // Only the URI schemes we document; no TLS, no vsock, no subprocesses.
    if (nbd().nbd_set_uri_allow_transports(
            h_, LIBNBD_ALLOW_TRANSPORT_TCP | LIBNBD_ALLOW_TRANSPORT_UNIX) == -1 ||
        nbd().nbd_connect_uri(h_, uri_.c_str()) == -1)
      throw Error(Reason::kIo, uri_ + ": cannot connect: " + nbd_error_text());
    int64_t size = nbd().nbd_get_size(h_);
    if (size < 0)
      throw Error(Reason::kIo, uri_ + ": cannot get the export size: " + nbd_error_text());
    size_ = static_cast<uint64_t>(size);
    if (!read_only_ && nbd().nbd_is_read_only(h_) == 1)
      throw Error(Reason::kPermission,
                  uri_ + ": the export is read-only (use --ro to open it read-only)");
    can_flush_ = nbd().nbd_can_flush(h_) == 1;
  }

  uint64_t size() const override { return size_; }
  bool read_only() const override { return read_only_; }
  const std::string& name() const override { return uri_; }

  int pread(void* buf, size_t len, uint64_t offset) override {
    if (!h_) return -EBADF;
    if (offset > size_ || len > size_ - offset) return -EINVAL;
    auto* p = static_cast<uint8_t*>(buf);
    while (len > 0) {
      size_t n = std::min(len, kMaxRequest);
      if (nbd().nbd_pread(h_, p, n, offset, 0) == -1) return -nbd_errno_or(EIO);
      p += n;
      offset += n;
      len -= n;
    }
    return 0;
  }

  int pwrite(const void* buf, size_t len, uint64_t offset) override {
    if (!h_) return -EBADF;
    if (read_only_) return -EROFS;
    if (offset > size_ || len > size_ - offset) return -EINVAL;
    auto* p = static_cast<const uint8_t*>(buf);
    while (len > 0) {
      size_t n = std::min(len, kMaxRequest);
      if (nbd().nbd_pwrite(h_, p, n, offset, 0) == -1) return -nbd_errno_or(EIO);
      p += n;
      offset += n;
      len -= n;
    }
    return 0;
  }

  int flush() override {
    if (!h_) return -EBADF;
    if (read_only_ || !can_flush_) return 0;
    return nbd().nbd_flush(h_, 0) == -1 ? -nbd_errno_or(EIO) : 0;
  }

  void close(bool discard) override {
    if (!h_) return;
    std::string error;
    if (!discard && flush() < 0) error = uri_ + ": flush failed: " + nbd_error_text();
    // NBD_CMD_DISC: the server finishes what it has before it drops the connection.
    if (nbd().nbd_shutdown(h_, 0) == -1 && error.empty() && !discard)
      error = uri_ + ": disconnect failed: " + nbd_error_text();
    nbd().nbd_close(h_);
    h_ = nullptr;
    if (!error.empty()) throw Error(Reason::kIo, error);
  }

 private:
  std::string uri_;
  bool read_only_;
  nbd_handle* h_ = nullptr;
  uint64_t size_ = 0;
  bool can_flush_ = false;
};

}  // namespace

std::unique_ptr<Source> open_nbd_source(const std::string& uri, const SourceOptions& options) {
  auto src = std::make_unique<NbdSource>(uri, options.read_only);
  src->open();
  return src;
}

bool is_nbd_uri(const std::string& image) {
  for (const char* scheme : {"nbd://", "nbd+unix://", "nbds://", "nbds+unix://"})
    if (image.rfind(scheme, 0) == 0) return true;
  return false;
}

std::unique_ptr<Source> open_source(const std::string& image, const SourceOptions& options) {
  if (is_nbd_uri(image)) {
    if (!options.format.empty() && options.format != "raw")
      throw Error(Reason::kInvalidArgument, image + ": an NBD export is a raw disk; --format " +
                                                options.format + " does not apply");
    // kiln-nbd decrypts what it serves: a key is for local images only.
    if (options.key_secret)
      throw Error(Reason::kInvalidArgument,
                  image + ": an NBD export is served decrypted; encrypt.key-secret does not apply");
    return open_nbd_source(image, options);
  }
  return open_local_source(image, options);
}

}  // namespace kiln::fs

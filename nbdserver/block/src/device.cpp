#include "kiln/block/device.h"

#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>

#include "allowed_dirs.h"
#include "kiln/common/fd.h"
#include "qcow2/format.h"
#include "qcow2/image.h"
#include "raw.h"

namespace kiln::block {

std::string probe_format(const std::string& path) {
  common::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw Error(errno, path + ": cannot open: " + strerror(errno));
  uint8_t magic[4] = {};
  const ssize_t n = pread(fd.get(), magic, sizeof magic, 0);
  if (n < 0) throw Error(errno, path + ": cannot read: " + strerror(errno));
  return n == 4 && qcow2::load_be32(magic) == qcow2::kMagic ? "qcow2" : "raw";
}

Task<std::unique_ptr<BlockDevice>> open_image(Reactor& reactor, const std::string& path,
                                              OpenOptions options) {
  check_allowed_path(path, options.allowed_dirs);
  const bool probed = options.format.empty();
  std::string format = probed ? probe_format(path) : options.format;
  if (format == "raw" && !options.snapshot.empty())
    throw Error(Reason::kUnsupported, ENOTSUP,
                path + ": a raw image has no internal snapshots (snapshot '" +
                    qcow2::printable(options.snapshot) + "')");
  if (format == "raw")
    co_return open_raw(reactor, path, options.read_only, options.lock, options.allowed_dirs,
                       options.direct);
  if (format == "qcow2") co_return co_await qcow2::Image::open(reactor, path, options, {}, probed);
  throw Error(EINVAL, "unknown image format '" + format + "' (raw or qcow2)");
}

Task<void> BlockDevice::set_read_only(bool) {
  throw Error(
      Reason::kUnsupported, ENOTSUP,
      filename() + ": a " + format() + " image cannot switch between read-only and writable");
  co_return;
}

uint64_t parse_size(const std::string& text) {
  // DIGITS[.DIGITS][SUFFIX]: decimal only (no sign, space, exponent or hex, which strtod would
  // take), one suffix letter (b, k, M, G, T, P or E, either case; powers of 1024), and the
  // result a whole number of bytes.
  static const std::string kSyntax =
      "expected a decimal number with an optional k, M, G, T, P or E suffix";
  const size_t n = text.size();
  size_t i = 0;
  unsigned __int128 whole = 0;
  for (; i < n && text[i] >= '0' && text[i] <= '9'; ++i) {
    whole = whole * 10 + unsigned(text[i] - '0');
    if (whole > UINT64_MAX) throw Error(ERANGE, "too large");
  }
  if (i == 0) throw Error(EINVAL, kSyntax);
  uint64_t frac = 0, scale = 1;
  if (i < n && text[i] == '.') {
    const size_t start = ++i;
    for (; i < n && text[i] >= '0' && text[i] <= '9'; ++i) {
      if (scale >= 1000000000000000000ull) throw Error(EINVAL, "too many decimals");
      frac = frac * 10 + unsigned(text[i] - '0');
      scale *= 10;
    }
    if (i == start) throw Error(EINVAL, kSyntax);
  }
  unsigned shift = 0;
  if (i < n) {
    static const std::string kSuffixes = "bkmgtpe";
    const size_t k = kSuffixes.find(char(std::tolower(static_cast<unsigned char>(text[i]))));
    if (k == std::string::npos) throw Error(EINVAL, kSyntax);
    shift = unsigned(10 * k);
    ++i;
  }
  if (i != n) throw Error(EINVAL, kSyntax);
  const unsigned __int128 part = (unsigned __int128)frac << shift;
  if (part % scale) throw Error(EINVAL, "not a whole number of bytes");
  const unsigned __int128 bytes = (whole << shift) + part / scale;
  if (bytes > UINT64_MAX) throw Error(ERANGE, "too large");
  return uint64_t(bytes);
}

}  // namespace kiln::block

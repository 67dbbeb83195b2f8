#include "kiln/block/device.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "qcow2/format.h"
#include "qcow2/image.h"
#include "raw.h"

namespace kiln::block {

std::string probe_format(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(errno, path + ": cannot open: " + strerror(errno));
  uint8_t magic[4] = {};
  ssize_t n = pread(fd, magic, sizeof magic, 0);
  int e = errno;
  ::close(fd);
  if (n < 0) throw Error(e, path + ": cannot read: " + strerror(e));
  return n == 4 && qcow2::load_be32(magic) == qcow2::kMagic ? "qcow2" : "raw";
}

Task<std::unique_ptr<BlockDevice>> open_image(Reactor& reactor, const std::string& path,
                                              OpenOptions options) {
  const bool probed = options.format.empty();
  std::string format = probed ? probe_format(path) : options.format;
  if (format == "raw") co_return open_raw(reactor, path, options.read_only, options.lock);
  if (format == "qcow2") co_return co_await qcow2::Image::open(reactor, path, options, {}, probed);
  throw Error(EINVAL, "unknown image format '" + format + "' (raw or qcow2)");
}

uint64_t parse_size(const std::string& text) {
  if (text.empty()) throw Error(EINVAL, "empty size");
  const char* s = text.c_str();
  char* end = nullptr;
  errno = 0;
  double value = strtod(s, &end);
  if (end == s || errno || value < 0 || std::isnan(value))
    throw Error(EINVAL, "invalid size '" + text + "'");
  uint64_t mult = 1;
  std::string suffix(end);
  if (suffix.size() == 2 && (suffix[1] == 'B' || suffix[1] == 'b')) suffix.pop_back();
  if (suffix.size() > 1) throw Error(EINVAL, "invalid size suffix in '" + text + "'");
  if (!suffix.empty()) {
    switch (suffix[0]) {
      case 'b':
      case 'B':
        mult = 1;
        break;
      case 'k':
      case 'K':
        mult = 1ull << 10;
        break;
      case 'm':
      case 'M':
        mult = 1ull << 20;
        break;
      case 'g':
      case 'G':
        mult = 1ull << 30;
        break;
      case 't':
      case 'T':
        mult = 1ull << 40;
        break;
      case 'p':
      case 'P':
        mult = 1ull << 50;
        break;
      case 'e':
      case 'E':
        mult = 1ull << 60;
        break;
      default:
        throw Error(EINVAL, "invalid size suffix in '" + text + "'");
    }
  }
  const double bytes = value * double(mult);
  if (bytes >= 18446744073709551616.0) throw Error(ERANGE, "size '" + text + "' is too large");
  if (suffix.empty() && bytes != std::floor(bytes))
    throw Error(EINVAL, "invalid size '" + text + "'");
  return uint64_t(bytes);
}

}  // namespace kiln::block

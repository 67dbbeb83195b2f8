// kiln-img resize: grows an image (qcow2 or raw) to an absolute size or by a relative amount.
// Shrinking is refused: it would drop guest data and Kiln does not implement it.

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>

#include "img_commands.h"
#include "kiln/block/device.h"
#include "tool_util.h"

namespace kiln::block::cli {

int img_resize(const Args& args) {
  const bool quiet = args.flag("-q");
  // --shrink is accepted for compatibility; shrinking is refused anyway.
  if (args.positional().size() != 2) throw ToolError("Expecting an image file name and a size");
  const ImageArg image = image_arg(args, args.positional()[0]);
  const std::string& path = image.path;
  std::string size_text = args.positional()[1];
  int sign = 0;
  if (!size_text.empty() && (size_text[0] == '+' || size_text[0] == '-')) {
    sign = size_text[0] == '+' ? 1 : -1;
    size_text.erase(0, 1);
  }
  uint64_t amount = parse_size_arg(size_text, "size");

  auto& reactor = kiln::block::Reactor::current();
  kiln::block::OpenOptions opts;
  opts.format = valid_format(image.format);
  opts.key_secret = image.key_secret;
  // Growing changes this image's header and L1 table only: the backing chain is not needed,
  // so it is not opened (a probed image then needs no trust in the files its header names).
  opts.open_backing = false;
  auto dev = reactor.run(kiln::block::open_image(reactor, path, opts));
  const uint64_t current = dev->size();
  uint64_t target;
  if (sign > 0) {
    if (amount > UINT64_MAX - current) throw ToolError("Image size would overflow 2^64");
    target = current + amount;
  } else if (sign < 0) {
    target = amount > current ? 0 : current - amount;
  } else {
    target = amount;
  }
  if (target < current) {
    reactor.run(dev->close());
    throw ToolError("Shrinking images is not supported (current size " + std::to_string(current) +
                    " bytes, requested " + std::to_string(target) + " bytes)");
  }
  int rc = target == current ? 0 : reactor.run(dev->resize(target));
  int close_rc = reactor.run(dev->close());
  if (rc < 0) {
    if (rc == -ENOTSUP || rc == -EOPNOTSUPP)
      throw ToolError("This image does not support resize to " + std::to_string(target) +
                      " bytes: " + std::strerror(-rc));
    throw ToolError("Error resizing image: " + std::string(std::strerror(-rc)));
  }
  if (close_rc < 0)
    throw ToolError("Error closing image: " + std::string(std::strerror(-close_rc)));
  if (!quiet) std::printf("Image resized.\n");
  return 0;
}

}  // namespace kiln::block::cli

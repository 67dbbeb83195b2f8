// kiln-img amend: changes the options of an existing qcow2 image that can change in place:
// compat (0.10 <-> 1.1), lazy_refcounts, refcount_bits (the refcount structures rewritten in
// the new width: amend_refcounts.cpp) and size (grow). Options that only image creation takes
// are refused with qemu-img's reason; the backing file may be given only with its current
// value (as qemu-img: use rebase for it).
#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "img_commands.h"
#include "img_ops_util.h"
#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"
#include "tool_util.h"

namespace kiln::block::cli {
namespace {

bool parse_on_off(const std::string& v, const std::string& key) {
  if (v == "on" || v == "true" || v == "yes") return true;
  if (v == "off" || v == "false" || v == "no") return false;
  throw ToolError("Parameter '" + key + "' expects 'on' or 'off'");
}

// Version 2 cannot say "zero": every range that this image marks zero (its own zero clusters)
// gets explicit zeros written, as QEMU expands zero clusters before a downgrade.
Task<void> expand_zeros(BlockDevice& dev, const std::string& path) {
  std::vector<uint8_t> zeros(kCopyBuffer, 0);
  ExtentCursor cur(dev);
  const uint64_t size = dev.size();
  for (uint64_t off = 0; off < size;) {
    Extent e;
    int rc = co_await cur.at(off, size, &e);
    if (rc < 0) throw ToolError(path + ": block status failed: " + std::strerror(-rc));
    if (e.present && e.zero) {
      for (uint64_t pos = off; pos < off + e.length;) {
        const auto n = static_cast<size_t>(std::min<uint64_t>(kCopyBuffer, off + e.length - pos));
        rc = co_await dev.write(pos, std::span<const uint8_t>(zeros.data(), n), 0);
        if (rc < 0)
          throw ToolError(path + ": error while expanding zero clusters: " + std::strerror(-rc));
        pos += n;
      }
    }
    off += e.length;
  }
}

}  // namespace

int img_amend(const Args& args) {
  const std::string format = args.get_or("-f", "");
  const auto o_args = args.all("-o");
  // -q, -p and --force are accepted; kiln-img prints nothing for amend.
  if (o_args.empty()) throw ToolError("Must specify options (-o)");
  if (args.positional().size() != 1) throw ToolError("Expecting one image file name");
  const std::string file = args.positional()[0];
  auto& reactor = kiln::block::Reactor::current();
  std::string fmt;
  try {
    fmt = format.empty() ? kiln::block::probe_format(file) : valid_format(format);
  } catch (const kiln::block::Error& e) {
    throw ToolError(e.what());
  }
  if (fmt != "qcow2")
    throw ToolError("Format driver '" + fmt + "' does not support option amendment");
  kiln::block::qcow2::Info info;
  try {
    info = kiln::block::qcow2::read_info(reactor, file);
  } catch (const kiln::block::Error& e) {
    throw ToolError(e.what());
  }

  kiln::block::qcow2::HeaderChange change;
  std::optional<uint64_t> size;
  uint32_t refcount_bits = 0;  // 0: unchanged
  for (const auto& [key, value] : parse_option_list(o_args, file)) {
    if (key == "compat") {
      if (value == "0.10" || value == "v2")
        change.version = 2;
      else if (value == "1.1" || value == "v3")
        change.version = 3;
      else
        throw ToolError("Invalid parameter value for 'compat': '" + value + "' (use 0.10 or 1.1)");
    } else if (key == "lazy_refcounts") {
      change.lazy_refcounts = parse_on_off(value, key);
    } else if (key == "size") {
      size = parse_size_arg(value, "image size");
    } else if (key == "refcount_bits") {
      const uint64_t rb = common::cli::parse_number(value, "refcount_bits", 0, 1u << 20,
                                                    common::cli::Radix::kDecimalOrHex);
      if (rb == 0 || rb > 64 || (rb & (rb - 1)))
        throw ToolError("Refcount width must be a power of two and may not exceed 64 bits");
      refcount_bits = uint32_t(rb);
    } else if (key == "backing_file" || key == "backing_fmt") {
      const std::string& current = key == "backing_file" ? info.backing_file : info.backing_format;
      if (value != current)
        throw ToolError("Cannot amend the backing file (use 'kiln-img rebase' instead)");
    } else if (key == "cluster_size" || key == "extended_l2" || key == "compression_type" ||
               key == "preallocation" || key.starts_with("encrypt.") || key == "encryption") {
      throw ToolError("Invalid parameter '" + key +
                      "': this option is only supported for image creation");
    } else if (key == "data_file" || key == "data_file_raw") {
      throw ToolError("data-file can only be set for images that use an external data file");
    } else {
      throw ToolError("Invalid parameter '" + key + "'");
    }
  }
  const uint32_t version = change.version.value_or(info.version);
  if (change.lazy_refcounts.value_or(false) && version < 3)
    throw ToolError(
        "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 "
        "or greater)");
  if (refcount_bits == info.refcount_bits) refcount_bits = 0;
  if (refcount_bits && refcount_bits != 16 && version < 3)
    throw ToolError(
        "Refcount widths other than 16 bits require compatibility level 1.1 or above (use "
        "compat=1.1 or greater)");
  const bool upgrade = version == 3 && info.version == 2;
  const bool downgrade = version == 2 && info.version == 3;
  if (downgrade) {
    // A downgrade clears lazy refcounts, as qemu-img's does.
    change.lazy_refcounts = false;
    if ((refcount_bits ? refcount_bits : info.refcount_bits) != 16)
      throw ToolError("compat=0.10 requires refcount_bits=16");
    if (info.extended_l2 || info.compression_type != "zlib")
      throw ToolError("Cannot downgrade an image with incompatible features");
  }
  if (size && *size < info.virtual_size)
    throw ToolError("Shrinking images is not supported (current size " +
                    std::to_string(info.virtual_size) + " bytes, requested " +
                    std::to_string(*size) + " bytes)");

  if (refcount_bits) {
    try {
      // Widths other than 16 need version 3 first; a downgrade comes after the change.
      if (upgrade) {
        kiln::block::qcow2::update_header(reactor, file, change);
        change = {};
      }
      kiln::block::qcow2::change_refcount_bits(reactor, file, refcount_bits);
    } catch (const kiln::block::Error& e) {
      throw ToolError(e.what());
    }
  }
  if (downgrade) {
    kiln::block::OpenOptions o;
    o.open_backing = false;  // zero clusters of this image only; no data is read
    auto dev = open_or_exit(reactor, file, fmt, o);
    reactor.run(expand_zeros(*dev, file));
    if (int rc = reactor.run(dev->flush()); rc < 0)
      throw ToolError(file + ": cannot flush: " + std::strerror(-rc));
    std::string why;
    if (int rc = reactor.run(kiln::block::qcow2::expand_snapshot_zeros(*dev, &why)); rc < 0)
      throw ToolError(file + ": cannot expand the snapshots' zero clusters: " + why + ": " +
                      std::strerror(-rc));
    if (int rc = reactor.run(dev->close()); rc < 0)
      throw ToolError(file + ": cannot flush: " + std::strerror(-rc));
  }
  if (change.version || change.lazy_refcounts) {
    try {
      kiln::block::qcow2::update_header(reactor, file, change);
    } catch (const kiln::block::Error& e) {
      throw ToolError(e.what());
    }
  }
  if (size && *size > info.virtual_size) {
    kiln::block::OpenOptions o;
    o.open_backing = false;
    auto dev = open_or_exit(reactor, file, fmt, o);
    int rc = reactor.run(dev->resize((*size + 511) / 512 * 512));
    const int close_rc = reactor.run(dev->close());
    if (rc < 0) throw ToolError("Error resizing image: " + std::string(std::strerror(-rc)));
    if (close_rc < 0) throw ToolError(file + ": cannot flush: " + std::strerror(-close_rc));
  }
  return 0;
}

}  // namespace kiln::block::cli

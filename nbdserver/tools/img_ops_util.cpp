#include "img_ops_util.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "img_commands.h"
#include "kiln/block/qcow2.h"
#include "kiln/common/text.h"

namespace kiln::block::cli {

bool all_zero(const uint8_t* p, size_t n) {
  return n == 0 || (p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0);
}

std::unique_ptr<BlockDevice> open_or_exit(Reactor& reactor, const std::string& path,
                                          const std::string& fmt, OpenOptions opts, int exit_code) {
  try {
    opts.format = valid_format(fmt);
    return reactor.run(open_image(reactor, path, opts));
  } catch (const ToolError& e) {
    throw ToolError(e.what(), exit_code);
  } catch (const kiln::block::Error& e) {
    throw ToolError(e.what(), exit_code);
  }
}

Task<int> ExtentCursor::at(uint64_t off, uint64_t end, Extent* out) {
  // Windows of 1 GiB: block status of a huge sparse image stays a few extents per call.
  constexpr uint64_t kWindow = uint64_t{1} << 30;
  while (idx_ < window_.size() && window_[idx_].offset + window_[idx_].length <= off) ++idx_;
  if (idx_ >= window_.size() || window_[idx_].offset > off) {
    window_.clear();
    idx_ = 0;
    const uint64_t len = std::min(kWindow, dev_.size() - off);
    if (int rc = co_await dev_.block_status(off, len, &window_); rc < 0) co_return rc;
    if (window_.empty() || window_[0].offset != off || window_[0].length == 0) co_return -EIO;
  }
  *out = window_[idx_];
  const uint64_t skip = off - out->offset;
  out->offset = off;
  out->length = std::min(out->length - skip, end - off);
  if (out->host_offset != Extent::kNoOffset) out->host_offset += skip;
  co_return 0;
}

Task<void> copy_allocated(BlockDevice& src, BlockDevice& dst, uint64_t limit,
                          const std::string& what, const std::function<void(uint64_t)>& progress) {
  limit = std::min(limit, src.size());
  std::vector<uint8_t> buf(kCopyBuffer);
  ExtentCursor cur(src);
  for (uint64_t off = 0; off < limit;) {
    if (progress) progress(off);
    Extent e;
    int rc = co_await cur.at(off, limit, &e);
    if (rc < 0)
      throw ToolError("error while reading block status of '" + src.filename() + "' at offset " +
                      std::to_string(off) + ": " + std::strerror(-rc));
    if (e.present && e.zero) {
      rc = co_await dst.write_zeroes(off, e.length, 0);
      if (rc < 0)
        throw ToolError(what + ": error while writing zeros at offset " + std::to_string(off) +
                        ": " + std::strerror(-rc));
    } else if (e.present) {
      for (uint64_t pos = off; pos < off + e.length;) {
        const auto n = static_cast<size_t>(std::min<uint64_t>(kCopyBuffer, off + e.length - pos));
        rc = co_await src.read(pos, std::span<uint8_t>(buf.data(), n));
        if (rc < 0)
          throw ToolError("error while reading '" + src.filename() + "' at offset " +
                          std::to_string(pos) + ": " + std::strerror(-rc));
        rc = co_await dst.write(pos, std::span<const uint8_t>(buf.data(), n), 0);
        if (rc < 0)
          throw ToolError(what + ": error while writing at offset " + std::to_string(pos) + ": " +
                          std::strerror(-rc));
        pos += n;
      }
    }
    off += e.length;
  }
}

std::optional<Layer> backing_of(Reactor& reactor, const Layer& layer) {
  if (layer.format != "qcow2") return std::nullopt;
  kiln::block::qcow2::Info info;
  try {
    info = kiln::block::qcow2::read_info(reactor, layer.path, false);
  } catch (const kiln::block::Error& e) {
    throw ToolError(e.what());
  }
  if (info.backing_file.empty()) return std::nullopt;
  if (info.backing_format != "raw" && info.backing_format != "qcow2")
    throw ToolError(layer.path + ": backing file '" +
                    kiln::block::qcow2::printable(info.backing_file) +
                    "' has no recorded format raw or qcow2 (Kiln never probes backing files)");
  return Layer{info.full_backing_filename, info.backing_format, info.backing_file};
}

std::string top_format(Reactor& reactor, const std::string& path, const std::string& given) {
  if (!given.empty()) return valid_format(given);
  std::string fmt;
  try {
    fmt = kiln::block::probe_format(path);
  } catch (const kiln::block::Error& e) {
    throw ToolError(e.what());
  }
  if (fmt == "qcow2" && backing_of(reactor, {path, fmt, ""}))
    throw ToolError(path +
                    ": the image format was probed and the image names a backing file; "
                    "give -f qcow2 if you trust the image");
  return fmt;
}

std::vector<std::pair<std::string, std::string>> parse_option_list(
    const std::vector<std::string>& args, const std::string& file) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const std::string& text : args) {
    for (const std::string& item : common::split_qemu_options(text)) {
      if (item.empty()) continue;
      auto eq = item.find('=');
      if (eq == std::string::npos)
        throw ToolError(file + ": Invalid parameter '" + item + "' (expected key=value)");
      out.emplace_back(item.substr(0, eq), item.substr(eq + 1));
    }
  }
  return out;
}

}  // namespace kiln::block::cli

#include "img_ops_util.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "img_commands.h"

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

std::vector<std::pair<std::string, std::string>> parse_option_list(
    const std::vector<std::string>& args, const std::string& file) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const std::string& text : args) {
    std::vector<std::string> items;
    std::string cur;
    for (size_t i = 0; i < text.size(); ++i) {
      if (text[i] == ',') {
        if (i + 1 < text.size() && text[i + 1] == ',') {
          cur += ',';
          ++i;
          continue;
        }
        items.push_back(cur);
        cur.clear();
      } else {
        cur += text[i];
      }
    }
    items.push_back(cur);
    for (const std::string& item : items) {
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

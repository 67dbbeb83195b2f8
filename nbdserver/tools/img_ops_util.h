// Helpers shared by kiln-img's commit, rebase, compare, measure and amend: opening an image
// with a given exit code on failure, walking block status extent by extent, zero detection,
// qemu-style -o option lists, and copying ranges between devices.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kiln/block/device.h"
#include "tool_util.h"

namespace kiln::block::cli {

// Bytes read (or compared) at once.
constexpr uint64_t kCopyBuffer = 2u << 20;
// qemu-img's exit code when an image cannot be opened by compare.
constexpr int kOpenFailed = 2;

bool all_zero(const uint8_t* p, size_t n);

// Opens `path` with `opts` (its format set from `fmt`: empty probes, else raw or qcow2). A
// failure ends the tool with one line and `exit_code`.
std::unique_ptr<BlockDevice> open_or_exit(Reactor& reactor, const std::string& path,
                                          const std::string& fmt, OpenOptions opts,
                                          int exit_code = 1);

// Walks a device's block status from low to high offsets, asking the block layer for big
// windows at a time.
class ExtentCursor {
 public:
  explicit ExtentCursor(BlockDevice& dev) : dev_(dev) {}
  // The extent at `off` (< end <= size), starting at `off` and ending at most at `end`. Returns
  // 0 or -errno.
  Task<int> at(uint64_t off, uint64_t end, Extent* out);

 private:
  BlockDevice& dev_;
  std::vector<Extent> window_;
  size_t idx_ = 0;
};

// Copies what `src` itself allocates (opened without its backing chain: present extents) into
// `dst` at the same offsets, below `limit`: data as data, zero ranges as write_zeroes. Throws
// ToolError naming `what`. `progress` (if set) is told each offset reached.
Task<void> copy_allocated(BlockDevice& src, BlockDevice& dst, uint64_t limit,
                          const std::string& what,
                          const std::function<void(uint64_t)>& progress = {});

// An image of a backing chain: its path (resolved as QEMU resolves backing names) and format.
struct Layer {
  std::string path, format;
  std::string stored_name;  // the name in the header of the image above ("" for the top)
};

// The next image down from `layer` (qcow2 header only; no data read), or nullopt without a
// backing file. A backing file without a recorded format is an error: Kiln never probes one.
std::optional<Layer> backing_of(Reactor& reactor, const Layer& layer);

// The top image's format: as given, or probed. A probed qcow2 image that names a backing file
// is refused (its header may be a guest's forgery), as open_image() refuses it.
std::string top_format(Reactor& reactor, const std::string& path, const std::string& given);

// One -o argument (several may be given): comma-separated key=value pairs, ",," a literal
// comma, in order. A key without '=' is an error (ToolError naming `file`).
std::vector<std::pair<std::string, std::string>> parse_option_list(
    const std::vector<std::string>& args, const std::string& file);

}  // namespace kiln::block::cli

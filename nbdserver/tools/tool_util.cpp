#include "tool_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "kiln/block/device.h"
#include "kiln/block/secret.h"

namespace kiln::block::cli {

ImageArg image_arg(const common::cli::Args& args, const std::string& text,
                   const char* format_option) {
  try {
    kiln::block::ImageSpec spec = kiln::block::resolve_image_arg(
        text, args.flag("--image-opts"), args.get(format_option), args.all("--object"));
    return {std::move(spec.path), std::move(spec.format), std::move(spec.key_secret)};
  } catch (const kiln::block::Error& e) {
    throw ToolError(e.what());
  }
}

std::string human_size(uint64_t bytes) {
  static const char* const kUnits[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
  // Switch to the next unit once the value would print as 1000 or more in the current one.
  int unit = 0;
  long double scaled = static_cast<long double>(bytes) * 1024.0L / 1000.0L;
  while (unit < 6 && scaled >= 1024.0L) {
    scaled /= 1024.0L;
    ++unit;
  }
  double value = static_cast<double>(bytes) / static_cast<double>(uint64_t{1} << (10 * unit));
  char buf[64];
  std::snprintf(buf, sizeof buf, "%0.3g %sB", value, kUnits[unit]);
  return buf;
}

namespace {
[[noreturn]] void invalid(const char* what, const std::string& text, const std::string& why) {
  throw ToolError(std::string("Invalid ") + what + " '" + text + "': " + why);
}
}  // namespace

uint64_t parse_size_arg(const std::string& text, const char* what, uint64_t max, uint64_t min) {
  uint64_t v;
  try {
    v = kiln::block::parse_size(text);
  } catch (const kiln::block::Error& e) {
    if (e.code() == ERANGE) invalid(what, text, "must be at most " + std::to_string(max));
    invalid(what, text, e.what());
  }
  if (v > max) invalid(what, text, "must be at most " + std::to_string(max));
  if (v < min) invalid(what, text, "must be at least " + std::to_string(min));
  return v;
}

std::string path_combine(const std::string& base, const std::string& relative) {
  if (relative.empty() || relative[0] == '/') return relative;
  auto slash = base.rfind('/');
  if (slash == std::string::npos) return relative;
  return base.substr(0, slash + 1) + relative;
}

int64_t allocated_bytes(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return -1;
  return static_cast<int64_t>(st.st_blocks) * 512;
}

uint64_t file_length(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0)
    throw ToolError("Could not open '" + path + "': " + std::strerror(errno));
  return static_cast<uint64_t>(st.st_size);
}

}  // namespace kiln::block::cli

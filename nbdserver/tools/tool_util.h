// Helpers shared by the command-line tools: errors that end the program, qemu-style number
// and path formatting. (JSON: kiln/common/json.h.)
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kiln/common/cli.h"
#include "kiln/common/fd.h"
#include "kiln/common/json.h"

namespace kiln::block::cli {

// Thrown to end a tool with one line on stderr and the given exit code (common::cli::run_main
// prints it).
using ToolError = common::cli::ExitError;

// "396 KiB", "1 GiB", "0 B": three significant digits, binary units, as qemu-img prints.
std::string human_size(uint64_t bytes);

// A size on the command line (block::parse_size: "512", "64k", "1.5G") from `min` to `max`:
// the whole argument, no sign, no spaces; anything else is a ToolError (exit code 1, as
// qemu-img) "Invalid WHAT 'TEXT': why". (Plain numbers: common::cli::parse_number.)
uint64_t parse_size_arg(const std::string& text, const char* what,
                        uint64_t max = uint64_t{INT64_MAX}, uint64_t min = 0);

// The image a command names: its FILE argument with -f, or, with --image-opts, an option
// string (driver=qcow2,file.filename=IMG,encrypt.key-secret=ID); the key comes from the
// --object secrets. Errors are ToolErrors with QEMU's wording.
struct ImageArg {
  std::string path;
  std::string format;  // as given ("" = probe)
  std::optional<std::string> key_secret;
};
ImageArg image_arg(const common::cli::Args& args, const std::string& text,
                   const char* format_option = "-f");

// The path of `relative` seen from the directory of `base` (as qemu resolves backing files).
std::string path_combine(const std::string& base, const std::string& relative);

// The bytes the file occupies on the host file system, or -1.
int64_t allocated_bytes(const std::string& path);
// The length of the file, or throws ToolError.
uint64_t file_length(const std::string& path);

}  // namespace kiln::block::cli

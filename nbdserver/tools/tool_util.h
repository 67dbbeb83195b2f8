// Helpers shared by the command-line tools: errors that end the program, qemu-style number
// and path formatting. (JSON: kiln/common/json.h.)
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kiln/common/fd.h"
#include "kiln/common/json.h"

namespace kiln::tools {

// Thrown to end a tool with one line on stderr and the given exit code.
class ToolError : public std::runtime_error {
 public:
  explicit ToolError(const std::string& what, int exit_code = 1)
      : std::runtime_error(what), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

// "396 KiB", "1 GiB", "0 B": three significant digits, binary units, as qemu-img prints.
std::string human_size(uint64_t bytes);

// Numbers on the command line are parsed strictly: the whole argument, no sign, no spaces, in
// range; anything else is a ToolError (exit code 1, as qemu-img) naming the argument and why.

// A size (block::parse_size: "512", "64k", "1.5G") no larger than `max`; `what` names it.
uint64_t parse_size_arg(const std::string& text, const char* what,
                        uint64_t max = uint64_t{INT64_MAX});

// A non-negative integer, decimal (no leading zeros: "010" is not guessed to be octal) or
// 0x-hexadecimal, no larger than `max`.
uint64_t parse_uint(const std::string& text, uint64_t max, const char* what);

// The path of `relative` seen from the directory of `base` (as qemu resolves backing files).
std::string path_combine(const std::string& base, const std::string& relative);

// The bytes the file occupies on the host file system, or -1.
int64_t allocated_bytes(const std::string& path);
// The length of the file, or throws ToolError.
uint64_t file_length(const std::string& path);

}  // namespace kiln::tools

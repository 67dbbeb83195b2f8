#include "io_command.h"

#include <sstream>
#include <vector>

#include "tool_util.h"

namespace kiln::block::cli {
namespace {

std::vector<std::string> split_words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> words;
  std::string w;
  while (in >> w) words.push_back(w);
  return words;
}

std::string where(int line) { return "line " + std::to_string(line) + ": "; }

// A byte of -P: decimal or 0x-hexadecimal. A ToolError, as every other mistake in a script line.
uint8_t pattern_byte(const std::string& text) {
  try {
    return static_cast<uint8_t>(
        common::cli::parse_number(text, "pattern byte", 0, 255, common::cli::Radix::kDecimalOrHex));
  } catch (const common::cli::UsageError& e) {
    throw ToolError(e.what());
  }
}

}  // namespace

bool parse_io_command(const std::string& text, int line, IoCommand* out) {
  std::vector<std::string> words = split_words(text);
  if (words.empty() || words[0][0] == '#') return false;
  IoCommand cmd;
  cmd.line = line;
  const std::string name = words[0];
  size_t i = 1;
  // Flags first, as qemu-io takes them.
  while (i < words.size() && words[i].size() > 1 && words[i][0] == '-') {
    const std::string& flag = words[i];
    if (flag == "-P" && (name == "read" || name == "write")) {
      if (i + 1 >= words.size()) throw ToolError(where(line) + name + ": -P needs a byte value");
      std::string list = words[i + 1];
      for (size_t start = 0;;) {
        size_t comma = list.find(',', start);
        std::string item = list.substr(start, comma == std::string::npos ? comma : comma - start);
        cmd.accept.push_back(pattern_byte(item));
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
      if (cmd.accept.size() > 1 && name != "read")
        throw ToolError(where(line) + name + ": -P takes one byte");
      cmd.pattern = cmd.accept[0];
      i += 2;
    } else if (flag == "-u" && name == "zero") {
      cmd.unmap = true;
      ++i;
    } else if (flag == "-f" && (name == "write" || name == "zero")) {
      cmd.fua = true;
      ++i;
    } else {
      throw ToolError(where(line) + name + ": unknown flag '" + flag + "'");
    }
  }
  std::vector<std::string> args(words.begin() + static_cast<std::ptrdiff_t>(i), words.end());
  auto need = [&](size_t n, const char* usage) {
    if (args.size() != n) throw ToolError(where(line) + "usage: " + usage);
  };
  auto range = [&](size_t first) {
    cmd.offset = parse_size_arg(args[first], "offset");
    cmd.length = parse_size_arg(args[first + 1], "length");
  };
  if (name == "read") {
    cmd.op = IoOp::kRead;
    need(2, "read [-P BYTE] OFF LEN");
    range(0);
  } else if (name == "write") {
    cmd.op = IoOp::kWrite;
    need(2, "write [-f] [-P BYTE] OFF LEN");
    range(0);
    if (cmd.pattern < 0) cmd.pattern = 0xcd;
  } else if (name == "writef") {
    cmd.op = IoOp::kWritef;
    need(3, "writef HOSTFILE OFF LEN");
    cmd.path = args[0];
    range(1);
  } else if (name == "zero") {
    cmd.op = IoOp::kZero;
    need(2, "zero [-f] [-u] OFF LEN");
    range(0);
  } else if (name == "discard") {
    cmd.op = IoOp::kDiscard;
    need(2, "discard OFF LEN");
    range(0);
  } else if (name == "flush") {
    cmd.op = IoOp::kFlush;
    need(0, "flush");
  } else if (name == "dump") {
    cmd.op = IoOp::kDump;
    need(1, "dump FILE");
    cmd.path = args[0];
  } else if (name == "size") {
    cmd.op = IoOp::kSize;
    need(0, "size");
  } else {
    throw ToolError(where(line) + "unknown command '" + name + "'");
  }
  *out = std::move(cmd);
  return true;
}

}  // namespace kiln::block::cli

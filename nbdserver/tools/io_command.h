// The command language of kiln-io: one command per line, qemu-io style.
//   read [-P BYTE[,BYTE]...] OFF LEN   write [-f] [-P BYTE] OFF LEN   writef HOSTFILE OFF LEN
//   zero [-f] [-u] OFF LEN        discard OFF LEN                  flush
//   dump FILE                     size
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln::block::cli {

enum class IoOp { kRead, kWrite, kWritef, kZero, kDiscard, kFlush, kDump, kSize };

struct IoCommand {
  IoOp op = IoOp::kFlush;
  uint64_t offset = 0;
  uint64_t length = 0;
  int pattern = -1;  // -P BYTE; -1 when not given
  // read -P with several bytes: every byte read must be one of them (a read racing a write
  // may see old or new data, never anything else).
  std::vector<uint8_t> accept;
  bool unmap = false;  // zero -u
  bool fua = false;    // write -f / zero -f
  std::string path;    // writef / dump
  int line = 0;        // 1-based line (or -c position) for messages
};

// Parses one command; returns false for a blank line or a comment. Throws ToolError.
bool parse_io_command(const std::string& text, int line, IoCommand* out);

// Whether the command must wait for everything before it (and everything after waits for it).
inline bool is_barrier(IoOp op) {
  return op == IoOp::kFlush || op == IoOp::kDump || op == IoOp::kSize;
}

}  // namespace kiln::block::cli

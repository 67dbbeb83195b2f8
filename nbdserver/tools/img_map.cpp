// kiln-img map: what each guest range is (data, zero, unallocated) and which image of the
// chain holds it, merged into ranges and printed as qemu-img map prints them.

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "img_commands.h"
#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"
#include "tool_util.h"

namespace kiln::block::cli {
namespace {

using kiln::block::Extent;

// Block status is asked for in pieces so that a huge sparse image needs bounded memory
// between merges.
constexpr uint64_t kStatusChunk = uint64_t{1} << 30;

bool has_offset(const Extent& e) { return e.host_offset != Extent::kNoOffset; }

// The rule of qemu-img map: same kind and depth, and host offsets that continue each other.
bool can_merge(const Extent& a, const Extent& b) {
  if (a.present != b.present || a.zero != b.zero || a.data != b.data || a.depth != b.depth)
    return false;
  if (has_offset(a) != has_offset(b)) return false;
  if (has_offset(a) && a.host_offset + a.length != b.host_offset) return false;
  return a.offset + a.length == b.offset;
}

// Filenames of the chain, top first, resolved as qemu resolves backing files.
std::vector<std::string> chain_filenames(const std::string& path, const std::string& format,
                                         uint32_t chain_length, bool lock) {
  std::vector<std::string> names{path};
  std::string cur = path;
  std::string fmt = format;
  while (names.size() <= chain_length && fmt == "qcow2") {
    auto info = kiln::block::qcow2::read_info(kiln::block::Reactor::current(), cur, lock);
    if (info.backing_file.empty()) break;
    cur = path_combine(cur, info.backing_file);
    fmt = info.backing_format;
    names.push_back(cur);
  }
  return names;
}

void print_json(const Extent& e, bool first) {
  std::printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64
              ", \"depth\": %u, \"present\": %s,"
              " \"zero\": %s, \"data\": %s",
              first ? "[" : ",\n", e.offset, e.length, e.depth, e.present ? "true" : "false",
              e.zero ? "true" : "false", e.data ? "true" : "false");
  if (has_offset(e)) std::printf(", \"offset\": %" PRIu64, e.host_offset);
  std::printf("}");
}

void print_hex(uint64_t v) {
  char buf[32];
  if (v == 0)
    std::snprintf(buf, sizeof buf, "0");
  else
    std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  std::printf("%-16s", buf);
}

void print_human(const Extent& e, const std::vector<std::string>& names) {
  if (!e.data) return;
  if (!has_offset(e)) throw ToolError("File contains external, encrypted or compressed clusters.");
  print_hex(e.offset);
  print_hex(e.length);
  print_hex(e.host_offset);
  std::printf("%s\n", e.depth < names.size() ? names[e.depth].c_str() : "?");
}

}  // namespace

int img_map(const Args& args) {
  const bool force_share = args.flag("-U");
  const OutputFormat out = parse_output_format(args.get_or("--output", "human"));
  if (args.positional().size() != 1) throw ToolError("Expecting one image file name");
  const ImageArg image = image_arg(args, args.positional()[0]);
  const std::string& path = image.path;

  auto& reactor = kiln::block::Reactor::current();
  kiln::block::OpenOptions opts;
  opts.format = valid_format(image.format);
  opts.key_secret = image.key_secret;
  opts.read_only = true;
  opts.lock = !force_share;
  auto dev = reactor.run(kiln::block::open_image(reactor, path, opts));
  std::vector<std::string> names;
  if (out == OutputFormat::kHuman)
    names = chain_filenames(path, dev->format(), dev->chain_length(), opts.lock);

  if (out == OutputFormat::kHuman)
    std::printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
  bool first = true;
  bool pending = false;
  Extent cur;
  auto emit = [&](const Extent& e) {
    if (out == OutputFormat::kJson) {
      print_json(e, first);
    } else {
      print_human(e, names);
    }
    first = false;
  };
  const uint64_t size = dev->size();
  for (uint64_t off = 0; off < size;) {
    uint64_t len = std::min(kStatusChunk, size - off);
    std::vector<Extent> extents;
    int rc = reactor.run(dev->block_status(off, len, &extents));
    if (rc < 0)
      throw ToolError("Could not read block status at offset " + std::to_string(off) + ": " +
                      std::strerror(-rc));
    if (extents.empty())
      throw ToolError("block status returned nothing at offset " + std::to_string(off));
    uint64_t covered = off;
    for (const Extent& e : extents) {
      if (e.offset != covered || e.length == 0 || e.length > off + len - e.offset)
        throw ToolError("block status returned an inconsistent extent at offset " +
                        std::to_string(e.offset));
      covered += e.length;
      if (pending && can_merge(cur, e)) {
        cur.length += e.length;
        continue;
      }
      if (pending) emit(cur);
      cur = e;
      pending = true;
    }
    off = covered;
  }
  if (pending) emit(cur);
  if (out == OutputFormat::kJson) std::printf(first ? "[]\n" : "]\n");
  reactor.run(dev->close());
  return 0;
}

}  // namespace kiln::block::cli

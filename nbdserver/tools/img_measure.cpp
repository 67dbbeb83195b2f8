// kiln-img measure: the file size a new image needs (for a given size, or to hold a converted
// copy of an existing image), computed the way qemu-img 7.2 computes it so that the numbers
// are the same: "required size" counts the metadata of a fully allocated image plus the data
// clusters the input really has; "fully allocated size" counts every data cluster.
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

#include "img_commands.h"
#include "img_ops_util.h"
#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"
#include "tool_util.h"

namespace kiln::block::cli {
namespace {

uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
uint64_t div_up(uint64_t v, uint64_t d) { return (v + d - 1) / d; }

struct Target {
  uint64_t cluster_size = 65536;
  uint32_t version = 3;
  uint32_t refcount_bits = 16;
  bool extended_l2 = false;
  bool full_prealloc = false;  // preallocation=falloc|full: every data cluster counts
  bool backing = false;
};

// Refcount table and blocks that count `clusters` clusters and themselves (the fixed point).
uint64_t refcount_metadata_size(uint64_t clusters, uint64_t cs, uint32_t refcount_bits) {
  const uint64_t per_table_cluster = cs / 8;
  const uint64_t per_block = cs * 8 / refcount_bits;
  uint64_t table = 0, blocks = 0, n = 0, last;
  do {
    last = n;
    blocks = div_up(clusters + table + blocks, per_block);
    table = div_up(blocks, per_table_cluster);
    n = clusters + blocks + table;
  } while (n != last);
  return (blocks + table) * cs;
}

// The size of a qcow2 image of `virtual_size` with every cluster allocated: header, L2 and L1
// tables for the whole (L2-table aligned) disk, refcount structures, data.
uint64_t prealloc_size(uint64_t virtual_size, const Target& t) {
  const uint64_t cs = t.cluster_size;
  const uint64_t l2e = t.extended_l2 ? 16 : 8;
  const uint64_t aligned = round_up(virtual_size, cs);
  uint64_t meta = cs;
  const uint64_t nl2e = round_up(aligned / cs, cs / l2e);
  meta += nl2e * l2e;
  const uint64_t nl1e = round_up(nl2e * l2e / cs, cs / 8);
  meta += nl1e * 8;
  meta += refcount_metadata_size((meta + aligned) / cs, cs, t.refcount_bits);
  return meta + aligned;
}

bool parse_bool(const std::string& v, const std::string& key) {
  if (v == "on" || v == "true" || v == "yes") return true;
  if (v == "off" || v == "false" || v == "no") return false;
  throw ToolError("Parameter '" + key + "' expects 'on' or 'off'");
}

Target parse_target(const std::vector<std::pair<std::string, std::string>>& opts) {
  Target t;
  std::string compat, refcount_bits;
  for (const auto& [key, value] : opts) {
    if (key == "cluster_size") {
      t.cluster_size = parse_size_arg(value, "cluster size");
      if (t.cluster_size < 512 || t.cluster_size > (2u << 20) ||
          (t.cluster_size & (t.cluster_size - 1)))
        throw ToolError("Cluster size must be a power of two between 512 and 2048k");
    } else if (key == "compat") {
      compat = value;
    } else if (key == "refcount_bits") {
      refcount_bits = value;
    } else if (key == "extended_l2") {
      t.extended_l2 = parse_bool(value, key);
    } else if (key == "preallocation") {
      if (value == "falloc" || value == "full")
        t.full_prealloc = true;
      else if (value != "off" && value != "metadata")
        throw ToolError("invalid parameter value: " + value);
    } else if (key == "backing_file") {
      t.backing = !value.empty();
    } else if (key == "lazy_refcounts") {
      parse_bool(value, key);
    } else if (key == "compression_type") {
      if (value != "zlib" && value != "zstd")
        throw ToolError("Parameter 'compression-type' does not accept value '" + value + "'");
    } else if (key == "backing_fmt" || key == "size") {
      // Accepted, as qemu-img does; they do not change the numbers.
    } else if (key.starts_with("encrypt.")) {
      throw ToolError("Encrypted images are not supported by kiln-img measure");
    } else {
      throw ToolError("Invalid parameter '" + key + "'");
    }
  }
  if (compat == "0.10" || compat == "v2")
    t.version = 2;
  else if (!compat.empty() && compat != "1.1" && compat != "v3")
    throw ToolError("Invalid parameter value for 'compat': '" + compat + "' (use 0.10 or 1.1)");
  if (!refcount_bits.empty()) {
    uint64_t rb = common::cli::parse_number(refcount_bits, "refcount_bits", 0, 1u << 20,
                                            common::cli::Radix::kDecimalOrHex);
    if (rb == 0 || rb > 64 || (rb & (rb - 1)))
      throw ToolError("Refcount width must be a power of two and may not exceed 64 bits");
    if (t.version < 3 && rb != 16)
      throw ToolError(
          "Different refcount widths than 16 bits require compatibility level 1.1 or above "
          "(use compat=1.1 or greater)");
    t.refcount_bits = static_cast<uint32_t>(rb);
  }
  if (t.extended_l2 && t.version < 3)
    throw ToolError(
        "Extended L2 entries are only supported with compatibility level 1.1 "
        "and above (use compat=1.1 or greater)");
  if (t.extended_l2 && t.cluster_size < 16384)
    throw ToolError(
        "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");
  return t;
}

// The data bytes a copy of `dev` needs, counted as qemu-img counts them: clusters that hold
// data somewhere in the chain; zero ranges are free.
Task<int> data_required(BlockDevice& dev, uint64_t cs, uint64_t* required) {
  ExtentCursor cur(dev);
  const uint64_t size = dev.size();
  for (uint64_t off = 0; off < size;) {
    Extent e;
    if (int rc = co_await cur.at(off, size, &e); rc < 0) co_return rc;
    uint64_t n = e.length;
    if (!e.zero && e.present && e.data) {
      // The rest of the last cluster counts too, and the next look starts after it.
      n = round_up(off + n, cs) - off;
      *required += off % cs + n;
    }
    off += n;
  }
  co_return 0;
}

struct Measure {
  uint64_t required = 0, fully_allocated = 0;
  bool has_bitmaps = false;
};

}  // namespace

int img_measure(const Args& args) {
  const std::string in_format = args.get_or("-f", "");
  const std::string out_format = args.get_or("-O", "raw");
  const OutputFormat out = parse_output_format(args.get_or("--output", "human"));
  const bool force_share = args.flag("-U");
  const auto size_arg = args.get("--size");
  const auto& pos = args.positional();
  if (pos.size() > 1) throw ToolError("Unexpected argument '" + pos[1] + "'");
  if (size_arg && !pos.empty())
    throw ToolError("--size N cannot be used together with a filename.");
  if (!size_arg && pos.empty())
    throw ToolError("Either --size N or one filename must be specified.");
  if (pos.empty() && args.get("-f"))
    throw ToolError("--image-opts, -f, and -l require a filename argument.");
  if (out_format != "raw" && out_format != "qcow2")
    throw ToolError("Block driver '" + out_format + "' does not support size measurement");
  const auto opts = parse_option_list(args.all("-o"), "measure");
  if (out_format == "raw" && !opts.empty()) {
    for (const auto& kv : opts)
      if (kv.first != "size" && kv.first != "preallocation")
        throw ToolError("Invalid parameter '" + kv.first + "'");
  }
  const Target t = out_format == "qcow2" ? parse_target(opts) : Target{};

  Measure m;
  uint64_t virtual_size = 0, data = 0;
  if (size_arg) {
    virtual_size = parse_size_arg(*size_arg, "image size");
  } else {
    auto& reactor = kiln::block::Reactor::current();
    kiln::block::OpenOptions o;
    o.read_only = true;
    o.lock = !force_share;
    auto dev = open_or_exit(reactor, pos[0], in_format, o);
    virtual_size = dev->size();
    if (out_format == "qcow2" && !t.backing) {
      int rc = reactor.run(data_required(*dev, t.cluster_size, &data));
      if (rc < 0) throw ToolError("Unable to get block status: " + std::string(std::strerror(-rc)));
    }
    // Persistent bitmaps need a v3 qcow2 on both sides; Kiln's images carry none, so their
    // size is 0 (an input whose bitmaps Kiln cannot read is not opened at all).
    m.has_bitmaps = t.version >= 3 && out_format == "qcow2" &&
                    std::string(dev->format()) == "qcow2" &&
                    kiln::block::qcow2::read_info(reactor, pos[0], false).version >= 3;
    reactor.run(dev->close());
  }
  if (out_format == "raw") {
    m.required = m.fully_allocated = size_arg ? round_up(virtual_size, 512) : virtual_size;
  } else {
    const uint64_t aligned = round_up(virtual_size, t.cluster_size);
    // As qemu-img: the L1 table of such an image must fit QEMU's 32 MiB limit.
    const uint64_t l2_tables =
        div_up(aligned / t.cluster_size, t.cluster_size / (t.extended_l2 ? 16 : 8));
    if (l2_tables * 8 > (32u << 20))
      throw ToolError("The image size is too large (try using a larger cluster size)");
    // Preallocation counts every cluster; with a backing file every cluster may differ from
    // it; a size alone has no data.
    if (t.full_prealloc || (!size_arg && t.backing))
      data = aligned;
    else if (size_arg)
      data = 0;
    m.fully_allocated = prealloc_size(aligned, t);
    m.required = m.fully_allocated - aligned + data;
  }
  if (out == OutputFormat::kJson) {
    std::printf("{\n");
    if (m.has_bitmaps) std::printf("    \"bitmaps\": 0,\n");
    std::printf("    \"required\": %" PRIu64 ",\n    \"fully-allocated\": %" PRIu64 "\n}\n",
                m.required, m.fully_allocated);
  } else {
    std::printf("required size: %" PRIu64 "\nfully allocated size: %" PRIu64 "\n", m.required,
                m.fully_allocated);
    if (m.has_bitmaps) std::printf("bitmaps size: 0\n");
  }
  return 0;
}

}  // namespace kiln::block::cli

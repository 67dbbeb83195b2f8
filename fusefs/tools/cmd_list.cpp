// kiln-fs list: the partition table and what each partition holds.
#include <cinttypes>
#include <cstdio>
#include <string>

#include "commands.h"
#include "kiln/common/json.h"
#include "kiln/fs/filesystem.h"
#include "kiln/fs/partition.h"
#include "kiln/fs/source.h"

namespace kiln::fs::cli {
namespace {

struct Row {
  Partition part;
  FsInfo fs;
};

std::string type_of(const Partition& p) {
  if (p.kind == "gpt") return p.type_guid;
  if (p.kind == "disk") return "-";
  char b[8];
  std::snprintf(b, sizeof b, "0x%02x", p.mbr_type);
  return b;
}

void print_json(const std::string& image, const PartitionTable& t, uint64_t size,
                const std::vector<Row>& rows) {
  common::Json out;
  out["image"] = image;
  out["size"] = size;
  out["scheme"] = t.scheme;
  out["sector_size"] = t.sector_size;
  out["disk_id"] = t.disk_id;
  common::Json parts = common::Json::array();
  for (const Row& r : rows)
    parts.push_back({{"number", r.part.number},
                     {"kind", r.part.kind},
                     {"offset", r.part.offset},
                     {"length", r.part.length},
                     {"type", type_of(r.part)},
                     {"name", r.part.name},
                     {"part_uuid", r.part.part_guid},
                     {"filesystem", r.fs.type},
                     {"label", r.fs.label},
                     {"uuid", r.fs.uuid},
                     {"fs_size", r.fs.size}});
  out["partitions"] = std::move(parts);
  std::printf("%s\n", common::dump(out, 2).c_str());
}

std::string dash(const std::string& s) { return s.empty() ? "-" : s; }

void print_human(const std::string& image, const PartitionTable& t, uint64_t size,
                 const std::vector<Row>& rows) {
  std::printf("%s: %" PRIu64 " bytes, partition table: %s", image.c_str(), size, t.scheme.c_str());
  if (!t.disk_id.empty()) std::printf(" (disk id %s)", t.disk_id.c_str());
  std::printf("\n%-5s %-8s %14s %14s  %-10s %-16s %-36s %14s\n", "PART", "KIND", "OFFSET", "SIZE",
              "FS", "LABEL", "UUID", "FS SIZE");
  for (const Row& r : rows) {
    std::printf("%-5s %-8s %14" PRIu64 " %14" PRIu64 "  %-10s %-16s %-36s %14" PRIu64 "\n",
                r.part.number ? std::to_string(r.part.number).c_str() : "-", r.part.kind.c_str(),
                r.part.offset, r.part.length, dash(r.fs.type).c_str(), dash(r.fs.label).c_str(),
                dash(r.fs.uuid).c_str(), r.fs.size);
  }
}

}  // namespace

int cmd_list(const Args& args) {
  if (args.positional().size() != 1) throw UsageError("list takes one IMAGE");
  const ImageArg arg = image_arg(args, args.positional()[0]);
  const std::string& image = arg.image;
  const bool json = args.flag("--json");
  auto src = open_source(image, {true, arg.format, arg.key_secret});
  PartitionTable t = read_partition_table(*src);
  std::vector<Row> rows;
  if (t.scheme == "none") {
    Partition whole;
    whole.kind = "disk";
    whole.length = src->size();
    rows.push_back({whole, probe_filesystem(*src, 0, src->size())});
  }
  for (const auto& p : t.partitions)
    rows.push_back({p, probe_filesystem(*src, p.offset, p.length)});
  const uint64_t size = src->size();
  src->close(true);
  if (json)
    print_json(image, t, size, rows);
  else
    print_human(image, t, size, rows);
  return 0;
}

}  // namespace kiln::fs::cli

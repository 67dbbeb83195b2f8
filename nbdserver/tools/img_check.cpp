// kiln-img check: refcount and table consistency of a qcow2 image, with repair, reported and
// exited as qemu-img check does (0 clean, 1 check failed, 2 corruptions, 3 leaks only,
// 63 format without checks).

#include <cinttypes>
#include <cstdio>
#include <string>

#include "img_commands.h"
#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"
#include "tool_util.h"

namespace kiln::block::cli {
namespace {

using kiln::block::qcow2::CheckResult;
using kiln::block::qcow2::Repair;

constexpr int kExitNoCheck = 63;

common::Json to_json(const CheckResult& r, const std::string& filename) {
  // Keys in the order qemu-img 7.2 prints them; counters that are zero are left out as qemu
  // does, except check-errors.
  common::Json o;
  if (r.image_end_offset) o["image-end-offset"] = r.image_end_offset;
  if (r.compressed_clusters) o["compressed-clusters"] = r.compressed_clusters;
  if (r.total_clusters) o["total-clusters"] = r.total_clusters;
  if (r.corruptions) o["corruptions"] = r.corruptions;
  if (r.corruptions_fixed) o["corruptions-fixed"] = r.corruptions_fixed;
  o["check-errors"] = r.check_errors;
  if (r.leaks) o["leaks"] = r.leaks;
  if (r.leaks_fixed) o["leaks-fixed"] = r.leaks_fixed;
  if (r.allocated_clusters) o["allocated-clusters"] = r.allocated_clusters;
  o["filename"] = filename;
  o["format"] = "qcow2";
  if (r.fragmented_clusters) o["fragmented-clusters"] = r.fragmented_clusters;
  return o;
}

void print_human(const CheckResult& r) {
  if (r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0) {
    std::printf("No errors were found on the image.\n");
  } else {
    if (r.corruptions)
      std::printf("\n%" PRIu64
                  " errors were found on the image.\n"
                  "Data may be corrupted, or further writes to the image may corrupt it.\n",
                  r.corruptions);
    if (r.leaks)
      std::printf("\n%" PRIu64
                  " leaked clusters were found on the image.\n"
                  "This means waste of disk space, but no harm to data.\n",
                  r.leaks);
    if (r.check_errors)
      std::printf("\n%" PRIu64 " internal errors have occurred during the check.\n",
                  r.check_errors);
  }
  if (r.total_clusters != 0 && r.allocated_clusters != 0) {
    double alloc =
        100.0 * static_cast<double>(r.allocated_clusters) / static_cast<double>(r.total_clusters);
    double frag = 100.0 * static_cast<double>(r.fragmented_clusters) /
                  static_cast<double>(r.allocated_clusters);
    double comp = 100.0 * static_cast<double>(r.compressed_clusters) /
                  static_cast<double>(r.allocated_clusters);
    std::printf("%" PRIu64 "/%" PRIu64
                " = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
                r.allocated_clusters, r.total_clusters, alloc, frag, comp);
  }
  if (r.image_end_offset) std::printf("Image end offset: %" PRIu64 "\n", r.image_end_offset);
}

CheckResult run_check(const std::string& path, Repair repair, bool lock,
                      const std::optional<std::string>& key) {
  CheckResult r =
      kiln::block::qcow2::check(kiln::block::Reactor::current(), path, repair, lock, key);
  for (const std::string& m : r.messages) std::fprintf(stderr, "%s\n", m.c_str());
  return r;
}

}  // namespace

int img_check(const Args& args) {
  OutputFormat out = parse_output_format(args.get_or("--output", "human"));
  Repair repair = Repair::kNone;
  if (auto r = args.get("--repair")) {
    if (*r == "leaks")
      repair = Repair::kLeaks;
    else if (*r == "all")
      repair = Repair::kAll;
    else
      throw ToolError("Unknown option value for -r (expecting 'leaks' or 'all'): " + *r);
  }
  const bool quiet = args.flag("-q");
  const bool force_share = args.flag("-U");
  if (args.positional().size() != 1) throw ToolError("Expecting one image file name");
  const ImageArg image = image_arg(args, args.positional()[0]);
  const std::string& path = image.path;
  std::string fmt = resolve_format(image.format, path);
  if (fmt != "qcow2") throw ToolError("This image format does not support checks", kExitNoCheck);

  if (force_share && repair != Repair::kNone)
    throw ToolError(
        "--force-share/-U is not allowed with -r (repairing needs the image to itself)");
  CheckResult r;
  try {
    r = run_check(path, repair, !force_share, image.key_secret);
  } catch (const kiln::block::Error& e) {
    throw ToolError(std::string("Check failed: ") + e.what());
  }
  if (repair != Repair::kNone && (r.leaks_fixed || r.corruptions_fixed)) {
    uint64_t leaks_fixed = r.leaks_fixed, corruptions_fixed = r.corruptions_fixed;
    if (out == OutputFormat::kHuman && !quiet)
      std::printf(
          "The following inconsistencies were found and repaired:\n\n"
          "    %" PRIu64 " leaked clusters\n    %" PRIu64
          " corruptions\n\nDouble checking the fixed image now...\n",
          leaks_fixed, corruptions_fixed);
    try {
      r = run_check(path, Repair::kNone, true, image.key_secret);
    } catch (const kiln::block::Error& e) {
      throw ToolError(std::string("Check failed: ") + e.what());
    }
    r.leaks_fixed = leaks_fixed;
    r.corruptions_fixed = corruptions_fixed;
  }
  if (!quiet || out == OutputFormat::kJson) {
    if (out == OutputFormat::kJson)
      std::printf("%s\n", common::dump(to_json(r, path), 4).c_str());
    else
      print_human(r);
  }
  if (r.check_errors) return 1;
  if (r.corruptions) return 2;
  if (r.leaks) return 3;
  return 0;
}

}  // namespace kiln::block::cli

// kiln-img snapshot: list, create, apply and delete internal qcow2 snapshots, with qemu-img's
// messages and exit codes (qemu-img 7.2); also the snapshot list that `info` prints.
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>

#include "img_commands.h"
#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"
#include "kiln/block/qcow2_snapshot.h"
#include "tool_util.h"

namespace kiln::block::cli {
namespace {

std::string format_date(uint32_t sec) {
  time_t t = static_cast<time_t>(sec);
  struct tm tm;
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string format_clock(uint64_t nsec) {
  uint64_t ms = nsec / 1000000u;
  char buf[48];
  std::snprintf(buf, sizeof buf, "%02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 ".%03" PRIu64,
                ms / 3600000u, ms / 60000u % 60u, ms / 1000u % 60u, ms % 1000u);
  return buf;
}

constexpr uint64_t kNoIcount = ~uint64_t{0};

}  // namespace

void print_snapshot_list(const std::vector<qcow2::SnapshotInfo>& snapshots) {
  if (snapshots.empty()) return;
  std::printf("Snapshot list:\n");
  std::printf("%-9s %-17s %7s %19s %12s %10s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK",
              "ICOUNT");
  for (const auto& s : snapshots) {
    const std::string icount = s.icount == kNoIcount ? "" : std::to_string(s.icount);
    std::printf("%-9s %-17s %7s %19s %12s %10s\n", s.id.c_str(), s.name.c_str(),
                human_size(s.vm_state_size).c_str(), format_date(s.date_sec).c_str(),
                format_clock(s.vm_clock_nsec).c_str(), icount.c_str());
  }
}

common::Json snapshots_json(const std::vector<qcow2::SnapshotInfo>& snapshots) {
  // Keys in the order qemu-img 7.2 prints them; icount only when recorded.
  common::Json snaps = common::Json::array();
  for (const auto& s : snapshots) {
    common::Json j;
    if (s.icount != kNoIcount) j["icount"] = s.icount;
    j["vm-clock-nsec"] = s.vm_clock_nsec % 1000000000u;
    j["name"] = s.name;
    j["date-sec"] = uint64_t{s.date_sec};
    j["date-nsec"] = uint64_t{s.date_nsec};
    j["vm-clock-sec"] = s.vm_clock_nsec / 1000000000u;
    j["id"] = s.id;
    j["vm-state-size"] = s.vm_state_size;
    snaps.push_back(std::move(j));
  }
  return snaps;
}

int img_snapshot(const Args& args) {
  const std::string requested = valid_format(args.get_or("-f", ""));
  const bool force_share = args.flag("-U");
  int actions = 0;
  for (const char* a : {"-l", "-a", "-c", "-d"})
    if (args.flag(a) || args.get(a)) ++actions;
  if (actions > 1) throw ToolError("Cannot mix '-l', '-a', '-c', '-d'");
  if (args.positional().size() != 1) throw ToolError("Expecting one image file name");
  const std::string path = args.positional()[0];
  // Like qemu-img: without an action nothing is done (after the image is opened).
  const std::string format = resolve_format(requested, path);
  auto& reactor = Reactor::current();

  if (args.flag("-l") || actions == 0) {
    if (format != "qcow2") return 0;  // raw images have no snapshots: an empty list
    const auto info = qcow2::read_info(reactor, path, !force_share);
    if (args.flag("-l")) print_snapshot_list(info.snapshots);
    return 0;
  }
  if (force_share) throw ToolError("-U can only be used with -l");  // the image is written
  if (auto name = args.get("-c")) {
    if (format != "qcow2")
      throw ToolError("Could not create snapshot '" + *name + "': -95 (Operation not supported)");
    try {
      qcow2::snapshot_create(reactor, path, *name);
    } catch (const Error& e) {
      // qemu-img prints the errno of a failed create and its text; the reason follows.
      const int err = e.error_number() ? e.error_number() : EIO;
      throw ToolError("Could not create snapshot '" + *name + "': -" + std::to_string(err) + " (" +
                      std::strerror(err) + "): " + e.what());
    }
    return 0;
  }
  if (auto name = args.get("-a")) {
    if (format != "qcow2")
      throw ToolError("Could not apply snapshot '" + *name +
                      "': Block driver does not support snapshots");
    try {
      qcow2::snapshot_apply(reactor, path, *name);
    } catch (const qcow2::SnapshotNotFound&) {
      throw ToolError("Could not apply snapshot '" + *name +
                      "': Failed to load snapshot: No such file or directory");
    } catch (const Error& e) {
      throw ToolError("Could not apply snapshot '" + *name + "': " + e.what());
    }
    return 0;
  }
  const std::string name = *args.get("-d");
  if (format != "qcow2")
    throw ToolError("Could not delete snapshot '" + name + "': snapshot not found");
  try {
    qcow2::snapshot_delete(reactor, path, name);
  } catch (const qcow2::SnapshotNotFound&) {
    throw ToolError("Could not delete snapshot '" + name + "': snapshot not found");
  } catch (const Error& e) {
    throw ToolError("Could not delete snapshot '" + name + "': " + e.what());
  }
  return 0;
}

}  // namespace kiln::block::cli

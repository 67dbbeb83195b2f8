// The scheduler: picks the compute host for a new instance as Nova's filter scheduler does, and
// takes the claim there. Filters drop the hosts that cannot take the instance (a forced host,
// disabled hosts, the availability zone, vCPUs/RAM/disk free after allocation ratios and
// reserved amounts as Placement computes them); weighers rank the others by free RAM, vCPUs and
// disk, each normalised over the hosts that passed, with a multiplier whose sign spreads
// (+1, Nova's default: the emptiest host first) or packs (-1: the fullest host that fits first).
// Ties go to the first name. The choice and the claim are one write transaction, so schedulers
// racing for the last slot (processes, hosts) end with one claim and one "No valid host" error.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "kiln/spawn/resources.h"
#include "kiln/spawn/store.h"

namespace kiln::spawn {

// The setting that chooses the weighers' sign: "spread" (default) or "pack".
inline constexpr const char* kWeigherSetting = "scheduler_weigher";
enum class WeighPolicy { kSpread, kPack };

struct ScheduleRequest {
  Flavor flavor;
  std::optional<Image> image;     // its min_disk and min_ram are checked against the flavor
  std::string availability_zone;  // empty: any zone
  std::string host;               // empty: any host; else only this one (still filtered)
};

// Nova's "--availability-zone ZONE:HOST" (and ":HOST"): the zone and the forced host apart.
// Throws invalid() for more than one ':'.
void split_zone_and_host(const std::string& text, std::string* zone, std::string* host);

struct HostVerdict {
  Host host;
  std::vector<ResourceStats> stats;  // vcpus, memory_mb, disk_gb (host_stats)
  std::string filter;                // the filter that dropped it; empty: it passed
  std::string reason;                // why, in words
  double weight = 0;                 // for the hosts that passed
};

struct ScheduleResult {
  // The hosts that passed, best first, then the others by name.
  std::vector<HostVerdict> hosts;
  std::string chosen;   // empty when none passed
  std::string failure;  // then: "No valid host was found. ..." with every host's reason
};

class Scheduler {
 public:
  explicit Scheduler(Store& store) : store_(store) {}

  WeighPolicy policy();  // the scheduler_weigher setting
  // Filters and weighs every registered host for `request` without claiming anything (a
  // consistent read). An image whose min_disk/min_ram the flavor does not meet is refused here
  // (invalid()), as Nova's API refuses it before scheduling.
  ScheduleResult plan(const ScheduleRequest& request);
  // plan() and the claim of the flavor on the chosen host, in one write transaction (joining
  // the caller's); returns the host's record. Throws no_space(failure) when no host passes.
  Host claim(const ScheduleRequest& request, const std::string& instance_id);

 private:
  Store& store_;
};

// The filters' and weighers' work on hosts already read (plan() reads them in one query each):
// exposed for the benchmark and the unit tests.
ScheduleResult schedule_hosts(const ScheduleRequest& request, const std::vector<Host>& hosts,
                              const std::map<std::string, Usage>& usage, WeighPolicy policy);

}  // namespace kiln::spawn

// The resource tracker: what the host has, how much of it may be promised (Nova's allocation
// ratios and reserved amounts, computed as Placement does: (total - reserved) * ratio), and
// atomic claims across processes (one BEGIN IMMEDIATE transaction checks and records a claim).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "kiln/spawn/store.h"

namespace kiln::spawn {

struct HostResources {
  int64_t vcpus = 0, memory_mb = 0, disk_gb = 0;
};

// What this host has: online CPUs, MemTotal, and the size of the file system holding `dir`.
HostResources discover_host(const std::string& dir);

struct ResourceConfig {
  HostResources total;  // discovered, then overridden by settings
  double cpu_allocation_ratio = 16.0;
  double ram_allocation_ratio = 1.5;
  double disk_allocation_ratio = 1.0;
  int64_t reserved_host_cpus = 0;
  int64_t reserved_host_memory_mb = 512;
  int64_t reserved_host_disk_mb = 0;
};

// Settings (kiln-spawn config-set) that override discovery and Nova's defaults.
const std::vector<std::pair<std::string, std::string>>& resource_settings();  // key, default

// The name of the host this kiln-spawn runs on (Nova's `host`): $KILN_HOST, else the machine's
// hostname. Checked as check_host_name() does.
std::string this_host();
// 1 to 255 characters of [A-Za-z0-9._-], starting with a letter or digit; Error(kInvalidArgument)
// otherwise.
void check_host_name(const std::string& name);

// What the settings say, read through `setting` (nullopt: not set), with discovery on `dir` for
// the totals that are not set. Throws a clear error for a malformed setting.
ResourceConfig resource_config(
    const std::function<std::optional<std::string>(const std::string&)>& setting,
    const std::string& dir);
// The host record that `config` describes (enabled, zone "nova", capacity from settings).
Host host_from_config(const std::string& name, const ResourceConfig& config);
// The values settings and host-register/host-set take: whole numbers from 0 to 2^40, ratios
// above 0 and at most 10000 with at most 6 decimals (no sign, exponent or blanks).
int64_t parse_amount(const std::string& text, const std::string& what);
double parse_ratio(const std::string& text, const std::string& what);

struct ResourceStats {
  std::string resource;  // vcpus, memory_mb, disk_gb
  int64_t total = 0, reserved = 0, used = 0;
  double ratio = 1.0;
  int64_t capacity = 0;  // (total - reserved) * ratio
  int64_t free() const { return capacity - used; }
};

// Placement's view of one host: vcpus, memory_mb, disk_gb with `used` from `usage`.
std::vector<ResourceStats> host_stats(const Host& host, const Usage& usage);
// What of `flavor` does not fit into `stats` ("vCPUs: requested 2, free 1 of 32 (total 2,
// reserved 0, allocation ratio 16, used 31); ..."), or "" when everything fits.
std::string shortfall(const std::vector<ResourceStats>& stats, const Flavor& flavor);

// The resources of this host (this_host()): its settings are reported into its host record,
// claims are taken on it.
class ResourceTracker {
 public:
  explicit ResourceTracker(Store& store) : store_(store) {}

  ResourceConfig config();  // this machine's settings and discovery
  // Writes config() into this host's record when the record follows the settings, and its
  // heartbeat (Nova's resource tracker reporting the compute node). Joins a transaction.
  void report();
  std::vector<ResourceStats> stats();  // this host: vcpus, memory_mb, disk_gb
  int64_t instances() { return store_.usage_of(this_host()).instances; }

  // Claims the flavor's resources for the instance on this host; throws Error(kNoSpace) naming
  // every resource that does not fit. Call inside Store::write (it joins the caller's
  // transaction). (Boot goes through the scheduler, scheduler.h, which may pick another host.)
  void claim(const std::string& instance_id, const Flavor& flavor);
  void release(const std::string& instance_id);

 private:
  Store& store_;
};

}  // namespace kiln::spawn

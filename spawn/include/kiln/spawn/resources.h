// The resource tracker: what the host has, how much of it may be promised (Nova's allocation
// ratios and reserved amounts, computed as Placement does: (total - reserved) * ratio), and
// atomic claims across processes (one BEGIN IMMEDIATE transaction checks and records a claim).
#pragma once

#include <cstdint>
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

struct ResourceStats {
  std::string resource;  // vcpus, memory_mb, disk_gb
  int64_t total = 0, reserved = 0, used = 0;
  double ratio = 1.0;
  int64_t capacity = 0;  // (total - reserved) * ratio
  int64_t free() const { return capacity - used; }
};

class ResourceTracker {
 public:
  explicit ResourceTracker(Store& store) : store_(store) {}

  ResourceConfig config();
  std::vector<ResourceStats> stats();  // vcpus, memory_mb, disk_gb
  int64_t instances() { return store_.usage().instances; }

  // Claims the flavor's resources for the instance; throws Error(kNoSpace) naming every
  // resource that does not fit. Call inside Store::write (it joins the caller's transaction).
  void claim(const std::string& instance_id, const Flavor& flavor);
  void release(const std::string& instance_id);

 private:
  Store& store_;
};

}  // namespace kiln::spawn

#include "kiln/spawn/resources.h"

#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "kiln/spawn/error.h"

namespace kiln::spawn {

HostResources discover_host(const std::string& dir) {
  HostResources h;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  h.vcpus = cpus > 0 ? cpus : 1;
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemTotal:") {
      h.memory_mb = kib / 1024;
      break;
    }
  }
  struct statvfs vfs {};
  if (statvfs(dir.c_str(), &vfs) == 0)
    h.disk_gb = static_cast<int64_t>(static_cast<uint64_t>(vfs.f_blocks) * vfs.f_frsize >> 30);
  return h;
}

const std::vector<std::pair<std::string, std::string>>& resource_settings() {
  static const std::vector<std::pair<std::string, std::string>> kSettings = {
      {"host_vcpus", "(discovered)"},   {"host_memory_mb", "(discovered)"},
      {"host_disk_gb", "(discovered)"}, {"cpu_allocation_ratio", "16.0"},
      {"ram_allocation_ratio", "1.5"},  {"disk_allocation_ratio", "1.0"},
      {"reserved_host_cpus", "0"},      {"reserved_host_memory_mb", "512"},
      {"reserved_host_disk_mb", "0"},
  };
  return kSettings;
}

namespace {

// Whole and range-checked (std::stoll/stod would take " 5", "+5", "1e3", "0x10", "inf"...);
// the bounds keep (total - reserved) * ratio far from int64's limits.
constexpr int64_t kMaxAmount = int64_t{1} << 40;
constexpr double kMaxRatio = 10000.0;

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

int64_t setting_int(Store& s, const std::string& key, int64_t dflt) {
  auto v = s.setting(key);
  if (!v) return dflt;
  if (all_digits(*v) && v->size() <= 13) {
    int64_t n = std::stoll(*v);
    if (n <= kMaxAmount) return n;
  }
  throw invalid("setting " + key + " must be a whole number from 0 to " +
                std::to_string(kMaxAmount) + ", not '" + *v + "'");
}

double setting_ratio(Store& s, const std::string& key, double dflt) {
  auto v = s.setting(key);
  if (!v) return dflt;
  const size_t dot = v->find('.');
  const std::string whole = v->substr(0, dot);
  const std::string frac = dot == std::string::npos ? "0" : v->substr(dot + 1);
  if (all_digits(whole) && all_digits(frac) && whole.size() <= 5 && frac.size() <= 6) {
    double d = std::stod(*v);
    if (d > 0 && d <= kMaxRatio) return d;
  }
  throw invalid("setting " + key + " must be a number above 0 and at most 10000 (like 1.5), not '" +
                *v + "'");
}

int64_t capacity_of(int64_t total, int64_t reserved, double ratio) {
  int64_t avail = total - reserved;
  if (avail <= 0) return 0;
  return static_cast<int64_t>(std::floor(static_cast<double>(avail) * ratio + 1e-9));
}

}  // namespace

ResourceConfig ResourceTracker::config() {
  ResourceConfig c;
  bool need_discovery = !store_.setting("host_vcpus") || !store_.setting("host_memory_mb") ||
                        !store_.setting("host_disk_gb");
  HostResources d = need_discovery ? discover_host(store_.dir()) : HostResources{};
  c.total.vcpus = setting_int(store_, "host_vcpus", d.vcpus);
  c.total.memory_mb = setting_int(store_, "host_memory_mb", d.memory_mb);
  c.total.disk_gb = setting_int(store_, "host_disk_gb", d.disk_gb);
  c.cpu_allocation_ratio = setting_ratio(store_, "cpu_allocation_ratio", 16.0);
  c.ram_allocation_ratio = setting_ratio(store_, "ram_allocation_ratio", 1.5);
  c.disk_allocation_ratio = setting_ratio(store_, "disk_allocation_ratio", 1.0);
  c.reserved_host_cpus = setting_int(store_, "reserved_host_cpus", 0);
  c.reserved_host_memory_mb = setting_int(store_, "reserved_host_memory_mb", 512);
  c.reserved_host_disk_mb = setting_int(store_, "reserved_host_disk_mb", 0);
  return c;
}

std::vector<ResourceStats> ResourceTracker::stats() {
  std::vector<ResourceStats> out;
  store_.write([&] {
    ResourceConfig c = config();
    Usage u = store_.usage();
    int64_t reserved_disk_gb = (c.reserved_host_disk_mb + 1023) / 1024;
    out.push_back({"vcpus", c.total.vcpus, c.reserved_host_cpus, u.vcpus, c.cpu_allocation_ratio,
                   capacity_of(c.total.vcpus, c.reserved_host_cpus, c.cpu_allocation_ratio)});
    out.push_back(
        {"memory_mb", c.total.memory_mb, c.reserved_host_memory_mb, u.ram_mb,
         c.ram_allocation_ratio,
         capacity_of(c.total.memory_mb, c.reserved_host_memory_mb, c.ram_allocation_ratio)});
    out.push_back({"disk_gb", c.total.disk_gb, reserved_disk_gb, u.disk_gb, c.disk_allocation_ratio,
                   capacity_of(c.total.disk_gb, reserved_disk_gb, c.disk_allocation_ratio)});
  });
  return out;
}

void ResourceTracker::claim(const std::string& instance_id, const Flavor& flavor) {
  store_.write([&] {
    std::vector<ResourceStats> st = stats();
    const int64_t want[3] = {flavor.vcpus, flavor.ram_mb, flavor.disk_gb};
    const char* label[3] = {"vCPUs", "memory (MiB)", "disk (GiB)"};
    std::string problems;
    for (int i = 0; i < 3; ++i) {
      if (want[i] > st[i].free()) {
        std::ostringstream m;
        m << label[i] << ": requested " << want[i] << ", free "
          << std::max<int64_t>(0, st[i].free()) << " of " << st[i].capacity << " (total "
          << st[i].total << ", reserved " << st[i].reserved << ", allocation ratio " << st[i].ratio
          << ", used " << st[i].used << ")";
        problems += (problems.empty() ? "" : "; ") + m.str();
      }
    }
    if (!problems.empty())
      throw no_space("insufficient resources for flavor " + flavor.name + ": " + problems);
    store_.put_claim(instance_id, flavor.vcpus, flavor.ram_mb, flavor.disk_gb);
  });
}

void ResourceTracker::release(const std::string& instance_id) {
  store_.write([&] { store_.remove_claim(instance_id); });
}

}  // namespace kiln::spawn

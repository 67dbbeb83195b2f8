#include "kiln/spawn/resources.h"

#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "kiln/common/host.h"
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

int64_t capacity_of(int64_t total, int64_t reserved, double ratio) {
  int64_t avail = total - reserved;
  if (avail <= 0) return 0;
  return static_cast<int64_t>(std::floor(static_cast<double>(avail) * ratio + 1e-9));
}

}  // namespace

int64_t parse_amount(const std::string& v, const std::string& what) {
  if (all_digits(v) && v.size() <= 13) {
    int64_t n = std::stoll(v);
    if (n <= kMaxAmount) return n;
  }
  throw invalid(what + " must be a whole number from 0 to " + std::to_string(kMaxAmount) +
                ", not '" + v + "'");
}

double parse_ratio(const std::string& v, const std::string& what) {
  const size_t dot = v.find('.');
  const std::string whole = v.substr(0, dot);
  const std::string frac = dot == std::string::npos ? "0" : v.substr(dot + 1);
  if (all_digits(whole) && all_digits(frac) && whole.size() <= 5 && frac.size() <= 6) {
    double d = std::stod(v);
    if (d > 0 && d <= kMaxRatio) return d;
  }
  throw invalid(what + " must be a number above 0 and at most 10000 (like 1.5), not '" + v + "'");
}

std::string this_host() { return common::this_host_name(); }

void check_host_name(const std::string& name) { common::check_host_name(name); }

ResourceConfig resource_config(
    const std::function<std::optional<std::string>(const std::string&)>& setting,
    const std::string& dir) {
  auto amount = [&](const std::string& key, int64_t dflt) {
    auto v = setting(key);
    return v ? parse_amount(*v, "setting " + key) : dflt;
  };
  auto ratio = [&](const std::string& key, double dflt) {
    auto v = setting(key);
    return v ? parse_ratio(*v, "setting " + key) : dflt;
  };
  ResourceConfig c;
  bool need_discovery =
      !setting("host_vcpus") || !setting("host_memory_mb") || !setting("host_disk_gb");
  HostResources d = need_discovery ? discover_host(dir) : HostResources{};
  c.total.vcpus = amount("host_vcpus", d.vcpus);
  c.total.memory_mb = amount("host_memory_mb", d.memory_mb);
  c.total.disk_gb = amount("host_disk_gb", d.disk_gb);
  c.cpu_allocation_ratio = ratio("cpu_allocation_ratio", 16.0);
  c.ram_allocation_ratio = ratio("ram_allocation_ratio", 1.5);
  c.disk_allocation_ratio = ratio("disk_allocation_ratio", 1.0);
  c.reserved_host_cpus = amount("reserved_host_cpus", 0);
  c.reserved_host_memory_mb = amount("reserved_host_memory_mb", 512);
  c.reserved_host_disk_mb = amount("reserved_host_disk_mb", 0);
  return c;
}

Host host_from_config(const std::string& name, const ResourceConfig& c) {
  Host h;
  h.name = name;
  h.vcpus = c.total.vcpus;
  h.memory_mb = c.total.memory_mb;
  h.disk_gb = c.total.disk_gb;
  h.cpu_allocation_ratio = c.cpu_allocation_ratio;
  h.ram_allocation_ratio = c.ram_allocation_ratio;
  h.disk_allocation_ratio = c.disk_allocation_ratio;
  h.reserved_vcpus = c.reserved_host_cpus;
  h.reserved_memory_mb = c.reserved_host_memory_mb;
  h.reserved_disk_mb = c.reserved_host_disk_mb;
  h.from_settings = true;
  return h;
}

std::vector<ResourceStats> host_stats(const Host& h, const Usage& u) {
  const int64_t reserved_disk_gb = (h.reserved_disk_mb + 1023) / 1024;
  return {
      {"vcpus", h.vcpus, h.reserved_vcpus, u.vcpus, h.cpu_allocation_ratio,
       capacity_of(h.vcpus, h.reserved_vcpus, h.cpu_allocation_ratio)},
      {"memory_mb", h.memory_mb, h.reserved_memory_mb, u.ram_mb, h.ram_allocation_ratio,
       capacity_of(h.memory_mb, h.reserved_memory_mb, h.ram_allocation_ratio)},
      {"disk_gb", h.disk_gb, reserved_disk_gb, u.disk_gb, h.disk_allocation_ratio,
       capacity_of(h.disk_gb, reserved_disk_gb, h.disk_allocation_ratio)},
  };
}

std::string shortfall(const std::vector<ResourceStats>& st, const Flavor& flavor) {
  const int64_t want[3] = {flavor.vcpus, flavor.ram_mb, flavor.disk_gb};
  const char* label[3] = {"vCPUs", "memory (MiB)", "disk (GiB)"};
  std::string problems;
  for (size_t i = 0; i < 3 && i < st.size(); ++i) {
    if (want[i] > st[i].free()) {
      std::ostringstream m;
      m << label[i] << ": requested " << want[i] << ", free " << std::max<int64_t>(0, st[i].free())
        << " of " << st[i].capacity << " (total " << st[i].total << ", reserved " << st[i].reserved
        << ", allocation ratio " << st[i].ratio << ", used " << st[i].used << ")";
      problems += (problems.empty() ? "" : "; ") + m.str();
    }
  }
  return problems;
}

ResourceConfig ResourceTracker::config() {
  return resource_config([&](const std::string& k) { return store_.setting(k); }, store_.dir());
}

void ResourceTracker::report() {
  store_.write([&] {
    auto h = store_.find_host(this_host());
    if (!h) return;
    if (h->from_settings) {
      Host now = host_from_config(h->name, config());
      now.libvirt_uri = h->libvirt_uri;
      now.nbd_endpoint = h->nbd_endpoint;
      now.availability_zone = h->availability_zone;
      now.enabled = h->enabled;
      now.disabled_reason = h->disabled_reason;
      now.created_at = h->created_at;
      h = now;
    }
    h->heartbeat_at = utc_now();
    store_.put(*h);
  });
}

std::vector<ResourceStats> ResourceTracker::stats() {
  std::vector<ResourceStats> out;
  store_.write([&] {
    report();
    const std::string me = this_host();
    auto h = store_.find_host(me);
    out = host_stats(h ? *h : host_from_config(me, config()), store_.usage_of(me));
  });
  return out;
}

void ResourceTracker::claim(const std::string& instance_id, const Flavor& flavor) {
  store_.write([&] {
    std::string problems = shortfall(stats(), flavor);
    if (!problems.empty())
      throw no_space("insufficient resources for flavor " + flavor.name + ": " + problems);
    store_.put_claim(instance_id, flavor.vcpus, flavor.ram_mb, flavor.disk_gb, this_host());
  });
}

void ResourceTracker::release(const std::string& instance_id) {
  store_.write([&] { store_.remove_claim(instance_id); });
}

}  // namespace kiln::spawn

// The filter scheduler (scheduler.h): request checks, filters, weighers, and the claim on the
// chosen host in the transaction that chose it.
#include "kiln/spawn/scheduler.h"

#include <algorithm>
#include <limits>

#include "kiln/spawn/error.h"

namespace kiln::spawn {

namespace {

constexpr int64_t kGiBytes = int64_t{1} << 30;
constexpr int64_t kMiBytes = int64_t{1} << 20;
// How many hosts' reasons a "No valid host" message names (a thousand would not be read).
constexpr size_t kReasonsShown = 8;

// Nova's API checks before it schedules (FlavorDiskSmallerThanMinDisk, FlavorMemoryTooSmall):
// no host can help a flavor that is too small for the image.
void check_image_minimums(const ScheduleRequest& r) {
  if (!r.image) return;
  const Image& img = *r.image;
  // A flavor without a root disk size (0) takes the image's own size.
  if (r.flavor.disk_gb > 0 && img.min_disk > r.flavor.disk_gb)
    throw invalid("Flavor's disk is too small for requested image. Flavor disk is " +
                  std::to_string(r.flavor.disk_gb * kGiBytes) + " bytes, minimum required by " +
                  "image " + img.name + " (min_disk " + std::to_string(img.min_disk) + " GiB) is " +
                  std::to_string(img.min_disk * kGiBytes) + " bytes.");
  if (img.min_ram > r.flavor.ram_mb)
    throw invalid("Flavor's memory is too small for requested image. Flavor memory is " +
                  std::to_string(r.flavor.ram_mb * kMiBytes) + " bytes, minimum required by " +
                  "image " + img.name + " (min_ram " + std::to_string(img.min_ram) + " MiB) is " +
                  std::to_string(img.min_ram * kMiBytes) + " bytes.");
}

// One filter: a name as Nova's, and a test that returns why a host is dropped ("" passes).
struct Filter {
  const char* name;
  std::string (*drop)(const ScheduleRequest&, const HostVerdict&);
};

const Filter kFilters[] = {
    {"HostFilter",
     [](const ScheduleRequest& r, const HostVerdict& v) -> std::string {
       return r.host.empty() || r.host == v.host.name ? "" : "not the requested host " + r.host;
     }},
    {"ComputeFilter",
     [](const ScheduleRequest&, const HostVerdict& v) -> std::string {
       if (v.host.enabled) return "";
       return "disabled" +
              (v.host.disabled_reason.empty() ? "" : " (" + v.host.disabled_reason + ")");
     }},
    {"AvailabilityZoneFilter",
     [](const ScheduleRequest& r, const HostVerdict& v) -> std::string {
       if (r.availability_zone.empty() || r.availability_zone == v.host.availability_zone)
         return "";
       return "in availability zone " + v.host.availability_zone + ", not " + r.availability_zone;
     }},
    // Placement's check: vCPUs, RAM and disk free after ratios and reserved amounts.
    {"ResourceFilter",
     [](const ScheduleRequest& r, const HostVerdict& v) -> std::string {
       std::string s = shortfall(v.stats, r.flavor);
       return s.empty() ? "" : "insufficient resources for flavor " + r.flavor.name + ": " + s;
     }},
};

// Each weigher's values over the hosts that passed, normalised to 0..1 (Nova's
// normalize()), times the multiplier, summed into the hosts' weights.
void weigh(std::vector<HostVerdict*>& passed, WeighPolicy policy) {
  const double multiplier = policy == WeighPolicy::kSpread ? 1.0 : -1.0;
  for (size_t resource : {size_t{1}, size_t{0}, size_t{2}}) {  // RAM, CPU, disk
    double lo = std::numeric_limits<double>::max(), hi = std::numeric_limits<double>::lowest();
    for (const HostVerdict* v : passed) {
      const double free = static_cast<double>(v->stats[resource].free());
      lo = std::min(lo, free);
      hi = std::max(hi, free);
    }
    if (!(hi > lo)) continue;  // all equal: this weigher tells them apart in nothing
    for (HostVerdict* v : passed)
      v->weight += multiplier * (static_cast<double>(v->stats[resource].free()) - lo) / (hi - lo);
  }
}

std::string failure_message(const ScheduleResult& result) {
  std::string m = "No valid host was found. There are not enough hosts available.";
  if (result.hosts.empty()) return m + " No host is registered (kiln-spawn host-register).";
  size_t shown = 0;
  for (const HostVerdict& v : result.hosts) {
    if (shown == kReasonsShown) break;
    m += (shown++ == 0 ? " " : "; ") + v.host.name + ": " + v.reason;
  }
  if (result.hosts.size() > shown)
    m += "; and " + std::to_string(result.hosts.size() - shown) + " more hosts";
  return m;
}

}  // namespace

void split_zone_and_host(const std::string& text, std::string* zone, std::string* host) {
  const size_t colon = text.find(':');
  if (colon == std::string::npos) {
    *zone = text;
    host->clear();
    return;
  }
  if (text.find(':', colon + 1) != std::string::npos)
    throw invalid("--availability-zone takes ZONE, ZONE:HOST or :HOST, not '" + text + "'");
  *zone = text.substr(0, colon);
  *host = text.substr(colon + 1);
}

ScheduleResult schedule_hosts(const ScheduleRequest& request, const std::vector<Host>& hosts,
                              const std::map<std::string, Usage>& usage, WeighPolicy policy) {
  check_image_minimums(request);
  ScheduleResult result;
  result.hosts.reserve(hosts.size());
  std::vector<HostVerdict*> passed;
  for (const Host& h : hosts) {
    HostVerdict& v = result.hosts.emplace_back();
    v.host = h;
    auto u = usage.find(h.name);
    v.stats = host_stats(h, u == usage.end() ? Usage{} : u->second);
  }
  for (HostVerdict& v : result.hosts) {
    for (const Filter& f : kFilters) {
      std::string why = f.drop(request, v);
      if (!why.empty()) {
        v.filter = f.name;
        v.reason = std::move(why);
        break;
      }
    }
    if (v.filter.empty()) passed.push_back(&v);
  }
  weigh(passed, policy);
  // Passed first, by weight (best first), then by name; a stable order for ties.
  std::sort(result.hosts.begin(), result.hosts.end(),
            [](const HostVerdict& a, const HostVerdict& b) {
              if (a.filter.empty() != b.filter.empty()) return a.filter.empty();
              if (a.filter.empty() && a.weight != b.weight) return a.weight > b.weight;
              return a.host.name < b.host.name;
            });
  if (!result.hosts.empty() && result.hosts.front().filter.empty())
    result.chosen = result.hosts.front().host.name;
  else
    result.failure = failure_message(result);
  return result;
}

WeighPolicy Scheduler::policy() {
  const std::string p = store_.setting(kWeigherSetting).value_or("spread");
  if (p == "spread") return WeighPolicy::kSpread;
  if (p == "pack") return WeighPolicy::kPack;
  throw invalid(std::string("setting ") + kWeigherSetting + " must be spread or pack, not '" + p +
                "'");
}

ScheduleResult Scheduler::plan(const ScheduleRequest& request) {
  ScheduleResult result;
  store_.read(
      [&] { result = schedule_hosts(request, store_.hosts(), store_.usage_by_host(), policy()); });
  return result;
}

Host Scheduler::claim(const ScheduleRequest& request, const std::string& instance_id) {
  Host chosen;
  store_.write([&] {
    ScheduleResult r = plan(request);
    if (r.chosen.empty()) throw no_space(r.failure);
    chosen = r.hosts.front().host;
    store_.put_claim(instance_id, request.flavor.vcpus, request.flavor.ram_mb,
                     request.flavor.disk_gb, chosen.name);
  });
  return chosen;
}

}  // namespace kiln::spawn

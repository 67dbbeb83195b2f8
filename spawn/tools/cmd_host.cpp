// kiln-spawn's hypervisor and settings commands: hypervisor-list/show/stats (every host and the
// total, as Nova's), schedule (the scheduler's dry run), config-set/show.
#include <iostream>

#include "context.h"
#include "kiln/spawn/disk_transport.h"
#include "kiln/spawn/resources.h"
#include "kiln/spawn/scheduler.h"
#include "perms.h"

namespace kiln::spawn::cli {

namespace {

// Settings of kiln-spawn itself, next to the resource tracker's.
constexpr const char* kQemuUserSetting = "qemu_user";
// The registered host whose agent makes and exports every guest disk (over NBD+TLS); "": each
// compute host its own.
constexpr const char* kStorageHostSetting = "storage_host";

// Nova's hypervisor fields for one host: per resource its total, reserved, ratio, capacity
// ((total - reserved) * ratio), used and free.
Json hypervisor_json(const Host& h, const Usage& u) {
  Json o = {{"hypervisor_hostname", h.name},
            {"status", h.enabled ? "enabled" : "disabled"},
            {"availability_zone", h.availability_zone}};
  for (const auto& s : host_stats(h, u)) {
    o[s.resource] = s.total;
    o[s.resource + "_reserved"] = s.reserved;
    o[s.resource + "_allocation_ratio"] = s.ratio;
    o[s.resource + "_capacity"] = s.capacity;
    o[s.resource + "_used"] = s.used;
    o[s.resource + "_free"] = s.free();
  }
  o["running_vms"] = u.instances;
  return o;
}

struct HostsNow {
  std::vector<Host> hosts;
  std::map<std::string, Usage> usage;
};

// This host's settings reported first (as a boot does), then every host in one read.
HostsNow hosts_now(Store& s) {
  ResourceTracker(s).report();
  HostsNow n;
  s.read([&] {
    n.hosts = s.hosts();
    n.usage = s.usage_by_host();
  });
  return n;
}

int hypervisor_list(Context& c) {
  c.args.max_positional(0);
  HostsNow n = hosts_now(c.store());
  std::vector<Json> a;
  for (const Host& h : n.hosts) a.push_back(hypervisor_json(h, n.usage[h.name]));
  c.list(a, {"hypervisor_hostname", "status", "availability_zone", "vcpus_used", "vcpus_capacity",
             "memory_mb_used", "memory_mb_capacity", "disk_gb_used", "disk_gb_capacity",
             "running_vms"});
  return 0;
}

int hypervisor_show(Context& c) {
  c.args.max_positional(1);
  const std::string& name = c.args.positional(0, "HOST");
  HostsNow n = hosts_now(c.store());
  for (const Host& h : n.hosts) {
    if (h.name != name) continue;
    Json o = hypervisor_json(h, n.usage[h.name]);
    Json extra = host_to_json(h, n.usage[h.name]);
    for (const char* k : {"libvirt_uri", "nbd_endpoint", "disabled_reason", "heartbeat_at"})
      o[k] = extra[k];
    c.show(o);
    return 0;
  }
  throw not_found("host '" + name + "' not found");
}

// The sums over every host (Nova's hypervisor-stats), with the hosts themselves: a list before
// the totals in a table, "hosts" in JSON. A ratio is shown when every host has the same.
int hypervisor_stats(Context& c) {
  c.args.max_positional(0);
  HostsNow n = hosts_now(c.store());
  Json total = {{"count", n.hosts.size()}};
  std::vector<Json> per_host;
  int64_t vms = 0;
  for (const Host& h : n.hosts) {
    const Usage& u = n.usage[h.name];
    vms += u.instances;
    per_host.push_back(hypervisor_json(h, u));
    for (const auto& s : host_stats(h, u)) {
      auto add = [&](const std::string& k, int64_t v) {
        total[k] = (total.contains(k) ? total[k].get<int64_t>() : 0) + v;
      };
      add(s.resource, s.total);
      add(s.resource + "_reserved", s.reserved);
      add(s.resource + "_capacity", s.capacity);
      add(s.resource + "_used", s.used);
      add(s.resource + "_free", s.free());
      const std::string rk = s.resource + "_allocation_ratio";
      if (!total.contains(rk))
        total[rk] = s.ratio;
      else if (!total[rk].is_null() && total[rk].get<double>() != s.ratio)
        total[rk] = nullptr;
    }
  }
  total["running_vms"] = vms;
  if (c.format == Format::kJson) {
    total["hosts"] = per_host;
  } else {
    c.list(per_host,
           {"hypervisor_hostname", "status", "vcpus_used", "vcpus_capacity", "memory_mb_used",
            "memory_mb_capacity", "disk_gb_used", "disk_gb_capacity", "running_vms"});
  }
  c.show(total);
  return 0;
}

// The scheduler's dry run: every host with the filter that dropped it (and why) or its weight,
// and the choice; nothing is claimed. No valid host: the table, then the error.
int schedule(Context& c) {
  c.args.max_positional(0);
  Store& s = c.store();
  ScheduleRequest r;
  const std::string flavor = c.args.get_or("--flavor", "");
  if (flavor.empty()) throw invalid("schedule needs --flavor");
  auto fl = s.find_flavor(flavor);
  if (!fl) throw not_found("flavor '" + flavor + "' not found");
  r.flavor = *fl;
  if (auto image = c.args.get("--image")) {
    r.image = s.find_image(*image);
    if (!r.image) throw not_found("image '" + *image + "' not found");
  }
  split_zone_and_host(c.args.get_or("--availability-zone", ""), &r.availability_zone, &r.host);
  if (auto h = c.args.get("--host")) {
    if (!r.host.empty() && r.host != *h)
      throw invalid("--host and --availability-zone name different hosts");
    r.host = *h;
  }
  ResourceTracker(s).report();
  Scheduler sch(s);
  ScheduleResult res = sch.plan(r);
  std::vector<Json> rows;
  for (const HostVerdict& v : res.hosts) {
    rows.push_back({{"host", v.host.name},
                    {"availability_zone", v.host.availability_zone},
                    {"result", v.host.name == res.chosen ? "chosen"
                               : v.filter.empty()        ? "passed"
                                                         : "filtered"},
                    {"filter", v.filter},
                    {"reason", v.reason},
                    {"weight", v.filter.empty() ? Json(v.weight) : Json(nullptr)},
                    {"vcpus_free", v.stats[0].free()},
                    {"memory_mb_free", v.stats[1].free()},
                    {"disk_gb_free", v.stats[2].free()}});
  }
  c.list(rows, {"host", "availability_zone", "result", "filter", "weight", "vcpus_free",
                "memory_mb_free", "disk_gb_free", "reason"});
  if (res.chosen.empty()) throw no_space(res.failure);
  return 0;
}

bool is_resource_setting(const std::string& key) {
  for (const auto& [k, d] : resource_settings())
    if (k == key) return true;
  return false;
}

int config_set(Context& c) {
  c.args.max_positional(2);
  const std::string& key = c.args.positional(0, "KEY");
  const std::string& value = c.args.positional(1, "VALUE");
  bool known = key == kQemuUserSetting || key == kWeigherSetting || key == kStorageHostSetting ||
               is_resource_setting(key);
  bool transport = false;
  for (const auto& [k, d] : disk_transport_settings()) transport |= k == key;
  if (!known && !transport) throw invalid("unknown setting '" + key + "'");
  if (key == kQemuUserSetting && !value.empty()) parse_host_user(value, key);
  if (transport) check_disk_transport_setting(key, value);
  Store& s = c.store();
  if (key == kStorageHostSetting && !value.empty()) {
    check_host_name(value);
    if (!s.find_host(value))
      throw not_found("host '" + value + "' not found (kiln-spawn host-register)");
  }
  // Checked inside the transaction that stores it: a bad value is rolled back. This host's
  // record follows its settings (when it was not given a capacity of its own).
  s.write([&] {
    s.set_setting(key, value);
    ResourceTracker(s).report();
    Scheduler(s).policy();
  });
  return 0;
}

// The settings a host runs with: this host's (KILN_HOST, else the host name) or, with --host,
// another registered host's; the global ones are the same for every host.
int config_show(Context& c) {
  c.args.max_positional(0);
  Store& s = c.store();
  const std::string me = this_host();
  const std::string host = c.args.get_or("--host", me);
  if (host != me) {
    check_host_name(host);
    if (!s.find_host(host)) throw not_found("host '" + host + "' not found (kiln-spawn host-list)");
  }
  auto get = [&](const std::string& key) { return s.setting_of(host, key); };
  Json o = Json::object();
  o["host"] = host;
  for (const auto& [k, d] : resource_settings()) o[k] = get(k).value_or(d);
  o[kQemuUserSetting] = get(kQemuUserSetting).value_or("(libvirt's)");
  for (const auto& [k, d] : disk_transport_settings()) o[k] = get(k).value_or(d);
  o[kWeigherSetting] = get(kWeigherSetting).value_or("spread");
  o[kStorageHostSetting] = get(kStorageHostSetting).value_or("");
  c.show(o);
  return 0;
}

}  // namespace

CommandTable host_commands() {
  return {
      {"hypervisor-list", "", {}, hypervisor_list},
      {"hypervisor-show", "HOST", {}, hypervisor_show},
      {"hypervisor-stats", "", {}, hypervisor_stats},
      {"schedule",
       "--flavor F [--image I] [--availability-zone ZONE[:HOST]] [--host HOST]",
       {{"--flavor", kValue},
        {"--image", kValue},
        {"--availability-zone", kValue},
        {"--host", kValue}},
       schedule},
      {"config-set", "KEY VALUE   (VALUE '' restores the default)", {}, config_set},
      {"config-show", "[--host HOST]", {{"--host", kValue}}, config_show},
  };
}

}  // namespace kiln::spawn::cli

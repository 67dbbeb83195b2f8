// kiln-spawn host-*: the registry of compute hosts (Nova's compute nodes and services): register,
// list, show, enable/disable and change, delete.
#include "context.h"
#include "kiln/common/text.h"
#include "kiln/spawn/images.h"
#include "kiln/spawn/resources.h"

namespace kiln::spawn::cli {

Json host_to_json(const Host& h, const Usage& u) {
  return {{"name", h.name},
          {"libvirt_uri", h.libvirt_uri},
          {"nbd_endpoint", h.nbd_endpoint},
          {"availability_zone", h.availability_zone},
          {"status", h.enabled ? "enabled" : "disabled"},
          {"disabled_reason", h.disabled_reason},
          {"vcpus", h.vcpus},
          {"memory_mb", h.memory_mb},
          {"disk_gb", h.disk_gb},
          {"cpu_allocation_ratio", h.cpu_allocation_ratio},
          {"ram_allocation_ratio", h.ram_allocation_ratio},
          {"disk_allocation_ratio", h.disk_allocation_ratio},
          {"reserved_vcpus", h.reserved_vcpus},
          {"reserved_memory_mb", h.reserved_memory_mb},
          {"reserved_disk_mb", h.reserved_disk_mb},
          {"capacity_from_settings", h.from_settings},
          {"running_vms", u.instances},
          {"heartbeat_at", h.heartbeat_at},
          {"created_at", h.created_at},
          {"updated_at", h.updated_at}};
}

namespace {

const std::vector<common::cli::Option> kCapacityOptions = {
    {"--vcpus", kValue},
    {"--memory-mb", kValue},
    {"--disk-gb", kValue},
    {"--cpu-allocation-ratio", kValue},
    {"--ram-allocation-ratio", kValue},
    {"--disk-allocation-ratio", kValue},
    {"--reserved-vcpus", kValue},
    {"--reserved-memory-mb", kValue},
    {"--reserved-disk-mb", kValue},
};

// The options host-register and host-set share: its kiln-nbd, its zone, its capacity, enabled
// or not. A capacity given stops the record from following this machine's settings.
void apply_options(const Args& a, Host& h) {
  if (auto v = a.get("--nbd-endpoint")) {
    if (v->empty()) throw invalid("--nbd-endpoint needs a socket path or URL");
    h.nbd_endpoint = *v;
  }
  if (auto v = a.get("--availability-zone")) {
    check_name("availability zone", *v);
    h.availability_zone = *v;
  }
  bool capacity = false;
  auto amount = [&](const char* opt, int64_t& field) {
    if (auto v = a.get(opt)) {
      field = parse_amount(*v, opt);
      capacity = true;
    }
  };
  auto ratio = [&](const char* opt, double& field) {
    if (auto v = a.get(opt)) {
      field = parse_ratio(*v, opt);
      capacity = true;
    }
  };
  amount("--vcpus", h.vcpus);
  amount("--memory-mb", h.memory_mb);
  amount("--disk-gb", h.disk_gb);
  ratio("--cpu-allocation-ratio", h.cpu_allocation_ratio);
  ratio("--ram-allocation-ratio", h.ram_allocation_ratio);
  ratio("--disk-allocation-ratio", h.disk_allocation_ratio);
  amount("--reserved-vcpus", h.reserved_vcpus);
  amount("--reserved-memory-mb", h.reserved_memory_mb);
  amount("--reserved-disk-mb", h.reserved_disk_mb);
  if (a.flag("--enable") && a.flag("--disable")) throw invalid("give --enable or --disable");
  if (a.has("--reason") && !a.flag("--disable")) throw invalid("--reason goes with --disable");
  if (a.flag("--enable") || a.flag("--disable")) {
    h.enabled = a.flag("--enable");
    h.disabled_reason = a.get_or("--reason", "");
  }
  if (capacity) h.from_settings = false;
}

// host-register: the whole record, from what is given and else this machine's capacity (its
// settings and discovery) and kiln-spawn's global --libvirt-uri and --nbd-control. Registering
// a host again replaces its record the same way; only whether it is enabled is kept.
int host_register(Context& c) {
  c.args.max_positional(0);
  const std::string me = this_host();
  const std::string name = c.args.get_or("--name", me);
  check_host_name(name);
  Store& s = c.store();
  Host h;
  s.write([&] {
    h = host_from_config(name, ResourceTracker(s).config());
    if (auto old = s.find_host(name)) {
      h.enabled = old->enabled;
      h.disabled_reason = old->disabled_reason;
      h.created_at = old->created_at;
    }
    h.libvirt_uri = c.args.get_or("--libvirt-uri", "qemu:///system");
    h.nbd_endpoint = c.args.get_or("--nbd-control", net::run_dir() + "/nbd-control.sock");
    apply_options(c.args, h);
    if (name == me) h.heartbeat_at = utc_now();
    s.put(h);
    h = *s.find_host(name);
  });
  c.show(host_to_json(h, s.usage_of(name)));
  return 0;
}

int host_list(Context& c) {
  c.args.max_positional(0);
  Store& s = c.store();
  std::vector<Json> a;
  s.read([&] {
    auto usage = s.usage_by_host();
    for (const Host& h : s.hosts()) a.push_back(host_to_json(h, usage[h.name]));
  });
  c.list(a, {"name", "availability_zone", "status", "vcpus", "memory_mb", "disk_gb", "running_vms",
             "heartbeat_at"});
  return 0;
}

int host_show(Context& c) {
  c.args.max_positional(1);
  const std::string& name = c.args.positional(0, "HOST");
  Store& s = c.store();
  Json o;
  s.read([&] {
    auto h = s.find_host(name);
    if (!h) throw not_found("host '" + name + "' not found");
    o = host_to_json(*h, s.usage_of(name));
    o["instances"] = s.instances_on(name);
  });
  c.show(o);
  return 0;
}

int host_set(Context& c) {
  c.args.max_positional(1);
  const std::string& name = c.args.positional(0, "HOST");
  bool any = false;
  for (const char* o : {"--nbd-endpoint", "--availability-zone", "--enable", "--disable"})
    any |= c.args.has(o);
  for (const auto& o : kCapacityOptions) any |= c.args.has(o.names);
  if (!any) throw invalid("host-set needs something to change (see kiln-spawn host-set --help)");
  Store& s = c.store();
  Host h;
  s.write([&] {
    auto old = s.find_host(name);
    if (!old) throw not_found("host '" + name + "' not found");
    h = *old;
    apply_options(c.args, h);
    s.put(h);
    h = *s.find_host(name);
  });
  c.show(host_to_json(h, s.usage_of(name)));
  return 0;
}

// Refused while instances are on the host (their claims and records point at it): delete them
// first, as Nova refuses to delete a compute service that hosts instances.
int host_delete(Context& c) {
  c.args.positional(0, "HOST");
  Store& s = c.store();
  for (const auto& name : c.args.positional())
    s.write([&] {
      if (!s.find_host(name)) throw not_found("host '" + name + "' not found");
      auto on = s.instances_on(name);
      if (!on.empty() || s.usage_of(name).instances > 0)
        throw busy("host '" + name + "' has instances: " + common::join(on, ", ") +
                   " (delete them first)");
      s.remove_host(name);
    });
  return 0;
}

std::vector<common::cli::Option> with_capacity(std::vector<common::cli::Option> o) {
  o.insert(o.end(), kCapacityOptions.begin(), kCapacityOptions.end());
  return o;
}

}  // namespace

CommandTable host_registry_commands() {
  const std::string capacity =
      "[--vcpus N] [--memory-mb N] [--disk-gb N] [--cpu-allocation-ratio R] "
      "[--ram-allocation-ratio R] [--disk-allocation-ratio R] [--reserved-vcpus N] "
      "[--reserved-memory-mb N] [--reserved-disk-mb N]";
  return {
      {"host-register",
       "[--name N] [--libvirt-uri U] [--nbd-endpoint E] [--availability-zone Z] " + capacity +
           " [--disable [--reason R]]",
       with_capacity({{"--name", kValue},
                      {"--nbd-endpoint", kValue},
                      {"--availability-zone", kValue},
                      {"--enable"},
                      {"--disable"},
                      {"--reason", kValue}}),
       host_register},
      {"host-list", "", {}, host_list},
      {"host-show", "HOST", {}, host_show},
      {"host-set",
       "HOST [--enable | --disable [--reason R]] [--nbd-endpoint E] [--availability-zone Z] " +
           capacity,
       with_capacity({{"--nbd-endpoint", kValue},
                      {"--availability-zone", kValue},
                      {"--enable"},
                      {"--disable"},
                      {"--reason", kValue}}),
       host_set},
      {"host-delete", "HOST...", {}, host_delete},
  };
}

}  // namespace kiln::spawn::cli

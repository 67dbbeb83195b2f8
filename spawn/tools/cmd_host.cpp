// kiln-spawn's host commands: hypervisor-stats and the settings.
#include "context.h"
#include "kiln/spawn/disk_transport.h"
#include "kiln/spawn/resources.h"
#include "perms.h"

namespace kiln::spawn::cli {

namespace {

// Settings of kiln-spawn itself, next to the resource tracker's.
constexpr const char* kQemuUserSetting = "qemu_user";

int hypervisor_stats(Context& c) {
  c.args.max_positional(0);
  ResourceTracker t(c.store());
  Json o = Json::object();
  for (const auto& s : t.stats()) {
    o[s.resource] = s.total;
    o[s.resource + "_reserved"] = s.reserved;
    o[s.resource + "_allocation_ratio"] = s.ratio;
    o[s.resource + "_capacity"] = s.capacity;
    o[s.resource + "_used"] = s.used;
    o[s.resource + "_free"] = s.free();
  }
  o["running_vms"] = t.instances();
  c.show(o);
  return 0;
}

int config_set(Context& c) {
  c.args.max_positional(2);
  const std::string& key = c.args.positional(0, "KEY");
  const std::string& value = c.args.positional(1, "VALUE");
  bool known = key == kQemuUserSetting;
  for (const auto& [k, d] : resource_settings()) known |= k == key;
  bool transport = false;
  for (const auto& [k, d] : disk_transport_settings()) transport |= k == key;
  if (!known && !transport) throw invalid("unknown setting '" + key + "'");
  if (key == kQemuUserSetting && !value.empty()) parse_host_user(value, key);
  if (transport) check_disk_transport_setting(key, value);
  Store& s = c.store();
  // Checked inside the transaction that stores it: a bad value is rolled back.
  s.write([&] {
    s.set_setting(key, value);
    ResourceTracker(s).config();
  });
  return 0;
}

int config_show(Context& c) {
  c.args.max_positional(0);
  Json o = Json::object();
  for (const auto& [k, d] : resource_settings()) o[k] = c.store().setting(k).value_or(d);
  o[kQemuUserSetting] = c.store().setting(kQemuUserSetting).value_or("(libvirt's)");
  for (const auto& [k, d] : disk_transport_settings()) o[k] = c.store().setting(k).value_or(d);
  c.show(o);
  return 0;
}

}  // namespace

CommandTable host_commands() {
  return {
      {"hypervisor-stats", "", {}, hypervisor_stats},
      {"config-set", "KEY VALUE   (VALUE '' restores the default)", {}, config_set},
      {"config-show", "", {}, config_show},
  };
}

}  // namespace kiln::spawn::cli

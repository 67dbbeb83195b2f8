// kiln-spawn flavor-*: flavors (vCPUs, memory, disk).
#include "context.h"
#include "kiln/spawn/images.h"

namespace kiln::spawn::cli {

namespace {

Json to_json(const Flavor& f) {
  return {{"name", f.name},
          {"vcpus", f.vcpus},
          {"ram", f.ram_mb},
          {"disk", f.disk_gb},
          {"builtin", f.builtin}};
}

int flavor_create(Context& c) {
  c.args.max_positional(1);
  Flavor f;
  f.name = c.args.positional(0, "NAME");
  check_name("flavor", f.name);
  auto need = [&](const char* o, uint64_t min, uint64_t max) {
    auto v = c.args.number(o, min, max);
    if (!v) throw invalid(std::string("flavor-create needs ") + o);
    return *v;
  };
  f.vcpus = static_cast<int>(need("--vcpus", 1, 1024));
  f.ram_mb = static_cast<int64_t>(need("--ram", 1, uint64_t{1} << 30));
  f.disk_gb = static_cast<int64_t>(need("--disk", 0, uint64_t{1} << 20));
  Store& s = c.store();
  s.write([&] {
    if (s.find_flavor(f.name)) throw exists("flavor '" + f.name + "' already exists");
    s.put(f);
  });
  c.show(to_json(f));
  return 0;
}

int flavor_list(Context& c) {
  c.args.max_positional(0);
  std::vector<Json> a;
  for (const auto& f : c.store().flavors()) a.push_back(to_json(f));
  c.list(a, {"name", "vcpus", "ram", "disk"});
  return 0;
}

int flavor_show(Context& c) {
  c.args.max_positional(1);
  const std::string& name = c.args.positional(0, "FLAVOR");
  auto f = c.store().find_flavor(name);
  if (!f) throw not_found("flavor '" + name + "' not found");
  c.show(to_json(*f));
  return 0;
}

int flavor_delete(Context& c) {
  c.args.positional(0, "FLAVOR");
  Store& s = c.store();
  for (const auto& r : c.args.positional())
    s.write([&] {
      if (!s.find_flavor(r)) throw not_found("flavor '" + r + "' not found");
      s.remove_flavor(r);
    });
  return 0;
}

}  // namespace

CommandTable flavor_commands() {
  return {
      {"flavor-create",
       "NAME --vcpus N --ram MiB --disk GiB",
       {{"--vcpus", kValue}, {"--ram", kValue}, {"--disk", kValue}},
       flavor_create},
      {"flavor-list", "", {}, flavor_list},
      {"flavor-show", "FLAVOR", {}, flavor_show},
      {"flavor-delete", "FLAVOR...", {}, flavor_delete},
  };
}

}  // namespace kiln::spawn::cli

// The scheduler (scheduler.h) and the hosts in spawn's store: filters and weighers on synthetic
// hosts, the claim on the chosen host, processes racing for the last slots, and a store from
// before hosts (schema version 3) that gains them without its instances noticing.
#include "kiln/spawn/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>

#include "kiln/spawn/error.h"
#include "kiln/spawn/resources.h"
#include "store_hosts.h"
#include "test_util.h"

namespace kiln::spawn {
namespace {

using testing::TempDir;
using testing::TestStore;

// A host with room for `ram_slots` instances of 1024 MiB (plenty of vCPUs and disk), no
// reserved amounts, ratios 1.
Host host(const std::string& name, int64_t ram_slots, const std::string& zone = "nova") {
  Host h;
  h.name = name;
  h.availability_zone = zone;
  h.vcpus = 64;
  h.memory_mb = ram_slots * 1024;
  h.disk_gb = 1000;
  h.cpu_allocation_ratio = h.ram_allocation_ratio = h.disk_allocation_ratio = 1.0;
  h.reserved_memory_mb = 0;
  return h;
}

Flavor one_gib() { return Flavor{"g1", 1, 1024, 10, false}; }

ScheduleRequest request(const Flavor& f = one_gib()) {
  ScheduleRequest r;
  r.flavor = f;
  return r;
}

std::vector<std::string> order(const ScheduleResult& r) {
  std::vector<std::string> out;
  for (const auto& v : r.hosts) out.push_back(v.host.name);
  return out;
}

const HostVerdict& verdict(const ScheduleResult& r, const std::string& name) {
  for (const auto& v : r.hosts)
    if (v.host.name == name) return v;
  throw std::runtime_error("no verdict for " + name);
}

// Spread takes the emptiest host (Nova's default), pack the fullest one that fits; each ranks
// all the hosts that passed the other way round.
TEST(Scheduler, SpreadAndPackPickOppositeEnds) {
  std::vector<Host> hosts = {host("a", 4), host("b", 8), host("c", 2)};
  // b: 7 GiB free, a 4, c 2 (vCPUs and disk equal, so RAM decides: each weigher is normalised
  // over the hosts, and a small difference there would weigh as much as this one).
  std::map<std::string, Usage> usage = {{"b", Usage{0, 1024, 0, 1}}};
  ScheduleResult spread = schedule_hosts(request(), hosts, usage, WeighPolicy::kSpread);
  EXPECT_EQ(spread.chosen, "b");
  EXPECT_EQ(order(spread), (std::vector<std::string>{"b", "a", "c"}));
  ScheduleResult pack = schedule_hosts(request(), hosts, usage, WeighPolicy::kPack);
  EXPECT_EQ(pack.chosen, "c");
  EXPECT_EQ(order(pack), (std::vector<std::string>{"c", "a", "b"}));
  EXPECT_GT(verdict(spread, "b").weight, verdict(spread, "a").weight);
  // A full host is filtered out, whatever the policy.
  usage["c"] = Usage{2, 2048, 20, 2};
  pack = schedule_hosts(request(), hosts, usage, WeighPolicy::kPack);
  EXPECT_EQ(pack.chosen, "a");
  EXPECT_EQ(verdict(pack, "c").filter, "ResourceFilter");
  EXPECT_NE(verdict(pack, "c").reason.find("memory (MiB): requested 1024, free 0 of 2048"),
            std::string::npos)
      << verdict(pack, "c").reason;
  // Equal hosts: the first name, on both policies.
  std::vector<Host> twins = {host("y", 4), host("x", 4)};
  EXPECT_EQ(schedule_hosts(request(), twins, {}, WeighPolicy::kSpread).chosen, "x");
  EXPECT_EQ(schedule_hosts(request(), twins, {}, WeighPolicy::kPack).chosen, "x");
}

// Capacity is Placement's (total - reserved) * ratio on every resource.
TEST(Scheduler, RatiosAndReservedAmountsCount) {
  Host h = host("h", 1);  // 1024 MiB
  h.ram_allocation_ratio = 1.5;
  h.reserved_memory_mb = 512;  // (1024 - 512) * 1.5 = 768
  Flavor f{"f", 1, 700, 1, false};
  EXPECT_EQ(schedule_hosts(request(f), {h}, {}, WeighPolicy::kSpread).chosen, "h");
  f.ram_mb = 769;
  ScheduleResult r = schedule_hosts(request(f), {h}, {}, WeighPolicy::kSpread);
  EXPECT_EQ(r.chosen, "");
  EXPECT_NE(r.failure.find("free 768 of 768 (total 1024, reserved 512, allocation ratio 1.5"),
            std::string::npos)
      << r.failure;
  h.vcpus = 2;
  h.reserved_vcpus = 1;
  h.cpu_allocation_ratio = 2.0;  // 2 vCPUs to give
  f = Flavor{"f", 3, 1, 1, false};
  r = schedule_hosts(request(f), {h}, {}, WeighPolicy::kSpread);
  EXPECT_NE(r.failure.find("vCPUs: requested 3, free 2 of 2"), std::string::npos) << r.failure;
  EXPECT_EQ(r.failure.find("memory"), std::string::npos) << r.failure;
}

TEST(Scheduler, ZonesForcedHostsAndDisabledHosts) {
  std::vector<Host> hosts = {host("a", 8, "east"), host("b", 4, "west"), host("c", 2, "west")};
  ScheduleRequest r = request();
  r.availability_zone = "west";
  ScheduleResult res = schedule_hosts(r, hosts, {}, WeighPolicy::kSpread);
  EXPECT_EQ(res.chosen, "b");
  EXPECT_EQ(verdict(res, "a").filter, "AvailabilityZoneFilter");
  EXPECT_EQ(verdict(res, "a").reason, "in availability zone east, not west");
  r.availability_zone = "north";
  res = schedule_hosts(r, hosts, {}, WeighPolicy::kSpread);
  EXPECT_EQ(res.chosen, "");
  EXPECT_EQ(res.failure.rfind("No valid host was found. There are not enough hosts available. ", 0),
            0u)
      << res.failure;
  // --host: only that host, though spread would prefer another; still filtered.
  r.availability_zone.clear();
  r.host = "c";
  res = schedule_hosts(r, hosts, {}, WeighPolicy::kSpread);
  EXPECT_EQ(res.chosen, "c");
  EXPECT_EQ(verdict(res, "a").filter, "HostFilter");
  r.host = "nope";
  EXPECT_EQ(schedule_hosts(r, hosts, {}, WeighPolicy::kSpread).chosen, "");
  // ZONE:HOST, as Nova spells it.
  std::string zone, forced;
  split_zone_and_host("west:c", &zone, &forced);
  EXPECT_EQ(zone, "west");
  EXPECT_EQ(forced, "c");
  split_zone_and_host(":c", &zone, &forced);
  EXPECT_EQ(zone, "");
  EXPECT_EQ(forced, "c");
  EXPECT_THROW(split_zone_and_host("a:b:c", &zone, &forced), Error);
  // A disabled host takes nothing, and says why.
  hosts[0].enabled = false;
  hosts[0].disabled_reason = "maintenance";
  res = schedule_hosts(request(), hosts, {}, WeighPolicy::kSpread);
  EXPECT_EQ(res.chosen, "b");
  EXPECT_EQ(verdict(res, "a").filter, "ComputeFilter");
  EXPECT_EQ(verdict(res, "a").reason, "disabled (maintenance)");
  // No host at all.
  res = schedule_hosts(request(), {}, {}, WeighPolicy::kSpread);
  EXPECT_NE(res.failure.find("No host is registered"), std::string::npos) << res.failure;
}

// An image's min_disk and min_ram against the flavor: refused before any host is looked at.
TEST(Scheduler, ImageMinimumsAgainstTheFlavor) {
  std::vector<Host> hosts = {host("a", 8)};
  ScheduleRequest r = request(Flavor{"f", 1, 1024, 10, false});
  Image img;
  img.name = "big";
  img.min_disk = 10;
  img.min_ram = 1024;
  r.image = img;
  EXPECT_EQ(schedule_hosts(r, hosts, {}, WeighPolicy::kSpread).chosen, "a");
  r.image->min_disk = 11;
  try {
    schedule_hosts(r, hosts, {}, WeighPolicy::kSpread);
    FAIL() << "min_disk 11 GiB fitted a 10 GiB flavor";
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("Flavor's disk is too small for requested image"),
              std::string::npos)
        << e.what();
  }
  r.image->min_disk = 0;
  r.image->min_ram = 2048;
  try {
    schedule_hosts(r, hosts, {}, WeighPolicy::kSpread);
    FAIL() << "min_ram 2048 MiB fitted a 1024 MiB flavor";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Flavor's memory is too small for requested image"),
              std::string::npos)
        << e.what();
  }
}

// A store with hosts of its own: the one the migration registered (this machine) removed.
void only_hosts(Store& s, const std::vector<Host>& hosts) {
  s.write([&] {
    for (const Host& h : s.hosts()) s.remove_host(h.name);
    for (const Host& h : hosts) s.put(h);
  });
}

TEST(Hosts, RecordsReadBackAndClaimsArePerHost) {
  TempDir d;
  TestStore s(d.str());
  Host a = host("a", 4, "east");
  a.libvirt_uri = "qemu+ssh://a/system";
  a.nbd_endpoint = "/run/kiln/nbd-control.sock";
  a.cpu_allocation_ratio = 2.5;
  a.reserved_disk_mb = 100;
  a.enabled = false;
  a.disabled_reason = "why";
  only_hosts(s, {a, host("b", 2)});
  auto got = s.find_host("a");
  ASSERT_TRUE(got);
  EXPECT_EQ(got->libvirt_uri, a.libvirt_uri);
  EXPECT_EQ(got->nbd_endpoint, a.nbd_endpoint);
  EXPECT_EQ(got->availability_zone, "east");
  EXPECT_DOUBLE_EQ(got->cpu_allocation_ratio, 2.5);
  EXPECT_EQ(got->memory_mb, 4096);
  EXPECT_EQ(got->reserved_disk_mb, 100);
  EXPECT_FALSE(got->enabled);
  EXPECT_EQ(got->disabled_reason, "why");
  EXPECT_FALSE(got->created_at.empty());
  ASSERT_EQ(s.hosts().size(), 2u);
  EXPECT_EQ(s.hosts()[1].name, "b");

  // a is disabled: the claim goes to b, and is counted there only.
  Scheduler sch(s);
  EXPECT_EQ(sch.claim(request(), "i1").name, "b");
  EXPECT_EQ(s.usage_of("b").ram_mb, 1024);
  EXPECT_EQ(s.usage_of("a").instances, 0);
  EXPECT_EQ(s.usage_by_host().size(), 1u);
  EXPECT_EQ(sch.claim(request(), "i2").name, "b");
  try {
    sch.claim(request(), "i3");
    FAIL() << "a third claim fitted on b";
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kNoSpace);
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("No valid host was found. There are not enough hosts available. ", 0), 0u);
    EXPECT_NE(m.find("a: disabled (why)"), std::string::npos) << m;
    EXPECT_NE(m.find("b: insufficient resources for flavor g1: memory (MiB)"), std::string::npos)
        << m;
  }
  EXPECT_FALSE(s.has_claim("i3"));
  // The dry run claims nothing.
  s.write([&] {
    auto h = *s.find_host("a");
    h.enabled = true;
    s.put(h);
  });
  EXPECT_EQ(sch.plan(request()).chosen, "a");
  EXPECT_EQ(s.usage().instances, 2);
  // The weigher setting.
  s.set_setting(kWeigherSetting, "pack");
  EXPECT_EQ(sch.policy(), WeighPolicy::kPack);
  s.set_setting(kWeigherSetting, "fast");
  EXPECT_THROW(sch.policy(), Error);
}

// Six processes, each with its own connection, claim at once until nothing fits; two hosts have
// five slots between them. Exactly five claims succeed, every other attempt is "No valid
// host", and the claims fill both hosts exactly. The choice and the claim are one transaction:
// apart, two schedulers would both see the last slot free.
TEST(Hosts, SchedulersRacingForTheLastSlotsNeverOvercommit) {
  TempDir d;
  {
    TestStore s(d.str());
    only_hosts(s, {host("a", 3), host("b", 2)});
  }
  const char* scale = std::getenv("KILN_TEST_SCALE");
  const int rounds = std::max(2, static_cast<int>(4 * (scale ? std::atof(scale) : 1.0)));
  std::vector<int> rcs = testing::in_children(6, [&](int child) {
    TestStore s(d.str());
    Scheduler sch(s);
    int won = 0;
    for (int i = 0; i < rounds; ++i) {
      try {
        sch.claim(request(), std::to_string(child * 100 + i));
        ++won;
      } catch (const Error& e) {
        if (e.reason() != Reason::kNoSpace) return 97;
        if (std::string(e.what()).find("No valid host was found") == std::string::npos) return 96;
      }
    }
    return won;
  });
  int total = 0;
  for (int rc : rcs) {
    ASSERT_LE(rc, rounds) << "child failed with " << rc;
    total += rc;
  }
  EXPECT_EQ(total, 5);
  TestStore s(d.str());
  EXPECT_EQ(s.usage_of("a").ram_mb, 3 * 1024);
  EXPECT_EQ(s.usage_of("b").ram_mb, 2 * 1024);
  EXPECT_EQ(s.usage().instances, 5);
}

// A store from before hosts (schema version 3, what kiln-spawn wrote until now) with an
// instance and its claim: opening it registers this host from the settings it had, and puts
// the instance and the claim on it; capacity and usage read as before.
TEST(Hosts, MigrationPutsExistingInstancesOnThisHost) {
  TempDir d;
  {
    auto all = store_migrations(d.str());
    all.resize(3);
    common::Database::Options o;
    o.schema = teststore::schema_for("spawn", d.str());
    common::Database old(teststore::url().empty() ? d.str() + "/spawn.db" : teststore::url(), all,
                         o);
    ASSERT_EQ(old.schema_version(), 3);
    old.exec(
        "INSERT INTO settings(key, value) VALUES ('host_vcpus', '6'), ('host_memory_mb', "
        "'3000'), ('host_disk_gb', '50'), ('ram_allocation_ratio', '2.0');"
        "INSERT INTO instances(id, name, image_id, image_digest, image_format, flavor, vcpus, "
        "ram_mb, disk_gb, network, status, created_at, updated_at) VALUES ('id-old', 'old', "
        "'img', 'dig', 'qcow2', 'm1.tiny', 1, 512, 1, 'net', 'active', 'then', 'then');"
        "INSERT INTO claims(instance_id, vcpus, ram_mb, disk_gb) VALUES ('id-old', 1, 512, 1);");
  }
  TestStore s(d.str());
  const std::string me = this_host();
  auto inst = s.find_instance("old");
  ASSERT_TRUE(inst);
  EXPECT_EQ(inst->host, me);
  EXPECT_EQ(s.instances_on(me), std::vector<std::string>{"old"});
  EXPECT_EQ(s.usage_of(me).ram_mb, 512);
  auto h = s.find_host(me);
  ASSERT_TRUE(h);
  EXPECT_EQ(s.hosts().size(), 1u);
  EXPECT_EQ(h->vcpus, 6);
  EXPECT_EQ(h->memory_mb, 3000);
  EXPECT_EQ(h->disk_gb, 50);
  EXPECT_DOUBLE_EQ(h->ram_allocation_ratio, 2.0);
  EXPECT_EQ(h->reserved_memory_mb, 512);
  EXPECT_TRUE(h->enabled);
  EXPECT_TRUE(h->from_settings);
  // The resource tracker's view of this host is what it was: (3000 - 512) * 2 = 4976 MiB.
  auto st = ResourceTracker(s).stats();
  EXPECT_EQ(st[1].capacity, 4976);
  EXPECT_EQ(st[1].used, 512);
  // Its settings still drive it.
  s.set_setting("host_memory_mb", "1024");
  EXPECT_EQ(ResourceTracker(s).stats()[1].capacity, 1024);
  EXPECT_EQ(s.find_host(me)->memory_mb, 1024);
  // Version 6 made them this host's: another host sharing the database has none of them.
  EXPECT_EQ(s.host_setting(me, "ram_allocation_ratio"), "2.0");
  EXPECT_FALSE(s.host_setting("another-host", "ram_allocation_ratio"));
}

// With a shared database each host keeps its own machine settings (its kiln-nbd endpoint, its
// capacity): before, the last config-set of any host was every host's. The scheduler's weigher
// is one for all.
TEST(Hosts, MachineSettingsArePerHost) {
  using Settings = std::vector<std::pair<std::string, std::string>>;
  TempDir d;
  TestStore s(d.str());
  ::setenv("KILN_HOST", "compute-a", 1);
  s.set_setting("nbd_tcp_address", "192.0.2.1:10809");
  s.set_setting("host_vcpus", "8");
  s.set_setting("scheduler_weigher", "pack");
  ::setenv("KILN_HOST", "compute-b", 1);
  EXPECT_FALSE(s.setting("nbd_tcp_address"));
  EXPECT_FALSE(s.setting("host_vcpus"));
  EXPECT_EQ(s.setting("scheduler_weigher"), "pack");
  s.set_setting("nbd_tcp_address", "192.0.2.2:10809");
  EXPECT_EQ(s.setting("nbd_tcp_address"), "192.0.2.2:10809");
  EXPECT_EQ(s.host_setting("compute-a", "nbd_tcp_address"), "192.0.2.1:10809");
  s.set_setting("nbd_tcp_address", "");  // b's default again; a's stays
  EXPECT_FALSE(s.setting("nbd_tcp_address"));
  EXPECT_EQ(s.settings(), (Settings{{"scheduler_weigher", "pack"}}));
  // What another host runs with: its own machine settings, the global ones.
  EXPECT_EQ(s.setting_of("compute-a", "host_vcpus"), "8");
  EXPECT_EQ(s.setting_of("compute-a", "scheduler_weigher"), "pack");
  EXPECT_FALSE(s.setting_of("compute-c", "nbd_tcp_address"));
  ::setenv("KILN_HOST", "compute-a", 1);
  EXPECT_EQ(s.settings(), (Settings{{"host_vcpus", "8"},
                                    {"nbd_tcp_address", "192.0.2.1:10809"},
                                    {"scheduler_weigher", "pack"}}));
  ::unsetenv("KILN_HOST");
}

TEST(Hosts, HostNamesAreChecked) {
  check_host_name("compute-1.example.org");
  check_host_name("a");
  for (const std::string& bad : {std::string(), std::string("-a"), std::string("a b"),
                                 std::string("a/b"), std::string("a:b"), std::string(256, 'a')})
    EXPECT_THROW(check_host_name(bad), Error) << bad;
  ::setenv("KILN_HOST", "compute-7", 1);
  EXPECT_EQ(this_host(), "compute-7");
  ::setenv("KILN_HOST", "bad name", 1);
  EXPECT_THROW(this_host(), Error);
  ::unsetenv("KILN_HOST");
}

}  // namespace
}  // namespace kiln::spawn

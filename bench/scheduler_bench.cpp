// kiln-scheduler-bench: the scheduler's time per decision against a store holding N simulated
// hosts (rows inserted directly) with `claims` claims each, on SQLite or PostgreSQL. Times
// Scheduler::plan() (the dry run: one read of every host and its usage, filters, weighers) and
// Scheduler::claim() (the same inside the write transaction, plus the claim's insert and the
// commit), each claim released afterwards so every decision sees the same store. Prints one
// JSON line: median and p99 in microseconds. Driven by bench/scheduler_bench.py.
//
//   kiln-scheduler-bench --dir DIR [--db URL] --hosts N [--claims C] [--decisions M]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kiln/spawn/scheduler.h"
#include "kiln/spawn/store.h"

namespace {

using kiln::spawn::Flavor;
using kiln::spawn::Host;
using kiln::spawn::Scheduler;
using kiln::spawn::ScheduleRequest;
using kiln::spawn::Store;
using Clock = std::chrono::steady_clock;

struct Summary {
  double median_us, p99_us;
};

Summary summarise(std::vector<double> us) {
  std::sort(us.begin(), us.end());
  const size_t n = us.size();
  return {us[n / 2], us[std::min(n - 1, (n * 99 + 99) / 100 - 1)]};
}

const char* arg(int argc, char** argv, const char* name, const char* dflt) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == name) return argv[i + 1];
  return dflt;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string dir = arg(argc, argv, "--dir", "");
  const std::string db = arg(argc, argv, "--db", "");
  const int hosts = std::atoi(arg(argc, argv, "--hosts", "10"));
  const int claims = std::atoi(arg(argc, argv, "--claims", "5"));
  const int decisions = std::atoi(arg(argc, argv, "--decisions", "200"));
  if (dir.empty() || hosts < 1 || claims < 0 || decisions < 1) {
    std::fprintf(stderr,
                 "usage: kiln-scheduler-bench --dir DIR [--db URL] --hosts N [--claims C] "
                 "[--decisions M]\n");
    return 2;
  }
  try {
    Store s(dir, db);
    // Simulated hosts: every tenth disabled, three zones, sizes that differ so the weighers
    // have something to rank; `claims` m1.small-like claims on each.
    s.write([&] {
      for (const Host& h : s.hosts()) s.remove_host(h.name);
      for (int i = 0; i < hosts; ++i) {
        Host h;
        char name[32];
        std::snprintf(name, sizeof name, "sim-%05d", i);
        h.name = name;
        h.availability_zone = i % 3 == 0 ? "nova" : i % 3 == 1 ? "east" : "west";
        h.vcpus = 32 + i % 7 * 8;
        h.memory_mb = 131072 + i % 5 * 32768;
        h.disk_gb = 2000 + i % 11 * 100;
        h.enabled = i % 10 != 9;
        s.put(h);
        for (int c = 0; c < claims; ++c)
          s.put_claim(h.name + "-c" + std::to_string(c), 1, 2048, 20, h.name);
      }
    });
    Scheduler sch(s);
    ScheduleRequest r;
    r.flavor = Flavor{"m1.small", 1, 2048, 20, false};
    std::vector<double> plan_us, claim_us;
    for (int i = 0; i < decisions; ++i) {
      auto t0 = Clock::now();
      auto res = sch.plan(r);
      auto t1 = Clock::now();
      if (res.chosen.empty()) throw std::runtime_error(res.failure);
      plan_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    for (int i = 0; i < decisions; ++i) {
      const std::string id = "bench-" + std::to_string(i);
      auto t0 = Clock::now();
      sch.claim(r, id);
      auto t1 = Clock::now();
      claim_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      s.write([&] { s.remove_claim(id); });
    }
    Summary p = summarise(plan_us), c = summarise(claim_us);
    std::printf(
        "{\"hosts\": %d, \"claims\": %d, \"decisions\": %d, \"plan_median_us\": %.1f, "
        "\"plan_p99_us\": %.1f, \"claim_median_us\": %.1f, \"claim_p99_us\": %.1f}\n",
        hosts, hosts * claims, decisions, p.median_us, p.p99_us, c.median_us, c.p99_us);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kiln-scheduler-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}

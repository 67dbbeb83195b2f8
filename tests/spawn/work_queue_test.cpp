// The work queue of spawn's store (store_queue.cpp): rows addressed to a host, taken once by
// that host's agent, also when several agents race for them (SQLite and PostgreSQL alike:
// spawn.pg.WorkQueue.* runs these against PostgreSQL).
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <set>

#include "kiln/spawn/error.h"
#include "kiln/spawn/store.h"
#include "test_util.h"

namespace kiln::spawn {
namespace {

using testing::TempDir;
using testing::TestStore;

WorkItem row(const std::string& host, const std::string& kind, const std::string& instance) {
  WorkItem w;
  w.host = host;
  w.kind = kind;
  w.instance_id = instance;
  w.payload = R"({"n":1})";
  return w;
}

TEST(WorkQueue, RowsAreTakenByTheirHostOldestFirstAndFinish) {
  TempDir d;
  TestStore s(d.str());
  int64_t a1 = s.enqueue(row("a", "build", "i1"));
  int64_t b1 = s.enqueue(row("b", "build", "i2"));
  int64_t a2 = s.enqueue(row("a", "delete", "i1"));
  EXPECT_LT(a1, b1);
  EXPECT_LT(b1, a2);
  EXPECT_TRUE(s.work_pending("i1", "build"));
  EXPECT_FALSE(s.work_pending("i2", "delete"));

  auto t = s.take_work("a", 42);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->id, a1);
  EXPECT_EQ(t->kind, "build");
  EXPECT_EQ(t->payload, R"({"n":1})");
  EXPECT_EQ(t->state, kWorkRunning);
  EXPECT_EQ(s.find_work(a1)->state, kWorkRunning);
  EXPECT_EQ(s.find_work(a1)->taken_by, 42);
  EXPECT_TRUE(s.work_pending("i1", "build"));  // running counts

  s.finish_work(a1, true, "active", "");
  EXPECT_EQ(s.find_work(a1)->state, kWorkDone);
  EXPECT_EQ(s.find_work(a1)->result, "active");
  EXPECT_FALSE(s.work_pending("i1", "build"));

  t = s.take_work("a", 42);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->id, a2);
  s.finish_work(a2, false, "", "no such domain");
  EXPECT_EQ(s.find_work(a2)->state, kWorkFailed);
  EXPECT_EQ(s.find_work(a2)->error, "no such domain");
  EXPECT_FALSE(s.take_work("a", 42));  // nothing queued for a any more; b's row stays b's
  EXPECT_EQ(s.find_work(b1)->state, kWorkQueued);
  EXPECT_EQ(s.work("b").size(), 1u);
  EXPECT_EQ(s.work().size(), 3u);
}

TEST(WorkQueue, RunningRowsOfADeadAgentFailAndRemovingTheInstanceRemovesItsRows) {
  TempDir d;
  TestStore s(d.str());
  Instance i;
  i.id = "i1";
  i.name = "one";
  s.put(i);
  int64_t r1 = s.enqueue(row("a", "build", "i1"));
  int64_t r2 = s.enqueue(row("a", "delete", "i1"));
  ASSERT_TRUE(s.take_work("a", 7));
  auto failed = s.fail_running_work("a", "the agent died");
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].id, r1);
  EXPECT_EQ(s.find_work(r1)->state, kWorkFailed);
  EXPECT_EQ(s.find_work(r1)->error, "the agent died");
  EXPECT_EQ(s.find_work(r2)->state, kWorkQueued);  // queued rows wait for the next agent
  s.remove_instance("i1");
  EXPECT_TRUE(s.work().empty());
}

// What net-sync rows use: one queued row per host, kind and instance (it reads the state when it
// runs); once taken, the next change queues a new one; a removed row is gone.
TEST(WorkQueue, EnqueueOnceJoinsTheQueuedRowAndRemovedRowsAreGone) {
  TempDir d;
  TestStore s(d.str());
  int64_t a = s.enqueue_once(row("a", "net-sync", "n1"));
  EXPECT_EQ(s.enqueue_once(row("a", "net-sync", "n1")), a);
  int64_t other_host = s.enqueue_once(row("b", "net-sync", "n1"));
  int64_t other_net = s.enqueue_once(row("a", "net-sync", "n2"));
  int64_t other_kind = s.enqueue_once(row("a", "build", "n1"));
  EXPECT_EQ(std::set<int64_t>({a, other_host, other_net, other_kind}).size(), 4u);
  EXPECT_EQ(s.work().size(), 4u);
  auto t = s.take_work("a", 9);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->id, a);
  int64_t again = s.enqueue_once(row("a", "net-sync", "n1"));  // the running one is no help
  EXPECT_NE(again, a);
  s.remove_work(a);
  EXPECT_FALSE(s.find_work(a));
  EXPECT_EQ(s.find_work(again)->state, kWorkQueued);
  EXPECT_EQ(s.work().size(), 4u);
}

TEST(WorkQueue, RefusesRowsWithoutHostKindOrInstance) {
  TempDir d;
  TestStore s(d.str());
  EXPECT_THROW(s.enqueue(row("", "build", "i")), Error);
  EXPECT_THROW(s.enqueue(row("a", "", "i")), Error);
  EXPECT_THROW(s.enqueue(row("a", "build", "")), Error);
  EXPECT_TRUE(s.work().empty());
}

// Agents in several processes (hosts) take rows at once: every row is taken exactly once.
// Without the one write transaction around the choice and the update, two agents read the same
// oldest row and both run it.
TEST(WorkQueue, AgentsRacingTakeEveryRowExactlyOnce) {
  TempDir d;
  constexpr int kRows = 60, kAgents = 6;
  std::set<int64_t> all;
  {
    TestStore s(d.str());
    for (int i = 0; i < kRows; ++i) {
      std::string id = "i";
      id += std::to_string(i);
      all.insert(s.enqueue(row("a", "build", id)));
    }
  }
  std::vector<int> rcs = testing::in_children(kAgents, [&](int child) {
    TestStore s(d.str());
    std::ofstream out(d.str() + "/taken-" + std::to_string(child));
    while (auto w = s.take_work("a", 1000 + child)) out << w->id << "\n";
    return out ? 0 : 1;
  });
  for (int rc : rcs) EXPECT_EQ(rc, 0);
  std::multiset<int64_t> taken;
  for (int c = 0; c < kAgents; ++c) {
    std::ifstream in(d.str() + "/taken-" + std::to_string(c));
    for (int64_t id; in >> id;) taken.insert(id);
  }
  EXPECT_EQ(taken.size(), size_t(kRows));  // none twice
  EXPECT_EQ(std::set<int64_t>(taken.begin(), taken.end()), all);
  TestStore s(d.str());
  for (const auto& w : s.work()) {
    EXPECT_EQ(w.state, kWorkRunning);
    EXPECT_GE(w.taken_by, 1000);
  }
}

}  // namespace
}  // namespace kiln::spawn

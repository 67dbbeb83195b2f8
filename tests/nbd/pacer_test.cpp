// ReceivePacer (nbdserver/nbd/src/pacer.h) against model clients: each receive brings `batch`
// requests, and the client sends them at a rate that depends on the pacer's wait (the level it
// returned). Simulated time, so the tests are exact and quick.
#include "pacer.h"

#include <gtest/gtest.h>

#include <array>
#include <functional>
#include <random>

namespace kiln::nbd {
namespace {

using Clock = ReceivePacer::Clock;
using Micros = ReceivePacer::Micros;
constexpr Micros kMax(200);
constexpr size_t kTop = ReceivePacer::kLevels - 1;

struct Model {
  std::array<double, ReceivePacer::kLevels> rate;  // requests per second at each level
  uint64_t batch = 16;
  double noise = 0;  // each 10 ms of the client's time runs this much faster or slower, at most
};

struct Outcome {
  std::array<uint64_t, ReceivePacer::kLevels> requests{};  // served at each level
  double share(size_t level) const {
    uint64_t all = 0;
    for (uint64_t n : requests) all += n;
    return double(requests[level]) / double(all);
  }
};

// Runs `seconds` of the model from `t`, counting requests only in the last half (after the
// pacer has found its level).
Outcome run(ReceivePacer& pacer, const Model& m, Clock::time_point& t, double seconds) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> jitter(1 - m.noise, 1 + m.noise);
  double factor = 1;
  Clock::time_point next_jitter = t;
  const Clock::time_point end =
      t + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  const Clock::time_point count_from = t + (end - t) / 2;
  Outcome out;
  while (t < end) {
    if (t >= next_jitter) {
      factor = jitter(rng);
      next_jitter = t + std::chrono::milliseconds(10);
    }
    const Micros wait = pacer.before_receive(t, m.batch);
    const size_t level = pacer.level();
    if (m.batch >= ReceivePacer::kMinBatch) {
      EXPECT_EQ(wait, level == 0 ? Micros(0) : kMax / int(1u << (kTop - level)))
          << "level " << level;
    }
    if (t >= count_from) out.requests[level] += m.batch;
    t += std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(double(m.batch) / (m.rate[level] * factor)));
  }
  return out;
}

// A fresh pacer serving `m` for `seconds`.
Outcome fresh_run(const Model& m, double seconds) {
  ReceivePacer pacer(kMax);
  Clock::time_point t{};
  return run(pacer, m, t, seconds);
}

TEST(ReceivePacer, NeverWaitsWithoutAMaximum) {
  ReceivePacer pacer(Micros(0));
  Clock::time_point t{};
  for (int i = 0; i < 100000; ++i) {
    EXPECT_EQ(pacer.before_receive(t, 32), Micros(0));
    t += std::chrono::microseconds(100);
  }
}

TEST(ReceivePacer, ClimbsToTheLongestWaitWhenItCostsNothing) {
  EXPECT_GT(fresh_run({{80e3, 80e3, 80e3, 80e3, 80e3}}, 2).share(kTop), 0.85);
}

TEST(ReceivePacer, ClimbsWhenWaitingServesMore) {
  // A client bound by its own CPU, which handles batches of replies more cheaply.
  EXPECT_GT(fresh_run({{50e3, 60e3, 70e3, 75e3, 80e3}}, 2).share(kTop), 0.85);
}

TEST(ReceivePacer, StaysAtNoWaitWhenWaitingCostsRequests) {
  // A client that has sent all it can and waits for the replies.
  EXPECT_GT(fresh_run({{80e3, 60e3, 45e3, 30e3, 20e3}}, 4).share(0), 0.9);
}

TEST(ReceivePacer, SettlesWhereTheRateIsHighest) {
  EXPECT_GT(fresh_run({{50e3, 65e3, 75e3, 80e3, 65e3}}, 4).share(3), 0.8);
}

TEST(ReceivePacer, SmallLossesAtEachStepDoNotAddUp) {
  // Each longer wait costs 6 % against the one below, less than the tolerance, but the third
  // step costs 18 % against no wait (a client with few large requests in flight).
  const Outcome o = fresh_run({{100e3, 94e3, 88e3, 82e3, 76e3}}, 4);
  EXPECT_GT(o.share(0) + o.share(1), 0.85);
  EXPECT_LT(o.share(3) + o.share(4), 0.05);
}

TEST(ReceivePacer, FindsItsWayDownWhenTheClientChanges) {
  // Waiting cost nothing, so the pacer waits as long as it may; then the client changes to
  // one that waiting slows down, without a pause. Probes one step down find that out.
  ReceivePacer pacer(kMax);
  Clock::time_point t{};
  run(pacer, {{80e3, 80e3, 80e3, 80e3, 80e3}}, t, 1);
  ASSERT_EQ(pacer.level(), kTop);
  const Outcome o = run(pacer, {{80e3, 60e3, 45e3, 30e3, 20e3}}, t, 8);
  EXPECT_GT(o.share(0), 0.8);
}

TEST(ReceivePacer, HoldsItsCourseThroughNoise) {
  EXPECT_GT(fresh_run({{80e3, 80e3, 80e3, 80e3, 80e3}, 16, 0.08}, 4).share(kTop), 0.7);
  EXPECT_GT(fresh_run({{80e3, 60e3, 45e3, 30e3, 20e3}, 16, 0.08}, 4).share(0), 0.8);
}

TEST(ReceivePacer, NoWaitAfterASingleRequestOrForAShallowClient) {
  ReceivePacer pacer(kMax);
  Clock::time_point t{};
  run(pacer, {{80e3, 80e3, 80e3, 80e3, 80e3}}, t, 1);
  ASSERT_EQ(pacer.level(), kTop);
  EXPECT_EQ(pacer.before_receive(t, 1), Micros(0));  // one request: the client waits for it
  EXPECT_EQ(pacer.before_receive(t, 16), kMax);

  // A client that never brings kDeep requests in one receive keeps few in flight.
  ReceivePacer shallow(kMax);
  t = {};
  Model m{{80e3, 80e3, 80e3, 80e3, 80e3}, ReceivePacer::kDeep - 1};
  for (int i = 0; i < 20000; ++i) {
    EXPECT_EQ(shallow.before_receive(t, m.batch), Micros(0));
    t += std::chrono::microseconds(50);
  }
}

TEST(ReceivePacer, StartsOverAfterTheClientPauses) {
  ReceivePacer pacer(kMax);
  Clock::time_point t{};
  run(pacer, {{80e3, 80e3, 80e3, 80e3, 80e3}}, t, 1);
  ASSERT_EQ(pacer.level(), kTop);
  t += ReceivePacer::kIdle + std::chrono::milliseconds(1);
  EXPECT_EQ(pacer.before_receive(t, 16), Micros(0));
  EXPECT_EQ(pacer.level(), 0u);
}

}  // namespace
}  // namespace kiln::nbd

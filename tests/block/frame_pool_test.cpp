// The per-thread cache of coroutine frames (nbdserver/block/src/frame_pool.cpp): frames of
// every size, many alive at once, freed in any order and on other threads, come back whole.
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <thread>
#include <vector>

#include "kiln/block/reactor.h"
#include "kiln/common/sanitizer.h"

using namespace kiln::block;

namespace {

// A coroutine whose frame holds N bytes across a suspension: it fills them from `seed`, sleeps
// (so other tasks' frames are made and freed meanwhile) and sums them.
template <size_t N>
Task<uint64_t> hold(Reactor& r, uint8_t seed, std::chrono::microseconds nap) {
  std::array<uint8_t, N> bytes;
  std::iota(bytes.begin(), bytes.end(), seed);
  co_await r.sleep(nap);
  uint64_t sum = 0;
  for (uint8_t b : bytes) sum += b;
  co_return sum;
}

template <size_t N>
uint64_t expected(uint8_t seed) {
  uint64_t sum = 0;
  for (size_t i = 0; i < N; ++i) sum += uint8_t(seed + i);
  return sum;
}

// Runs `count` tasks of frame sizes from 32 bytes to 4 KiB at once, each sleeping a different
// time so that they end in another order than they began; returns how many came back wrong.
int run_mixed(Reactor& r, int count) {
  int wrong = 0;
  WaitGroup group(r);
  auto one = [&](int i) -> Task<void> {
    const auto nap = std::chrono::microseconds(50 + (i * 37) % 400);
    const auto seed = uint8_t(i);
    bool right;
    switch (i % 5) {
      case 0:
        right = co_await hold<32>(r, seed, nap) == expected<32>(seed);
        break;
      case 1:
        right = co_await hold<200>(r, seed, nap) == expected<200>(seed);
        break;
      case 2:
        right = co_await hold<1000>(r, seed, nap) == expected<1000>(seed);
        break;
      case 3:
        right = co_await hold<2000>(r, seed, nap) == expected<2000>(seed);
        break;
      default:
        right = co_await hold<4096>(r, seed, nap) == expected<4096>(seed);
        break;
    }
    wrong += !right;
  };
  r.run([&]() -> Task<void> {
    for (int i = 0; i < count; ++i) r.spawn(one(i), &group);
    co_await group.wait();
  }());
  return wrong;
}

}  // namespace

TEST(FramePool, ManyFramesAliveAtOnceComeBackWhole) {
  Reactor r;
  for (int round = 0; round < 3; ++round) EXPECT_EQ(run_mixed(r, 500), 0) << "round " << round;
}

TEST(FramePool, KeepsFreedFramesForTheNextTasksAndNotWithoutBound) {
  Reactor r;
  EXPECT_EQ(run_mixed(r, 3000), 0);
  const size_t kept = detail::cached_frames();
  if (KILN_ASAN) {
    EXPECT_EQ(kept, 0u) << "no reuse under AddressSanitizer";
  } else {
    EXPECT_GT(kept, 0u);
    EXPECT_LE(kept, 32u * 64u);  // kClasses * kPerClass
    // The next round takes its frames from what was kept.
    EXPECT_EQ(run_mixed(r, 50), 0);
  }
}

TEST(FramePool, FramesEndOnOtherThreadsAndThreadsEndWithFramesKept) {
  // Tasks made (not started) on this thread and destroyed on others, whose caches then end
  // with the threads; then the same on the other side.
  for (int round = 0; round < 4; ++round) {
    Reactor r;
    std::vector<Task<uint64_t>> made;
    for (int i = 0; i < 200; ++i)
      made.push_back(i % 2 ? hold<300>(r, 1, {}) : hold<1500>(r, 2, {}));
    std::thread([&] { made.clear(); }).join();
    std::thread([&] {
      Reactor other;
      std::vector<Task<uint64_t>> theirs;
      for (int i = 0; i < 200; ++i) theirs.push_back(hold<700>(other, 3, {}));
      made = std::move(theirs);
    }).join();
    made.clear();  // frames of a thread that has ended, freed here
    EXPECT_EQ(run_mixed(r, 100), 0);
  }
}

#include "kiln/block/reactor.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>

using namespace kiln::block;

namespace {
Task<int> add(int a, int b) { co_return a + b; }
Task<int> nested() { co_return co_await add(1, 2) + co_await add(3, 4); }
Task<int> thrower() {
  throw std::runtime_error("boom");
  co_return 0;
}
}  // namespace

TEST(Reactor, RunsNestedTasks) {
  Reactor r;
  EXPECT_EQ(r.run(nested()), 10);
}

TEST(Reactor, SleepsForWhatItIsAsked) {
  Reactor r;
  using namespace std::chrono;
  for (const nanoseconds d : {nanoseconds(microseconds(50)), nanoseconds(milliseconds(30))}) {
    const auto start = steady_clock::now();
    const int rc =
        r.run([](Reactor& r, nanoseconds d) -> Task<int> { co_return co_await r.sleep(d); }(r, d));
    const auto took = steady_clock::now() - start;
    EXPECT_EQ(rc, -ETIME);
    EXPECT_GE(took, d);
    EXPECT_LT(took, d + seconds(1));
  }
}

TEST(Reactor, PropagatesExceptions) {
  Reactor r;
  EXPECT_THROW(r.run(thrower()), std::runtime_error);
}

TEST(Reactor, FileReadPastEndIsZeroFilled) {
  Reactor r;
  char path[] = "/tmp/kiln-reactor-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  unlink(path);
  std::vector<uint8_t> data(1000, 0xab);
  EXPECT_EQ(r.run(r.write_full(fd, data, 0)), 0);
  std::vector<uint8_t> buf(4096, 0xff);
  EXPECT_EQ(r.run(r.read_full(fd, buf, 0)), 0);
  for (size_t i = 0; i < buf.size(); ++i) ASSERT_EQ(buf[i], i < 1000 ? 0xab : 0) << i;
  close(fd);
}

TEST(Reactor, MutexHandsOverInOrder) {
  Reactor r;
  AsyncMutex m(r);
  std::vector<int> order;
  int fd = open("/dev/zero", O_RDONLY);
  auto worker = [&](int id) -> Task<void> {
    co_await m.lock();
    LockGuard g(m);
    std::vector<uint8_t> b(16);
    co_await r.read_full(fd, b, 0);  // suspend while holding the lock
    order.push_back(id);
  };
  WaitGroup wg(r);
  for (int i = 0; i < 5; ++i) r.spawn(worker(i), &wg);
  auto wait = [&]() -> Task<void> { co_await wg.wait(); };
  r.run(wait());
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
  close(fd);
}

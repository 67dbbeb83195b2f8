// Write-back errors poison an image. Linux reports a failed write-back once: after fdatasync
// returns EIO the pages are clean and the data may be gone, and the next fdatasync succeeds
// (the lesson PostgreSQL learnt in 2018). A driver that retries and gets success would tell the
// guest that lost data is durable. So after a failed write-back (a metadata write of a flush or
// commit, or an fsync) every later flush, FUA write and write fails with -EIO until the image
// is reopened, and nothing more is written to it. Failures are injected under the block layer
// with the reactor's fault hook (tests/unit/fault_injector.h).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "fault_injector.h"
#include "kiln/block/device.h"
#include "kiln/block/endian.h"
#include "kiln/block/qcow2.h"
#include "test_util.h"

using namespace kiln;
using namespace kiln::block;
using kiln::test::Dev;
using kiln::test::Faults;
using kiln::test::Gate;
using kiln::test::TempDir;

namespace {

constexpr uint64_t kCluster = 65536;

std::vector<uint8_t> filled(size_t n, uint8_t v) { return std::vector<uint8_t>(n, v); }

bool all_equal(const std::vector<uint8_t>& b, uint8_t v) {
  return std::all_of(b.begin(), b.end(), [v](uint8_t x) { return x == v; });
}

uint64_t be64_at(const std::string& path, uint64_t off) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  uint8_t b[8] = {};
  EXPECT_EQ(pread(fd, b, 8, off_t(off)), 8);
  ::close(fd);
  return load_be64(b);
}

// The host offset of the first refcount block (header field 48 is the refcount table).
uint64_t first_refblock(const std::string& path) {
  return be64_at(path, be64_at(path, 48)) & ~uint64_t{511};
}

std::string make_qcow2(Reactor& r, const TempDir& dir, uint32_t version) {
  qcow2::CreateOptions co;
  co.size = 4u << 20;
  co.version = version;
  const std::string path = dir.file("img.qcow2");
  qcow2::create(r, path, co);
  return path;
}

class WritebackError : public testing::TestWithParam<uint32_t> {};

// A failed fdatasync fails that flush and every one after it, and FUA writes, until the image
// is reopened; close reports it and leaves the image marked dirty.
TEST_P(WritebackError, FailedFsyncPoisonsTheImage) {
  Reactor r;
  TempDir dir;
  const std::string path = make_qcow2(r, dir, GetParam());
  Dev d = Dev::open(r, path);
  ASSERT_EQ(d.write(0, filled(kCluster, 0x11)), 0);  // allocates: metadata to write back
  {
    Faults faults(r);
    Faults::Rule& rule = faults.add({.op = FileOp::kFsync, .count = 1});
    EXPECT_EQ(d.flush(), -EIO);
    EXPECT_EQ(rule.hits, 1);
  }
  // The disk works again, but what the failed write-back carried may be lost.
  EXPECT_EQ(d.flush(), -EIO);
  EXPECT_EQ(d.write(kCluster, filled(4096, 0x22), kWriteFua), -EIO);
  EXPECT_EQ(d.write(0, filled(4096, 0x33)), -EIO);  // already allocated: in place
  EXPECT_EQ(d.zero(2 * kCluster, kCluster), -EIO);
  EXPECT_EQ(d.discard(0, kCluster), -EIO);
  EXPECT_EQ(d.flush(), -EIO);
  EXPECT_EQ(d.read(0, 4096), filled(4096, 0x11));  // reads still work
  EXPECT_NE(d.close(), 0);
  if (GetParam() >= 3) {
    EXPECT_TRUE(qcow2::read_info(r, path).dirty);
  }

  // Reopened, the image is usable again.
  Dev again = Dev::open(r, path);
  EXPECT_EQ(again.read(0, kCluster), filled(kCluster, 0x11));
  EXPECT_EQ(again.write(kCluster, filled(4096, 0x44), kWriteFua), 0);
  EXPECT_EQ(again.flush(), 0);
  EXPECT_EQ(again.close(), 0);
  qcow2::CheckResult res = qcow2::check(r, path, qcow2::Repair::kNone);
  EXPECT_EQ(res.corruptions, 0u);
}

// A metadata write of a commit fails (the refcount block cannot be written): the write that
// needed it fails, nothing after it is written back, and the file stays consistent: no table
// points at a cluster whose refcount or data did not make it.
TEST_P(WritebackError, FailedCommitWriteLeavesAConsistentFile) {
  Reactor r;
  TempDir dir;
  const std::string path = make_qcow2(r, dir, GetParam());
  Dev d = Dev::open(r, path);
  ASSERT_EQ(d.write(0, filled(kCluster, 0x11)), 0);
  ASSERT_EQ(d.flush(), 0);
  const uint64_t rb = first_refblock(path);
  {
    Faults faults(r);
    Faults::Rule& rule = faults.add({.op = FileOp::kWrite, .from = rb, .to = rb + kCluster});
    EXPECT_EQ(d.write(3 * kCluster, filled(kCluster, 0x22)), -EIO);  // allocating
    EXPECT_GE(rule.hits, 1);
  }
  EXPECT_EQ(d.write(5 * kCluster, filled(kCluster, 0x33)), -EIO);
  EXPECT_EQ(d.flush(), -EIO);

  // What another process finds in the file: consistent, old data or new, never garbage.
  OpenOptions share;
  share.lock = false;
  qcow2::CheckResult res = qcow2::check(r, path, qcow2::Repair::kNone, false);
  EXPECT_EQ(res.corruptions, 0u);
  for (auto& m : res.messages) EXPECT_EQ(m.rfind("ERROR", 0), std::string::npos) << m;
  {
    Dev other = Dev::open(r, path, true, share);
    EXPECT_EQ(other.read(0, kCluster), filled(kCluster, 0x11));
    for (uint64_t gc : {3, 5}) {
      std::vector<uint8_t> got = other.read(gc * kCluster, kCluster);
      EXPECT_TRUE(all_equal(got, 0) || all_equal(got, gc == 3 ? 0x22 : 0x33)) << gc;
    }
  }
  EXPECT_NE(d.close(), 0);
  Dev again = Dev::open(r, path);
  EXPECT_EQ(again.read(0, kCluster), filled(kCluster, 0x11));
  EXPECT_EQ(again.close(), 0);
  res = qcow2::check(r, path, qcow2::Repair::kNone);
  EXPECT_EQ(res.corruptions, 0u);
}

INSTANTIATE_TEST_SUITE_P(Versions, WritebackError, testing::Values(2u, 3u), [](const auto& info) {
  return std::string(info.param == 2 ? "v2" : "v3");
});

// The raw driver: after a failed fdatasync, no later flush succeeds.
TEST(WritebackErrorRaw, FailedFsyncPoisonsTheFile) {
  Reactor r;
  TempDir dir;
  const std::string path = dir.file("disk.raw");
  {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_EQ(ftruncate(fd, 1 << 20), 0);
    ::close(fd);
  }
  OpenOptions o;
  o.format = "raw";
  Dev d = Dev::open(r, path, false, o);
  ASSERT_EQ(d.write(0, filled(4096, 0x11)), 0);
  {
    Faults faults(r);
    faults.add({.op = FileOp::kFsync, .count = 1});
    EXPECT_EQ(d.flush(), -EIO);
  }
  EXPECT_EQ(d.flush(), -EIO);
  EXPECT_EQ(d.write(4096, filled(4096, 0x22), kWriteFua), -EIO);
  EXPECT_EQ(d.zero(8192, 4096, kWriteFua), -EIO);
  EXPECT_NE(d.close(), 0);
  Dev again = Dev::open(r, path, false, o);
  EXPECT_EQ(again.flush(), 0);
  EXPECT_EQ(again.close(), 0);
}

// The hook itself: rules match by kind and offset range, count down, and can hold an
// operation until the test releases it.
TEST(FaultInjection, RulesFailAndHoldOperations) {
  Reactor r;
  TempDir dir;
  const std::string path = dir.file("f");
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  Faults faults(r);
  Gate gate(r);
  Faults::Rule& fail = faults.add({.op = FileOp::kWrite, .from = 8192, .count = 2});
  faults.add({.op = FileOp::kWrite, .from = 0, .to = 4096, .count = 1, .error = 0, .gate = &gate});
  const std::vector<uint8_t> buf(4096, 1);
  EXPECT_EQ(r.run(r.write_full(fd, buf, 8192)), -EIO);
  EXPECT_EQ(r.run(r.write_full(fd, buf, 4096)), 0);
  EXPECT_EQ(fail.hits, 1);
  auto scenario = [](Reactor& r, int fd, const std::vector<uint8_t>& buf, Gate& gate,
                     int* held) -> Task<int> {
    WaitGroup group(r);
    int rc = -1;
    auto held_write = [](Reactor& r, int fd, const std::vector<uint8_t>& buf,
                         int* rc) -> Task<void> { *rc = co_await r.write_full(fd, buf, 0); };
    r.spawn(held_write(r, fd, buf, &rc), &group);
    *held = gate.held();
    co_await r.fsync(fd, true);  // something in flight while the write is held
    gate.release();
    co_await group.wait();
    co_return rc;
  };
  int held = 0;
  EXPECT_EQ(r.run(scenario(r, fd, buf, gate, &held)), 0);
  EXPECT_EQ(held, 1);
  EXPECT_EQ(r.run(r.write_full(fd, buf, 8192)), -EIO);
  EXPECT_EQ(r.run(r.write_full(fd, buf, 8192)), 0);  // count exhausted
  EXPECT_EQ(faults.seen(FileOp::kFsync), 1);
  ::close(fd);
}

}  // namespace

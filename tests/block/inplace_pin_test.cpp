// A write into a cluster the guest already owns goes straight to the host cluster without the
// cluster lock (the fast path). While it is on its way, a discard or an unmapping
// write-zeroes of the same cluster, a flush that releases the cluster, and an allocation for
// another guest cluster that reuses it must not let the late write land in what is by then
// someone else's cluster. The interleaving is made deterministic by holding the in-place write
// in the fault hook. The same for a write over a run of such clusters, which goes to the
// host in one piece.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "fault_injector.h"
#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"
#include "test_util.h"

using namespace kiln;
using namespace kiln::block;
using kiln::test::Dev;
using kiln::test::Faults;
using kiln::test::Gate;
using kiln::test::TempDir;

namespace {

constexpr uint64_t kPinCluster = 65536;

enum class Freeing { kDiscard, kZeroUnmap };

class InPlaceWrite : public testing::TestWithParam<Freeing> {};

struct Outcome {
  int write_rc = -1, free_rc = -1, flush_rc = -1, other_rc = -1;
  int held = 0;
};

// A 1 MiB qcow2 image whose first `clusters` guest clusters hold 0x11, flushed. *host: where
// the first of them is on the host, or 0 unless all are data, one after the other.
Dev allocated_image(Reactor& r, const std::string& path, uint64_t clusters, uint64_t* host) {
  qcow2::CreateOptions co;
  co.size = 1u << 20;
  qcow2::create(r, path, co);
  Dev d = Dev::open(r, path);
  *host = 0;
  std::vector<Extent> ext;
  if (d.write(0, std::vector<uint8_t>(clusters * kPinCluster, 0x11)) == 0 && d.flush() == 0 &&
      r.run(d.dev->block_status(0, clusters * kPinCluster, &ext)) == 0 && ext.size() == 1 &&
      ext[0].data)
    *host = ext[0].host_offset;
  return d;
}

Task<void> run_write(BlockDevice* dev, uint64_t off, std::vector<uint8_t>* data, int* rc) {
  *rc = co_await dev->write(off, *data, 0);
}

Task<void> run_free(BlockDevice* dev, Freeing how, int* rc) {
  *rc = how == Freeing::kDiscard ? co_await dev->discard(0, kPinCluster)
                                 : co_await dev->write_zeroes(0, kPinCluster, 0);
}

// W: a 4 KiB in-place write into guest cluster 0, held on its way to the disk. Meanwhile:
// cluster 0 is freed (discard / zero), a flush runs, and guest cluster 5 is written (an
// allocation). Then W is let go.
Task<void> scenario(Reactor& r, BlockDevice* dev, Gate* gate, Freeing how,
                    std::vector<uint8_t>* late, std::vector<uint8_t>* other, Outcome* out) {
  WaitGroup group(r);
  r.spawn(run_write(dev, 0, late, &out->write_rc), &group);
  out->held = gate->held();
  r.spawn(run_free(dev, how, &out->free_rc), &group);
  out->flush_rc = co_await dev->flush();
  out->other_rc = co_await dev->write(5 * kPinCluster, *other, 0);
  gate->release();
  co_await group.wait();
}

TEST_P(InPlaceWrite, DoesNotLandInAClusterReusedMeanwhile) {
  Reactor r;
  TempDir dir;
  const std::string path = dir.file("img.qcow2");
  uint64_t host;
  Dev d = allocated_image(r, path, 1, &host);
  ASSERT_NE(host, 0u);

  std::vector<uint8_t> late(4096, 0xee), other(kPinCluster, 0x55);
  Outcome out;
  {
    Faults faults(r);
    Gate gate(r);
    faults.add({.op = FileOp::kWrite,
                .from = host,
                .to = host + kPinCluster,
                .count = 1,
                .error = 0,
                .gate = &gate});
    r.run(scenario(r, d.dev.get(), &gate, GetParam(), &late, &other, &out));
  }
  EXPECT_EQ(out.held, 1) << "the in-place write did not reach the disk layer first";
  EXPECT_EQ(out.write_rc, 0);
  EXPECT_EQ(out.free_rc, 0);
  EXPECT_EQ(out.flush_rc, 0);
  EXPECT_EQ(out.other_rc, 0);

  // Guest cluster 5 holds exactly what was written to it; cluster 0 reads as the write and the
  // free in some order: zeros, or the write over the old data.
  EXPECT_EQ(d.read(5 * kPinCluster, kPinCluster), other);
  std::vector<uint8_t> c0 = d.read(0, kPinCluster);
  std::vector<uint8_t> written(kPinCluster, 0x11);
  std::copy(late.begin(), late.end(), written.begin());
  EXPECT_TRUE(c0 == std::vector<uint8_t>(kPinCluster, 0) || c0 == written);
  ASSERT_EQ(d.close(), 0);

  Dev again = Dev::open(r, path, true);
  EXPECT_EQ(again.read(5 * kPinCluster, kPinCluster), other);
  qcow2::CheckResult res = qcow2::check(r, path, qcow2::Repair::kNone);
  EXPECT_EQ(res.corruptions, 0u);
  EXPECT_EQ(res.leaks, 0u);
}

INSTANTIATE_TEST_SUITE_P(Freeing, InPlaceWrite,
                         testing::Values(Freeing::kDiscard, Freeing::kZeroUnmap),
                         [](const auto& info) {
                           return info.param == Freeing::kDiscard ? std::string("discard")
                                                                  : std::string("zero_unmap");
                         });

// Four allocated guest clusters, contiguous on the host, written anew in one request: one
// file write (not one per cluster). While it is held, guest cluster 1 (inside the run) is
// discarded, a flush runs and guest cluster 5 is written, an allocation that could take the
// freed cluster: the late write must not land in it.
TEST(InPlaceRun, OneFileWriteThatPinsEveryClusterOfTheRun) {
  Reactor r;
  TempDir dir;
  const std::string path = dir.file("img.qcow2");
  uint64_t host;
  Dev d = allocated_image(r, path, 4, &host);
  ASSERT_NE(host, 0u) << "the four clusters should be allocated one after the other";

  // Not cluster-aligned at either end: 3 KiB into cluster 0 to 5 KiB into cluster 3.
  const uint64_t off = 3072, len = 3 * kPinCluster + 2048;
  {
    Faults faults(r);
    const Faults::Rule& in_run =
        faults.add({.op = FileOp::kWrite, .from = host, .to = host + 4 * kPinCluster, .error = 0});
    ASSERT_EQ(d.write(off, std::vector<uint8_t>(len, 0x22)), 0);
    EXPECT_EQ(in_run.hits, 1) << "the run should go to the host in one write";
  }
  std::vector<uint8_t> late(len, 0xee), other(kPinCluster, 0x55);
  Outcome out;
  int writes = 0;
  {
    Faults faults(r);
    Gate gate(r);
    faults.add({.op = FileOp::kWrite,
                .from = host,
                .to = host + 4 * kPinCluster,
                .count = 1,
                .error = 0,
                .gate = &gate});
    auto scenario = [](Reactor& r, BlockDevice* dev, Gate* gate, uint64_t off,
                       std::vector<uint8_t>* late, std::vector<uint8_t>* other,
                       Outcome* out) -> Task<void> {
      WaitGroup group(r);
      r.spawn(run_write(dev, off, late, &out->write_rc), &group);
      out->held = gate->held();
      auto discard = [](BlockDevice* dev, int* rc) -> Task<void> {
        *rc = co_await dev->discard(kPinCluster, kPinCluster);
      };
      r.spawn(discard(dev, &out->free_rc), &group);
      out->flush_rc = co_await dev->flush();
      out->other_rc = co_await dev->write(5 * kPinCluster, *other, 0);
      gate->release();
      co_await group.wait();
    };
    const int before = faults.seen(FileOp::kWrite);
    r.run(scenario(r, d.dev.get(), &gate, off, &late, &other, &out));
    writes = faults.seen(FileOp::kWrite) - before;
  }
  EXPECT_EQ(out.held, 1) << "the run did not reach the disk layer as one write first";
  EXPECT_EQ(out.write_rc, 0);
  EXPECT_EQ(out.free_rc, 0);
  EXPECT_EQ(out.flush_rc, 0);
  EXPECT_EQ(out.other_rc, 0);
  EXPECT_GE(writes, 2);  // the run, cluster 5's data (and metadata)

  std::vector<uint8_t> expect(4 * kPinCluster, 0x11);
  std::copy(late.begin(), late.end(), expect.begin() + off);
  EXPECT_EQ(d.read(5 * kPinCluster, kPinCluster), other);
  const std::vector<uint8_t> all = d.read(0, 4 * kPinCluster);
  for (uint64_t c : {0, 2, 3})
    EXPECT_TRUE(std::equal(all.begin() + c * kPinCluster, all.begin() + (c + 1) * kPinCluster,
                           expect.begin() + c * kPinCluster))
        << "guest cluster " << c;
  // Cluster 1: the write and the discard in some order.
  const std::vector<uint8_t> c1(all.begin() + kPinCluster, all.begin() + 2 * kPinCluster);
  EXPECT_TRUE(c1 == std::vector<uint8_t>(kPinCluster, 0) ||
              std::equal(c1.begin(), c1.end(), expect.begin() + kPinCluster));
  ASSERT_EQ(d.close(), 0);
  qcow2::CheckResult res = qcow2::check(r, path, qcow2::Repair::kNone);
  EXPECT_EQ(res.corruptions, 0u);
  EXPECT_EQ(res.leaks, 0u);
}

}  // namespace

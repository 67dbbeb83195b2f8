// HostFile with O_DIRECT: unaligned reads and writes (bounced, read-modify-write), concurrent
// writes into disjoint bytes of one block, and the end of a file that is not aligned. The
// alignment is forced to 4096 so that 512-byte writes take the read-modify-write path too
// (this machine's ext4 reports 512). Every test checks the file through a second, buffered
// descriptor: what a user would read.
#include "host_file.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "kiln/common/temp.h"

namespace kiln::block {
namespace {

using common::TempDir;

std::vector<uint8_t> file_bytes(const std::string& path) {
  std::vector<uint8_t> out;
  common::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  EXPECT_TRUE(fd.valid());
  uint8_t buf[65536];
  ssize_t n;
  while ((n = ::read(fd.get(), buf, sizeof buf)) > 0) out.insert(out.end(), buf, buf + n);
  return out;
}

void make_file(const std::string& path, const std::vector<uint8_t>& data) {
  common::Fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(::write(fd.get(), data.data(), data.size()), ssize_t(data.size()));
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(g());
  return v;
}

int open_flags(const HostFile& f) { return fcntl(f.get(), F_GETFL); }

// write_now (a commit round's metadata on a buffered file): the bytes land where asked, past
// the end too, and a failing pwrite is its -errno (here a read-only descriptor: -EBADF).
TEST(HostFile, WriteNowWritesWhereAskedAndReportsErrors) {
  TempDir d;
  Reactor r;
  make_file(d / "f", std::vector<uint8_t>(8192, 1));
  HostFile file(r, open_host_file(d / "f", false, false), false);
  const std::vector<uint8_t> slice = random_bytes(4096, 7);
  ASSERT_EQ(file.write_now(slice, 4096), 0);
  ASSERT_EQ(file.write_now(slice, 12288), 0);
  std::vector<uint8_t> want(16384, 1);
  std::copy(slice.begin(), slice.end(), want.begin() + 4096);
  std::fill(want.begin() + 8192, want.begin() + 12288, 0);
  std::copy(slice.begin(), slice.end(), want.begin() + 12288);
  EXPECT_EQ(file_bytes(d / "f"), want);

  HostFile read_only(r, open_host_file(d / "f", true, false), false);
  EXPECT_EQ(read_only.write_now(slice, 0), -EBADF);
}

class FailAll final : public FaultInjector {
 public:
  explicit FailAll(int err) : err_(err) {}
  Task<int> before(FileOp, int, uint64_t, uint64_t) override { co_return err_; }

 private:
  int err_;
};

// A reactor with inline_file_io (kiln-fs's image source) reads and writes a buffered file
// with pread/pwrite, nothing through io_uring, with read_full/write_full's contract: zeros
// past the end of the file, a write past the end extends it, errors as -errno. A direct file
// and a reactor with a fault injector keep io_uring.
TEST(HostFile, InlineFileIoUsesNoRing) {
  TempDir d;
  Reactor r;
  r.set_inline_file_io(true);
  make_file(d / "f", std::vector<uint8_t>(8192, 1));
  HostFile file(r, open_host_file(d / "f", false, false), false);
  const std::vector<uint8_t> slice = random_bytes(4096, 9);
  ASSERT_EQ(r.run(file.write_full(slice, 10000)), 0);  // past the end: the file grows
  std::vector<uint8_t> got(16384, 0xee);
  ASSERT_EQ(r.run(file.read_full(got, 0)), 0);
  std::vector<uint8_t> want(16384, 0);
  std::fill(want.begin(), want.begin() + 8192, 1);
  std::copy(slice.begin(), slice.end(), want.begin() + 10000);  // 8192..10000 and past 14096: 0
  EXPECT_EQ(got, want);
  EXPECT_EQ(file_bytes(d / "f").size(), 14096u);
  EXPECT_EQ(r.submitted(), 0u);

  HostFile read_only(r, open_host_file(d / "f", true, false), false);
  EXPECT_EQ(r.run(read_only.write_full(slice, 0)), -EBADF);
  EXPECT_EQ(r.submitted(), 0u);

  FailAll fail(-EIO);  // what the injector fails went to the reactor's path
  r.set_fault_injector(&fail);
  EXPECT_FALSE(r.inline_file_io());
  EXPECT_EQ(r.run(file.write_full(slice, 0)), -EIO);
  r.set_fault_injector(nullptr);
  r.set_inline_file_io(false);
  ASSERT_EQ(r.run(file.write_full(slice, 0)), 0);
  EXPECT_GT(r.submitted(), 0u);
}

// start_writeback is a hint, but an error the kernel returns when starting the write-out is
// kept for the next fsync: the file system may have given up on those pages. A FIFO is a file
// sync_file_range refuses (ESPIPE).
TEST(HostFile, StartWritebackKeepsItsError) {
  TempDir d;
  Reactor r;
  make_file(d / "f", std::vector<uint8_t>(65536, 1));
  HostFile file(r, open_host_file(d / "f", false, false), false);
  ASSERT_EQ(r.run(file.write_full(std::vector<uint8_t>(65536, 2), 0)), 0);
  file.start_writeback();
  EXPECT_EQ(file.writeback_error(), 0);
  EXPECT_EQ(r.run(file.fsync(true)), 0);

  ASSERT_EQ(::mkfifo((d / "fifo").c_str(), 0600), 0);
  HostFile fifo(r, common::Fd(::open((d / "fifo").c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC)),
                false);
  fifo.start_writeback();
  EXPECT_EQ(fifo.writeback_error(), -ESPIPE);
  fifo.start_writeback();
  EXPECT_EQ(fifo.writeback_error(), -ESPIPE);
  EXPECT_LT(r.run(fifo.fsync(true)), 0);
}

TEST(HostFile, OpensWithODirect) {
  TempDir d;
  make_file(d / "f", std::vector<uint8_t>(8192, 1));
  Reactor r;
  HostFile direct(r, open_host_file(d / "f", false, true), true);
  EXPECT_TRUE(open_flags(direct) & O_DIRECT);
  EXPECT_GE(direct.offset_align(), 512u);
  HostFile buffered(r, open_host_file(d / "f", false, false), false);
  EXPECT_FALSE(open_flags(buffered) & O_DIRECT);
}

TEST(HostFile, UnalignedReadsAndWritesLandWhereAsked) {
  TempDir d;
  std::vector<uint8_t> model = random_bytes(64 * 1024, 1);
  make_file(d / "f", model);
  Reactor r;
  HostFile f(r, open_host_file(d / "f", false, true), true, 4096);
  struct Case {
    uint64_t off, len;
  };
  // Inside one block, across a block boundary, aligned offset with a ragged end, a whole
  // aligned range from an unaligned buffer address.
  for (Case c : {Case{100, 7}, Case{4000, 200}, Case{8192, 512}, Case{12288 + 512, 8192},
                 Case{3, 40000}, Case{16384, 4096}}) {
    std::vector<uint8_t> data = random_bytes(c.len + 1, uint32_t(c.off));
    std::span<const uint8_t> src(data.data() + 1, c.len);  // odd address
    ASSERT_EQ(r.run(f.write_full(src, c.off)), 0) << c.off;
    std::copy(src.begin(), src.end(), model.begin() + long(c.off));
    std::vector<uint8_t> back(c.len + 1);
    ASSERT_EQ(r.run(f.read_full(std::span<uint8_t>(back.data() + 1, c.len), c.off)), 0);
    EXPECT_TRUE(std::equal(src.begin(), src.end(), back.begin() + 1)) << c.off;
  }
  EXPECT_GT(f.bounced(), 0u);
  EXPECT_EQ(file_bytes(d / "f"), model);
}

TEST(HostFile, ConcurrentSubBlockWritesIntoOneBlockAllLand) {
  TempDir d;
  std::vector<uint8_t> model = random_bytes(3 * 4096, 2);
  make_file(d / "f", model);
  Reactor r;
  HostFile f(r, open_host_file(d / "f", false, true), true, 4096);
  // Eight 512-byte writes into block 1, odd sectors first, a 100-byte write and a zeroed
  // range between them, and an aligned write of block 2: all in flight together. Without the
  // exclusion each read-modify-write would put back the bytes it read and undo the others.
  std::vector<std::vector<uint8_t>> datas;
  std::vector<std::pair<uint64_t, size_t>> where;
  for (uint64_t s : {1, 3, 5, 7, 0, 2, 4, 6}) where.emplace_back(4096 + s * 512, 512);
  where.emplace_back(4096 - 50, 100);
  where.emplace_back(8192, 4096);
  for (size_t i = 0; i < where.size(); ++i) datas.push_back(random_bytes(where[i].second, 10 + i));
  r.run([&]() -> Task<void> {
    WaitGroup g(r);
    int failures = 0;
    for (size_t i = 0; i < where.size(); ++i)
      r.spawn(
          [](HostFile& f, std::span<const uint8_t> d, uint64_t off, int* bad) -> Task<void> {
            if (co_await f.write_full(d, off) < 0) ++*bad;
          }(f, datas[i], where[i].first, &failures),
          &g);
    co_await g.wait();
    EXPECT_EQ(failures, 0);
  }());
  for (size_t i = 0; i < where.size(); ++i)
    std::copy(datas[i].begin(), datas[i].end(), model.begin() + long(where[i].first));
  EXPECT_EQ(file_bytes(d / "f"), model);
}

TEST(HostFile, ZeroRangeBesideAWriteInOneBlock) {
  TempDir d;
  std::vector<uint8_t> model = random_bytes(8192, 3);
  make_file(d / "f", model);
  Reactor r;
  HostFile f(r, open_host_file(d / "f", false, true), true, 4096);
  std::vector<uint8_t> data = random_bytes(300, 4);
  r.run([&]() -> Task<void> {
    WaitGroup g(r);
    r.spawn(
        [](HostFile& f, std::span<const uint8_t> d) -> Task<void> {
          EXPECT_EQ(co_await f.write_full(d, 1000), 0);
        }(f, data),
        &g);
    r.spawn(
        [](HostFile& f) -> Task<void> {
          EXPECT_EQ(co_await f.fallocate(FALLOC_FL_ZERO_RANGE, 2000, 1500), 0);
        }(f),
        &g);
    co_await g.wait();
  }());
  std::copy(data.begin(), data.end(), model.begin() + 1000);
  std::fill(model.begin() + 2000, model.begin() + 3500, 0);
  EXPECT_EQ(file_bytes(d / "f"), model);
}

TEST(HostFile, EndOfFileInsideABlock) {
  TempDir d;
  std::vector<uint8_t> model = random_bytes(5000, 5);  // ends inside the second block
  make_file(d / "f", model);
  Reactor r;
  HostFile f(r, open_host_file(d / "f", false, true), true, 4096);
  // A read across the end: the file's bytes, then zeros.
  std::vector<uint8_t> back(6000, 0xee);
  ASSERT_EQ(r.run(f.read_full(back, 0)), 0);
  EXPECT_TRUE(std::equal(model.begin(), model.end(), back.begin()));
  EXPECT_TRUE(std::all_of(back.begin() + 5000, back.end(), [](uint8_t b) { return b == 0; }));
  // A write inside the last block leaves the size alone; one past the end grows the file to
  // exactly its end, as a buffered write would, not to the end of the block.
  std::vector<uint8_t> a = random_bytes(100, 6), b = random_bytes(300, 7);
  ASSERT_EQ(r.run(f.write_full(a, 4500)), 0);
  std::copy(a.begin(), a.end(), model.begin() + 4500);
  EXPECT_EQ(file_bytes(d / "f"), model);
  ASSERT_EQ(r.run(f.write_full(b, 4900)), 0);
  model.resize(5200);
  std::copy(b.begin(), b.end(), model.begin() + 4900);
  EXPECT_EQ(file_bytes(d / "f"), model);
}

TEST(HostFile, PageAlignedBuffersGoStraightThrough) {
  TempDir d;
  make_file(d / "f", std::vector<uint8_t>(16384, 7));
  Reactor r;
  HostFile f(r, open_host_file(d / "f", false, true), true);
  // As kiln-nbd's payload buffers are (nbdserver/nbd/src/buffer.h).
  std::unique_ptr<uint8_t, decltype(&std::free)> mem(
      static_cast<uint8_t*>(std::aligned_alloc(4096, 8192)), &std::free);
  ASSERT_TRUE(mem);
  std::span<uint8_t> buf(mem.get(), 8192);
  std::fill(buf.begin(), buf.end(), 9);
  ASSERT_EQ(r.run(f.write_full(buf, 4096)), 0);
  ASSERT_EQ(r.run(f.read_full(buf, 0)), 0);
  EXPECT_EQ(f.bounced(), 0u);
  EXPECT_EQ(buf[0], 7);
  EXPECT_EQ(buf[4096], 9);
}

}  // namespace
}  // namespace kiln::block

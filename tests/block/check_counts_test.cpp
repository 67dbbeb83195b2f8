// The checker's bookkeeping (qcow2/check_counts.h): what a sparse file really holds, and
// reference counters whose memory follows the references, not the file's length.
#include "qcow2/check_counts.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "test_util.h"

using kiln::block::qcow2::FileExtents;
using kiln::block::qcow2::RefCounts;
using kiln::test::TempDir;

namespace {

TEST(CheckCounts, ExtentsOfASparseTerabyte) {
  TempDir dir;
  const std::string path = dir.file("sparse");
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  const uint64_t tib = uint64_t{1} << 40;
  std::vector<uint8_t> data(65536, 0x5a);
  ASSERT_EQ(pwrite(fd, data.data(), data.size(), 0), ssize_t(data.size()));
  ASSERT_EQ(pwrite(fd, data.data(), data.size(), off_t(tib / 2)), ssize_t(data.size()));
  ASSERT_EQ(ftruncate(fd, off_t(tib)), 0);
  FileExtents e;
  e.load(fd, tib);
  ::close(fd);
  std::vector<std::pair<uint64_t, uint64_t>> pieces;
  e.for_each_data(0, tib, [&](uint64_t o, uint64_t n) { pieces.emplace_back(o, n); });
  ASSERT_EQ(pieces.size(), 2u);
  EXPECT_EQ(pieces[0].first, 0u);
  EXPECT_GE(pieces[0].second, 65536u);
  EXPECT_LE(pieces[1].first, tib / 2);
  EXPECT_GE(pieces[1].first + pieces[1].second, tib / 2 + 65536);
  EXPECT_TRUE(e.any_data(tib / 2 + 100, 8));
  EXPECT_FALSE(e.any_data(tib / 4, 1u << 20));
  EXPECT_FALSE(e.any_data(tib - 4096, 4096));
  pieces.clear();
  e.for_each_data(1000, 100, [&](uint64_t o, uint64_t n) { pieces.emplace_back(o, n); });
  ASSERT_EQ(pieces.size(), 1u);
  EXPECT_EQ(pieces[0], std::make_pair(uint64_t{1000}, uint64_t{100}));
}

TEST(CheckCounts, DenseAndSparseReferences) {
  RefCounts c;
  c.reset(1000, 64);
  EXPECT_TRUE(c.add(5, 1));
  EXPECT_TRUE(c.add(5, 2));
  EXPECT_TRUE(c.add(999, uint64_t{1} << 40));  // saturates
  EXPECT_TRUE(c.add(uint64_t{1} << 35, 1));    // far beyond: listed
  EXPECT_TRUE(c.add(uint64_t{1} << 35, 4));
  EXPECT_TRUE(c.add(2000, 1));
  c.finalize();
  EXPECT_EQ(c.get(5), 3u);
  EXPECT_EQ(c.get(6), 0u);
  EXPECT_EQ(c.get(999), uint64_t{UINT32_MAX});
  EXPECT_EQ(c.get(uint64_t{1} << 35), 5u);
  EXPECT_EQ(c.get(2000), 1u);
  EXPECT_EQ(c.get(2001), 0u);
  std::vector<std::pair<uint64_t, uint64_t>> seen;
  c.for_each_nonzero(0, ~uint64_t{0}, [&](uint64_t k, uint64_t n) { seen.emplace_back(k, n); });
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen[2], std::make_pair(uint64_t{2000}, uint64_t{1}));
  EXPECT_EQ(c.end_of_nonzero(), (uint64_t{1} << 35) + 1);
  EXPECT_FALSE(c.overflowed());
}

TEST(CheckCounts, TooManyScatteredReferencesOverflow) {
  RefCounts c;
  c.reset(16, 100);
  bool ok = true;
  for (uint64_t i = 0; i < 1000 && ok; ++i) ok = c.add(1000 + i * 7, 1);
  EXPECT_FALSE(ok);
  EXPECT_TRUE(c.overflowed());
  // Repeats of the same few clusters merge and never overflow.
  c.reset(16, 100);
  for (uint64_t i = 0; i < 100000; ++i) ASSERT_TRUE(c.add(1000 + i % 10, 1));
  c.finalize();
  EXPECT_EQ(c.get(1003), 10000u);
}

}  // namespace

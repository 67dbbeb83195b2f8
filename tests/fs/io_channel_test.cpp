// The io_manager over a Source window: buffering, bounds, and libext2fs on top of it.
#include "io_channel.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "guest.h"
#include "kiln/fs/filesystem.h"
#include "kiln/fs/inject.h"
#include "mem_fs.h"
#include "mem_source.h"

namespace kiln::fs {
namespace {

using testing::Borrowed;
using testing::MemSource;

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

// LEN bytes at OFF read through the channel are the model's.
::testing::AssertionResult reads_as(IoChannel& ch, const std::vector<uint8_t>& view, uint64_t off,
                                    uint64_t len) {
  std::vector<uint8_t> got(len);
  if (int rc = ch.read(off, got.data(), got.size()); rc != 0) {
    return ::testing::AssertionFailure() << "read " << off << "+" << len << ": " << rc;
  }
  if (!std::equal(got.begin(), got.end(), view.begin() + static_cast<long>(off))) {
    return ::testing::AssertionFailure() << "read " << off << "+" << len << " differs";
  }
  return ::testing::AssertionSuccess();
}

TEST(IoChannel, BufferedWritesReachTheSourceOnlyAtWriteBack) {
  MemSource src(pattern(1 << 20, 1));
  const auto original = src.bytes_;
  IoChannel ch(src, 65536, 262144, 1 << 20);
  std::vector<uint8_t> data(3000, 0xab);
  ASSERT_EQ(ch.write(1000, data.data(), data.size()), 0);  // unaligned: read-modify-write
  EXPECT_EQ(src.bytes_, original);
  std::vector<uint8_t> back(5000);
  ASSERT_EQ(ch.read(0, back.data(), back.size()), 0);
  for (size_t i = 0; i < back.size(); ++i) {
    uint8_t want = (i >= 1000 && i < 4000) ? 0xab : original[65536 + i];
    ASSERT_EQ(back[i], want) << i;
  }
  EXPECT_GT(ch.pending_bytes(), 0u);
  ASSERT_EQ(ch.write_back(), 0);
  EXPECT_EQ(ch.pending_bytes(), 0u);
  for (size_t i = 0; i < src.bytes_.size(); ++i) {
    uint8_t want = (i >= 65536 + 1000 && i < 65536 + 4000) ? 0xab : original[i];
    ASSERT_EQ(src.bytes_[i], want) << i;
  }
  // Contiguous units went out as one write.
  EXPECT_EQ(src.writes_, 1);
}

// What was written since the last write-back is read back from memory (libext2fs reads an
// inode-table or directory block before every change of it); a read that pending writes do
// not cover entirely still goes to the source, with the pending bytes laid over it.
TEST(IoChannel, ReadsOfPendingBlocksDoNotReachTheSource) {
  MemSource src(pattern(1 << 20, 3));
  const auto original = src.bytes_;
  IoChannel ch(src, 0, 1 << 20, 1 << 20);
  const auto a = pattern(4096, 50), b = pattern(4096, 90);
  ASSERT_EQ(ch.write(8192, a.data(), a.size()), 0);
  ASSERT_EQ(ch.write(20480, b.data(), b.size()), 0);
  ASSERT_EQ(ch.write(12288, b.data(), 100), 0);  // right after `a`, a separate extent or not
  std::vector<uint8_t> back(4096);
  ASSERT_EQ(ch.read(8192, back.data(), back.size()), 0);
  EXPECT_EQ(back, a);
  ASSERT_EQ(ch.read(8292, back.data(), 3996), 0);  // inside, unaligned
  EXPECT_TRUE(std::equal(a.begin() + 100, a.end(), back.begin()));
  std::vector<uint8_t> both(4096 + 100);  // across the two writes
  ASSERT_EQ(ch.read(8192, both.data(), both.size()), 0);
  EXPECT_TRUE(std::equal(b.begin(), b.begin() + 100, both.begin() + 4096));
  EXPECT_EQ(src.reads_, 0) << "pending blocks were read from the source";
  // One byte more than is pending: the source is read, the pending bytes win.
  std::vector<uint8_t> wide(4096 + 101);
  ASSERT_EQ(ch.read(8192, wide.data(), wide.size()), 0);
  EXPECT_EQ(src.reads_, 1);
  EXPECT_TRUE(std::equal(a.begin(), a.end(), wide.begin()));
  EXPECT_TRUE(std::equal(b.begin(), b.begin() + 100, wide.begin() + 4096));
  EXPECT_EQ(wide.back(), original[8192 + 4096 + 100]);
  // After the write-back, reads go to the source again (and see the same bytes).
  ASSERT_EQ(ch.write_back(), 0);
  ASSERT_EQ(ch.read(20480, back.data(), back.size()), 0);
  EXPECT_EQ(back, b);
  EXPECT_EQ(src.reads_, 2);
}

// Random writes (scattered, overlapping, sequential runs), reads and write-backs against a
// model: reads see every write at once, the source sees them only after a write-back, and
// nothing outside the window ever changes.
TEST(IoChannel, RandomOperationsMatchAModel) {
  std::mt19937_64 rng(42);
  const uint64_t window_off = 12345, window_len = 3 << 20;
  MemSource src(pattern(4 << 20, 11));
  std::vector<uint8_t> on_disk = src.bytes_;  // what the source must hold
  std::vector<uint8_t> view(on_disk.begin() + window_off,
                            on_disk.begin() + window_off + window_len);  // what reads return
  IoChannel ch(src, window_off, window_len, 64 << 20);
  uint64_t seq = 0;
  for (int step = 0; step < 4000; ++step) {
    const int what = static_cast<int>(rng() % 100);
    if (what < 60) {
      uint64_t off, len;
      if (what < 25) {  // continue a sequential run
        len = 1 + rng() % 8192;
        off = seq;
      } else {
        len = 1 + rng() % (what < 55 ? 6000 : 300000);
        off = rng() % window_len;
      }
      if (off + len > window_len) off = window_len - len;
      seq = off + len < window_len ? off + len : 0;
      std::vector<uint8_t> data(len);
      for (auto& b : data) b = static_cast<uint8_t>(rng());
      ASSERT_EQ(ch.write(off, data.data(), data.size()), 0);
      std::copy(data.begin(), data.end(), view.begin() + static_cast<long>(off));
    } else if (what < 97) {
      const uint64_t len = 1 + rng() % 70000;
      const uint64_t off = rng() % (window_len - len);
      ASSERT_TRUE(reads_as(ch, view, off, len)) << "step " << step;
    } else {
      ASSERT_EQ(ch.write_back(), 0);
      std::copy(view.begin(), view.end(), on_disk.begin() + static_cast<long>(window_off));
      ASSERT_EQ(src.bytes_, on_disk) << "step " << step;
      ASSERT_EQ(ch.pending_bytes(), 0u);
    }
    ASSERT_LE(ch.pending_bytes(), window_len);
  }
  ASSERT_EQ(ch.write_back(), 0);
  std::copy(view.begin(), view.end(), on_disk.begin() + static_cast<long>(window_off));
  EXPECT_EQ(src.bytes_, on_disk);
}

// write_through (file data, straight to the source) among buffered writes: what it wrote is in
// the source at once, and no older pending bytes overwrite it at the next write-back, also
// when it cuts a pending extent in two.
TEST(IoChannel, WriteThroughDropsOlderPendingBytes) {
  MemSource src(pattern(1 << 20, 5));
  IoChannel ch(src, 4096, 512 << 10, 64 << 20);
  const auto old = pattern(40000, 60), data = pattern(4096, 200);
  ASSERT_EQ(ch.write(10000, old.data(), old.size()), 0);
  ASSERT_EQ(ch.write_through(20000, data.data(), data.size()), 0);
  EXPECT_TRUE(std::equal(data.begin(), data.end(), src.bytes_.begin() + 4096 + 20000));
  EXPECT_EQ(ch.pending_bytes(), old.size() - data.size());
  std::vector<uint8_t> back(old.size());
  ASSERT_EQ(ch.read(10000, back.data(), back.size()), 0);
  std::vector<uint8_t> want = old;
  std::copy(data.begin(), data.end(), want.begin() + 10000);
  EXPECT_EQ(back, want);
  ASSERT_EQ(ch.write_back(), 0);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), src.bytes_.begin() + 4096 + 10000));
}

TEST(IoChannel, RandomWritesThroughAndBufferedMatchAModel) {
  std::mt19937_64 rng(7);
  const uint64_t window_off = 777, window_len = 2 << 20;
  MemSource src(pattern(3 << 20, 13));
  std::vector<uint8_t> view(src.bytes_.begin() + window_off,
                            src.bytes_.begin() + window_off + window_len);
  IoChannel ch(src, window_off, window_len, 64 << 20);
  for (int step = 0; step < 3000; ++step) {
    const int what = static_cast<int>(rng() % 100);
    const uint64_t len = 1 + rng() % (what < 50 ? 9000 : 70000);
    const uint64_t off = rng() % (window_len - len);
    if (what < 70) {
      std::vector<uint8_t> data(len);
      for (auto& b : data) b = static_cast<uint8_t>(rng());
      const bool through = what < 30;
      ASSERT_EQ(through ? ch.write_through(off, data.data(), len) : ch.write(off, data.data(), len),
                0);
      std::copy(data.begin(), data.end(), view.begin() + static_cast<long>(off));
      if (through) {
        ASSERT_TRUE(std::equal(data.begin(), data.end(),
                               src.bytes_.begin() + static_cast<long>(window_off + off)))
            << "step " << step;
      }
    } else if (what < 97) {
      ASSERT_TRUE(reads_as(ch, view, off, len)) << "step " << step;
    } else {
      ASSERT_EQ(ch.write_back(), 0);
      ASSERT_TRUE(
          std::equal(view.begin(), view.end(), src.bytes_.begin() + static_cast<long>(window_off)))
          << "step " << step;
    }
  }
}

TEST(IoChannel, NothingOutsideTheWindow) {
  MemSource src(pattern(1 << 20, 3));
  const auto original = src.bytes_;
  IoChannel ch(src, 4096, 8192, 1 << 20);
  uint8_t buf[16] = {};
  EXPECT_EQ(ch.write(8190, buf, 4), -ERANGE);
  EXPECT_EQ(ch.write(8192, buf, 1), -ERANGE);
  EXPECT_EQ(ch.read(8000, buf, 200), -ERANGE);
  EXPECT_EQ(ch.write(8188, buf, 4), 0);  // the last bytes of the window are fine
  ASSERT_EQ(ch.write_back(), 0);
  for (size_t i = 0; i < src.bytes_.size(); ++i) {
    if (i < 4096 + 8188 || i >= 4096 + 8192) {
      ASSERT_EQ(src.bytes_[i], original[i]) << i;
    }
  }
}

TEST(IoChannel, WindowNotAMultipleOfTheUnit) {
  MemSource src(pattern(1 << 20, 5));
  IoChannel ch(src, 512, 6144 + 512, 1 << 20);  // one and a half units of 4 KiB, and a sector
  std::vector<uint8_t> data(6656, 0x11);
  ASSERT_EQ(ch.write(0, data.data(), data.size()), 0);
  ASSERT_EQ(ch.write_back(), 0);
  EXPECT_EQ(src.bytes_[511], pattern(1 << 20, 5)[511]);
  EXPECT_EQ(src.bytes_[512], 0x11);
  EXPECT_EQ(src.bytes_[512 + 6655], 0x11);
  EXPECT_EQ(src.bytes_[512 + 6656], pattern(1 << 20, 5)[512 + 6656]);
}

TEST(IoChannel, SmallWritesInsideOneUnit) {
  MemSource src(pattern(1 << 20, 6));
  const auto original = src.bytes_;
  IoChannel ch(src, 0, 1 << 20, 1 << 20);
  // Two 1 KiB blocks and a few superblock bytes in the same 4 KiB unit.
  std::vector<uint8_t> a(1024, 0xa1), b(1024, 0xb2);
  ASSERT_EQ(ch.write(1024, a.data(), a.size()), 0);
  ASSERT_EQ(ch.write(3072, b.data(), b.size()), 0);
  ASSERT_EQ(ch.write(1030, "xy", 2), 0);
  ASSERT_EQ(ch.write_back(), 0);
  for (size_t i = 0; i < 8192; ++i) {
    uint8_t want = original[i];
    if (i >= 1024 && i < 2048) want = 0xa1;
    if (i >= 3072 && i < 4096) want = 0xb2;
    if (i == 1030) want = 'x';
    if (i == 1031) want = 'y';
    ASSERT_EQ(src.bytes_[i], want) << i;
  }
}

TEST(IoChannel, DiscardDropsPendingWrites) {
  MemSource src(pattern(65536, 9));
  const auto original = src.bytes_;
  IoChannel ch(src, 0, 65536, 1 << 20);
  std::vector<uint8_t> data(4096, 0);
  ASSERT_EQ(ch.write(4096, data.data(), data.size()), 0);
  ch.discard();
  ASSERT_EQ(ch.flush(), 0);
  EXPECT_EQ(src.bytes_, original);
  EXPECT_EQ(src.writes_, 0);
}

TEST(IoChannel, WriteThroughAndLimit) {
  MemSource src(1 << 20);
  IoChannel through(src, 0, 1 << 20, 0);
  uint8_t one = 1;
  ASSERT_EQ(through.write(10, &one, 1), 0);
  EXPECT_EQ(src.bytes_[10], 1);
  IoChannel limited(src, 0, 1 << 20, 8192);
  std::vector<uint8_t> data(4096, 2);
  ASSERT_EQ(limited.write(0, data.data(), data.size()), 0);
  ASSERT_EQ(limited.write(4096, data.data(), data.size()), 0);
  EXPECT_EQ(src.bytes_[0], 0);  // 8 KiB pending: at the limit, not over
  ASSERT_EQ(limited.write(8192, data.data(), data.size()), 0);
  EXPECT_EQ(src.bytes_[0], 2);  // over the limit: written back
  EXPECT_EQ(limited.pending_bytes(), 0u);
}

TEST(IoChannel, SourceErrorsAreReported) {
  MemSource src(1 << 20);
  src.fail_writes_ = true;
  IoChannel ch(src, 0, 1 << 20, 1 << 20);
  uint8_t b = 0;
  ASSERT_EQ(ch.write(0, &b, 1), 0);
  EXPECT_EQ(ch.write_back(), -EIO);
  EXPECT_GT(ch.pending_bytes(), 0u);  // kept for a retry
}

// A filesystem made in memory (mem_fs.h), then the library on top: open, inject, close, open
// again and read back.
void make_ext4(MemSource& src, uint64_t offset, uint64_t length) {
  testing::make_fs(src, offset, {.bytes = length});
}

TEST(Filesystem, InjectIntoAnInMemoryDisk) {
  MemSource src(48 << 20, "memdisk");
  make_ext4(src, 0, 48 << 20);
  const auto fresh = src.bytes_;
  const std::string passwd = "root:x:0:0:root:/root:/bin/sh\nweb:x:33:34::/srv/web:/bin/sh\n";
  {
    auto fs = Filesystem::open(std::make_unique<Borrowed>(src), OpenOptions{});
    EXPECT_EQ(fs->type(), "ext4");
    apply(*fs, {Operation::file("/etc/passwd", passwd, 0644),
                Operation::ssh_key("web", "ssh-ed25519 AAAA web@test\n"),
                Operation::mkdir("/var/log/app", 0750, 33, 34)});
    // Nothing reached the disk before close().
    EXPECT_EQ(src.bytes_, fresh);
    fs->close();
  }
  EXPECT_NE(src.bytes_, fresh);
  OpenOptions ro;
  ro.read_only = true;
  auto fs = Filesystem::open(std::make_unique<Borrowed>(src), ro);
  Guest g(fs->handle());
  ext2_ino_t keys = g.lookup("/srv/web/.ssh/authorized_keys", Follow::kNever);
  ASSERT_NE(keys, 0u);
  EXPECT_EQ(g.read_file(keys, "keys", 1 << 20), "ssh-ed25519 AAAA web@test\n");
  ext2_inode_large inode = g.read_inode(keys);
  EXPECT_EQ(inode.i_mode & 07777, 0600);
  EXPECT_EQ(inode_uid(inode), 33u);
  EXPECT_EQ(inode_gid(inode), 34u);
  ext2_ino_t dir = g.lookup("/var/log/app", Follow::kNever);
  ASSERT_NE(dir, 0u);
  EXPECT_EQ(g.read_inode(dir).i_mode & 07777, 0750);
  fs->close();
}

TEST(Filesystem, FailedInjectionLeavesTheDiskUnchanged) {
  MemSource src(48 << 20, "memdisk");
  make_ext4(src, 0, 48 << 20);
  const auto fresh = src.bytes_;
  src.writes_ = 0;
  {
    auto fs = Filesystem::open(std::make_unique<Borrowed>(src), OpenOptions{});
    try {
      apply(*fs, {Operation::mkdir("/a/b/c"), Operation::file("/a/f", "x"),
                  Operation::ssh_key("nobody", "ssh-rsa AAAA x\n")});
      ADD_FAILURE() << "injected a key for a user of a guest without /etc/passwd";
    } catch (const Error& e) {
      EXPECT_EQ(e.reason(), Reason::kNotFound) << e.what();
    }
    // Destroyed without close(): the buffered changes are dropped.
  }
  EXPECT_EQ(src.bytes_, fresh);
  EXPECT_EQ(src.writes_, 0);
}

TEST(Filesystem, PartitionWindowIsRespected) {
  // An MBR disk with the filesystem in partition 1; the bytes after it must stay untouched.
  MemSource src(80 << 20, "disk");
  auto& b = src.bytes_;
  const uint32_t start = 2048, count = (32 << 20) / 512;
  b[446 + 4] = 0x83;
  std::memcpy(&b[446 + 8], &start, 4);
  std::memcpy(&b[446 + 12], &count, 4);
  b[510] = 0x55;
  b[511] = 0xaa;
  make_ext4(src, uint64_t{start} * 512, uint64_t{count} * 512);
  std::fill(b.begin() + (start + count) * 512, b.end(), 0x5a);
  auto fs = Filesystem::open(std::make_unique<Borrowed>(src), OpenOptions{});
  EXPECT_EQ(fs->partition(), 1);
  apply(*fs, {Operation::file("/big", std::string(20 << 20, 'z'))});
  fs->close();
  for (size_t i = (start + count) * 512; i < b.size(); ++i) ASSERT_EQ(b[i], 0x5a) << i;
}

}  // namespace
}  // namespace kiln::fs

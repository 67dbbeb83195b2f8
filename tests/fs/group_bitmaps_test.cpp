// Per-group allocation bitmaps (OpenOptions::Bitmaps::kPerGroup, src/group_bitmaps.h): the
// same operations on two copies of a filesystem, one opened with every bitmap read and one
// per group, must allocate the same inodes and blocks and leave the same bitmaps and group
// counts, while reading and writing only the groups they touch.
#include "group_bitmaps.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "guest.h"
#include "io_channel.h"
#include "kiln/fs/filesystem.h"
#include "kiln/fs/inject.h"
#include "mem_fs.h"
#include "mem_source.h"

namespace kiln::fs {
namespace {

using testing::Borrowed;
using testing::MemSource;
using Bitmaps = OpenOptions::Bitmaps;

struct Shape {
  uint64_t bytes;
  unsigned log_block;  // 0: 1 KiB blocks, 2: 4 KiB
  unsigned blocks_per_group;
  bool csum;  // metadata_csum, and with it uninitialised groups (BLOCK_UNINIT, INODE_UNINIT)
};

// A filesystem of many small groups, made in memory.
void make_fs(MemSource& src, const Shape& s) {
  testing::make_fs(src, 0,
                   {.bytes = s.bytes,
                    .log_block = s.log_block,
                    .blocks_per_group = s.blocks_per_group,
                    .csum = s.csum,
                    .inodes = static_cast<uint32_t>(s.bytes / 16384)});
}

// What an allocator leaves behind: both bitmaps in full, each group's counts and flags, the
// superblock's counts.
struct Allocation {
  std::vector<unsigned char> blocks, inodes;
  std::vector<std::string> groups;
  uint64_t free_blocks = 0, free_inodes = 0;
  bool operator==(const Allocation&) const = default;
};

void PrintTo(const Allocation& a, std::ostream* os) {
  *os << a.free_blocks << " free blocks, " << a.free_inodes << " free inodes; per group (free "
      << "blocks/free inodes/directories/unused inodes/flags):";
  for (const auto& g : a.groups) *os << " " << g;
}

Allocation allocation_of(MemSource& src) {
  OpenOptions ro;
  ro.read_only = true;
  auto f = Filesystem::open(std::make_unique<Borrowed>(src), ro);
  ext2_filsys fs = f->handle();
  Allocation a;
  EXPECT_EQ(ext2fs_read_bitmaps(fs), 0);
  const blk64_t first = fs->super->s_first_data_block;
  const blk64_t nblocks = ext2fs_blocks_count(fs->super) - first;
  a.blocks.resize((nblocks + 7) / 8);
  EXPECT_EQ(ext2fs_get_block_bitmap_range2(fs->block_map, first, nblocks, a.blocks.data()), 0);
  a.inodes.resize((fs->super->s_inodes_count + 7) / 8);
  EXPECT_EQ(
      ext2fs_get_inode_bitmap_range2(fs->inode_map, 1, fs->super->s_inodes_count, a.inodes.data()),
      0);
  for (dgrp_t g = 0; g < fs->group_desc_count; ++g) {
    a.groups.push_back(std::to_string(ext2fs_bg_free_blocks_count(fs, g)) + "/" +
                       std::to_string(ext2fs_bg_free_inodes_count(fs, g)) + "/" +
                       std::to_string(ext2fs_bg_used_dirs_count(fs, g)) + "/" +
                       std::to_string(ext2fs_bg_itable_unused(fs, g)) + "/" +
                       std::to_string(ext2fs_bg_flags(fs, g)));
  }
  a.free_blocks = ext2fs_free_blocks_count(fs->super);
  a.free_inodes = fs->super->s_free_inodes_count;
  f->close();
  return a;
}

// Applies OPS to SRC opened with BITMAPS; returns the groups read (per group) or 0.
size_t apply_with(MemSource& src, Bitmaps bitmaps, const std::vector<Operation>& ops) {
  OpenOptions o;
  o.bitmaps = bitmaps;
  auto fs = Filesystem::open(std::make_unique<Borrowed>(src), o);
  apply(*fs, ops);
  GroupBitmaps* b = GroupBitmaps::of(fs->handle());
  EXPECT_EQ(b != nullptr, bitmaps == Bitmaps::kPerGroup);
  const size_t read = b ? b->groups_read() : 0;
  fs->close();
  return read;
}

std::string text(size_t n, char seed) {
  std::string s(n, ' ');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (seed + i * 7) % 26);
  return s;
}

// Many files (their inodes fill the first groups), a large file that spans several groups,
// then removals, in two rounds.
std::vector<std::vector<Operation>> rounds() {
  std::vector<Operation> first = {Operation::mkdir("/etc"),
                                  Operation::file("/etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
                                  Operation::ssh_key("root", "ssh-ed25519 AAAA root@test\n"),
                                  Operation::file("/big", text(5 << 20, 1))};
  for (int d = 0; d < 6; ++d) {
    for (int i = 0; i < 60; ++i) {
      const std::string dir = "/d" + std::to_string(d);
      first.push_back(Operation::file(dir + "/f" + std::to_string(i), text(100 + 37 * i, 2), 0640));
    }
  }
  std::vector<Operation> second = {Operation::remove("/big"), Operation::remove("/d1"),
                                   Operation::hostname("guest"),
                                   Operation::file("/d3/new", text(3 << 20, 3))};
  for (int i = 0; i < 40; ++i)
    second.push_back(Operation::mkdir("/d5/sub" + std::to_string(i) + "/leaf"));
  return {first, second};
}

void PrintTo(const Shape& s, std::ostream* os) {
  *os << s.bytes << " bytes, " << (1024u << s.log_block) << "-byte blocks, " << s.blocks_per_group
      << " per group" << (s.csum ? ", metadata_csum" : "");
}

class PerGroup : public ::testing::TestWithParam<Shape> {};

TEST_P(PerGroup, AllocatesAsWithEveryBitmapRead) {
  MemSource all(GetParam().bytes, "all.img");
  make_fs(all, GetParam());
  MemSource per(all.bytes_, "per.img");
  OpenOptions ro;
  ro.read_only = true;
  const dgrp_t groups =
      Filesystem::open(std::make_unique<Borrowed>(all), ro)->handle()->group_desc_count;
  for (const auto& ops : rounds()) {
    apply_with(all, Bitmaps::kAll, ops);
    const size_t read = apply_with(per, Bitmaps::kPerGroup, ops);
    EXPECT_GT(read, 0u);
    EXPECT_LT(read, groups);
    EXPECT_EQ(allocation_of(all), allocation_of(per));
    // The same inodes and blocks: the same files in the same places.
    for (const char* path : {"/d0/f0", "/d5/f59", "/etc/hostname", "/d3/new"}) {
      auto a = Filesystem::open(std::make_unique<Borrowed>(all), ro);
      auto p = Filesystem::open(std::make_unique<Borrowed>(per), ro);
      Guest ga(a->handle()), gp(p->handle());
      const ext2_ino_t ia = ga.lookup(path, Follow::kNever);
      ASSERT_EQ(ia, gp.lookup(path, Follow::kNever)) << path;
      if (ia == 0) continue;
      EXPECT_EQ(ga.read_file(ia, path, 8 << 20), gp.read_file(ia, path, 8 << 20)) << path;
    }
  }
}

TEST_P(PerGroup, WritesOnlyTheBitmapsOfChangedGroups) {
  MemSource src(GetParam().bytes);
  make_fs(src, GetParam());
  src.written_.clear();
  apply_with(src, Bitmaps::kPerGroup, {Operation::file("/hello", "hi\n")});
  const auto written = src.written_;
  OpenOptions ro;
  ro.read_only = true;
  auto f = Filesystem::open(std::make_unique<Borrowed>(src), ro);
  ext2_filsys fs = f->handle();
  size_t group0 = 0;
  for (dgrp_t g = 0; g < fs->group_desc_count; ++g) {
    for (blk64_t loc : {ext2fs_block_bitmap_loc(fs, g), ext2fs_inode_bitmap_loc(fs, g)}) {
      const uint64_t off = loc * fs->blocksize;
      for (const auto& [at, len] : written) {
        if (at >= off + fs->blocksize || at + len <= off) continue;
        EXPECT_EQ(g, 0u) << "the bitmap at block " << loc << " (group " << g << ") was written";
        if (g == 0) ++group0;
      }
    }
  }
  EXPECT_GE(group0, 1u);  // the group of the new inode and its block
}

// An inode taken without GroupBitmaps::before_new_inode lands in a group that was never read
// (ext2fs_new_inode initialises the first uninitialised group it passes): the close must
// fail and write nothing, not write that group's descriptor without its bitmap.
TEST(PerGroupBitmaps, ChangeToAGroupNeverReadFailsTheClose) {
  const Shape shape{32 << 20, 0, 1024, true};
  MemSource src(shape.bytes);
  make_fs(src, shape);
  const auto before = src.bytes_;
  OpenOptions o;
  o.bitmaps = Bitmaps::kPerGroup;
  auto fs = Filesystem::open(std::make_unique<Borrowed>(src), o);
  ext2_filsys h = fs->handle();
  ASSERT_TRUE(ext2fs_bg_flags_test(h, 1, EXT2_BG_INODE_UNINIT));
  ext2_ino_t ino = 0;
  ASSERT_EQ(ext2fs_new_inode(h, EXT2_ROOT_INO, LINUX_S_IFREG, nullptr, &ino), 0);
  EXPECT_EQ((ino - 1) / EXT2_INODES_PER_GROUP(h->super), 1u);
  ext2fs_inode_alloc_stats2(h, ino, +1, 0);
  try {
    fs->close();
    ADD_FAILURE() << "closed after changing a group whose bitmaps were never read";
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kCorrupt) << e.what();
  }
  EXPECT_EQ(src.bytes_, before);
}

// A group whose bitmap checksum is wrong is refused when an allocation first reaches it, as
// ext2fs_read_bitmaps refuses the whole filesystem.
TEST(PerGroupBitmaps, BadBitmapChecksumRefused) {
  const Shape shape{32 << 20, 0, 1024, true};
  MemSource src(shape.bytes);
  make_fs(src, shape);
  apply_with(src, Bitmaps::kAll, {Operation::file("/a", "a")});  // group 0 initialised
  blk64_t loc = 0;
  {
    OpenOptions ro;
    ro.read_only = true;
    loc =
        ext2fs_block_bitmap_loc(Filesystem::open(std::make_unique<Borrowed>(src), ro)->handle(), 0);
  }
  src.bytes_[loc * 1024 + 100] ^= 0x10;  // one bit of the bitmap (1024 bits per group)
  const auto before = src.bytes_;
  OpenOptions o;
  o.bitmaps = Bitmaps::kPerGroup;
  auto fs = Filesystem::open(std::make_unique<Borrowed>(src), o);
  EXPECT_THROW(apply(*fs, {Operation::file("/b", "b")}), Error);
  fs.reset();
  EXPECT_EQ(src.bytes_, before);
}

INSTANTIATE_TEST_SUITE_P(Shapes, PerGroup,
                         ::testing::Values(
                             // 1 KiB blocks (first data block 1), a short last group
                             Shape{(40 << 20) + (300 << 10), 0, 1024, true},
                             Shape{(40 << 20) + (300 << 10), 0, 1024, false},
                             // 4 KiB blocks
                             Shape{48 << 20, 2, 1024, true}),
                         [](const auto& info) {
                           return std::string(info.param.log_block ? "4k" : "1k") +
                                  (info.param.csum ? "_csum" : "_nocsum");
                         });

}  // namespace
}  // namespace kiln::fs

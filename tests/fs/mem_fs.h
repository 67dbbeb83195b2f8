// An ext2/4 filesystem made in memory through our io_manager (libext2fs's ext2fs_initialize),
// for unit tests of the library on top: open, inject, close, open again and read back.
#pragma once

#include <ext2fs/ext2fs.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

#include "io_channel.h"
#include "mem_source.h"

namespace kiln::fs::testing {

struct FsShape {
  uint64_t bytes;
  unsigned log_block = 2;         // 0: 1 KiB blocks, 2: 4 KiB
  unsigned blocks_per_group = 0;  // 0: libext2fs's choice (8 blocks per byte of a block)
  bool csum = true;     // metadata_csum, and with it uninitialised groups (BLOCK_UNINIT, ...)
  uint32_t inodes = 0;  // 0: libext2fs's choice
};

// Makes the filesystem in the window [OFFSET, OFFSET + shape.bytes) of SRC, with extents, a
// root directory and the reserved inodes taken.
inline void make_fs(MemSource& src, uint64_t offset, const FsShape& shape) {
  IoChannel ch(src, offset, shape.bytes, 0);
  ext2_super_block param;
  std::memset(&param, 0, sizeof param);
  ext2fs_blocks_count_set(&param, shape.bytes >> (10 + shape.log_block));
  param.s_log_block_size = shape.log_block;
  param.s_blocks_per_group = shape.blocks_per_group;
  param.s_inodes_count = shape.inodes;
  param.s_rev_level = 1;
  param.s_inode_size = 256;
  param.s_feature_incompat = EXT2_FEATURE_INCOMPAT_FILETYPE | EXT3_FEATURE_INCOMPAT_EXTENTS;
  param.s_feature_ro_compat = EXT2_FEATURE_RO_COMPAT_SPARSE_SUPER;
  if (shape.csum) param.s_feature_ro_compat |= EXT4_FEATURE_RO_COMPAT_METADATA_CSUM;
  ext2_filsys fs = nullptr;
  ASSERT_EQ(ext2fs_initialize(ch.device_name().c_str(), EXT2_FLAG_64BITS, &param,
                              IoChannel::manager(), &fs),
            0);
  std::memcpy(fs->super->s_volume_name, "memfs", 5);
  if (shape.csum) {
    fs->super->s_checksum_type = EXT2_CRC32C_CHKSUM;
    ext2fs_init_csum_seed(fs);
  }
  ASSERT_EQ(ext2fs_allocate_tables(fs), 0);
  ASSERT_EQ(ext2fs_mkdir(fs, EXT2_ROOT_INO, EXT2_ROOT_INO, nullptr), 0);
  for (ext2_ino_t ino = 1; ino < EXT2_FIRST_INODE(fs->super); ++ino)
    ext2fs_inode_alloc_stats2(fs, ino, +1, 0);
  ext2fs_mark_ib_dirty(fs);
  ASSERT_EQ(ext2fs_set_gdt_csum(fs), 0);
  ASSERT_EQ(ext2fs_close2(fs, 0), 0);
}

}  // namespace kiln::fs::testing

// Allocation bitmaps read one block group at a time (see group_bitmaps.h). What is read and
// written follows libext2fs's own ext2fs_read_bitmaps and ext2fs_write_bitmaps for one group:
// uninitialised bitmaps (BLOCK_UNINIT / INODE_UNINIT with a valid descriptor checksum) are
// computed, not read; checksums are verified on read and set on write; the last group's
// padding bits are set.
#include "group_bitmaps.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace kiln::fs {
namespace {

struct Buffer {  // one block from io_channel_alloc_buf (aligned as the channel wants)
  explicit Buffer(io_channel io) { rc = io_channel_alloc_buf(io, 0, &data); }
  ~Buffer() {
    if (data) ext2fs_free_mem(&data);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  unsigned char* bytes() { return reinterpret_cast<unsigned char*>(data); }
  char* data = nullptr;
  errcode_t rc = 0;
};

bool block_uninit_now(ext2_filsys fs, dgrp_t g) {
  return ext2fs_has_group_desc_csum(fs) && ext2fs_bg_flags_test(fs, g, EXT2_BG_BLOCK_UNINIT);
}

bool inode_uninit_now(ext2_filsys fs, dgrp_t g) {
  return ext2fs_has_group_desc_csum(fs) && ext2fs_bg_flags_test(fs, g, EXT2_BG_INODE_UNINIT);
}

// libext2fs has range marks for block bitmaps only. They work on any 64-bit bitmap, and an
// inode bitmap has no clusters: ranges of inodes go through them.
void mark_inodes(ext2fs_inode_bitmap map, ext2_ino_t first, unsigned count) {
  ext2fs_mark_block_bitmap_range2(map, first, count);
}

void unmark_inodes(ext2fs_inode_bitmap map, ext2_ino_t first, unsigned count) {
  ext2fs_unmark_block_bitmap_range2(map, first, count);
}

bool valid_block(ext2_filsys fs, blk64_t blk) {
  return blk != 0 && blk < ext2fs_blocks_count(fs->super);
}

}  // namespace

GroupBitmaps::GroupBitmaps(ext2_filsys fs)
    : fs_(fs),
      block_nbytes_(EXT2_CLUSTERS_PER_GROUP(fs->super) / 8),
      inode_nbytes_(EXT2_INODES_PER_GROUP(fs->super) / 8),
      loaded_(fs->group_desc_count),
      block_uninit_(fs->group_desc_count),
      inode_uninit_(fs->group_desc_count) {}

GroupBitmaps::~GroupBitmaps() = default;

errcode_t GroupBitmaps::attach(ext2_filsys fs, std::unique_ptr<GroupBitmaps>& out) {
  if (fs->block_map || fs->inode_map || fs->priv_data || fs->write_bitmaps || fs->get_alloc_block ||
      fs->get_alloc_block2 || fs->new_range || !fs->group_desc)
    return EXT2_ET_INVALID_ARGUMENT;
  if (!(fs->flags & EXT2_FLAG_RW)) return EXT2_ET_RO_FILSYS;
  if (EXT2FS_CLUSTER_RATIO(fs) != 1) return EXT2_ET_OP_NOT_SUPPORTED;
  if (EXT2_CLUSTERS_PER_GROUP(fs->super) / 8 > fs->blocksize ||
      EXT2_INODES_PER_GROUP(fs->super) / 8 > fs->blocksize || fs->group_desc_count == 0)
    return EXT2_ET_CORRUPT_SUPERBLOCK;
  std::unique_ptr<GroupBitmaps> b(new GroupBitmaps(fs));
  const bool csum = ext2fs_has_group_desc_csum(fs);
  for (dgrp_t g = 0; g < fs->group_desc_count; ++g) {
    const bool verified = csum && ext2fs_group_desc_csum_verify(fs, g);
    b->block_uninit_[g] = verified && ext2fs_bg_flags_test(fs, g, EXT2_BG_BLOCK_UNINIT);
    b->inode_uninit_[g] = verified && ext2fs_bg_flags_test(fs, g, EXT2_BG_INODE_UNINIT);
  }
  const auto* desc = static_cast<const unsigned char*>(static_cast<void*>(fs->group_desc));
  b->descriptors_.assign(desc, desc + size_t{fs->group_desc_count} * EXT2_DESC_SIZE(fs->super));

  // Red-black trees: "every bit set" is one extent, whatever the filesystem's size, and each
  // group read adds its own runs.
  const auto saved_type = fs->default_bitmap_type;
  fs->default_bitmap_type = EXT2FS_BMAP64_RBTREE;
  errcode_t rc = ext2fs_allocate_block_bitmap(fs, "block bitmap (per group)", &fs->block_map);
  if (!rc) rc = ext2fs_allocate_inode_bitmap(fs, "inode bitmap (per group)", &fs->inode_map);
  fs->default_bitmap_type = saved_type;
  if (rc) {
    if (fs->block_map) ext2fs_free_block_bitmap(fs->block_map);
    if (fs->inode_map) ext2fs_free_inode_bitmap(fs->inode_map);
    fs->block_map = nullptr;
    fs->inode_map = nullptr;
    return rc;
  }
  // Every block in use, in runs of a group (the count is 32 bits).
  for (dgrp_t g = 0; g < fs->group_desc_count; ++g) {
    const blk64_t first = ext2fs_group_first_block2(fs, g);
    ext2fs_mark_block_bitmap_range2(
        fs->block_map, first, static_cast<unsigned>(ext2fs_group_last_block2(fs, g) - first + 1));
  }
  mark_inodes(fs->inode_map, 1, fs->super->s_inodes_count);

  fs->priv_data = b.get();
  fs->write_bitmaps = on_write_bitmaps;
  ext2fs_set_alloc_block_callback(fs, on_alloc_block, nullptr);
  ext2fs_set_new_range_callback(fs, on_new_range, nullptr);
  ext2fs_set_block_alloc_stats_callback(fs, on_block_stats, &b->old_stats_);
  ext2fs_set_block_alloc_stats_range_callback(fs, on_block_stats_range, &b->old_stats_range_);
  out = std::move(b);
  return 0;
}

std::unique_ptr<GroupBitmaps> GroupBitmaps::track_loaded(ext2_filsys fs) {
  if (!fs->block_map || !fs->inode_map || fs->group_desc_count == 0) return nullptr;
  std::unique_ptr<GroupBitmaps> b(new GroupBitmaps(fs));
  for (dgrp_t g = 0; g < fs->group_desc_count; ++g) {
    Original o;
    o.blocks.resize(b->block_nbytes_);
    o.inodes.resize(b->inode_nbytes_);
    if (ext2fs_get_block_bitmap_range2(fs->block_map, b->first_bit(g), b->block_nbytes_ * 8,
                                       o.blocks.data()) ||
        ext2fs_get_inode_bitmap_range2(fs->inode_map, 1 + g * EXT2_INODES_PER_GROUP(fs->super),
                                       b->inode_nbytes_ * 8, o.inodes.data()))
      return nullptr;
    o.block_uninit = block_uninit_now(fs, g);
    o.inode_uninit = inode_uninit_now(fs, g);
    b->original_.emplace(g, std::move(o));
    b->loaded_[g] = true;
  }
  b->groups_read_ = fs->group_desc_count;
  return b;
}

GroupBitmaps* GroupBitmaps::of(ext2_filsys fs) {
  return fs->write_bitmaps == on_write_bitmaps ? static_cast<GroupBitmaps*>(fs->priv_data)
                                               : nullptr;
}

blk64_t GroupBitmaps::first_bit(dgrp_t group) const {
  return fs_->super->s_first_data_block + blk64_t{group} * (block_nbytes_ * 8);
}

errcode_t GroupBitmaps::load(dgrp_t g) {
  if (g >= fs_->group_desc_count) return EXT2_ET_INVALID_ARGUMENT;
  if (loaded_[g]) return 0;
  Buffer buf(fs_->io);
  if (buf.rc) return buf.rc;
  const bool check = !(fs_->flags & EXT2_FLAG_IGNORE_CSUM_ERRORS);
  Original o;

  // The block bitmap. Unlike libext2fs, which takes a group whose bitmap lies outside the
  // filesystem for empty, such a group is refused: allocating from it could hand out blocks
  // in use.
  if (block_uninit_[g]) {
    std::memset(buf.data, 0, block_nbytes_);
  } else {
    const blk64_t loc = ext2fs_block_bitmap_loc(fs_, g);
    if (!valid_block(fs_, loc) || io_channel_read_blk64(fs_->io, loc, 1, buf.data))
      return EXT2_ET_BLOCK_BITMAP_READ;
    if (check && !ext2fs_block_bitmap_csum_verify(fs_, g, buf.data, block_nbytes_))
      return EXT2_ET_BLOCK_BITMAP_CSUM_INVALID;
  }
  const blk64_t first = first_bit(g);
  const blk64_t end = ext2fs_blocks_count(fs_->super) - 1;  // the last group may be short
  ext2fs_unmark_block_bitmap_range2(fs_->block_map, first,
                                    std::min<blk64_t>(block_nbytes_ * 8, end - first + 1));
  errcode_t rc = ext2fs_set_block_bitmap_range2(fs_->block_map, first, block_nbytes_ * 8, buf.data);
  if (rc) return rc;
  if (block_uninit_[g]) {  // what ext2fs_read_bitmaps marks in an uninitialised group
    ext2fs_reserve_super_and_bgd(fs_, g, fs_->block_map);
    const blk64_t table = ext2fs_inode_table_loc(fs_, g);
    if (table && table + fs_->inode_blocks_per_group <= ext2fs_blocks_count(fs_->super))
      ext2fs_mark_block_bitmap_range2(fs_->block_map, table, fs_->inode_blocks_per_group);
    for (blk64_t blk : {ext2fs_block_bitmap_loc(fs_, g), ext2fs_inode_bitmap_loc(fs_, g)})
      if (valid_block(fs_, blk)) ext2fs_mark_block_bitmap2(fs_->block_map, blk);
  }
  o.blocks.resize(block_nbytes_);
  if ((rc = ext2fs_get_block_bitmap_range2(fs_->block_map, first, block_nbytes_ * 8,
                                           o.blocks.data())))
    return rc;
  o.block_uninit = block_uninit_[g];

  // The inode bitmap.
  if (inode_uninit_[g]) {
    std::memset(buf.data, 0, inode_nbytes_);
  } else {
    const blk64_t loc = ext2fs_inode_bitmap_loc(fs_, g);
    if (!valid_block(fs_, loc) || io_channel_read_blk64(fs_->io, loc, 1, buf.data))
      return EXT2_ET_INODE_BITMAP_READ;
    if (check && !ext2fs_inode_bitmap_csum_verify(fs_, g, buf.data, inode_nbytes_))
      return EXT2_ET_INODE_BITMAP_CSUM_INVALID;
  }
  const ext2_ino_t ino = 1 + g * EXT2_INODES_PER_GROUP(fs_->super);
  unmark_inodes(fs_->inode_map, ino, inode_nbytes_ * 8);
  if ((rc = ext2fs_set_inode_bitmap_range2(fs_->inode_map, ino, inode_nbytes_ * 8, buf.data)))
    return rc;
  o.inodes.assign(buf.bytes(), buf.bytes() + inode_nbytes_);
  o.inode_uninit = inode_uninit_[g];

  original_[g] = std::move(o);
  loaded_[g] = true;
  ++groups_read_;
  return 0;
}

errcode_t GroupBitmaps::find_free_block(blk64_t lo, blk64_t hi, blk64_t* out) {
  if (lo > hi) return ENOENT;
  for (dgrp_t g = ext2fs_group_of_blk2(fs_, lo); g <= ext2fs_group_of_blk2(fs_, hi); ++g) {
    // A group not read whose descriptor says it is full is not read: with every bitmap
    // loaded the search would find nothing there either (unless bitmap and count disagree).
    if (!loaded_[g] && ext2fs_bg_free_blocks_count(fs_, g) == 0) continue;
    if (errcode_t rc = load(g)) return rc;
    const blk64_t from = std::max(lo, ext2fs_group_first_block2(fs_, g));
    const blk64_t to = std::min(hi, ext2fs_group_last_block2(fs_, g));
    errcode_t rc = ext2fs_find_first_zero_block_bitmap2(fs_->block_map, from, to, out);
    if (rc != ENOENT) return rc;
  }
  return ENOENT;
}

// As ext2fs_new_block3 does with the whole bitmap: the first free block from GOAL to the end,
// then from the start up to GOAL.
errcode_t GroupBitmaps::on_alloc_block(ext2_filsys fs, blk64_t goal, blk64_t* ret) {
  GroupBitmaps& self = *of(fs);
  const blk64_t first = fs->super->s_first_data_block;
  const blk64_t last = ext2fs_blocks_count(fs->super) - 1;
  if (goal < first || goal > last) goal = first;
  errcode_t rc = self.find_free_block(goal, last, ret);
  if (rc == ENOENT && goal > first) rc = self.find_free_block(first, goal - 1, ret);
  if (rc == ENOENT) return EXT2_ET_BLOCK_ALLOC_FAIL;
  if (rc) return rc;
  // ext2fs_alloc_block takes the block itself; ext2fs_new_block's callers do.
  return 0;
}

// Ranges of blocks (ext2fs_fallocate, ext2fs_new_range): not on injection's paths. Rare
// enough to read every group and let libext2fs search the whole bitmap.
errcode_t GroupBitmaps::on_new_range(ext2_filsys fs, int flags, blk64_t goal, blk64_t len,
                                     blk64_t* pblk, blk64_t* plen) {
  GroupBitmaps& self = *of(fs);
  for (dgrp_t g = 0; g < fs->group_desc_count; ++g)
    if (errcode_t rc = self.load(g)) return rc;
  return ext2fs_new_range(fs, flags, goal, len, fs->block_map, pblk, plen);
}

// libext2fs has already marked or cleared the bits and changed the group's counts; a group
// not yet read gets read now (its copy on disk is what it was before) and the change made
// again on top.
void GroupBitmaps::reload_after(blk64_t blk, blk64_t count, int inuse) {
  if (count == 0 || inuse == 0 || blk + count > ext2fs_blocks_count(fs_->super)) return;
  while (count > 0) {
    const dgrp_t g = ext2fs_group_of_blk2(fs_, blk);
    const blk64_t n = std::min(count, ext2fs_group_last_block2(fs_, g) - blk + 1);
    if (!loaded_[g]) {
      if (errcode_t rc = load(g)) {
        if (!error_) error_ = rc;
        return;
      }
      if (inuse > 0)
        ext2fs_mark_block_bitmap_range2(fs_->block_map, blk, n);
      else
        ext2fs_unmark_block_bitmap_range2(fs_->block_map, blk, n);
    }
    blk += n;
    count -= n;
  }
}

void GroupBitmaps::on_block_stats(ext2_filsys fs, blk64_t blk, int inuse) {
  GroupBitmaps& self = *of(fs);
  self.reload_after(blk, 1, inuse);
  if (self.old_stats_) self.old_stats_(fs, blk, inuse);
}

// libext2fs 1.47.0 passes the end of the range and a count of 0 here (fixed upstream in 2025,
// "fix arguments passed to ->block_alloc_stats_range"): such a call changes nothing, and a
// group it touched without being read fails the close (its descriptor changed).
void GroupBitmaps::on_block_stats_range(ext2_filsys fs, blk64_t blk, blk_t num, int inuse) {
  GroupBitmaps& self = *of(fs);
  self.reload_after(blk, num, inuse);
  if (self.old_stats_range_) self.old_stats_range_(fs, blk, num, inuse);
}

errcode_t GroupBitmaps::before_inode_change(ext2_ino_t ino) {
  if (ino == 0 || ino > fs_->super->s_inodes_count) return EXT2_ET_BAD_INODE_NUM;
  return load((ino - 1) / EXT2_INODES_PER_GROUP(fs_->super));
}

// The loop of ext2fs_new_inode, reading each group before it is searched. Groups whose
// descriptor says they are full (and are not uninitialised, which ext2fs_new_inode would
// initialise) are not read: the search passes over them either way.
errcode_t GroupBitmaps::before_new_inode(ext2_ino_t dir) {
  const ext2_ino_t per_group = EXT2_INODES_PER_GROUP(fs_->super);
  const ext2_ino_t count = fs_->super->s_inodes_count;
  ext2_ino_t start = 0;
  if (dir > 0) start = ((dir - 1) / per_group) * per_group + 1;
  start = std::max<ext2_ino_t>(start, EXT2_FIRST_INODE(fs_->super));
  if (start > count) return 0;  // ext2fs_new_inode fails on its own
  ext2_ino_t i = start;
  do {
    const dgrp_t g = (i - 1) / per_group;
    ext2_ino_t upto = i + (per_group - (i - 1) % per_group);
    if (i < start && upto >= start) upto = start - 1;
    upto = std::min(upto, count);
    // [i, upto] reaches the first inode of the next group, as ext2fs_new_inode's does.
    for (dgrp_t h : {g, static_cast<dgrp_t>((upto - 1) / per_group)}) {
      if (loaded_[h] || (ext2fs_bg_free_inodes_count(fs_, h) == 0 && !inode_uninit_now(fs_, h)))
        continue;
      if (errcode_t rc = load(h)) return rc;
    }
    if (inode_uninit_now(fs_, g)) return 0;  // ext2fs_new_inode takes this group
    ext2_ino_t found = 0;
    const errcode_t rc = ext2fs_find_first_zero_inode_bitmap2(fs_->inode_map, i, upto, &found);
    if (rc == 0) return 0;
    if (rc != ENOENT) return rc;
    i = upto + 1;
    if (i > count) i = EXT2_FIRST_INODE(fs_->super);
  } while (i != start);
  return 0;
}

errcode_t GroupBitmaps::on_write_bitmaps(ext2_filsys fs) { return of(fs)->write_changed(); }

// Writes the bitmaps of the groups read that changed (or were uninitialised when read and are
// not any more), as ext2fs_write_bitmaps writes each group's.
errcode_t GroupBitmaps::write_changed() {
  if (error_) return error_;
  if (!(fs_->flags & EXT2_FLAG_RW)) return EXT2_ET_RO_FILSYS;
  const size_t desc_size = EXT2_DESC_SIZE(fs_->super);
  for (dgrp_t g = 0; g < fs_->group_desc_count; ++g) {
    if (!loaded_[g] && std::memcmp(ext2fs_group_desc(fs_, fs_->group_desc, g),
                                   &descriptors_[g * desc_size], desc_size) != 0)
      return EXT2_ET_FILESYSTEM_CORRUPTED;  // a group changed that was never read
  }
  Buffer buf(fs_->io);
  if (buf.rc) return buf.rc;
  for (auto& [g, o] : original_) {
    if (!block_uninit_now(fs_, g)) {
      std::memset(buf.data, 0xff, fs_->blocksize);
      const blk64_t first = first_bit(g);
      errcode_t rc =
          ext2fs_get_block_bitmap_range2(fs_->block_map, first, block_nbytes_ * 8, buf.data);
      if (rc) return rc;
      if (o.block_uninit || std::memcmp(buf.data, o.blocks.data(), block_nbytes_) != 0) {
        if (g == fs_->group_desc_count - 1) {  // the bits past the filesystem's end are set
          const blk64_t used = ext2fs_blocks_count(fs_->super) - first;
          for (blk64_t bit = used; bit < blk64_t{fs_->blocksize} * 8; ++bit)
            ext2fs_set_bit64(bit, buf.data);
        }
        if ((rc = ext2fs_block_bitmap_csum_set(fs_, g, buf.data, static_cast<int>(block_nbytes_))))
          return rc;
        ext2fs_group_desc_csum_set(fs_, g);
        fs_->flags |= EXT2_FLAG_DIRTY;
        const blk64_t loc = ext2fs_block_bitmap_loc(fs_, g);
        if (valid_block(fs_, loc) && io_channel_write_blk64(fs_->io, loc, 1, buf.data))
          return EXT2_ET_BLOCK_BITMAP_WRITE;
        o.blocks.assign(buf.bytes(), buf.bytes() + block_nbytes_);
        o.block_uninit = false;
      }
    }
    if (!inode_uninit_now(fs_, g)) {
      std::memset(buf.data, 0xff, fs_->blocksize);
      const ext2_ino_t ino = 1 + g * EXT2_INODES_PER_GROUP(fs_->super);
      errcode_t rc =
          ext2fs_get_inode_bitmap_range2(fs_->inode_map, ino, inode_nbytes_ * 8, buf.data);
      if (rc) return rc;
      if (o.inode_uninit || std::memcmp(buf.data, o.inodes.data(), inode_nbytes_) != 0) {
        if ((rc = ext2fs_inode_bitmap_csum_set(fs_, g, buf.data, static_cast<int>(inode_nbytes_))))
          return rc;
        ext2fs_group_desc_csum_set(fs_, g);
        fs_->flags |= EXT2_FLAG_DIRTY;
        const blk64_t loc = ext2fs_inode_bitmap_loc(fs_, g);
        if (valid_block(fs_, loc) && io_channel_write_blk64(fs_->io, loc, 1, buf.data))
          return EXT2_ET_INODE_BITMAP_WRITE;
        o.inodes.assign(buf.bytes(), buf.bytes() + inode_nbytes_);
        o.inode_uninit = false;
      }
    }
  }
  fs_->flags &= ~(EXT2_FLAG_BB_DIRTY | EXT2_FLAG_IB_DIRTY);
  return 0;
}

}  // namespace kiln::fs

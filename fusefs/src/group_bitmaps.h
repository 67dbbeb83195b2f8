// Allocation bitmaps read one block group at a time, for a short writable session (injection)
// on a filesystem of any size; and, for the FUSE mount, which reads them all, writes of only
// the groups that changed (track_loaded).
//
// ext2fs_read_bitmaps reads the block and inode bitmap of every group, and ext2fs_close writes
// every one of them back if a single bit changed: on a 64 GiB ext4, 1024 reads and 1024 writes
// for one authorized_keys file, and in a qcow2 overlay a copy of every cluster that holds
// bitmaps. Here the bitmaps start with every bit set ("in use": nothing is allocated from a
// group that was not read), and a group's two bitmaps are read from the image when the first
// allocation or free reaches it:
// - blocks: libext2fs's allocation callback (ext2fs_alloc_block, ext2fs_new_block with no
//   bitmap given) searches as ext2fs_new_block would, from the goal on, reading each group it
//   reaches whose descriptor says it has free blocks; its allocation-statistics callbacks read
//   the group of a block freed or taken by any other path, then re-apply the change;
// - inodes: libext2fs has no callback, so the caller calls before_new_inode before every
//   ext2fs_new_inode or ext2fs_mkdir, and before_inode_change before freeing an inode;
// - at close (libext2fs's write_bitmaps hook) only the groups read and changed are written,
//   with their checksums. A group that was not read but whose descriptor changed (an inode
//   taken without before_new_inode, or a hostile image whose counts and bitmaps disagree)
//   fails the close, so that nothing is written.
#pragma once

#include <ext2fs/ext2fs.h>

#include <map>
#include <memory>
#include <vector>

namespace kiln::fs {

class GroupBitmaps {
 public:
  // Installs empty ("all in use") bitmaps and the callbacks on FS, which must not have bitmaps
  // loaded yet, be writable and not use bigalloc. FS must outlive the returned object, which
  // does not touch FS when it is destroyed (ext2fs_free and ext2fs_close free the bitmaps).
  static errcode_t attach(ext2_filsys fs, std::unique_ptr<GroupBitmaps>& out);
  // The bitmaps attached to FS, or nullptr when FS has all bitmaps loaded (or none).
  static GroupBitmaps* of(ext2_filsys fs);
  // For FS whose bitmaps ext2fs_read_bitmaps has read, all of them (the FUSE mount): remembers
  // every group's, so that write_changed() writes only the groups that changed since. Installs
  // nothing on FS: its owner points fs->write_bitmaps at a function that calls write_changed().
  // nullptr when FS has no bitmaps loaded.
  static std::unique_ptr<GroupBitmaps> track_loaded(ext2_filsys fs);

  GroupBitmaps(const GroupBitmaps&) = delete;
  GroupBitmaps& operator=(const GroupBitmaps&) = delete;
  ~GroupBitmaps();

  // Reads the groups that ext2fs_new_inode(fs, DIR, ...) will search, so that it finds the
  // inode it would find with every bitmap loaded.
  errcode_t before_new_inode(ext2_ino_t dir);
  // Reads the group that holds INO (before ext2fs_inode_alloc_stats2 frees it).
  errcode_t before_inode_change(ext2_ino_t ino);

  // Groups read so far (for tests and statistics).
  size_t groups_read() const { return groups_read_; }

  // Writes the bitmaps of the groups read that changed since they were read or last written
  // (or were uninitialised then and are not any more), as ext2fs_write_bitmaps writes each
  // group's, and clears the bitmaps' dirty flags. What fs->write_bitmaps does.
  errcode_t write_changed();

 private:
  struct Original {  // a group's bitmaps as read (or as last written), to see what changed
    std::vector<unsigned char> blocks, inodes;
    bool block_uninit = false, inode_uninit = false;
  };

  explicit GroupBitmaps(ext2_filsys fs);
  errcode_t load(dgrp_t group);
  blk64_t first_bit(dgrp_t group) const;
  // The first free block in [LO, HI], reading groups as the search reaches them; ENOENT if none.
  errcode_t find_free_block(blk64_t lo, blk64_t hi, blk64_t* out);
  void reload_after(blk64_t blk, blk64_t count, int inuse);

  static errcode_t on_alloc_block(ext2_filsys fs, blk64_t goal, blk64_t* ret);
  static errcode_t on_new_range(ext2_filsys fs, int flags, blk64_t goal, blk64_t len, blk64_t* pblk,
                                blk64_t* plen);
  static void on_block_stats(ext2_filsys fs, blk64_t blk, int inuse);
  static void on_block_stats_range(ext2_filsys fs, blk64_t blk, blk_t num, int inuse);
  static errcode_t on_write_bitmaps(ext2_filsys fs);

  ext2_filsys fs_;
  unsigned block_nbytes_, inode_nbytes_;
  // Per group: read yet, and whether its bitmaps were uninitialised (the descriptor's flags
  // as they were at attach, before any allocation cleared them).
  std::vector<bool> loaded_, block_uninit_, inode_uninit_;
  std::map<dgrp_t, Original> original_;     // the groups read
  std::vector<unsigned char> descriptors_;  // the group descriptors at attach
  errcode_t error_ = 0;  // a read that failed inside a callback, reported at close
  size_t groups_read_ = 0;
  void (*old_stats_)(ext2_filsys, blk64_t, int) = nullptr;
  void (*old_stats_range_)(ext2_filsys, blk64_t, blk_t, int) = nullptr;
};

}  // namespace kiln::fs

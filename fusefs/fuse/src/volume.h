// The state of one mounted filesystem, shared by the FUSE request handlers. All handlers run on
// one thread (libext2fs is not thread-safe), so nothing here is locked.
#pragma once

#include <ext2fs/ext2fs.h>
#include <fuse_lowlevel.h>

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "group_bitmaps.h"
#include "kiln/fs/fuse.h"

namespace kiln::fs::fuse_detail {

class Volume {
 public:
  Volume(ext2_filsys fs, const FuseMountOptions& opts);
  ~Volume();
  Volume(const Volume&) = delete;
  Volume& operator=(const Volume&) = delete;

  ext2_filsys fs() const { return fs_; }
  bool read_only() const { return read_only_; }
  double timeout() const { return timeout_; }
  // The kernel's writeback cache is on (op_init): the kernel owns a file's mtime and ctime
  // while it has the file's pages, and sends them with SETATTR after the data.
  bool writeback_cache() const { return writeback_cache_; }
  void set_writeback_cache(bool on) { writeback_cache_ = on; }
  // FUSE_HANDLE_KILLPRIV_V2 was taken (mount.cpp adds it to the INIT reply, which libfuse 3.14
  // cannot): the kernel no longer reads the mode back (GETATTR) before each chown to work out
  // which set-ID bits to drop, and marks the filesystem SB_NOSEC. In exchange this side drops
  // them when a request says so (kill_suidgid(): a chown, or a truncate or write by a caller
  // without CAP_FSETID; see drop_setid()).
  bool killpriv_v2() const { return killpriv_v2_; }
  void set_killpriv_v2(bool on) { killpriv_v2_ = on; }
  bool kill_suidgid() const { return kill_suidgid_; }
  void set_kill_suidgid(bool on) { kill_suidgid_ = on; }
  // Files are opened without OPEN and RELEASE requests (FUSE_CAP_NO_OPEN_SUPPORT, op_init):
  // nothing is refused at open then, so not where encrypted files could be opened for writing.
  // The kernel's own lookup reference (FORGET) keeps an unlinked open file's inode alive.
  bool no_open() const { return no_open_; }
  void set_no_open(bool on) { no_open_ = on; }
  // The INIT request whose reply should take FUSE_HANDLE_KILLPRIV_V2 (0: none).
  uint64_t init_unique() const { return init_unique_; }
  void set_init_unique(uint64_t unique) { init_unique_ = unique; }

  // The kernel's references: lookups (entries it was given, minus forgets) and open files. An
  // inode whose last link is removed stays allocated until both reach zero, as on a kernel
  // filesystem, so that open files stay readable and inode numbers are not reused under the
  // kernel's feet.
  void add_lookup(ext2_ino_t ino, uint64_t n = 1);
  void forget(ext2_ino_t ino, uint64_t n);
  void add_open(ext2_ino_t ino);
  void release(ext2_ino_t ino);
  // The inode's link count reached zero: free it now or when the last reference goes.
  errcode_t unlinked(ext2_ino_t ino);
  // At unmount: frees every inode still waiting for its references to go.
  errcode_t free_orphans();

  void mark_dirty() { dirty_ = true; }
  bool dirty() const { return dirty_; }
  // Writes bitmaps, group descriptors and superblock; `final` also marks the filesystem clean
  // (as it was when mounted) and writes the backup superblocks.
  errcode_t flush(bool final);
  // The buffer behind the filesystem is nearly full (FuseMountOptions::buffer_nearly_full):
  // writes bitmaps, group descriptors and superblock, then everything buffered, without a
  // flush of the image. Called between requests; no-op otherwise.
  errcode_t write_back_if_full();
  // Marks the filesystem "not cleanly unmounted" on disk for as long as the mount is writable,
  // so that a crash is caught by the next e2fsck.
  errcode_t begin_writes();

  // The end of the mount, once: frees the inodes unlinked while open, writes everything with
  // the filesystem marked clean again, then calls FuseMountOptions::close_image (which
  // releases the image; the filesystem handle is not used afterwards). Called on FUSE_DESTROY,
  // which the kernel sends during umount for a fuseblk mount, or when the session ends.
  // Returns 0, or 1 after printing what failed; later calls return the same.
  int finish();
  bool finished() const { return finished_; }
  // Bytes libext2fs read and wrote through the io_manager (as of finish() once finished).
  void io_bytes(uint64_t& read, uint64_t& written) const;

  // Drops the kernel's cached attributes of INO (after a change the kernel did not ask for).
  void set_session(fuse_session* se) { session_ = se; }
  void invalidate_attr(ext2_ino_t ino);

  // A scratch buffer for reads, kept between requests.
  char* buffer(size_t size);

  // Writes COUNT blocks of file data from PBLK on: straight to the image when
  // FuseMountOptions::write_data is set and none of them was freed since the last flush point,
  // else through the io_manager with the metadata.
  errcode_t write_data(blk64_t pblk, blk64_t count, const char* data);
  // Blocks freed since the last flush point (libext2fs's allocation statistics report them).
  void note_freed(blk64_t first, blk64_t count);
  bool freed_since_flush(blk64_t first, blk64_t count) const;

 private:
  errcode_t maybe_free(ext2_ino_t ino);
  // Gives the handle its allocation callbacks back (before it is closed).
  void detach();
  // At a flush point: the image now has these blocks free, and nothing on it refers to them.
  void forget_freed();

  ext2_filsys fs_;
  fuse_session* session_ = nullptr;
  bool read_only_;
  double timeout_;
  bool writeback_cache_ = false;
  bool killpriv_v2_ = false;
  bool no_open_ = false;
  bool kill_suidgid_ = false;
  uint64_t init_unique_ = 0;
  bool dirty_ = false;
  bool writes_begun_ = false;
  std::function<int()> close_image_;
  std::function<bool()> buffer_nearly_full_;
  std::function<int()> write_back_;
  std::function<int(uint64_t, const void*, size_t)> write_data_;
  // Block ranges freed since the last flush point: first block -> one past the last. Past
  // kMaxFreedRanges (scattered frees on a large filesystem), the map is dropped and every
  // block counts as freed until the next flush point: all data then goes through the buffer,
  // as it did before write_data existed, and the map's memory stays bounded (about 3 MiB).
  static constexpr size_t kMaxFreedRanges = size_t{1} << 16;
  std::map<blk64_t, blk64_t> freed_;
  bool freed_all_ = false;
  void (*old_alloc_stats_)(ext2_filsys, blk64_t, int) = nullptr;
  void (*old_alloc_stats_range_)(ext2_filsys, blk64_t, blk_t, int) = nullptr;
  // Writable mounts: which groups' bitmaps changed since the last flush point, so that a flush
  // point writes those only (fs->write_bitmaps), not every group's.
  static errcode_t on_write_bitmaps(ext2_filsys fs);
  std::unique_ptr<GroupBitmaps> bitmaps_;
  errcode_t (*old_write_bitmaps_)(ext2_filsys) = nullptr;
  bool finished_ = false;
  int finish_status_ = 0;
  bool image_closed_ = false;
  uint64_t io_read_ = 0, io_written_ = 0;
  uint16_t saved_state_ = 0;
  std::array<uint32_t, 3> saved_features_{};  // compat, incompat, ro_compat at the first write
  std::unordered_map<ext2_ino_t, uint64_t> lookups_;
  std::unordered_map<ext2_ino_t, uint32_t> opens_;
  std::unordered_set<ext2_ino_t> orphans_;
  std::vector<char> buffer_;
};

Volume& volume(fuse_req_t req);

// FUSE calls the root inode 1; ext2 calls it 2 (inode 1 holds bad blocks and is never shown).
inline ext2_ino_t to_ext2(fuse_ino_t ino) {
  return ino == FUSE_ROOT_ID ? EXT2_ROOT_INO : static_cast<ext2_ino_t>(ino);
}
inline fuse_ino_t to_fuse(ext2_ino_t ino) { return ino == EXT2_ROOT_INO ? FUSE_ROOT_ID : ino; }

// errno for a libext2fs error; errors that mean a damaged filesystem or a failed device are
// logged on stderr with the operation and inode.
int fail(const char* op, ext2_ino_t ino, errcode_t rc);

// Fills a FUSE entry for INO from its inode.
void make_entry(Volume& v, ext2_ino_t ino, const ext2_inode_large& inode, fuse_entry_param& e);
// Replies with the entry for INO and counts the lookup.
void reply_entry(fuse_req_t req, Volume& v, ext2_ino_t ino, const ext2_inode_large& inode);

void register_attr_ops(fuse_lowlevel_ops& ops);       // lookup, forget, getattr, setattr, ...
void register_namespace_ops(fuse_lowlevel_ops& ops);  // mknod, mkdir, unlink, rename, link, ...
void register_file_ops(fuse_lowlevel_ops& ops);       // create, open, read, write, release, ...
void register_dir_ops(fuse_lowlevel_ops& ops);        // opendir, readdir(plus), releasedir
void register_xattr_ops(fuse_lowlevel_ops& ops);

}  // namespace kiln::fs::fuse_detail

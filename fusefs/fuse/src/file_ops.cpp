// open, read, write, flush, fsync, release. Each request opens the inode through the libext2fs
// file API and closes it again, so that no cached copy of an inode outlives the request (other
// requests, chmod for one, rewrite inodes in between).
#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>

#include "inode_util.h"
#include "volume.h"

namespace kiln::fs::fuse_detail {
namespace {

class File {
 public:
  File() = default;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File() {
    if (file_) ext2fs_file_close(file_);
  }
  errcode_t open(ext2_filsys fs, ext2_ino_t ino, int flags) {
    return ext2fs_file_open(fs, ino, flags, &file_);
  }
  // Closing writes the file's last buffered block and, when it changed, its inode.
  errcode_t close() {
    errcode_t rc = ext2fs_file_close(file_);
    file_ = nullptr;
    return rc;
  }
  ext2_file_t get() const { return file_; }

 private:
  ext2_file_t file_ = nullptr;
};

void op_open(fuse_req_t req, fuse_ino_t fino, fuse_file_info* fi) {
  Volume& v = volume(req);
  const ext2_ino_t ino = to_ext2(fino);
  // Zero-message opens (op_init): ENOSYS tells the kernel to open files without asking, and
  // without a RELEASE at the last close, from now on.
  if (v.no_open()) {
    fuse_reply_err(req, ENOSYS);
    return;
  }
  if ((fi->flags & O_ACCMODE) != O_RDONLY && v.read_only()) {
    fuse_reply_err(req, EROFS);
    return;
  }
  ext2_inode_large inode;
  if (errcode_t rc = read_inode(v.fs(), ino, inode)) {
    fuse_reply_err(req, fail("open", ino, rc));
    return;
  }
  if (LINUX_S_ISDIR(inode.i_mode)) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if ((inode.i_flags & EXT4_ENCRYPT_FL) && (fi->flags & O_ACCMODE) != O_RDONLY) {
    fuse_reply_err(req, EOPNOTSUPP);
    return;
  }
  // All writes pass through this mount, so cached pages stay valid from one open to the next.
  fi->keep_cache = 1;
  v.add_open(ino);
  if (fuse_reply_open(req, fi) != 0) v.release(ino);
}

// Calls fn(index, pblk, n, unwritten) for each run of N contiguous blocks of a file, starting
// at logical block FIRST + index; pblk is 0 for a hole. One extent lookup per run for extent
// files (a hole included), one block map per block otherwise.
using RunFn = std::function<errcode_t(blk64_t, blk64_t, blk64_t, bool)>;

// After ext2fs_extent_goto found no extent holding block B: the first block after B that an
// extent maps, or END, whichever is smaller. goto leaves the handle on the last extent before
// B, or on the first one after it when there is none before (libext2fs's extent.c). From the
// last extent of the tree, NEXT_LEAF starts over at the first one: an extent that does not
// start after B means there is none after it.
errcode_t hole_end(ext2_extent_handle_t handle, blk64_t b, blk64_t end, blk64_t& out) {
  ext2fs_extent ext{};
  errcode_t rc = ext2fs_extent_get(handle, EXT2_EXTENT_CURRENT, &ext);
  if (rc == EXT2_ET_NO_CURRENT_NODE) {  // an empty tree: all of it is a hole
    out = end;
    return 0;
  }
  if (rc) return rc;
  if (ext.e_lblk <= b) {
    rc = ext2fs_extent_get(handle, EXT2_EXTENT_NEXT_LEAF, &ext);
    if (rc == EXT2_ET_EXTENT_NO_NEXT) {
      out = end;
      return 0;
    }
    if (rc) return rc;
  }
  out = ext.e_lblk > b ? std::min<blk64_t>(ext.e_lblk, end) : end;
  return 0;
}

errcode_t for_each_run(ext2_filsys fs, ext2_ino_t ino, ext2_inode_large& inode, blk64_t first,
                       blk64_t count, const RunFn& fn) {
  const blk64_t end = first + count;
  auto* small = reinterpret_cast<ext2_inode*>(&inode);
  errcode_t rc = 0;
  if (inode.i_flags & EXT4_EXTENTS_FL) {
    ext2_extent_handle_t handle;
    if ((rc = ext2fs_extent_open2(fs, ino, small, &handle))) return rc;
    for (blk64_t b = first; b < end && !rc;) {
      ext2fs_extent ext{};
      rc = ext2fs_extent_goto(handle, b);
      if (!rc) rc = ext2fs_extent_get(handle, EXT2_EXTENT_CURRENT, &ext);
      if (rc == EXT2_ET_EXTENT_NOT_FOUND ||
          (!rc && (b < ext.e_lblk || b >= ext.e_lblk + ext.e_len))) {
        // A hole, in one call: a block-by-block walk cost a tree lookup (a read of the leaf
        // block) per block of every write that allocates.
        blk64_t stop = b + 1;
        if ((rc = hole_end(handle, b, end, stop))) break;
        rc = fn(b - first, 0, stop - b, false);
        b = stop;
        continue;
      }
      if (rc) break;
      const blk64_t n = std::min<blk64_t>(ext.e_lblk + ext.e_len, end) - b;
      rc = fn(b - first, ext.e_pblk + (b - ext.e_lblk), n,
              (ext.e_flags & EXT2_EXTENT_FLAGS_UNINIT) != 0);
      b += n;
    }
    ext2fs_extent_free(handle);
    return rc;
  }
  for (blk64_t b = first; b < end;) {
    blk64_t pblk = 0;
    if ((rc = ext2fs_bmap2(fs, ino, small, nullptr, 0, b, nullptr, &pblk))) return rc;
    blk64_t n = 1;
    if (pblk != 0) {
      for (blk64_t next = 0; b + n < end; ++n) {
        if ((rc = ext2fs_bmap2(fs, ino, small, nullptr, 0, b + n, nullptr, &next))) return rc;
        if (next != pblk + n) break;
      }
    }
    if ((rc = fn(b - first, pblk, n, false))) return rc;
    b += n;
  }
  return 0;
}

// Reads COUNT whole blocks from logical block FIRST into DST, one io_manager request per run
// (the libext2fs file API reads one block at a time). Holes and unwritten extents are zeros.
errcode_t read_blocks(ext2_filsys fs, ext2_ino_t ino, ext2_inode_large& inode, blk64_t first,
                      blk64_t count, char* dst) {
  const size_t bs = fs->blocksize;
  return for_each_run(fs, ino, inode, first, count,
                      [&](blk64_t index, blk64_t pblk, blk64_t n, bool unwritten) -> errcode_t {
                        char* out = dst + index * bs;
                        if (pblk == 0 || unwritten) {
                          std::memset(out, 0, n * bs);
                          return 0;
                        }
                        return io_channel_read_blk64(fs->io, pblk, static_cast<int>(n), out);
                      });
}

// Longest initialized extent (ext4's EXT_INIT_MAX_LEN).
constexpr blk64_t kMaxExtentLen = 32768;

// When logical block FIRST comes right after the file's last extent and the physical blocks
// right after that extent are free: allocates as many of them as the write needs (up to
// COUNT, as far as they are free and the extent may grow) and lengthens the extent, so that a
// file written sequentially (1 MiB WRITEs) keeps a few long extents instead of one per
// request. ext2fs_fallocate would start a new extent there (it lengthens an initialized
// extent only when told to zero the new blocks first). TAKEN: how many blocks it allocated
// (0: none, the caller allocates as usual). Updates INODE (extent root, i_blocks) without
// writing it.
errcode_t extend_last_extent(ext2_filsys fs, ext2_ino_t ino, ext2_inode_large& inode, blk64_t first,
                             blk64_t count, blk64_t& taken) {
  taken = 0;
  if (!(inode.i_flags & EXT4_EXTENTS_FL) || count == 0 || first == 0) return 0;
  ext2_extent_handle_t handle;
  errcode_t rc = ext2fs_extent_open2(fs, ino, reinterpret_cast<ext2_inode*>(&inode), &handle);
  if (rc) return rc;
  ext2fs_extent ext{};
  // The extent holding the block before FIRST, if it is the file's last one.
  rc = ext2fs_extent_goto(handle, first - 1);
  if (!rc) rc = ext2fs_extent_get(handle, EXT2_EXTENT_CURRENT, &ext);
  if (rc == EXT2_ET_EXTENT_NOT_FOUND || rc == EXT2_ET_NO_CURRENT_NODE) rc = 0;
  const bool adjacent = !rc && ext.e_len > 0 && ext.e_lblk + ext.e_len == first &&
                        !(ext.e_flags & EXT2_EXTENT_FLAGS_UNINIT) && ext.e_len < kMaxExtentLen;
  if (adjacent) {
    ext2fs_extent next{};
    const errcode_t last = ext2fs_extent_get(handle, EXT2_EXTENT_NEXT_LEAF, &next);
    // NEXT_LEAF from the last extent starts over at the first one.
    const bool is_last = last == EXT2_ET_EXTENT_NO_NEXT || (!last && next.e_lblk <= ext.e_lblk);
    const blk64_t pstart = ext.e_pblk + ext.e_len;
    const blk64_t total = ext2fs_blocks_count(fs->super);
    blk64_t n = std::min<blk64_t>(count, kMaxExtentLen - ext.e_len);
    n = pstart < total ? std::min<blk64_t>(n, total - pstart) : 0;
    // The free run right after the extent (metadata, a backup superblock, another file's
    // blocks end it).
    blk64_t busy = 0;
    if (n > 0 &&
        ext2fs_find_first_set_block_bitmap2(fs->block_map, pstart, pstart + n - 1, &busy) == 0) {
      n = busy - pstart;
    }
    if (is_last && n > 0 && !(rc = ext2fs_extent_goto(handle, first - 1))) {
      ext.e_len += static_cast<__u32>(n);
      ext2fs_block_alloc_stats_range(fs, pstart, static_cast<blk_t>(n), +1);
      rc = ext2fs_extent_replace(handle, 0, &ext);
      if (!rc) rc = ext2fs_extent_fix_parents(handle);
      if (rc) {
        ext2fs_block_alloc_stats_range(fs, pstart, static_cast<blk_t>(n), -1);
      } else {
        // The handle works on INODE itself (extent_open2 was given it): its root is current.
        rc = ext2fs_iblk_add_blocks(fs, reinterpret_cast<ext2_inode*>(&inode), n);
        if (!rc) taken = n;
      }
    }
  }
  ext2fs_extent_free(handle);
  return rc;
}

// Writes whole blocks of an extent-mapped file: allocates what is missing in one go
// (lengthening the last extent, then ext2fs_fallocate for the rest, contiguous where it can)
// and writes each run with one request, straight to the image where it can (Volume::
// write_data). Only used with room to spare, so that a failed allocation cannot leave blocks
// past the end of file.
errcode_t write_blocks(Volume& v, ext2_ino_t ino, blk64_t first, blk64_t count, const char* src) {
  ext2_filsys fs = v.fs();
  ext2_inode_large inode;
  errcode_t rc = read_inode(fs, ino, inode);
  if (rc) return rc;
  blk64_t taken = 0;
  if ((rc = extend_last_extent(fs, ino, inode, first, count, taken))) return rc;
  if (taken < count) {
    rc = ext2fs_fallocate(fs, EXT2_FALLOCATE_FORCE_INIT | EXT2_FALLOCATE_INIT_BEYOND_EOF, ino,
                          reinterpret_cast<ext2_inode*>(&inode), ~0ULL, first + taken,
                          count - taken);
  }
  // Given an inode, ext2fs_fallocate updates it (extent tree root, i_blocks) but leaves the
  // writing to the caller.
  if (rc || (rc = write_inode(fs, ino, inode))) return rc;
  const size_t bs = fs->blocksize;
  return for_each_run(fs, ino, inode, first, count,
                      [&](blk64_t index, blk64_t pblk, blk64_t n, bool unwritten) -> errcode_t {
                        if (pblk == 0 || unwritten) return EXT2_ET_BLOCK_ALLOC_FAIL;
                        return v.write_data(pblk, n, src + index * bs);
                      });
}

// Inline data (and anything else the block path does not cover) through the file API.
errcode_t read_with_file_api(ext2_filsys fs, ext2_ino_t ino, uint64_t off, size_t size, char* buf,
                             unsigned int& got) {
  File file;
  errcode_t rc = file.open(fs, ino, 0);
  if (!rc) rc = ext2fs_file_llseek(file.get(), off, EXT2_SEEK_SET, nullptr);
  if (!rc) rc = ext2fs_file_read(file.get(), buf, static_cast<unsigned>(size), &got);
  if (!rc) rc = file.close();
  return rc;
}

void op_read(fuse_req_t req, fuse_ino_t fino, size_t size, off_t off, fuse_file_info*) {
  Volume& v = volume(req);
  ext2_filsys fs = v.fs();
  const ext2_ino_t ino = to_ext2(fino);
  ext2_inode_large inode;
  errcode_t rc = read_inode(fs, ino, inode);
  if (rc) {
    fuse_reply_err(req, fail("read", ino, rc));
    return;
  }
  const uint64_t file_size = EXT2_I_SIZE(&inode);
  const uint64_t start = static_cast<uint64_t>(off);
  if (start >= file_size || size == 0) {
    fuse_reply_buf(req, nullptr, 0);
    return;
  }
  const uint64_t end = std::min<uint64_t>(start + size, file_size);
  if (inode.i_flags & EXT4_INLINE_DATA_FL) {
    char* buf = v.buffer(size);
    unsigned int got = 0;
    if ((rc = read_with_file_api(fs, ino, start, size, buf, got))) {
      fuse_reply_err(req, fail("read", ino, rc));
      return;
    }
    fuse_reply_buf(req, buf, got);
    return;
  }
  const blk64_t first = start / fs->blocksize;
  const blk64_t count = (end - 1) / fs->blocksize - first + 1;
  char* blocks = v.buffer(count * fs->blocksize);
  if ((rc = read_blocks(fs, ino, inode, first, count, blocks))) {
    fuse_reply_err(req, fail("read", ino, rc));
    return;
  }
  fuse_reply_buf(req, blocks + start % fs->blocksize, end - start);
}

// Part of a write through the libext2fs file API (which allocates block by block).
errcode_t write_with_file_api(ext2_filsys fs, ext2_ino_t ino, uint64_t off, const char* data,
                              size_t size, unsigned int& written) {
  File file;
  errcode_t rc = file.open(fs, ino, EXT2_FILE_WRITE);
  if (!rc) rc = ext2fs_file_llseek(file.get(), off, EXT2_SEEK_SET, nullptr);
  if (!rc) rc = ext2fs_file_write(file.get(), data, static_cast<unsigned>(size), &written);
  errcode_t close_rc = file.close();
  return rc ? rc : close_rc;
}

void op_write(fuse_req_t req, fuse_ino_t fino, const char* data, size_t size, off_t off,
              fuse_file_info*) {
  Volume& v = volume(req);
  ext2_filsys fs = v.fs();
  const ext2_ino_t ino = to_ext2(fino);
  if (v.read_only()) {
    fuse_reply_err(req, EROFS);
    return;
  }
  v.mark_dirty();
  ext2_inode_large inode;
  errcode_t rc = uninline(fs, ino);
  if (rc || (rc = read_inode(fs, ino, inode))) {
    fuse_reply_err(req, fail("write", ino, rc));
    return;
  }
  const uint64_t start = static_cast<uint64_t>(off);
  const uint64_t end = start + size;
  const size_t bs = fs->blocksize;
  // Whole blocks in the middle go the fast way on extent files when the filesystem has room
  // to spare; the unaligned head and tail (and everything else) through the file API.
  const uint64_t body_start = (start + bs - 1) / bs * bs;
  const uint64_t body_end = end / bs * bs;
  bool fast = (inode.i_flags & EXT4_EXTENTS_FL) && !(inode.i_flags & EXT4_INLINE_DATA_FL) &&
              body_end > body_start &&
              ext2fs_free_blocks_count(fs->super) >
                  (body_end - body_start) / bs + ext2fs_r_blocks_count(fs->super) + 1024;
  // Unwritten extents (left by a guest's fallocate) are left to the file API, which zeroes
  // what the write does not cover.
  if (fast) {
    bool unwritten_seen = false;
    rc = for_each_run(fs, ino, inode, body_start / bs, (body_end - body_start) / bs,
                      [&](blk64_t, blk64_t, blk64_t, bool unwritten) -> errcode_t {
                        unwritten_seen |= unwritten;
                        return 0;
                      });
    fast = !rc && !unwritten_seen;
    rc = 0;
  }
  size_t written = 0;
  if (!fast) {
    unsigned int n = 0;
    rc = write_with_file_api(fs, ino, start, data, size, n);
    written = n;
  } else {
    unsigned int n = 0;
    if (body_start > start) {
      rc = write_with_file_api(fs, ino, start, data, body_start - start, n);
      written = n;
    }
    if (!rc) {
      rc = write_blocks(v, ino, body_start / bs, (body_end - body_start) / bs,
                        data + (body_start - start));
      if (!rc) written = body_end - start;
    }
    if (!rc && end > body_end) {
      rc = write_with_file_api(fs, ino, body_end, data + (body_end - start), end - body_end, n);
      written += n;
    }
  }
  if (!rc || written > 0) {
    errcode_t rc2 = read_inode(fs, ino, inode);
    if (!rc2) {
      if (EXT2_I_SIZE(&inode) < start + written) {
        rc2 = ext2fs_inode_size_set(fs, reinterpret_cast<ext2_inode*>(&inode), start + written);
      }
      // With the writeback cache, the kernel's own times follow (SETATTR); a WRITE comes
      // at write-back, which may be after a utimensat that must stand.
      if (!v.writeback_cache()) touch_mtime_ctime(fs, inode);
      // FUSE_HANDLE_KILLPRIV_V2: a write by a caller without CAP_FSETID. The kernel sends it
      // through, not through its page cache, and the mode it caches must follow.
      const bool dropped = v.kill_suidgid() && drop_setid(inode);
      if (dropped) touch_ctime(fs, inode);
      if (!rc2) rc2 = write_inode(fs, ino, inode);
      if (!rc2 && dropped) v.invalidate_attr(ino);
    }
    if (!rc) rc = rc2;
  }
  if (rc && written == 0) {
    fuse_reply_err(req, fail("write", ino, rc));
    return;
  }
  fuse_reply_write(req, written);
}

// close(2). The kernel has written the file's dirty pages back (WRITE) before it sends this;
// there is nothing left to do here (no POSIX locks of our own, data reach the io_manager when
// each WRITE ends). ENOSYS tells the kernel so: it stops sending FLUSH (one request less per
// close of a file), and the write-back before it stays.
void op_flush(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, ENOSYS); }

void op_release(fuse_req_t req, fuse_ino_t fino, fuse_file_info*) {
  volume(req).release(to_ext2(fino));
  fuse_reply_err(req, 0);
}

// Data reaches the io_manager when each request ends; fsync also writes the metadata that
// libext2fs keeps in memory and flushes the device.
void op_fsync(fuse_req_t req, fuse_ino_t fino, int, fuse_file_info*) {
  Volume& v = volume(req);
  errcode_t rc = v.flush(false);
  fuse_reply_err(req, rc ? fail("fsync", to_ext2(fino), rc) : 0);
}

}  // namespace

void register_file_ops(fuse_lowlevel_ops& ops) {
  ops.open = op_open;
  ops.read = op_read;
  ops.write = op_write;
  ops.flush = op_flush;
  ops.release = op_release;
  ops.fsync = op_fsync;
  ops.fsyncdir = op_fsync;
}

}  // namespace kiln::fs::fuse_detail

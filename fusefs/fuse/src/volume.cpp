#include "volume.h"

#include <algorithm>
#include <array>
#include <cstdio>

#include "inode_util.h"

namespace kiln::fs::fuse_detail {

namespace {

Volume& of(ext2_filsys fs) { return *static_cast<Volume*>(fs->priv_data); }

std::array<uint32_t, 3> features(const ext2_super_block* sb) {
  return {sb->s_feature_compat, sb->s_feature_incompat, sb->s_feature_ro_compat};
}

void on_block_stats(ext2_filsys fs, blk64_t blk, int inuse) {
  if (inuse < 0) of(fs).note_freed(blk, 1);
}

void on_block_stats_range(ext2_filsys fs, blk64_t blk, blk_t num, int inuse) {
  if (inuse < 0) of(fs).note_freed(blk, num);
}

}  // namespace

// fs->write_bitmaps of a writable mount (set in the constructor).
errcode_t Volume::on_write_bitmaps(ext2_filsys fs) { return of(fs).bitmaps_->write_changed(); }

Volume::Volume(ext2_filsys fs, const FuseMountOptions& opts)
    : fs_(fs),
      read_only_(opts.read_only || !(fs->flags & EXT2_FLAG_RW)),
      timeout_(opts.cache_timeout),
      close_image_(opts.close_image),
      buffer_nearly_full_(opts.buffer_nearly_full),
      write_back_(opts.write_back),
      write_data_(opts.write_data) {
  // Every block libext2fs frees is reported through its allocation statistics (file data,
  // extent tree blocks, directory blocks, extended attribute blocks).
  fs_->priv_data = this;
  ext2fs_set_block_alloc_stats_callback(fs_, on_block_stats, &old_alloc_stats_);
  ext2fs_set_block_alloc_stats_range_callback(fs_, on_block_stats_range, &old_alloc_stats_range_);
  // ext2fs_flush writes every group's bitmaps when one bit changed: on a 64 GiB filesystem 1024
  // blocks at every flush point, and into a qcow2 overlay a copy of every cluster that holds
  // them. Only the groups that changed are written instead (fusefs/src/group_bitmaps.h).
  if (!read_only_ && fs_->write_bitmaps == ext2fs_write_bitmaps) {
    bitmaps_ = GroupBitmaps::track_loaded(fs_);
    if (bitmaps_) {
      old_write_bitmaps_ = fs_->write_bitmaps;
      fs_->write_bitmaps = on_write_bitmaps;
    }
  }
}

Volume::~Volume() {
  if (!image_closed_) detach();
}

void Volume::detach() {
  if (bitmaps_) fs_->write_bitmaps = old_write_bitmaps_;
  ext2fs_set_block_alloc_stats_callback(fs_, old_alloc_stats_, nullptr);
  ext2fs_set_block_alloc_stats_range_callback(fs_, old_alloc_stats_range_, nullptr);
  fs_->priv_data = nullptr;
}

void Volume::note_freed(blk64_t first, blk64_t count) {
  if (count == 0 || freed_all_) return;
  blk64_t end = first + count;
  // Merge with every range it touches or overlaps.
  auto it = freed_.upper_bound(first);
  if (it != freed_.begin() && std::prev(it)->second >= first) --it;
  while (it != freed_.end() && it->first <= end) {
    first = std::min(first, it->first);
    end = std::max(end, it->second);
    it = freed_.erase(it);
  }
  freed_.emplace(first, end);
  if (freed_.size() > kMaxFreedRanges) {
    freed_.clear();
    freed_all_ = true;
  }
}

void Volume::forget_freed() {
  freed_.clear();
  freed_all_ = false;
}

bool Volume::freed_since_flush(blk64_t first, blk64_t count) const {
  if (freed_all_) return true;
  auto it = freed_.upper_bound(first);  // the first range starting after FIRST
  if (it != freed_.begin() && std::prev(it)->second > first) return true;
  return it != freed_.end() && it->first < first + count;
}

errcode_t Volume::write_data(blk64_t pblk, blk64_t count, const char* data) {
  if (!write_data_ || freed_since_flush(pblk, count)) {
    return io_channel_write_blk64(fs_->io, pblk, static_cast<int>(count), data);
  }
  const uint64_t bs = fs_->blocksize;
  const int rc = write_data_(pblk * bs, data, count * bs);
  return rc < 0 ? static_cast<errcode_t>(-rc) : 0;
}

Volume& volume(fuse_req_t req) { return *static_cast<Volume*>(fuse_req_userdata(req)); }

void Volume::add_lookup(ext2_ino_t ino, uint64_t n) { lookups_[ino] += n; }

void Volume::forget(ext2_ino_t ino, uint64_t n) {
  auto it = lookups_.find(ino);
  if (it == lookups_.end()) return;
  if (it->second > n) {
    it->second -= n;
    return;
  }
  lookups_.erase(it);
  if (errcode_t rc = maybe_free(ino)) fail("forget", ino, rc);
}

void Volume::add_open(ext2_ino_t ino) { ++opens_[ino]; }

void Volume::release(ext2_ino_t ino) {
  auto it = opens_.find(ino);
  if (it == opens_.end()) return;
  if (--it->second > 0) return;
  opens_.erase(it);
  if (errcode_t rc = maybe_free(ino)) fail("release", ino, rc);
}

errcode_t Volume::unlinked(ext2_ino_t ino) {
  orphans_.insert(ino);
  return maybe_free(ino);
}

errcode_t Volume::maybe_free(ext2_ino_t ino) {
  if (!orphans_.count(ino) || lookups_.count(ino) || opens_.count(ino)) return 0;
  orphans_.erase(ino);
  mark_dirty();
  return free_inode(fs_, ino);
}

errcode_t Volume::free_orphans() {
  errcode_t first = 0;
  for (ext2_ino_t ino : orphans_) {
    errcode_t rc = free_inode(fs_, ino);
    if (rc && !first) first = rc;
  }
  if (!orphans_.empty()) mark_dirty();
  orphans_.clear();
  return first;
}

errcode_t Volume::begin_writes() {
  if (read_only_ || writes_begun_) return 0;
  saved_state_ = fs_->super->s_state;
  saved_features_ = features(fs_->super);
  fs_->super->s_state &= ~EXT2_VALID_FS;
  fs_->super->s_mtime = static_cast<uint32_t>(now().tv_sec);
  ext2fs_mark_super_dirty(fs_);
  writes_begun_ = true;
  // Between flushes only the primary superblock changes, as with the kernel's driver.
  fs_->flags |= EXT2_FLAG_MASTER_SB_ONLY;
  return flush(false);
}

errcode_t Volume::flush(bool final) {
  if (read_only_) return 0;
  if (final && writes_begun_) {
    fs_->super->s_state = saved_state_;
    // The backup superblocks and group descriptors (a dozen scattered blocks, in a qcow2
    // overlay as many cluster copies) are left as they were, as the kernel leaves them, unless
    // the mount changed a feature (libext2fs sets large_file for a file past 2 GiB), which
    // e2fsck would otherwise find only in the primary.
    if (features(fs_->super) != saved_features_) fs_->flags &= ~EXT2_FLAG_MASTER_SB_ONLY;
    ext2fs_mark_super_dirty(fs_);
  }
  dirty_ = false;
  const errcode_t rc = ext2fs_flush(fs_);
  // The image now holds the bitmaps that say these blocks are free, and nothing refers to them.
  if (!rc) forget_freed();
  return rc;
}

errcode_t Volume::write_back_if_full() {
  if (read_only_ || finished_ || !buffer_nearly_full_ || !write_back_ || !buffer_nearly_full_()) {
    return 0;
  }
  // The metadata first (into the buffer), then all of it in one go: what reaches the image is
  // the state after this request, not an inode without its bitmaps. Still marked dirty, so
  // that the idle flush makes it durable.
  if (errcode_t rc = ext2fs_flush2(fs_, EXT2_FLAG_FLUSH_NO_SYNC)) return rc;
  const int rc = write_back_();
  if (rc < 0) return static_cast<errcode_t>(-rc);
  forget_freed();
  return 0;
}

int Volume::finish() {
  if (finished_) return finish_status_;
  finished_ = true;
  int status = 0;
  if (errcode_t rc = free_orphans()) {
    std::fprintf(stderr, "kiln-fs: freeing unlinked inodes: %s\n", error_message(rc));
    status = 1;
  }
  if (errcode_t rc = flush(true)) {
    std::fprintf(stderr, "kiln-fs: flushing the filesystem: %s\n", error_message(rc));
    status = 1;
  }
  io_bytes(io_read_, io_written_);  // the handle goes with the image
  detach();
  image_closed_ = true;
  if (close_image_ && close_image_() != 0) status = 1;
  finish_status_ = status;
  return status;
}

void Volume::io_bytes(uint64_t& read, uint64_t& written) const {
  read = io_read_;
  written = io_written_;
  io_stats stats = nullptr;
  if (image_closed_ || !fs_->io->manager->get_stats) return;
  if (fs_->io->manager->get_stats(fs_->io, &stats) == 0 && stats) {
    read = stats->bytes_read;
    written = stats->bytes_written;
  }
}

void Volume::invalidate_attr(ext2_ino_t ino) {
  // A negative offset: attributes only, no page-cache work, so this cannot wait on the very
  // request being answered.
  if (session_) fuse_lowlevel_notify_inval_inode(session_, to_fuse(ino), -1, 0);
}

char* Volume::buffer(size_t size) {
  if (buffer_.size() < size) buffer_.resize(size);
  return buffer_.data();
}

int fail(const char* op, ext2_ino_t ino, errcode_t rc) {
  const int err = to_errno(rc);
  if (err == EIO || err == EUCLEAN || err == ENOMEM) {
    std::fprintf(stderr, "kiln-fs: %s (inode %u): %s\n", op, ino, error_message(rc));
  }
  return err;
}

void make_entry(Volume& v, ext2_ino_t ino, const ext2_inode_large& inode, fuse_entry_param& e) {
  e = fuse_entry_param{};
  e.ino = to_fuse(ino);
  e.generation = inode.i_generation;
  fill_stat(v.fs(), ino, inode, e.attr);
  e.attr_timeout = v.timeout();
  e.entry_timeout = v.timeout();
}

void reply_entry(fuse_req_t req, Volume& v, ext2_ino_t ino, const ext2_inode_large& inode) {
  fuse_entry_param e;
  make_entry(v, ino, inode, e);
  if (fuse_reply_entry(req, &e) == 0) v.add_lookup(ino);
}

}  // namespace kiln::fs::fuse_detail

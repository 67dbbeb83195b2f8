// Operations that change names: create, mknod, mkdir, symlink, link, unlink, rmdir, rename.
#include <fcntl.h>
#include <linux/fs.h>

#include <cerrno>
#include <cstring>

#include "inode_util.h"
#include "volume.h"

namespace kiln::fs::fuse_detail {
namespace {

// Checks that NAME may be created in DIR and reads DIR's inode.
int check_new_name(Volume& v, ext2_ino_t dir, const char* name, ext2_inode_large& dir_inode) {
  if (v.read_only()) return EROFS;
  const size_t len = std::strlen(name);
  if (len > EXT2_NAME_LEN) return ENAMETOOLONG;
  if (errcode_t rc = read_inode(v.fs(), dir, dir_inode)) return fail("create", dir, rc);
  if (!LINUX_S_ISDIR(dir_inode.i_mode)) return ENOTDIR;
  if (dir_inode.i_links_count == 0) return ENOENT;
  // Encrypted names and case-folded lookups need keys and tables that libext2fs does not apply
  // when it adds entries.
  if (dir_inode.i_flags & (EXT4_ENCRYPT_FL | EXT4_CASEFOLD_FL)) return EOPNOTSUPP;
  ext2_ino_t existing;
  errcode_t rc = ext2fs_lookup(v.fs(), dir, name, static_cast<int>(len), nullptr, &existing);
  if (rc == 0) return EEXIST;
  if (rc != EXT2_ET_FILE_NOT_FOUND) return fail("lookup", dir, rc);
  return 0;
}

// Owner of a new inode: the caller, with the group of a set-group-ID directory.
void set_owner(fuse_req_t req, const ext2_inode_large& dir, ext2_inode_large& inode) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  set_uid(inode, ctx->uid);
  if (dir.i_mode & S_ISGID) {
    set_gid(inode, get_gid(dir));
    if (LINUX_S_ISDIR(inode.i_mode)) inode.i_mode |= S_ISGID;
  } else {
    set_gid(inode, ctx->gid);
  }
}

void set_all_times(ext2_filsys fs, ext2_inode_large& inode) {
  const timespec t = now();
  for (TimeField f :
       {TimeField::kAccess, TimeField::kModify, TimeField::kChange, TimeField::kCreate}) {
    set_time(fs, inode, f, t);
  }
}

errcode_t touch_dir(ext2_filsys fs, ext2_ino_t dir, int link_delta = 0) {
  ext2_inode_large inode;
  errcode_t rc = read_inode(fs, dir, inode);
  if (rc) return rc;
  for (; link_delta < 0; ++link_delta) dec_dir_links(inode);
  for (; link_delta > 0; --link_delta) inc_dir_links(fs, inode);
  touch_mtime_ctime(fs, inode);
  return write_inode(fs, dir, inode);
}

// The inode of a new directory, symlink or file gets its final mode, owner and times.
errcode_t finish_new_inode(fuse_req_t req, ext2_filsys fs, ext2_ino_t ino,
                           const ext2_inode_large& dir, mode_t mode, ext2_inode_large& inode) {
  errcode_t rc = read_inode(fs, ino, inode);
  if (rc) return rc;
  inode.i_mode = static_cast<uint16_t>(mode);
  set_owner(req, dir, inode);
  set_all_times(fs, inode);
  return write_inode(fs, ino, inode);
}

// A regular file or special file (device, fifo, socket).
int new_node(fuse_req_t req, Volume& v, ext2_ino_t dir, const char* name, mode_t mode, dev_t rdev,
             ext2_ino_t& ino, ext2_inode_large& inode) {
  ext2_inode_large dir_inode;
  if (int err = check_new_name(v, dir, name, dir_inode)) return err;
  ext2_filsys fs = v.fs();
  v.mark_dirty();
  errcode_t rc = ext2fs_new_inode(fs, dir, static_cast<int>(mode), nullptr, &ino);
  if (rc) return fail("create", dir, rc);
  std::memset(&inode, 0, sizeof inode);
  inode.i_mode = static_cast<uint16_t>(mode);
  inode.i_links_count = 1;
  // New files are never inline, even where the filesystem allows it: libext2fs 1.47's inline
  // write path is unreliable (appending crashes it); block-mapped files are always valid.
  if (S_ISREG(mode) && ext2fs_has_feature_extents(fs->super)) {
    ext2_extent_handle_t handle;
    if ((rc = ext2fs_extent_open2(fs, ino, reinterpret_cast<ext2_inode*>(&inode), &handle))) {
      return fail("create", ino, rc);
    }
    ext2fs_extent_free(handle);
  } else if (S_ISCHR(mode) || S_ISBLK(mode)) {
    set_inode_rdev(inode, rdev);
  }
  if ((rc = ext2fs_write_new_inode(fs, ino, reinterpret_cast<ext2_inode*>(&inode))) ||
      (rc = finish_new_inode(req, fs, ino, dir_inode, mode, inode))) {
    return fail("create", ino, rc);
  }
  // The inode is counted as used only once its name exists: a failure above leaves nothing.
  if ((rc = add_entry(fs, dir, name, ino, mode))) return fail("link", dir, rc);
  ext2fs_inode_alloc_stats2(fs, ino, +1, 0);
  if ((rc = touch_dir(fs, dir))) return fail("create", dir, rc);
  return 0;
}

void op_mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  Volume& v = volume(req);
  if (!S_ISREG(mode) && !S_ISCHR(mode) && !S_ISBLK(mode) && !S_ISFIFO(mode) && !S_ISSOCK(mode)) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  ext2_ino_t ino;
  ext2_inode_large inode;
  if (int err = new_node(req, v, to_ext2(parent), name, mode, rdev, ino, inode)) {
    fuse_reply_err(req, err);
    return;
  }
  reply_entry(req, v, ino, inode);
}

void op_create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
               fuse_file_info* fi) {
  Volume& v = volume(req);
  ext2_ino_t ino;
  ext2_inode_large inode;
  if (int err = new_node(req, v, to_ext2(parent), name, S_IFREG | (mode & 07777), 0, ino, inode)) {
    fuse_reply_err(req, err);
    return;
  }
  fuse_entry_param e;
  make_entry(v, ino, inode, e);
  fi->keep_cache = 1;
  // With zero-message opens the kernel sends no RELEASE once an OPEN was answered ENOSYS, for
  // created files too: an open count would never drop, and an unlinked file would stay
  // allocated until the unmount. The lookup counted here holds the inode instead: the kernel
  // forgets it only after the last close.
  const bool count_open = !v.no_open();
  if (count_open) v.add_open(ino);
  if (fuse_reply_create(req, &e, fi) == 0) {
    v.add_lookup(ino);
  } else if (count_open) {
    v.release(ino);
  }
}

void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  Volume& v = volume(req);
  ext2_filsys fs = v.fs();
  const ext2_ino_t dir = to_ext2(parent);
  ext2_inode_large dir_inode;
  if (int err = check_new_name(v, dir, name, dir_inode)) {
    fuse_reply_err(req, err);
    return;
  }
  ext2_inode_large counted = dir_inode;
  if (int err = inc_dir_links(fs, counted)) {
    fuse_reply_err(req, err);
    return;
  }
  v.mark_dirty();
  ext2_ino_t ino;
  errcode_t rc = ext2fs_new_inode(fs, dir, LINUX_S_IFDIR, nullptr, &ino);
  // Without a name, ext2fs_mkdir only builds the directory (and counts it); the name is added
  // here so that a full parent can be grown first.
  if (rc || (rc = ext2fs_mkdir(fs, dir, ino, nullptr))) {
    fuse_reply_err(req, fail("mkdir", dir, rc));
    return;
  }
  if ((rc = add_entry(fs, dir, name, ino, S_IFDIR))) {
    free_inode(fs, ino);
    ext2_inode_large p;
    if (read_inode(fs, dir, p) == 0) {
      p.i_links_count = dir_inode.i_links_count;
      write_inode(fs, dir, p);
    }
    fuse_reply_err(req, fail("mkdir", dir, rc));
    return;
  }
  ext2_inode_large p;
  if ((rc = read_inode(fs, dir, p)) == 0) {
    p.i_links_count = counted.i_links_count;
    touch_mtime_ctime(fs, p);
    rc = write_inode(fs, dir, p);
  }
  ext2_inode_large inode;
  if (rc || (rc = finish_new_inode(req, fs, ino, dir_inode, S_IFDIR | (mode & 07777), inode))) {
    fuse_reply_err(req, fail("mkdir", ino, rc));
    return;
  }
  reply_entry(req, v, ino, inode);
}

void op_symlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
  Volume& v = volume(req);
  ext2_filsys fs = v.fs();
  const ext2_ino_t dir = to_ext2(parent);
  ext2_inode_large dir_inode;
  if (int err = check_new_name(v, dir, name, dir_inode)) {
    fuse_reply_err(req, err);
    return;
  }
  if (std::strlen(target) >= fs->blocksize) {
    fuse_reply_err(req, ENAMETOOLONG);
    return;
  }
  v.mark_dirty();
  ext2_ino_t ino;
  errcode_t rc = ext2fs_new_inode(fs, dir, LINUX_S_IFLNK | 0777, nullptr, &ino);
  // Fast (in the inode), inline-data or slow (one block) symlink, as libext2fs sees fit.
  if (rc || (rc = ext2fs_symlink(fs, dir, ino, nullptr, const_cast<char*>(target)))) {
    fuse_reply_err(req, fail("symlink", dir, rc));
    return;
  }
  if ((rc = add_entry(fs, dir, name, ino, S_IFLNK))) {
    free_inode(fs, ino);
    fuse_reply_err(req, fail("symlink", dir, rc));
    return;
  }
  ext2_inode_large inode;
  if ((rc = touch_dir(fs, dir)) ||
      (rc = finish_new_inode(req, fs, ino, dir_inode, LINUX_S_IFLNK | 0777, inode))) {
    fuse_reply_err(req, fail("symlink", ino, rc));
    return;
  }
  reply_entry(req, v, ino, inode);
}

void op_link(fuse_req_t req, fuse_ino_t fino, fuse_ino_t newparent, const char* newname) {
  Volume& v = volume(req);
  ext2_filsys fs = v.fs();
  const ext2_ino_t ino = to_ext2(fino);
  const ext2_ino_t dir = to_ext2(newparent);
  ext2_inode_large dir_inode;
  ext2_inode_large inode;
  if (int err = check_new_name(v, dir, newname, dir_inode)) {
    fuse_reply_err(req, err);
    return;
  }
  errcode_t rc = read_inode(fs, ino, inode);
  if (rc) {
    fuse_reply_err(req, fail("link", ino, rc));
    return;
  }
  if (LINUX_S_ISDIR(inode.i_mode)) {
    fuse_reply_err(req, EPERM);
    return;
  }
  if (inode.i_links_count >= EXT2_LINK_MAX) {
    fuse_reply_err(req, EMLINK);
    return;
  }
  v.mark_dirty();
  if ((rc = add_entry(fs, dir, newname, ino, inode.i_mode)) || (rc = read_inode(fs, ino, inode))) {
    fuse_reply_err(req, fail("link", dir, rc));
    return;
  }
  ++inode.i_links_count;
  touch_ctime(fs, inode);
  if ((rc = write_inode(fs, ino, inode)) || (rc = touch_dir(fs, dir))) {
    fuse_reply_err(req, fail("link", ino, rc));
    return;
  }
  reply_entry(req, v, ino, inode);
}

// Looks NAME up in DIR for a removal.
int find_child(Volume& v, ext2_ino_t dir, const char* name, ext2_ino_t& ino,
               ext2_inode_large& inode) {
  if (v.read_only()) return EROFS;
  const size_t len = std::strlen(name);
  if (len > EXT2_NAME_LEN) return ENAMETOOLONG;
  ext2_inode_large dir_inode;
  errcode_t rc = read_inode(v.fs(), dir, dir_inode);
  if (rc) return fail("lookup", dir, rc);
  if (dir_inode.i_flags & (EXT4_ENCRYPT_FL | EXT4_CASEFOLD_FL)) return EOPNOTSUPP;
  rc = ext2fs_lookup(v.fs(), dir, name, static_cast<int>(len), nullptr, &ino);
  if (rc == EXT2_ET_FILE_NOT_FOUND) return ENOENT;
  if (rc || (rc = read_inode(v.fs(), ino, inode))) return fail("lookup", dir, rc);
  return 0;
}

// One name of INO is gone: a file loses one link, a directory all of them.
errcode_t drop_links(Volume& v, ext2_ino_t ino) {
  ext2_inode_large inode;
  errcode_t rc = read_inode(v.fs(), ino, inode);
  if (rc) return rc;
  if (LINUX_S_ISDIR(inode.i_mode)) {
    inode.i_links_count = 0;
  } else if (inode.i_links_count > 0) {
    --inode.i_links_count;
  }
  touch_ctime(v.fs(), inode);
  if ((rc = write_inode(v.fs(), ino, inode))) return rc;
  return inode.i_links_count == 0 ? v.unlinked(ino) : 0;
}

void op_unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Volume& v = volume(req);
  const ext2_ino_t dir = to_ext2(parent);
  ext2_ino_t ino;
  ext2_inode_large inode;
  if (int err = find_child(v, dir, name, ino, inode)) {
    fuse_reply_err(req, err);
    return;
  }
  if (LINUX_S_ISDIR(inode.i_mode)) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  v.mark_dirty();
  errcode_t rc = ext2fs_unlink(v.fs(), dir, name, ino, 0);
  if (rc || (rc = touch_dir(v.fs(), dir)) || (rc = drop_links(v, ino))) {
    fuse_reply_err(req, fail("unlink", dir, rc));
    return;
  }
  fuse_reply_err(req, 0);
}

void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Volume& v = volume(req);
  const ext2_ino_t dir = to_ext2(parent);
  ext2_ino_t ino;
  ext2_inode_large inode;
  int err = find_child(v, dir, name, ino, inode);
  if (!err && !LINUX_S_ISDIR(inode.i_mode)) err = ENOTDIR;
  if (!err) err = check_dir_empty(v.fs(), ino);
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  v.mark_dirty();
  errcode_t rc = ext2fs_unlink(v.fs(), dir, name, ino, 0);
  if (rc || (rc = touch_dir(v.fs(), dir, -1)) || (rc = drop_links(v, ino))) {
    fuse_reply_err(req, fail("rmdir", dir, rc));
    return;
  }
  fuse_reply_err(req, 0);
}

errcode_t touch_ctime_of(ext2_filsys fs, ext2_ino_t ino) {
  ext2_inode_large inode;
  errcode_t rc = read_inode(fs, ino, inode);
  if (rc) return rc;
  touch_ctime(fs, inode);
  return write_inode(fs, ino, inode);
}

// RENAME_EXCHANGE: both names exist and swap their inodes.
errcode_t exchange(Volume& v, ext2_ino_t p1, const char* n1, ext2_ino_t i1,
                   const ext2_inode_large& in1, ext2_ino_t p2, const char* n2, ext2_ino_t i2,
                   const ext2_inode_large& in2) {
  ext2_filsys fs = v.fs();
  errcode_t rc;
  if ((rc = replace_entry(fs, p2, n2, i1, in1.i_mode)) ||
      (rc = replace_entry(fs, p1, n1, i2, in2.i_mode))) {
    return rc;
  }
  const int d1 = LINUX_S_ISDIR(in1.i_mode) ? 1 : 0;
  const int d2 = LINUX_S_ISDIR(in2.i_mode) ? 1 : 0;
  if (p1 != p2) {
    if (d1 && (rc = replace_entry(fs, i1, "..", p2, S_IFDIR))) return rc;
    if (d2 && (rc = replace_entry(fs, i2, "..", p1, S_IFDIR))) return rc;
    if ((rc = touch_dir(fs, p1, d2 - d1)) || (rc = touch_dir(fs, p2, d1 - d2))) return rc;
  } else if ((rc = touch_dir(fs, p1))) {
    return rc;
  }
  if ((rc = touch_ctime_of(fs, i1)) || (rc = touch_ctime_of(fs, i2))) return rc;
  return 0;
}

void op_rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
               const char* newname, unsigned int flags) {
  Volume& v = volume(req);
  ext2_filsys fs = v.fs();
  const ext2_ino_t p1 = to_ext2(parent);
  const ext2_ino_t p2 = to_ext2(newparent);
  if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  ext2_ino_t src;
  ext2_inode_large src_inode;
  if (int err = find_child(v, p1, name, src, src_inode)) {
    fuse_reply_err(req, err);
    return;
  }
  ext2_ino_t dst = 0;
  ext2_inode_large dst_inode{};
  int err = find_child(v, p2, newname, dst, dst_inode);
  if (err && err != ENOENT) {
    fuse_reply_err(req, err);
    return;
  }
  const bool dst_exists = err == 0;
  const bool src_dir = LINUX_S_ISDIR(src_inode.i_mode);
  const bool dst_dir = dst_exists && LINUX_S_ISDIR(dst_inode.i_mode);
  if (flags & RENAME_EXCHANGE) {
    if (!dst_exists) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    v.mark_dirty();
    errcode_t rc = exchange(v, p1, name, src, src_inode, p2, newname, dst, dst_inode);
    fuse_reply_err(req, rc ? fail("rename", p1, rc) : 0);
    return;
  }
  if (dst_exists && (flags & RENAME_NOREPLACE)) {
    fuse_reply_err(req, EEXIST);
    return;
  }
  if (dst_exists && dst == src) {  // two names of one inode: nothing to do
    fuse_reply_err(req, 0);
    return;
  }
  if (dst_exists) {
    if (src_dir && !dst_dir) err = ENOTDIR;
    if (!src_dir && dst_dir) err = EISDIR;
    if (!err && dst_dir) err = check_dir_empty(fs, dst);
    if (err) {
      fuse_reply_err(req, err);
      return;
    }
  }
  // Link count changes of the parents: a moved directory's '..' leaves p1 for p2, and a
  // replaced directory's '..' leaves p2.
  int delta1 = 0;
  int delta2 = 0;
  if (src_dir && p1 != p2) {
    --delta1;
    ++delta2;
  }
  if (dst_dir) --delta2;
  if (p1 == p2) {
    delta1 += delta2;
    delta2 = 0;
  }
  if (delta2 > 0) {
    ext2_inode_large p;
    errcode_t rc = read_inode(fs, p2, p);
    if (rc) {
      fuse_reply_err(req, fail("rename", p2, rc));
      return;
    }
    if ((err = inc_dir_links(fs, p))) {
      fuse_reply_err(req, err);
      return;
    }
  }
  v.mark_dirty();
  errcode_t rc;
  if (dst_exists) {
    rc = replace_entry(fs, p2, newname, src, src_inode.i_mode);
  } else {
    const size_t len = std::strlen(newname);
    rc = len > EXT2_NAME_LEN ? EXT2_ET_INVALID_ARGUMENT
                             : add_entry(fs, p2, newname, src, src_inode.i_mode);
  }
  if (!rc) rc = ext2fs_unlink(fs, p1, name, src, 0);
  if (!rc && src_dir && p1 != p2) rc = replace_entry(fs, src, "..", p2, S_IFDIR);
  if (!rc) rc = touch_dir(fs, p1, delta1);
  if (!rc && p1 != p2) rc = touch_dir(fs, p2, delta2);
  if (!rc) rc = touch_ctime_of(fs, src);
  if (!rc && dst_exists) rc = drop_links(v, dst);
  fuse_reply_err(req, rc ? fail("rename", p1, rc) : 0);
}

}  // namespace

void register_namespace_ops(fuse_lowlevel_ops& ops) {
  ops.mknod = op_mknod;
  ops.create = op_create;
  ops.mkdir = op_mkdir;
  ops.symlink = op_symlink;
  ops.link = op_link;
  ops.unlink = op_unlink;
  ops.rmdir = op_rmdir;
  ops.rename = op_rename;
}

}  // namespace kiln::fs::fuse_detail

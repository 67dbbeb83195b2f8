// lookup, forget, getattr, setattr, readlink, statfs, access.
#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "inode_util.h"
#include "volume.h"

namespace kiln::fs::fuse_detail {
namespace {

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Volume& v = volume(req);
  const size_t len = std::strlen(name);
  if (len > EXT2_NAME_LEN) {
    fuse_reply_err(req, ENAMETOOLONG);
    return;
  }
  ext2_ino_t ino = 0;
  errcode_t rc = ext2fs_lookup(v.fs(), to_ext2(parent), name, static_cast<int>(len), nullptr, &ino);
  if (rc == EXT2_ET_FILE_NOT_FOUND) {
    // A negative entry: this process is the filesystem's only writer, so the kernel may keep it.
    fuse_entry_param e{};
    e.entry_timeout = v.timeout();
    fuse_reply_entry(req, &e);
    return;
  }
  ext2_inode_large inode;
  if (rc || (rc = read_inode(v.fs(), ino, inode))) {
    fuse_reply_err(req, fail("lookup", to_ext2(parent), rc));
    return;
  }
  reply_entry(req, v, ino, inode);
}

void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  volume(req).forget(to_ext2(ino), nlookup);
  fuse_reply_none(req);
}

void op_forget_multi(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  Volume& v = volume(req);
  for (size_t i = 0; i < count; ++i) v.forget(to_ext2(forgets[i].ino), forgets[i].nlookup);
  fuse_reply_none(req);
}

void reply_attr(fuse_req_t req, Volume& v, ext2_ino_t ino, const ext2_inode_large& inode) {
  struct stat st;
  fill_stat(v.fs(), ino, inode, st);
  fuse_reply_attr(req, &st, v.timeout());
}

void op_getattr(fuse_req_t req, fuse_ino_t fino, fuse_file_info*) {
  Volume& v = volume(req);
  const ext2_ino_t ino = to_ext2(fino);
  ext2_inode_large inode;
  if (errcode_t rc = read_inode(v.fs(), ino, inode)) {
    fuse_reply_err(req, fail("getattr", ino, rc));
    return;
  }
  reply_attr(req, v, ino, inode);
}

errcode_t truncate(ext2_filsys fs, ext2_ino_t ino, uint64_t size) {
  errcode_t rc = uninline(fs, ino);
  if (rc) return rc;
  ext2_file_t file;
  rc = ext2fs_file_open(fs, ino, EXT2_FILE_WRITE, &file);
  if (rc) return rc;
  rc = ext2fs_file_set_size2(file, size);
  errcode_t rc2 = ext2fs_file_close(file);
  return rc ? rc : rc2;
}

void op_setattr(fuse_req_t req, fuse_ino_t fino, struct stat* attr, int to_set, fuse_file_info*) {
  Volume& v = volume(req);
  const ext2_ino_t ino = to_ext2(fino);
  if (v.read_only()) {
    fuse_reply_err(req, EROFS);
    return;
  }
  ext2_inode_large inode;
  errcode_t rc = read_inode(v.fs(), ino, inode);
  if (rc) {
    fuse_reply_err(req, fail("setattr", ino, rc));
    return;
  }
  v.mark_dirty();
  const timespec t = now();
  if (to_set & FUSE_SET_ATTR_SIZE) {
    if (LINUX_S_ISDIR(inode.i_mode)) {
      fuse_reply_err(req, EISDIR);
      return;
    }
    if (!LINUX_S_ISREG(inode.i_mode)) {
      fuse_reply_err(req, EINVAL);
      return;
    }
    const uint64_t old_size = EXT2_I_SIZE(&inode);
    const uint64_t new_size = static_cast<uint64_t>(attr->st_size);
    if ((rc = truncate(v.fs(), ino, new_size)) || (rc = read_inode(v.fs(), ino, inode))) {
      fuse_reply_err(req, fail("truncate", ino, rc));
      return;
    }
    if (old_size != new_size && !(to_set & FUSE_SET_ATTR_MTIME)) {
      set_time(v.fs(), inode, TimeField::kModify, t);
    }
  }
  if (to_set & FUSE_SET_ATTR_MODE) {
    inode.i_mode = static_cast<uint16_t>((inode.i_mode & S_IFMT) | (attr->st_mode & 07777));
  }
  if (to_set & FUSE_SET_ATTR_UID) set_uid(inode, attr->st_uid);
  if (to_set & FUSE_SET_ATTR_GID) set_gid(inode, attr->st_gid);
  // FUSE_HANDLE_KILLPRIV_V2: a chown, or a truncate by a caller without CAP_FSETID.
  if (v.kill_suidgid()) drop_setid(inode);
  if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
    set_time(v.fs(), inode, TimeField::kAccess, t);
  } else if (to_set & FUSE_SET_ATTR_ATIME) {
    set_time(v.fs(), inode, TimeField::kAccess, attr->st_atim);
  }
  if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
    set_time(v.fs(), inode, TimeField::kModify, t);
  } else if (to_set & FUSE_SET_ATTR_MTIME) {
    set_time(v.fs(), inode, TimeField::kModify, attr->st_mtim);
  }
  if (to_set & FUSE_SET_ATTR_CTIME) {
    set_time(v.fs(), inode, TimeField::kChange, attr->st_ctim);
  } else {
    set_time(v.fs(), inode, TimeField::kChange, t);
  }
  if ((rc = write_inode(v.fs(), ino, inode))) {
    fuse_reply_err(req, fail("setattr", ino, rc));
    return;
  }
  reply_attr(req, v, ino, inode);
}

void op_readlink(fuse_req_t req, fuse_ino_t fino) {
  Volume& v = volume(req);
  const ext2_ino_t ino = to_ext2(fino);
  ext2_inode_large inode;
  errcode_t rc = read_inode(v.fs(), ino, inode);
  if (rc) {
    fuse_reply_err(req, fail("readlink", ino, rc));
    return;
  }
  if (!LINUX_S_ISLNK(inode.i_mode)) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  const uint64_t size = EXT2_I_SIZE(&inode);
  if (size == 0 || size > v.fs()->blocksize) {
    fuse_reply_err(req, fail("readlink", ino, EXT2_ET_INODE_CORRUPTED));
    return;
  }
  std::string target(size, '\0');
  if (is_fast_symlink(inode)) {
    if (size > sizeof inode.i_block) {
      fuse_reply_err(req, fail("readlink", ino, EXT2_ET_INODE_CORRUPTED));
      return;
    }
    std::memcpy(target.data(), inode.i_block, size);
  } else if (inode.i_flags & EXT4_INLINE_DATA_FL) {
    std::vector<char> buf(EXT2_INODE_SIZE(v.fs()->super) + sizeof inode.i_block);
    size_t got = 0;
    if ((rc = ext2fs_inline_data_size(v.fs(), ino, &got)) || got > buf.size() ||
        (rc = ext2fs_inline_data_get(v.fs(), ino, reinterpret_cast<ext2_inode*>(&inode), buf.data(),
                                     &got))) {
      fuse_reply_err(req, fail("readlink", ino, rc ? rc : EXT2_ET_INODE_CORRUPTED));
      return;
    }
    target.assign(buf.data(), std::min<size_t>(got, size));
  } else {
    ext2_file_t file;
    unsigned int got = 0;
    if ((rc = ext2fs_file_open(v.fs(), ino, 0, &file))) {
      fuse_reply_err(req, fail("readlink", ino, rc));
      return;
    }
    rc = ext2fs_file_read(file, target.data(), static_cast<unsigned>(size), &got);
    ext2fs_file_close(file);
    if (rc || got != size) {
      fuse_reply_err(req, fail("readlink", ino, rc ? rc : EXT2_ET_SHORT_READ));
      return;
    }
  }
  target.resize(std::strlen(target.c_str()));
  fuse_reply_readlink(req, target.c_str());
}

// Blocks the filesystem uses for itself in every group (superblock copies, descriptors,
// bitmaps, inode tables) and the journal, which df does not count, as with the kernel.
blk64_t overhead_blocks(ext2_filsys fs) {
  blk64_t total = fs->super->s_first_data_block;
  const blk64_t per_group_meta = 2 + fs->inode_blocks_per_group;
  for (dgrp_t g = 0; g < fs->group_desc_count; ++g) {
    total += per_group_meta;
    if (ext2fs_bg_has_super(fs, g)) {
      total += 1 + fs->desc_blocks + fs->super->s_reserved_gdt_blocks;
    }
  }
  if (ext2fs_has_feature_journal(fs->super) && fs->super->s_journal_inum) {
    ext2_inode_large journal;
    if (read_inode(fs, fs->super->s_journal_inum, journal) == 0) {
      total += EXT2_I_SIZE(&journal) / fs->blocksize;
    }
  }
  return total;
}

void op_statfs(fuse_req_t req, fuse_ino_t) {
  Volume& v = volume(req);
  ext2_filsys fs = v.fs();
  struct statvfs st {};
  const blk64_t blocks = ext2fs_blocks_count(fs->super);
  const blk64_t overhead = std::min(overhead_blocks(fs), blocks);
  const blk64_t free_blocks = ext2fs_free_blocks_count(fs->super);
  const blk64_t reserved = ext2fs_r_blocks_count(fs->super);
  st.f_bsize = fs->blocksize;
  st.f_frsize = fs->blocksize;
  st.f_blocks = blocks - overhead;
  st.f_bfree = free_blocks;
  st.f_bavail = free_blocks > reserved ? free_blocks - reserved : 0;
  st.f_files = fs->super->s_inodes_count;
  st.f_ffree = fs->super->s_free_inodes_count;
  st.f_favail = st.f_ffree;
  uint64_t fsid = 0;
  std::memcpy(&fsid, fs->super->s_uuid, sizeof fsid);
  st.f_fsid = fsid;
  st.f_namemax = EXT2_NAME_LEN;
  st.f_flag = v.read_only() ? ST_RDONLY : 0;
  fuse_reply_statfs(req, &st);
}

bool in_groups(fuse_req_t req, gid_t gid) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  if (ctx->gid == gid) return true;
  std::vector<gid_t> groups(64);
  int n = fuse_req_getgroups(req, static_cast<int>(groups.size()), groups.data());
  if (n > static_cast<int>(groups.size())) {
    groups.resize(n);
    n = fuse_req_getgroups(req, n, groups.data());
  }
  for (int i = 0; i < n; ++i) {
    if (groups[i] == gid) return true;
  }
  return false;
}

// Only called without "default_permissions"; the mount sets it, so the kernel checks itself.
void op_access(fuse_req_t req, fuse_ino_t fino, int mask) {
  Volume& v = volume(req);
  const ext2_ino_t ino = to_ext2(fino);
  ext2_inode_large inode;
  if (errcode_t rc = read_inode(v.fs(), ino, inode)) {
    fuse_reply_err(req, fail("access", ino, rc));
    return;
  }
  if ((mask & W_OK) && v.read_only()) {
    fuse_reply_err(req, EROFS);
    return;
  }
  const fuse_ctx* ctx = fuse_req_ctx(req);
  const unsigned mode = inode.i_mode;
  int err = 0;
  if (ctx->uid == 0) {
    if ((mask & X_OK) && !LINUX_S_ISDIR(mode) && !(mode & 0111)) err = EACCES;
  } else {
    unsigned bits = mode & 7;
    if (ctx->uid == get_uid(inode)) {
      bits = (mode >> 6) & 7;
    } else if (in_groups(req, get_gid(inode))) {
      bits = (mode >> 3) & 7;
    }
    if ((static_cast<unsigned>(mask) & bits) != static_cast<unsigned>(mask & 7)) err = EACCES;
  }
  fuse_reply_err(req, err);
}

}  // namespace

void register_attr_ops(fuse_lowlevel_ops& ops) {
  ops.lookup = op_lookup;
  ops.forget = op_forget;
  ops.forget_multi = op_forget_multi;
  ops.getattr = op_getattr;
  ops.setattr = op_setattr;
  ops.readlink = op_readlink;
  ops.statfs = op_statfs;
  ops.access = op_access;
}

}  // namespace kiln::fs::fuse_detail

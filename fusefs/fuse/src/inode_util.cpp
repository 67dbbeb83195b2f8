#include "inode_util.h"

#include <sys/sysmacros.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>

// Exported by libext2fs (lib/ext2fs/inline_data.c) but declared only in its private header.
extern "C" errcode_t ext2fs_inline_data_expand(ext2_filsys fs, ext2_ino_t ino);

namespace kiln::fs::fuse_detail {

int to_errno(errcode_t code) {
  if (code > 0 && code < 256) return static_cast<int>(code);  // libext2fs passes errno through
  switch (code) {
    case EXT2_ET_NO_MEMORY:
      return ENOMEM;
    case EXT2_ET_BLOCK_ALLOC_FAIL:
    case EXT2_ET_INODE_ALLOC_FAIL:
    case EXT2_ET_DIR_NO_SPACE:
    case EXT2_ET_EA_NO_SPACE:
    case EXT2_ET_INLINE_DATA_NO_SPACE:
    case EXT2_ET_RES_GDT_BLOCKS:
      return ENOSPC;
    case EXT2_ET_FILE_NOT_FOUND:
      return ENOENT;
    case EXT2_ET_EA_KEY_NOT_FOUND:
      return ENODATA;
    case EXT2_ET_RO_FILSYS:
      return EROFS;
    case EXT2_ET_DIR_EXISTS:
    case EXT2_ET_FILE_EXISTS:
      return EEXIST;
    case EXT2_ET_NO_DIRECTORY:
      return ENOTDIR;
    case EXT2_ET_FILE_TOO_BIG:
      return EFBIG;
    case EXT2_ET_INVALID_ARGUMENT:
      return EINVAL;
    case EXT2_ET_OP_NOT_SUPPORTED:
    case EXT2_ET_UNIMPLEMENTED:
      return EOPNOTSUPP;
    case EXT2_ET_EA_BAD_NAME_LEN:
    case EXT2_ET_EA_BAD_VALUE_SIZE:
      return ERANGE;
    case EXT2_ET_DIR_CORRUPTED:
    case EXT2_ET_DIR_CSUM_INVALID:
    case EXT2_ET_INODE_CSUM_INVALID:
    case EXT2_ET_EXTENT_CSUM_INVALID:
    case EXT2_ET_EXT_ATTR_CSUM_INVALID:
      return EUCLEAN;
    default:
      return EIO;
  }
}

timespec now() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts;
}

namespace {

constexpr unsigned kEpochBits = 2;
constexpr uint32_t kEpochMask = (1u << kEpochBits) - 1;

// Whether the large inode holds the 32-bit field at `offset` (in struct ext2_inode_large).
bool has_extra_field(const ext2_filsys fs, const ext2_inode_large& inode, size_t offset) {
  if (EXT2_INODE_SIZE(fs->super) <= EXT2_GOOD_OLD_INODE_SIZE) return false;
  return static_cast<size_t>(EXT2_GOOD_OLD_INODE_SIZE + inode.i_extra_isize) >=
         offset + sizeof(uint32_t);
}

struct TimeSlots {
  uint32_t ext2_inode_large::*base;
  uint32_t ext2_inode_large::*extra;
  size_t base_offset;  // for i_crtime, which lives in the extra part too
  size_t extra_offset;
};

TimeSlots slots(TimeField field) {
  switch (field) {
    case TimeField::kAccess:
      return {&ext2_inode_large::i_atime, &ext2_inode_large::i_atime_extra, 0,
              offsetof(ext2_inode_large, i_atime_extra)};
    case TimeField::kModify:
      return {&ext2_inode_large::i_mtime, &ext2_inode_large::i_mtime_extra, 0,
              offsetof(ext2_inode_large, i_mtime_extra)};
    case TimeField::kChange:
      return {&ext2_inode_large::i_ctime, &ext2_inode_large::i_ctime_extra, 0,
              offsetof(ext2_inode_large, i_ctime_extra)};
    case TimeField::kCreate:
      break;
  }
  return {&ext2_inode_large::i_crtime, &ext2_inode_large::i_crtime_extra,
          offsetof(ext2_inode_large, i_crtime), offsetof(ext2_inode_large, i_crtime_extra)};
}

}  // namespace

timespec get_time(const ext2_filsys fs, const ext2_inode_large& inode, TimeField field) {
  const TimeSlots s = slots(field);
  timespec ts{};
  if (s.base_offset != 0 && !has_extra_field(fs, inode, s.base_offset)) return ts;
  ts.tv_sec = static_cast<int32_t>(inode.*s.base);
  if (has_extra_field(fs, inode, s.extra_offset)) {
    const uint32_t extra = inode.*s.extra;
    ts.tv_sec += static_cast<int64_t>(extra & kEpochMask) << 32;
    ts.tv_nsec = extra >> kEpochBits;
    if (ts.tv_nsec >= 1000000000) ts.tv_nsec = 0;
  }
  return ts;
}

void set_time(const ext2_filsys fs, ext2_inode_large& inode, TimeField field, timespec ts) {
  const TimeSlots s = slots(field);
  if (s.base_offset != 0 && !has_extra_field(fs, inode, s.base_offset)) return;
  // Times beyond what the inode holds are clamped, as the kernel does: 32-bit seconds without
  // the extra field (until 2038), plus two epoch bits with it (until 2446).
  const bool extra = has_extra_field(fs, inode, s.extra_offset);
  const int64_t max = extra ? INT32_MAX + (int64_t{kEpochMask} << 32) : INT32_MAX;
  const int64_t sec = std::clamp<int64_t>(ts.tv_sec, INT32_MIN, max);
  if (sec != ts.tv_sec) ts.tv_nsec = 0;
  inode.*s.base = static_cast<uint32_t>(sec);
  if (extra) {
    const uint32_t epoch =
        static_cast<uint32_t>((sec - static_cast<int32_t>(sec)) >> 32) & kEpochMask;
    inode.*s.extra = epoch | (static_cast<uint32_t>(ts.tv_nsec) << kEpochBits);
  }
}

void touch_ctime(const ext2_filsys fs, ext2_inode_large& inode) {
  set_time(fs, inode, TimeField::kChange, now());
}

void touch_mtime_ctime(const ext2_filsys fs, ext2_inode_large& inode) {
  const timespec t = now();
  set_time(fs, inode, TimeField::kModify, t);
  set_time(fs, inode, TimeField::kChange, t);
}

uid_t get_uid(const ext2_inode_large& inode) {
  return inode.i_uid | (static_cast<uid_t>(inode.osd2.linux2.l_i_uid_high) << 16);
}
gid_t get_gid(const ext2_inode_large& inode) {
  return inode.i_gid | (static_cast<gid_t>(inode.osd2.linux2.l_i_gid_high) << 16);
}
void set_uid(ext2_inode_large& inode, uid_t uid) {
  inode.i_uid = static_cast<uint16_t>(uid);
  inode.osd2.linux2.l_i_uid_high = static_cast<uint16_t>(uid >> 16);
}
void set_gid(ext2_inode_large& inode, gid_t gid) {
  inode.i_gid = static_cast<uint16_t>(gid);
  inode.osd2.linux2.l_i_gid_high = static_cast<uint16_t>(gid >> 16);
}

// Device numbers as the kernel's ext4 stores them: the old 8:8 encoding in i_block[0] when it
// fits, the new 12:20 encoding in i_block[1] otherwise.
dev_t inode_rdev(const ext2_inode_large& inode) {
  if (inode.i_block[0] != 0) {
    const uint32_t v = inode.i_block[0];
    return makedev((v >> 8) & 0xff, v & 0xff);
  }
  const uint32_t v = inode.i_block[1];
  return makedev((v & 0xfff00) >> 8, (v & 0xff) | ((v >> 12) & 0xfff00));
}

void set_inode_rdev(ext2_inode_large& inode, dev_t rdev) {
  const uint32_t maj = major(rdev);
  const uint32_t min = minor(rdev);
  std::fill(std::begin(inode.i_block), std::end(inode.i_block), 0);
  if (maj < 256 && min < 256) {
    inode.i_block[0] = (maj << 8) | min;
  } else {
    inode.i_block[1] = (min & 0xff) | (maj << 8) | ((min & ~0xffu) << 12);
  }
}

bool drop_setid(ext2_inode_large& inode) {
  if (LINUX_S_ISDIR(inode.i_mode)) return false;
  uint16_t mode = inode.i_mode & ~S_ISUID;
  if (mode & S_IXGRP) mode &= ~S_ISGID;
  if (mode == inode.i_mode) return false;
  inode.i_mode = mode;
  return true;
}

errcode_t read_inode(ext2_filsys fs, ext2_ino_t ino, ext2_inode_large& inode) {
  std::memset(&inode, 0, sizeof inode);
  const int size = std::min<int>(sizeof inode, EXT2_INODE_SIZE(fs->super));
  return ext2fs_read_inode_full(fs, ino, reinterpret_cast<ext2_inode*>(&inode), size);
}

errcode_t write_inode(ext2_filsys fs, ext2_ino_t ino, ext2_inode_large& inode) {
  const int size = std::min<int>(sizeof inode, EXT2_INODE_SIZE(fs->super));
  return ext2fs_write_inode_full(fs, ino, reinterpret_cast<ext2_inode*>(&inode), size);
}

void fill_stat(ext2_filsys fs, ext2_ino_t ino, const ext2_inode_large& inode, struct stat& st) {
  std::memset(&st, 0, sizeof st);
  st.st_ino = ino;
  st.st_mode = inode.i_mode;
  st.st_nlink = inode.i_links_count;
  st.st_uid = get_uid(inode);
  st.st_gid = get_gid(inode);
  if (LINUX_S_ISCHR(inode.i_mode) || LINUX_S_ISBLK(inode.i_mode)) st.st_rdev = inode_rdev(inode);
  st.st_size = static_cast<off_t>(EXT2_I_SIZE(&inode));
  st.st_blksize = fs->blocksize;
  st.st_blocks = static_cast<blkcnt_t>(ext2fs_get_stat_i_blocks(
      fs, reinterpret_cast<ext2_inode*>(const_cast<ext2_inode_large*>(&inode))));
  st.st_atim = get_time(fs, inode, TimeField::kAccess);
  st.st_mtim = get_time(fs, inode, TimeField::kModify);
  st.st_ctim = get_time(fs, inode, TimeField::kChange);
}

int dirent_type(mode_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return EXT2_FT_REG_FILE;
    case S_IFDIR:
      return EXT2_FT_DIR;
    case S_IFCHR:
      return EXT2_FT_CHRDEV;
    case S_IFBLK:
      return EXT2_FT_BLKDEV;
    case S_IFIFO:
      return EXT2_FT_FIFO;
    case S_IFSOCK:
      return EXT2_FT_SOCK;
    case S_IFLNK:
      return EXT2_FT_SYMLINK;
    default:
      return EXT2_FT_UNKNOWN;
  }
}

mode_t mode_from_dirent_type(int type) {
  switch (type) {
    case EXT2_FT_REG_FILE:
      return S_IFREG;
    case EXT2_FT_DIR:
      return S_IFDIR;
    case EXT2_FT_CHRDEV:
      return S_IFCHR;
    case EXT2_FT_BLKDEV:
      return S_IFBLK;
    case EXT2_FT_FIFO:
      return S_IFIFO;
    case EXT2_FT_SOCK:
      return S_IFSOCK;
    case EXT2_FT_SYMLINK:
      return S_IFLNK;
    default:
      return 0;
  }
}

errcode_t add_entry(ext2_filsys fs, ext2_ino_t dir, const char* name, ext2_ino_t ino, mode_t mode) {
  const int type = dirent_type(mode);
  errcode_t rc = ext2fs_link(fs, dir, name, ino, type);
  if (rc != EXT2_ET_DIR_NO_SPACE) return rc;
  // A full linear directory grows by one block. libext2fs grows hashed (htree) directories by
  // itself; one that still reports no space is at the tree's depth limit.
  ext2_inode_large dir_inode;
  if ((rc = read_inode(fs, dir, dir_inode)) != 0) return rc;
  if (dir_inode.i_flags & EXT2_INDEX_FL) return EXT2_ET_DIR_NO_SPACE;
  if ((rc = ext2fs_expand_dir(fs, dir)) != 0) return rc;
  return ext2fs_link(fs, dir, name, ino, type);
}

namespace {

struct ReplaceContext {
  std::string_view name;
  ext2_ino_t ino;
  int type;
  bool set_type;
  bool found = false;
};

int replace_proc(ext2_ino_t, int, ext2_dir_entry* dirent, int, int, char*, void* priv) {
  auto* ctx = static_cast<ReplaceContext*>(priv);
  const std::string_view name(dirent->name, ext2fs_dirent_name_len(dirent));
  if (dirent->inode == 0 || name != ctx->name) return 0;
  dirent->inode = ctx->ino;
  if (ctx->set_type) ext2fs_dirent_set_file_type(dirent, ctx->type);
  ctx->found = true;
  return DIRENT_CHANGED | DIRENT_ABORT;
}

int any_entry_proc(ext2_ino_t, int entry, ext2_dir_entry* dirent, int, int, char*, void* priv) {
  if (entry == DIRENT_DOT_FILE || entry == DIRENT_DOT_DOT_FILE || dirent->inode == 0) return 0;
  *static_cast<bool*>(priv) = true;
  return DIRENT_ABORT;
}

}  // namespace

errcode_t replace_entry(ext2_filsys fs, ext2_ino_t dir, std::string_view name, ext2_ino_t ino,
                        mode_t mode) {
  ReplaceContext ctx{name, ino, dirent_type(mode), ext2fs_has_feature_filetype(fs->super) != 0};
  errcode_t rc = ext2fs_dir_iterate2(fs, dir, 0, nullptr, replace_proc, &ctx);
  if (rc) return rc;
  return ctx.found ? 0 : EXT2_ET_FILE_NOT_FOUND;
}

int check_dir_empty(ext2_filsys fs, ext2_ino_t dir) {
  bool found = false;
  errcode_t rc = ext2fs_dir_iterate2(fs, dir, 0, nullptr, any_entry_proc, &found);
  if (rc) return to_errno(rc);
  return found ? ENOTEMPTY : 0;
}

int inc_dir_links(ext2_filsys fs, ext2_inode_large& dir) {
  if (dir.i_links_count == 1) return 0;  // already past the limit (dir_nlink)
  if (dir.i_links_count + 1 > EXT2_LINK_MAX) {
    if (!ext2fs_has_feature_dir_nlink(fs->super)) return EMLINK;
    dir.i_links_count = 1;
    return 0;
  }
  ++dir.i_links_count;
  return 0;
}

void dec_dir_links(ext2_inode_large& dir) {
  if (dir.i_links_count > 2) --dir.i_links_count;
}

errcode_t uninline(ext2_filsys fs, ext2_ino_t ino) {
  ext2_inode_large inode;
  errcode_t rc = read_inode(fs, ino, inode);
  if (rc || !(inode.i_flags & EXT4_INLINE_DATA_FL)) return rc;
  const uint64_t size = EXT2_I_SIZE(&inode);
  if ((rc = ext2fs_inline_data_expand(fs, ino)) || (rc = read_inode(fs, ino, inode))) return rc;
  // The expansion sets the size to the inline area's (60 bytes and more), not the file's.
  if (EXT2_I_SIZE(&inode) == size) return 0;
  if ((rc = ext2fs_inode_size_set(fs, reinterpret_cast<ext2_inode*>(&inode), size))) return rc;
  return write_inode(fs, ino, inode);
}

bool is_fast_symlink(const ext2_inode_large& inode) {
  return LINUX_S_ISLNK(inode.i_mode) && !(inode.i_flags & EXT4_INLINE_DATA_FL) &&
         ext2fs_is_fast_symlink(
             reinterpret_cast<ext2_inode*>(const_cast<ext2_inode_large*>(&inode)));
}

namespace {

int release_block(ext2_filsys fs, blk64_t* block, e2_blkcnt_t, blk64_t, int, void*) {
  ext2fs_block_alloc_stats2(fs, *block, -1);
  return 0;
}

}  // namespace

errcode_t free_inode(ext2_filsys fs, ext2_ino_t ino) {
  ext2_inode_large inode;
  errcode_t rc = read_inode(fs, ino, inode);
  if (rc) return rc;
  if ((rc = ext2fs_free_ext_attr(fs, ino, &inode)) != 0) return rc;
  auto* small = reinterpret_cast<ext2_inode*>(&inode);
  // The inode goes away whole: release its data and mapping blocks (extent tree or indirect
  // blocks) without rewriting the mapping, as e2fsck and debugfs do. ext2fs_punch would edit
  // the extent tree first, and fails on a full filesystem.
  if (!is_fast_symlink(inode) && ext2fs_inode_has_valid_blocks2(fs, small)) {
    rc = ext2fs_block_iterate3(fs, ino, BLOCK_FLAG_READ_ONLY, nullptr, release_block, nullptr);
    if (rc) return rc;
  }
  inode.i_links_count = 0;
  inode.i_dtime = static_cast<uint32_t>(now().tv_sec);
  if ((rc = write_inode(fs, ino, inode)) != 0) return rc;
  ext2fs_inode_alloc_stats2(fs, ino, -1, LINUX_S_ISDIR(inode.i_mode));
  return 0;
}

}  // namespace kiln::fs::fuse_detail

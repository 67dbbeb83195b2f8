// Helpers over libext2fs inodes for the FUSE mount: timestamps with nanoseconds, owners,
// struct stat, directory entries, error codes.
#pragma once

#include <ext2fs/ext2fs.h>
#include <sys/stat.h>

#include <ctime>
#include <string_view>

namespace kiln::fs::fuse_detail {

// errno (positive) for a libext2fs error code.
int to_errno(errcode_t code);

timespec now();

enum class TimeField { kAccess, kModify, kChange, kCreate };
timespec get_time(const ext2_filsys fs, const ext2_inode_large& inode, TimeField field);
// Nanoseconds and the epoch bits beyond 2038 are kept only where the inode has the extra field.
void set_time(const ext2_filsys fs, ext2_inode_large& inode, TimeField field, timespec ts);
void touch_ctime(const ext2_filsys fs, ext2_inode_large& inode);
void touch_mtime_ctime(const ext2_filsys fs, ext2_inode_large& inode);

uid_t get_uid(const ext2_inode_large& inode);
gid_t get_gid(const ext2_inode_large& inode);
void set_uid(ext2_inode_large& inode, uid_t uid);
void set_gid(ext2_inode_large& inode, gid_t gid);

// What the kernel's VFS drops from a file (not a directory) on chown, and on a write or
// truncate by a caller without CAP_FSETID: set-user-ID, and set-group-ID when the group may
// execute (without it, the bit means mandatory locking). True if the mode changed.
bool drop_setid(ext2_inode_large& inode);

dev_t inode_rdev(const ext2_inode_large& inode);
void set_inode_rdev(ext2_inode_large& inode, dev_t rdev);

errcode_t read_inode(ext2_filsys fs, ext2_ino_t ino, ext2_inode_large& inode);
errcode_t write_inode(ext2_filsys fs, ext2_ino_t ino, ext2_inode_large& inode);

void fill_stat(ext2_filsys fs, ext2_ino_t ino, const ext2_inode_large& inode, struct stat& st);

// EXT2_FT_* for a mode, and the S_IF* bits for a directory entry's file type.
int dirent_type(mode_t mode);
mode_t mode_from_dirent_type(int type);

// Adds NAME -> INO to directory DIR, growing the directory when it is full.
errcode_t add_entry(ext2_filsys fs, ext2_ino_t dir, const char* name, ext2_ino_t ino, mode_t mode);
// Points the existing entry NAME of DIR at INO (rename over a target, '..' of a moved directory).
errcode_t replace_entry(ext2_filsys fs, ext2_ino_t dir, std::string_view name, ext2_ino_t ino,
                        mode_t mode);
// 0 if DIR has no entry besides '.' and '..', ENOTEMPTY if it has, or another errno.
int check_dir_empty(ext2_filsys fs, ext2_ino_t dir);

// Link count changes that honour dir_nlink (a directory with too many subdirectories has 1).
int inc_dir_links(ext2_filsys fs, ext2_inode_large& dir);
void dec_dir_links(ext2_inode_large& dir);

// Frees everything an inode owns (blocks, extended attribute block) and the inode itself.
errcode_t free_inode(ext2_filsys fs, ext2_ino_t ino);

// Moves the data of an inline-data file into blocks, so that it can be written through the
// block paths (libext2fs's inline write path is unreliable). No-op for other inodes.
errcode_t uninline(ext2_filsys fs, ext2_ino_t ino);

// Fast-symlink test that does not depend on i_blocks alone.
bool is_fast_symlink(const ext2_inode_large& inode);

}  // namespace kiln::fs::fuse_detail

// Extended attributes through libext2fs (in-inode and block storage; POSIX ACLs are converted
// between the VFS and the on-disk format by libext2fs), so that SELinux labels, capabilities
// and ACLs survive a copy through the mount.
#include <sys/xattr.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "inode_util.h"
#include "volume.h"

namespace kiln::fs::fuse_detail {
namespace {

// "system.data" holds inline file data; it is the filesystem's own, not an attribute.
constexpr std::string_view kInlineDataKey = "system.data";
constexpr std::string_view kAclAccessKey = "system.posix_acl_access";

// The mode bits an access ACL (VFS xattr format: a version, then {tag, perm, id} entries, all
// little-endian) stands for, and whether the ACL says no more than those bits. As the kernel's
// ext4 does, a setxattr of an ACL updates the mode, and an ACL that the mode alone expresses is
// not stored (cp -a and tar restore modes this way). Returns an errno for a malformed ACL.
int acl_to_mode(const char* value, size_t size, mode_t& perms, bool& equivalent) {
  enum : uint16_t { kUserObj = 1, kUser = 2, kGroupObj = 4, kGroup = 8, kMask = 16, kOther = 32 };
  auto le16 = [&](size_t at) {
    return static_cast<uint16_t>(static_cast<uint8_t>(value[at]) |
                                 static_cast<uint8_t>(value[at + 1]) << 8);
  };
  if (size < 4 || (size - 4) % 8 != 0 || le16(0) != 2 || le16(2) != 0) return EINVAL;
  int user = -1, group = -1, other = -1, mask = -1;
  equivalent = true;
  for (size_t at = 4; at < size; at += 8) {
    const int perm = le16(at + 2) & 7;
    switch (le16(at)) {
      case kUserObj:
        user = perm;
        break;
      case kGroupObj:
        group = perm;
        break;
      case kOther:
        other = perm;
        break;
      case kMask:
        mask = perm;
        equivalent = false;
        break;
      case kUser:
      case kGroup:
        equivalent = false;
        break;
      default:
        return EINVAL;
    }
  }
  if (user < 0 || group < 0 || other < 0) return EINVAL;
  perms = static_cast<mode_t>(user << 6 | (mask >= 0 ? mask : group) << 3 | other);
  return 0;
}

class Xattrs {
 public:
  Xattrs() = default;
  Xattrs(const Xattrs&) = delete;
  Xattrs& operator=(const Xattrs&) = delete;
  ~Xattrs() { close(); }
  void close() {
    if (h_) ext2fs_xattrs_close(&h_);
    h_ = nullptr;
  }
  errcode_t open(ext2_filsys fs, ext2_ino_t ino) {
    errcode_t rc = ext2fs_xattrs_open(fs, ino, &h_);
    if (!rc) rc = ext2fs_xattrs_read(h_);
    return rc;
  }
  ext2_xattr_handle* get() const { return h_; }

 private:
  ext2_xattr_handle* h_ = nullptr;
};

// Value of NAME, or an errno (ENODATA when absent).
int get_value(ext2_xattr_handle* h, const char* name, std::string& value, ext2_ino_t ino) {
  void* data = nullptr;
  size_t len = 0;
  errcode_t rc = ext2fs_xattr_get(h, name, &data, &len);
  if (rc == EXT2_ET_EA_KEY_NOT_FOUND) return ENODATA;
  if (rc) return fail("getxattr", ino, rc);
  value.assign(static_cast<const char*>(data), len);
  ext2fs_free_mem(&data);
  return 0;
}

int open_for(Volume& v, ext2_ino_t ino, Xattrs& x, const char* op) {
  if (!ext2fs_has_feature_xattr(v.fs()->super)) return EOPNOTSUPP;
  if (errcode_t rc = x.open(v.fs(), ino)) return fail(op, ino, rc);
  return 0;
}

void op_getxattr(fuse_req_t req, fuse_ino_t fino, const char* name, size_t size) {
  Volume& v = volume(req);
  const ext2_ino_t ino = to_ext2(fino);
  if (name == kInlineDataKey) {
    fuse_reply_err(req, ENODATA);
    return;
  }
  Xattrs x;
  std::string value;
  int err = open_for(v, ino, x, "getxattr");
  if (!err) err = get_value(x.get(), name, value, ino);
  if (err) {
    fuse_reply_err(req, err);
  } else if (size == 0) {
    fuse_reply_xattr(req, value.size());
  } else if (value.size() > size) {
    fuse_reply_err(req, ERANGE);
  } else {
    fuse_reply_buf(req, value.data(), value.size());
  }
}

int list_proc(char* name, char*, size_t, void* data) {
  if (name != kInlineDataKey) {
    auto* names = static_cast<std::string*>(data);
    names->append(name);
    names->push_back('\0');
  }
  return 0;
}

void op_listxattr(fuse_req_t req, fuse_ino_t fino, size_t size) {
  Volume& v = volume(req);
  const ext2_ino_t ino = to_ext2(fino);
  Xattrs x;
  std::string names;
  int err = open_for(v, ino, x, "listxattr");
  if (err == EOPNOTSUPP) err = 0;  // no attributes at all
  if (!err && x.get()) {
    if (errcode_t rc = ext2fs_xattrs_iterate(x.get(), list_proc, &names)) {
      err = fail("listxattr", ino, rc);
    }
  }
  if (err) {
    fuse_reply_err(req, err);
  } else if (size == 0) {
    fuse_reply_xattr(req, names.size());
  } else if (names.size() > size) {
    fuse_reply_err(req, ERANGE);
  } else {
    fuse_reply_buf(req, names.data(), names.size());
  }
}

// ctime, and the permission bits an access ACL set (perms < 0: unchanged).
errcode_t update_inode(ext2_filsys fs, ext2_ino_t ino, int perms = -1) {
  ext2_inode_large inode;
  errcode_t rc = read_inode(fs, ino, inode);
  if (rc) return rc;
  if (perms >= 0) inode.i_mode = static_cast<uint16_t>((inode.i_mode & ~0777) | perms);
  touch_ctime(fs, inode);
  return write_inode(fs, ino, inode);
}

void op_setxattr(fuse_req_t req, fuse_ino_t fino, const char* name, const char* value, size_t size,
                 int flags) {
  Volume& v = volume(req);
  const ext2_ino_t ino = to_ext2(fino);
  if (v.read_only()) {
    fuse_reply_err(req, EROFS);
    return;
  }
  if (name == kInlineDataKey) {
    fuse_reply_err(req, EPERM);
    return;
  }
  Xattrs x;
  std::string old;
  int err = open_for(v, ino, x, "setxattr");
  if (!err && (flags & (XATTR_CREATE | XATTR_REPLACE))) {
    err = get_value(x.get(), name, old, ino);
    if (err == 0 && (flags & XATTR_CREATE)) err = EEXIST;
    if (err == ENODATA && !(flags & XATTR_REPLACE)) err = 0;
  }
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  int perms = -1;
  bool store = true;
  if (name == kAclAccessKey) {
    mode_t acl_perms;
    bool equivalent;
    if ((err = acl_to_mode(value, size, acl_perms, equivalent))) {
      fuse_reply_err(req, err);
      return;
    }
    perms = static_cast<int>(acl_perms);
    store = !equivalent;
  }
  v.mark_dirty();
  errcode_t rc = 0;
  if (store) {
    rc = ext2fs_xattr_set(x.get(), name, value, size);
  } else if (get_value(x.get(), name, old, ino) == 0) {
    rc = ext2fs_xattr_remove(x.get(), name);
  }
  // The handle writes the inode; close it before the inode is read again.
  x.close();
  if (!rc) rc = update_inode(v.fs(), ino, perms);
  // The kernel caches the mode for permission checks: tell it the mode changed.
  if (!rc && perms >= 0) v.invalidate_attr(ino);
  fuse_reply_err(req, rc ? fail("setxattr", ino, rc) : 0);
}

void op_removexattr(fuse_req_t req, fuse_ino_t fino, const char* name) {
  Volume& v = volume(req);
  const ext2_ino_t ino = to_ext2(fino);
  if (v.read_only()) {
    fuse_reply_err(req, EROFS);
    return;
  }
  if (name == kInlineDataKey) {
    fuse_reply_err(req, ENODATA);
    return;
  }
  Xattrs x;
  std::string old;
  int err = open_for(v, ino, x, "removexattr");
  if (!err) err = get_value(x.get(), name, old, ino);
  if (err) {
    fuse_reply_err(req, err);
    return;
  }
  v.mark_dirty();
  errcode_t rc = ext2fs_xattr_remove(x.get(), name);
  x.close();
  if (!rc) rc = update_inode(v.fs(), ino);
  fuse_reply_err(req, rc ? fail("removexattr", ino, rc) : 0);
}

}  // namespace

void register_xattr_ops(fuse_lowlevel_ops& ops) {
  ops.getxattr = op_getxattr;
  ops.listxattr = op_listxattr;
  ops.setxattr = op_setxattr;
  ops.removexattr = op_removexattr;
}

}  // namespace kiln::fs::fuse_detail

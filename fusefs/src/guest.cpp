#include "guest.h"

#include <algorithm>
#include <cstring>
#include <ctime>
#include <deque>

#include "group_bitmaps.h"
#include "kiln/fs/filesystem.h"

namespace kiln::fs {
namespace {

constexpr int kMaxSymlinks = 40;  // as Linux's path walk
constexpr int kMaxDepth = 256;    // nesting of a recursive removal
// Names listed from one directory (a recursive removal holds one list per level): bounds the
// memory a hostile directory can make kiln-fs use.
constexpr size_t kMaxDirEntries = 1000000;

std::string fail(const std::string& path, const std::string& what, errcode_t rc) {
  return path + ": " + what + ": " + ext2_error(rc);
}

bool is_dir(const ext2_inode_large& i) { return LINUX_S_ISDIR(i.i_mode); }
bool is_link(const ext2_inode_large& i) { return LINUX_S_ISLNK(i.i_mode); }

// Directories that a walk with `f` writes into are reached through links only as `f` allows;
// kParents (a read's "not the last component") follows every link on the way.
Follow dirs_follow(Follow f) { return f == Follow::kParents ? Follow::kAll : f; }

uint32_t now() { return static_cast<uint32_t>(time(nullptr)); }

std::vector<std::string> split_any(const std::string& path) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string::npos) slash = path.size();
    std::string c = path.substr(start, slash - start);
    if (!c.empty() && c != ".") out.push_back(std::move(c));
    start = slash + 1;
  }
  return out;
}

void set_owner(ext2_inode_large& inode, uint32_t uid, uint32_t gid) {
  inode.i_uid = static_cast<uint16_t>(uid);
  ext2fs_set_i_uid_high(inode, static_cast<uint16_t>(uid >> 16));
  inode.i_gid = static_cast<uint16_t>(gid);
  ext2fs_set_i_gid_high(inode, static_cast<uint16_t>(gid >> 16));
}

// Closes an ext2_file_t on every path.
class File {
 public:
  File(ext2_filsys fs, ext2_ino_t ino, int flags, const std::string& path) : path_(path) {
    errcode_t rc = ext2fs_file_open(fs, ino, flags, &f_);
    if (rc) throw Error(ext2_reason(rc), fail(path, "cannot open", rc));
  }
  ~File() {
    if (f_) ext2fs_file_close(f_);
  }
  ext2_file_t get() const { return f_; }
  void close() {
    errcode_t rc = ext2fs_file_close(f_);
    f_ = nullptr;
    if (rc) throw Error(ext2_reason(rc), fail(path_, "cannot write", rc));
  }

 private:
  ext2_file_t f_ = nullptr;
  std::string path_;
};

void write_all(File& f, const std::string& data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    unsigned int chunk = static_cast<unsigned int>(std::min<size_t>(data.size() - done, 1u << 20));
    unsigned int written = 0;
    errcode_t rc = ext2fs_file_write(f.get(), data.data() + done, chunk, &written);
    if (rc) throw Error(ext2_reason(rc), fail(path, "cannot write", rc));
    if (written == 0) throw Error(Reason::kIo, path + ": cannot write: no progress");
    done += written;
  }
}

// With per-group bitmaps (OpenOptions::Bitmaps::kPerGroup), the groups an inode allocation
// will search, or the group of an inode about to be freed, are read first.
void ready_new_inode(ext2_filsys fs, ext2_ino_t dir, const std::string& path) {
  if (GroupBitmaps* b = GroupBitmaps::of(fs))
    if (errcode_t rc = b->before_new_inode(dir))
      throw Error(ext2_reason(rc), fail(path, "cannot read the allocation bitmaps", rc));
}

void ready_inode_free(ext2_filsys fs, ext2_ino_t ino, const std::string& path) {
  if (GroupBitmaps* b = GroupBitmaps::of(fs))
    if (errcode_t rc = b->before_inode_change(ino))
      throw Error(ext2_reason(rc), fail(path, "cannot read the allocation bitmaps", rc));
}

}  // namespace

std::vector<std::string> split_guest_path(const std::string& path) {
  if (path.empty() || path[0] != '/')
    throw Error(Reason::kInvalidArgument, "guest path '" + path + "' is not absolute");
  if (path.find('\0') != std::string::npos)
    throw Error(Reason::kInvalidArgument, "guest path contains a NUL byte");
  if (path.size() > 4095)
    throw Error(Reason::kInvalidArgument, "guest path is longer than 4095 bytes");
  std::vector<std::string> out = split_any(path);
  for (const auto& c : out) {
    if (c == "..") throw Error(Reason::kInvalidArgument, "guest path '" + path + "' contains '..'");
    if (c.size() > EXT2_NAME_LEN)
      throw Error(Reason::kInvalidArgument,
                  "guest path '" + path + "': a name is longer than 255 bytes");
  }
  return out;
}

ext2_inode_large Guest::read_inode(ext2_ino_t ino) const {
  ext2_inode_large inode;
  std::memset(&inode, 0, sizeof inode);
  errcode_t rc =
      ext2fs_read_inode_full(fs_, ino, reinterpret_cast<ext2_inode*>(&inode), sizeof inode);
  if (rc)
    throw Error(ext2_reason(rc),
                "cannot read inode " + std::to_string(ino) + ": " + ext2_error(rc));
  return inode;
}

void Guest::write_inode(ext2_ino_t ino, ext2_inode_large& inode) {
  errcode_t rc =
      ext2fs_write_inode_full(fs_, ino, reinterpret_cast<ext2_inode*>(&inode), sizeof inode);
  if (rc)
    throw Error(ext2_reason(rc),
                "cannot write inode " + std::to_string(ino) + ": " + ext2_error(rc));
}

std::string Guest::read_link(ext2_ino_t ino, const std::string& path) const {
  ext2_inode_large inode = read_inode(ino);
  const uint64_t size = EXT2_I_SIZE(&inode);
  if (size == 0 || size >= 4096)
    throw Error(Reason::kCorrupt, path + ": symbolic link of invalid length");
  if (ext2fs_is_fast_symlink(reinterpret_cast<ext2_inode*>(&inode)))
    return std::string(reinterpret_cast<const char*>(inode.i_block), static_cast<size_t>(size));
  return read_file(ino, path, 4096);
}

std::string Guest::read_file(ext2_ino_t ino, const std::string& path, uint64_t limit) const {
  File f(fs_, ino, 0, path);
  uint64_t size = 0;
  errcode_t rc = ext2fs_file_get_lsize(f.get(), reinterpret_cast<__u64*>(&size));
  if (rc) throw Error(ext2_reason(rc), fail(path, "cannot read", rc));
  if (size > limit)
    throw Error(Reason::kInvalidArgument, path + ": the file is too large (" +
                                              std::to_string(size) + " bytes, limit " +
                                              std::to_string(limit) + ")");
  std::string out(static_cast<size_t>(size), '\0');
  size_t done = 0;
  while (done < out.size()) {
    unsigned int got = 0;
    unsigned int chunk = static_cast<unsigned int>(std::min<size_t>(out.size() - done, 1u << 20));
    rc = ext2fs_file_read(f.get(), out.data() + done, chunk, &got);
    if (rc) throw Error(ext2_reason(rc), fail(path, "cannot read", rc));
    if (got == 0) break;
    done += got;
  }
  out.resize(done);
  return out;
}

ext2_ino_t Guest::child(ext2_ino_t dir, const std::string& name, const std::string& path) const {
  ext2_ino_t ino = 0;
  errcode_t rc =
      ext2fs_lookup(fs_, dir, name.c_str(), static_cast<int>(name.size()), nullptr, &ino);
  if (rc == EXT2_ET_FILE_NOT_FOUND) return 0;
  if (rc) throw Error(ext2_reason(rc), fail(path, "cannot look up '" + name + "'", rc));
  return ino;
}

// A healthy ext2/3/4 directory has exactly one name, and its ".." is the directory holding
// it. A crafted image can add a second entry for a directory (debugfs "link" does): through
// it, a write meant for /home/alice/.ssh would land in /root/.ssh. e2fsck reports such
// entries; kiln-fs refuses to walk through them.
void Guest::check_parent(ext2_ino_t dir, ext2_ino_t parent, const std::string& path) const {
  ext2_ino_t dotdot = 0;
  errcode_t rc = ext2fs_lookup(fs_, dir, "..", 2, nullptr, &dotdot);
  if (rc == EXT2_ET_FILE_NOT_FOUND || (rc == 0 && dotdot != parent))
    throw Error(Reason::kCorrupt,
                path + " is a second name of a directory that lives elsewhere (its '..' does " +
                    "not lead back): the filesystem is corrupt or crafted, run e2fsck");
  if (rc) throw Error(ext2_reason(rc), fail(path, "cannot look up '..'", rc));
}

ext2_ino_t Guest::lookup(const std::string& path, Follow follow) const {
  Resolved r = resolve(path, follow);
  return r.parent_missing ? 0 : r.ino;
}

Guest::Resolved Guest::resolve(const std::string& path, Follow follow) const {
  struct Item {
    std::string name;
    bool from_link;
  };
  std::deque<Item> todo;
  for (auto& c : split_guest_path(path)) todo.push_back({c, false});
  Resolved r;
  r.ino = EXT2_ROOT_INO;
  r.dir = EXT2_ROOT_INO;
  r.name = "/";
  ext2_ino_t cur = EXT2_ROOT_INO;
  std::vector<ext2_ino_t> ancestors;
  std::string walked;
  int links = 0;
  while (!todo.empty()) {
    Item item = std::move(todo.front());
    todo.pop_front();
    if (item.name == "..") {
      if (!ancestors.empty()) {
        cur = ancestors.back();
        ancestors.pop_back();
      }
      r.ino = cur;
      continue;
    }
    if (!is_dir(read_inode(cur)))
      throw Error(Reason::kInvalidArgument, path + ": " + walked + " is not a directory");
    ext2_ino_t child = 0;
    errcode_t rc = ext2fs_lookup(fs_, cur, item.name.c_str(), static_cast<int>(item.name.size()),
                                 nullptr, &child);
    if (rc && rc != EXT2_ET_FILE_NOT_FOUND)
      throw Error(ext2_reason(rc), fail(path, "cannot look up '" + item.name + "'", rc));
    const bool last = todo.empty();
    r.dir = cur;
    r.name = item.name;
    if (rc == EXT2_ET_FILE_NOT_FOUND) {
      r.ino = 0;
      r.parent_missing = !last;
      return r;
    }
    walked += "/" + item.name;
    ext2_inode_large inode = read_inode(child);
    const bool follow_last = follow == Follow::kAll || follow == Follow::kTrusted;
    if (is_link(inode) && !(last && !follow_last)) {
      const std::string target = read_link(child, walked);
      if (follow == Follow::kNever)
        throw Error(Reason::kPermission, path + ": refusing to follow the symbolic link " + walked +
                                             " -> " + target +
                                             " (allow it with --follow-symlinks)");
      // A guest user can plant a link (or hard-link one that root made) where root will
      // write; following it would let them choose which file root writes.
      if (follow == Follow::kTrusted && inode_uid(inode) != 0)
        throw Error(Reason::kPermission, path + ": refusing to follow the symbolic link " + walked +
                                             " -> " + target + ": it belongs to uid " +
                                             std::to_string(inode_uid(inode)) +
                                             ", and only links owned by root are followed");
      if (follow == Follow::kTrusted && inode.i_links_count > 1)
        throw Error(Reason::kPermission,
                    path + ": refusing to follow the symbolic link " + walked + " -> " + target +
                        ": it has " + std::to_string(inode.i_links_count) +
                        " names (hard links), and only links with one name are followed");
      if (++links > kMaxSymlinks)
        throw Error(Reason::kInvalidArgument, path + ": too many levels of symbolic links");
      std::vector<std::string> parts = split_any(target);
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) todo.push_front({*it, true});
      if (target[0] == '/') {
        cur = EXT2_ROOT_INO;
        ancestors.clear();
      }
      r.ino = cur;
      continue;
    }
    if (is_dir(inode)) check_parent(child, cur, walked);
    ancestors.push_back(cur);
    cur = child;
    r.ino = child;
  }
  return r;
}

Guest::Parent Guest::parent_of(const std::string& path, Follow follow, bool create) {
  std::vector<std::string> parts = split_guest_path(path);
  if (parts.empty())
    throw Error(Reason::kInvalidArgument,
                path + ": the root directory cannot be replaced or removed");
  Parent p;
  p.name = parts.back();
  parts.pop_back();
  // Directories to write into are followed through links only if allowed at all.
  const Follow dir_follow = dirs_follow(follow);
  std::string prefix;
  ext2_ino_t dir = EXT2_ROOT_INO;
  for (const auto& c : parts) {
    prefix += "/" + c;
    ext2_ino_t ino = lookup(prefix, dir_follow);
    if (ino == 0) {
      if (!create) throw Error(Reason::kNotFound, path + ": " + prefix + " does not exist");
      // `dir` is the resolved parent of `prefix`: the lookup found everything up to here.
      ino = make_dir(dir, c, prefix, Attrs{0755, 0, 0});
    } else {
      ext2_inode_large inode = read_inode(ino);
      if (is_link(inode))  // only with kNever: lookup follows links otherwise
        throw Error(Reason::kPermission, path + ": refusing to follow the symbolic link " + prefix +
                                             " -> " + read_link(ino, prefix) +
                                             " (allow it with --follow-symlinks)");
      if (!is_dir(inode))
        throw Error(Reason::kInvalidArgument, path + ": " + prefix + " is not a directory");
    }
    dir = ino;
  }
  p.dir = dir;
  return p;
}

void Guest::link(ext2_ino_t dir, const std::string& name, ext2_ino_t ino, int type,
                 const std::string& path) {
  errcode_t rc = ext2fs_link(fs_, dir, name.c_str(), ino, type);
  if (rc == EXT2_ET_DIR_NO_SPACE) {
    rc = ext2fs_expand_dir(fs_, dir);
    if (rc) throw Error(ext2_reason(rc), fail(path, "cannot grow the parent directory", rc));
    rc = ext2fs_link(fs_, dir, name.c_str(), ino, type);
  }
  if (rc) throw Error(ext2_reason(rc), fail(path, "cannot link", rc));
}

ext2_ino_t Guest::make_dir(ext2_ino_t parent, const std::string& name, const std::string& path,
                           const Attrs& attrs) {
  ready_new_inode(fs_, parent, path);
  errcode_t rc = ext2fs_mkdir(fs_, parent, 0, name.c_str());
  if (rc == EXT2_ET_DIR_NO_SPACE) {
    rc = ext2fs_expand_dir(fs_, parent);
    if (!rc) rc = ext2fs_mkdir(fs_, parent, 0, name.c_str());
  }
  if (rc) throw Error(ext2_reason(rc), fail(path, "cannot create the directory", rc));
  ext2_ino_t ino = 0;
  rc = ext2fs_lookup(fs_, parent, name.c_str(), static_cast<int>(name.size()), nullptr, &ino);
  if (rc) throw Error(ext2_reason(rc), fail(path, "cannot find the new directory", rc));
  ext2_inode_large inode = read_inode(ino);
  inode.i_mode = static_cast<uint16_t>(LINUX_S_IFDIR | (attrs.mode.value_or(0755) & 07777));
  set_owner(inode, attrs.uid.value_or(0), attrs.gid.value_or(0));
  write_inode(ino, inode);
  return ino;
}

ext2_ino_t Guest::make_dirs(const std::string& path, const Attrs& attrs, Follow follow) {
  Parent at = parent_of(path, follow, true);
  ext2_ino_t ino = 0;
  errcode_t rc =
      ext2fs_lookup(fs_, at.dir, at.name.c_str(), static_cast<int>(at.name.size()), nullptr, &ino);
  if (rc == EXT2_ET_FILE_NOT_FOUND) return make_dir(at.dir, at.name, path, attrs);
  if (rc) throw Error(ext2_reason(rc), fail(path, "cannot look up", rc));
  ext2_inode_large inode = read_inode(ino);
  if (is_link(inode)) {
    if (follow == Follow::kNever)
      throw Error(Reason::kPermission, path + ": refusing to follow the symbolic link " + path +
                                           " -> " + read_link(ino, path) +
                                           " (allow it with --follow-symlinks)");
    ino = lookup(path, dirs_follow(follow));  // checks the link's owner and every '..'
    if (ino == 0) throw Error(Reason::kNotFound, path + ": the symbolic link points to nothing");
    inode = read_inode(ino);
  } else if (is_dir(inode)) {
    check_parent(ino, at.dir, path);
  }
  if (!is_dir(inode)) throw Error(Reason::kExists, path + " exists and is not a directory");
  set_attrs(ino, attrs);
  return ino;
}

void Guest::set_attrs(ext2_ino_t ino, const Attrs& attrs) {
  if (!attrs.mode && !attrs.uid && !attrs.gid) return;
  ext2_inode_large inode = read_inode(ino);
  if (attrs.mode)
    inode.i_mode = static_cast<uint16_t>((inode.i_mode & LINUX_S_IFMT) | (*attrs.mode & 07777));
  set_owner(inode, attrs.uid.value_or(inode_uid(inode)), attrs.gid.value_or(inode_gid(inode)));
  inode.i_ctime = now();
  write_inode(ino, inode);
}

// libext2fs grows inline data only while the inode has room and fails, instead of moving the
// data to a block, when extended attributes take that room. The content is being replaced
// anyway: drop the inline data and make the inode an ordinary (extent-mapped) file.
void Guest::to_block_mapped(ext2_ino_t ino, ext2_inode_large& inode, const std::string& path) {
  errcode_t rc = ext2fs_punch(fs_, ino, reinterpret_cast<ext2_inode*>(&inode), nullptr, 0, ~0ULL);
  if (rc) throw Error(ext2_reason(rc), fail(path, "cannot drop its inline data", rc));
  inode = read_inode(ino);
  inode.i_flags &= ~EXT4_INLINE_DATA_FL;
  std::memset(inode.i_block, 0, sizeof inode.i_block);
  inode.i_size = 0;
  inode.i_size_high = 0;
  if (ext2fs_has_feature_extents(fs_->super)) {
    ext2_extent_handle_t handle = nullptr;
    rc = ext2fs_extent_open2(fs_, ino, reinterpret_cast<ext2_inode*>(&inode), &handle);
    if (rc) throw Error(ext2_reason(rc), fail(path, "cannot set up the extent tree", rc));
    ext2fs_extent_free(handle);
  }
  write_inode(ino, inode);
}

ext2_ino_t Guest::write_file(const Parent& at, const std::string& path, const std::string& content,
                             const Attrs& attrs) {
  ext2_ino_t ino = child(at.dir, at.name, path);
  if (ino != 0) {
    ext2_inode_large inode = read_inode(ino);
    if (!LINUX_S_ISREG(inode.i_mode))
      throw Error(Reason::kExists, path + " exists and is not a regular file");
    if (inode.i_links_count > 1) {
      // Another name shares this inode (perhaps /etc/shadow, hard-linked by a guest user into
      // their home): rewriting or chowning it would change that file too. The name written
      // gets an inode of its own instead; the other names keep the old one, untouched.
      const uint16_t mode = static_cast<uint16_t>(
          LINUX_S_IFREG | (attrs.mode.value_or(inode.i_mode & 07777) & 07777));
      const uint32_t uid = attrs.uid.value_or(inode_uid(inode));
      const uint32_t gid = attrs.gid.value_or(inode_gid(inode));
      errcode_t rc = ext2fs_unlink(fs_, at.dir, at.name.c_str(), ino, 0);
      if (rc) throw Error(ext2_reason(rc), fail(path, "cannot unlink the hard-linked name", rc));
      --inode.i_links_count;
      inode.i_ctime = now();
      write_inode(ino, inode);
      ext2_ino_t fresh = create_file(at, path, content, mode, uid, gid);
      copy_xattrs(ino, fresh, path);  // SELinux label, capabilities, ACLs: as the old name had
      return fresh;
    }
    if (inode.i_flags & EXT4_INLINE_DATA_FL) to_block_mapped(ino, inode, path);
    File f(fs_, ino, EXT2_FILE_WRITE, path);
    errcode_t rc = ext2fs_file_set_size2(f.get(), 0);
    if (rc) throw Error(ext2_reason(rc), fail(path, "cannot truncate", rc));
    write_all(f, content, path);
    f.close();
    inode = read_inode(ino);
    inode.i_mtime = inode.i_ctime = now();
    write_inode(ino, inode);
    set_attrs(ino, attrs);
    return ino;
  }
  const uint16_t mode = static_cast<uint16_t>(LINUX_S_IFREG | (attrs.mode.value_or(0644) & 07777));
  return create_file(at, path, content, mode, attrs.uid.value_or(0), attrs.gid.value_or(0));
}

ext2_ino_t Guest::create_file(const Parent& at, const std::string& path, const std::string& content,
                              uint16_t mode, uint32_t uid, uint32_t gid) {
  ext2_ino_t ino = 0;
  ready_new_inode(fs_, at.dir, path);
  errcode_t rc = ext2fs_new_inode(fs_, at.dir, mode, nullptr, &ino);
  if (rc) throw Error(ext2_reason(rc), fail(path, "cannot allocate an inode", rc));
  ext2_inode_large inode;
  std::memset(&inode, 0, sizeof inode);
  inode.i_mode = mode;
  set_owner(inode, uid, gid);
  inode.i_links_count = 1;
  inode.i_atime = inode.i_ctime = inode.i_mtime = now();
  if (ext2fs_has_feature_extents(fs_->super)) {
    ext2_extent_handle_t handle = nullptr;
    rc = ext2fs_extent_open2(fs_, ino, reinterpret_cast<ext2_inode*>(&inode), &handle);
    if (rc) throw Error(ext2_reason(rc), fail(path, "cannot set up the extent tree", rc));
    ext2fs_extent_free(handle);
  }
  // Linked first, so that a failure cannot leave an allocated inode nobody points to.
  link(at.dir, at.name, ino, EXT2_FT_REG_FILE, path);
  ext2fs_inode_alloc_stats2(fs_, ino, +1, 0);
  rc = ext2fs_write_new_inode(fs_, ino, reinterpret_cast<ext2_inode*>(&inode));
  if (rc) throw Error(ext2_reason(rc), fail(path, "cannot write the new inode", rc));
  File f(fs_, ino, EXT2_FILE_WRITE, path);
  write_all(f, content, path);
  f.close();
  return ino;
}

void Guest::copy_xattrs(ext2_ino_t from, ext2_ino_t to, const std::string& path) {
  if (!ext2fs_has_feature_xattr(fs_->super)) return;
  struct Handle {
    ext2_xattr_handle* h = nullptr;
    ~Handle() {
      if (h) ext2fs_xattrs_close(&h);
    }
  } src, dst;
  errcode_t rc = ext2fs_xattrs_open(fs_, from, &src.h);
  if (!rc) rc = ext2fs_xattrs_read(src.h);
  if (rc) throw Error(ext2_reason(rc), fail(path, "cannot read the extended attributes", rc));
  struct Item {
    std::string name, value;
  };
  std::vector<Item> items;
  auto cb = [](char* name, char* value, size_t len, void* data) -> int {
    // "system.data" is inline file data, the filesystem's own, not an attribute.
    if (std::strcmp(name, "system.data") != 0)
      static_cast<std::vector<Item>*>(data)->push_back({name, std::string(value, len)});
    return 0;
  };
  rc = ext2fs_xattrs_iterate(src.h, cb, &items);
  if (rc) throw Error(ext2_reason(rc), fail(path, "cannot read the extended attributes", rc));
  if (items.empty()) return;
  rc = ext2fs_xattrs_open(fs_, to, &dst.h);
  if (!rc) rc = ext2fs_xattrs_read(dst.h);
  // The iteration hands out values as stored (ACLs in ext4's on-disk format): stored as is.
  unsigned int raw = XATTR_HANDLE_FLAG_RAW;
  if (!rc) rc = ext2fs_xattrs_flags(dst.h, &raw, nullptr);
  for (size_t i = 0; !rc && i < items.size(); ++i)
    rc = ext2fs_xattr_set(dst.h, items[i].name.c_str(), items[i].value.data(),
                          items[i].value.size());
  if (rc) throw Error(ext2_reason(rc), fail(path, "cannot write the extended attributes", rc));
}

std::vector<Guest::DirEntry> Guest::list_dir(ext2_ino_t dir, const std::string& path) const {
  struct Ctx {
    std::vector<DirEntry> out;
    bool too_many = false;
  } ctx;
  auto cb = [](ext2_ino_t, int, struct ext2_dir_entry* d, int, int, char*, void* priv) -> int {
    auto* c = static_cast<Ctx*>(priv);
    const int len = ext2fs_dirent_name_len(d);
    std::string name(d->name, static_cast<size_t>(len));
    if (name != "." && name != "..") {
      if (c->out.size() >= kMaxDirEntries) {
        c->too_many = true;
        return DIRENT_ABORT;
      }
      c->out.push_back({std::move(name), d->inode, ext2fs_dirent_file_type(d)});
    }
    return 0;
  };
  errcode_t rc = ext2fs_dir_iterate2(fs_, dir, 0, nullptr, cb, &ctx);
  if (ctx.too_many)
    throw Error(Reason::kInvalidArgument, path + ": the directory has more than " +
                                              std::to_string(kMaxDirEntries) + " entries");
  if (rc) throw Error(ext2_reason(rc), fail(path, "cannot read the directory", rc));
  return ctx.out;
}

void Guest::release_inode(ext2_ino_t ino, ext2_inode_large& inode, const std::string& path) {
  const bool dir = is_dir(inode);
  errcode_t rc;
  if (ext2fs_inode_has_valid_blocks2(fs_, reinterpret_cast<ext2_inode*>(&inode)) ||
      (inode.i_flags & EXT4_INLINE_DATA_FL)) {
    rc = ext2fs_punch(fs_, ino, reinterpret_cast<ext2_inode*>(&inode), nullptr, 0, ~0ULL);
    if (rc) throw Error(ext2_reason(rc), fail(path, "cannot free its blocks", rc));
  }
  rc = ext2fs_free_ext_attr(fs_, ino, &inode);
  if (rc) throw Error(ext2_reason(rc), fail(path, "cannot free its extended attributes", rc));
  inode.i_links_count = 0;
  inode.i_dtime = now();
  write_inode(ino, inode);
  ready_inode_free(fs_, ino, path);
  ext2fs_inode_alloc_stats2(fs_, ino, -1, dir ? 1 : 0);
}

void Guest::remove_entry(ext2_ino_t dir, const std::string& name, ext2_ino_t ino,
                         const std::string& path, int depth) {
  if (depth > kMaxDepth)
    throw Error(Reason::kInvalidArgument, path + ": directories nested too deeply to remove");
  ext2_inode_large inode = read_inode(ino);
  if (is_dir(inode)) {
    // Through a second name of a directory, a removal would free what another name uses.
    check_parent(ino, dir, path);
    for (const auto& e : list_dir(ino, path))
      remove_entry(ino, e.name, e.ino, path + "/" + e.name, depth + 1);
    inode = read_inode(ino);
  }
  errcode_t rc = ext2fs_unlink(fs_, dir, name.c_str(), ino, 0);
  if (rc) throw Error(ext2_reason(rc), fail(path, "cannot unlink", rc));
  if (is_dir(inode)) {
    // Its ".." no longer counts against the parent (1 means "many" with dir_nlink).
    ext2_inode_large parent = read_inode(dir);
    if (parent.i_links_count > 2) --parent.i_links_count;
    parent.i_mtime = parent.i_ctime = now();
    write_inode(dir, parent);
    release_inode(ino, inode, path);
    return;
  }
  ext2_inode_large parent = read_inode(dir);
  parent.i_mtime = parent.i_ctime = now();
  write_inode(dir, parent);
  if (inode.i_links_count > 1) {
    --inode.i_links_count;
    inode.i_ctime = now();
    write_inode(ino, inode);
    return;
  }
  release_inode(ino, inode, path);
}

bool Guest::remove(const std::string& path, Follow follow) {
  std::vector<std::string> parts = split_guest_path(path);
  if (parts.empty())
    throw Error(Reason::kInvalidArgument, path + ": the root directory cannot be removed");
  const std::string name = parts.back();
  std::string parent_path;
  for (size_t i = 0; i + 1 < parts.size(); ++i) parent_path += "/" + parts[i];
  ext2_ino_t dir = parent_path.empty() ? EXT2_ROOT_INO : lookup(parent_path, dirs_follow(follow));
  if (dir == 0) return false;
  if (!is_dir(read_inode(dir)))
    throw Error(Reason::kInvalidArgument, path + ": " + parent_path + " is not a directory");
  ext2_ino_t ino = 0;
  errcode_t rc =
      ext2fs_lookup(fs_, dir, name.c_str(), static_cast<int>(name.size()), nullptr, &ino);
  if (rc == EXT2_ET_FILE_NOT_FOUND) return false;
  if (rc) throw Error(ext2_reason(rc), fail(path, "cannot look up", rc));
  // A symbolic link is removed itself, never what it points to.
  remove_entry(dir, name, ino, path, 0);
  return true;
}

}  // namespace kiln::fs

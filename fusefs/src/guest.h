// Paths and files inside an open ext2/3/4 filesystem, on top of libext2fs: lookups that see
// symbolic links (and refuse or follow them, always inside the guest's root), reading and
// (re)writing whole files, directories with parents, recursive removal, owners and modes.
// Every failure throws Error naming the guest path.
//
// The guest is hostile, and a write here is done as root on the guest's behalf, so:
// - an existing file with several names (hard links) is never rewritten in place: the name
//   written gets a new inode, the other names keep the old one (write_file);
// - a directory reached by a name its ".." does not point back to (a hard-linked directory,
//   which only a crafted image has) is refused on every walk;
// - Follow::kTrusted follows only links that a guest user cannot have planted.
#pragma once

#include <ext2fs/ext2fs.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kiln::fs {

struct Attrs {
  std::optional<uint32_t> mode;  // permission bits (07777)
  std::optional<uint32_t> uid;
  std::optional<uint32_t> gid;
};

enum class Follow {
  kNever,    // a symbolic link anywhere in the path is an error (writes)
  kAll,      // follow every link, resolved inside the guest's root (reads)
  kParents,  // follow links in the parent directories, not in the last component (reads)
  // Writes with --follow-symlinks: follow links owned by root that have a single name (what
  // a guest user made, or hard-linked from elsewhere, is refused), inside the guest's root.
  kTrusted,
};

class Guest {
 public:
  explicit Guest(ext2_filsys fs) : fs_(fs) {}

  // The inode at `path` (absolute), or 0 if a component does not exist. `follow` decides what
  // a symbolic link does; a symlink met with kNever throws Error.
  ext2_ino_t lookup(const std::string& path, Follow follow) const;

  // Where `path` leads: the directory entry that was looked up last (after the links that
  // `follow` lets through) and its inode (0 if that entry does not exist). `parent_missing`:
  // a directory on the way does not exist, `dir`/`name` are then meaningless.
  struct Resolved {
    ext2_ino_t ino = 0;
    ext2_ino_t dir = 0;
    std::string name;
    bool parent_missing = false;
  };
  Resolved resolve(const std::string& path, Follow follow) const;

  // The parent directory of `path` and the last component. With `create`, missing parents are
  // made (root-owned, 0755); without, a missing parent throws.
  struct Parent {
    ext2_ino_t dir = 0;
    std::string name;
  };
  Parent parent_of(const std::string& path, Follow follow, bool create);

  ext2_inode_large read_inode(ext2_ino_t ino) const;
  void write_inode(ext2_ino_t ino, ext2_inode_large& inode);

  std::string read_file(ext2_ino_t ino, const std::string& path, uint64_t limit) const;
  std::string read_link(ext2_ino_t ino, const std::string& path) const;
  // The entry `name` of directory `dir` itself (a link is not followed), or 0.
  ext2_ino_t child(ext2_ino_t dir, const std::string& name, const std::string& path) const;
  // Throws unless `dir`'s ".." is `parent`: a directory reached through a second name.
  void check_parent(ext2_ino_t dir, ext2_ino_t parent, const std::string& path) const;

  // Replaces the content of an existing regular file (its inode, owner, mode and extended
  // attributes stay) or creates it (mode 0644 and 0:0 unless `attrs` says otherwise). An
  // existing file with other names is not written: `at` gets a new inode with the new content
  // and the old one's mode, owner and extended attributes (unless `attrs` says otherwise), as
  // an edit through a temporary file and rename(2) gives. Returns the inode.
  ext2_ino_t write_file(const Parent& at, const std::string& path, const std::string& content,
                        const Attrs& attrs);
  // Makes the directory `name` in `dir` (which must not exist) with `attrs` (0755, 0:0).
  ext2_ino_t make_dir(ext2_ino_t parent, const std::string& name, const std::string& path,
                      const Attrs& attrs);
  // Makes the directory `path` and its parents; an existing directory gets `attrs` applied.
  ext2_ino_t make_dirs(const std::string& path, const Attrs& attrs, Follow follow);
  // Removes `path` (a directory with everything in it). False if it did not exist.
  bool remove(const std::string& path, Follow follow);
  void set_attrs(ext2_ino_t ino, const Attrs& attrs);

  struct DirEntry {
    std::string name;
    ext2_ino_t ino;
    int type;  // EXT2_FT_*
  };
  std::vector<DirEntry> list_dir(ext2_ino_t dir, const std::string& path) const;

  ext2_filsys fs() const { return fs_; }

 private:
  ext2_ino_t create_file(const Parent& at, const std::string& path, const std::string& content,
                         uint16_t mode, uint32_t uid, uint32_t gid);
  void copy_xattrs(ext2_ino_t from, ext2_ino_t to, const std::string& path);
  void link(ext2_ino_t dir, const std::string& name, ext2_ino_t ino, int type,
            const std::string& path);
  void remove_entry(ext2_ino_t dir, const std::string& name, ext2_ino_t ino,
                    const std::string& path, int depth);
  void to_block_mapped(ext2_ino_t ino, ext2_inode_large& inode, const std::string& path);
  void release_inode(ext2_ino_t ino, ext2_inode_large& inode, const std::string& path);

  ext2_filsys fs_;
};

// "/a/b/c" -> {"a", "b", "c"}; throws Error for a relative path, "..", or a name too long.
std::vector<std::string> split_guest_path(const std::string& path);

}  // namespace kiln::fs

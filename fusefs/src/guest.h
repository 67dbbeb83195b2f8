// Paths and files inside an open ext2/3/4 filesystem, on top of libext2fs: lookups that see
// symbolic links (and refuse or follow them, always inside the guest's root), reading and
// (re)writing whole files, directories with parents, recursive removal, owners and modes.
// Every failure throws Error naming the guest path.
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
  kAll,      // follow every link, resolved inside the guest's root
  kParents,  // follow links in the parent directories, not in the last component
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
  // Replaces the content of an existing regular file (its inode, owner, mode and extended
  // attributes stay) or creates it (mode 0644 and 0:0 unless `attrs` says otherwise).
  // Returns the inode.
  ext2_ino_t write_file(const Parent& at, const std::string& path, const std::string& content,
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
  ext2_ino_t make_dir(ext2_ino_t parent, const std::string& name, const std::string& path,
                      const Attrs& attrs);
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

// opendir, readdir, readdirplus, releasedir. A directory is read once per pass into a list of
// entries, and offsets index that list, so a listing stays consistent while entries change.
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "inode_util.h"
#include "volume.h"

namespace kiln::fs::fuse_detail {
namespace {

struct DirEntry {
  std::string name;
  ext2_ino_t ino;
  mode_t type;  // S_IF* bits from the entry's file type, 0 when unknown
};

struct DirHandle {
  std::vector<DirEntry> entries;
  bool loaded = false;
};

int collect_proc(ext2_ino_t, int, ext2_dir_entry* dirent, int, int, char*, void* priv) {
  auto* entries = static_cast<std::vector<DirEntry>*>(priv);
  if (dirent->inode == 0) return 0;
  entries->push_back({std::string(dirent->name, ext2fs_dirent_name_len(dirent)), dirent->inode,
                      mode_from_dirent_type(ext2fs_dirent_file_type(dirent))});
  return 0;
}

errcode_t load(ext2_filsys fs, ext2_ino_t ino, DirHandle& dh) {
  dh.entries.clear();
  errcode_t rc = ext2fs_dir_iterate2(fs, ino, 0, nullptr, collect_proc, &dh.entries);
  dh.loaded = rc == 0;
  return rc;
}

DirHandle& handle(fuse_file_info* fi) { return *reinterpret_cast<DirHandle*>(fi->fh); }

void op_opendir(fuse_req_t req, fuse_ino_t fino, fuse_file_info* fi) {
  Volume& v = volume(req);
  const ext2_ino_t ino = to_ext2(fino);
  ext2_inode_large inode;
  if (errcode_t rc = read_inode(v.fs(), ino, inode)) {
    fuse_reply_err(req, fail("opendir", ino, rc));
    return;
  }
  if (!LINUX_S_ISDIR(inode.i_mode)) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  auto dh = std::make_unique<DirHandle>();
  fi->fh = reinterpret_cast<uint64_t>(dh.get());
  fi->keep_cache = 1;
  fi->cache_readdir = 0;
  v.add_open(ino);
  if (fuse_reply_open(req, fi) == 0) {
    dh.release();
  } else {
    v.release(ino);
  }
}

void do_readdir(fuse_req_t req, fuse_ino_t fino, size_t size, off_t off, fuse_file_info* fi,
                bool plus) {
  Volume& v = volume(req);
  const ext2_ino_t ino = to_ext2(fino);
  DirHandle& dh = handle(fi);
  // Offset 0 starts a new pass (opendir or rewinddir): read the directory again.
  if (off == 0 || !dh.loaded) {
    if (errcode_t rc = load(v.fs(), ino, dh)) {
      fuse_reply_err(req, fail("readdir", ino, rc));
      return;
    }
  }
  std::vector<char> buf(size);
  size_t used = 0;
  for (size_t i = static_cast<size_t>(off); i < dh.entries.size(); ++i) {
    const DirEntry& d = dh.entries[i];
    const off_t next = static_cast<off_t>(i + 1);
    size_t need;
    if (plus) {
      fuse_entry_param e{};
      ext2_inode_large inode;
      const bool dots = d.name == "." || d.name == "..";
      if (errcode_t rc = read_inode(v.fs(), d.ino, inode)) {
        fuse_reply_err(req, fail("readdirplus", d.ino, rc));
        return;
      }
      make_entry(v, d.ino, inode, e);
      need = fuse_add_direntry_plus(req, buf.data() + used, size - used, d.name.c_str(), &e, next);
      if (need > size - used) break;
      // The kernel takes a reference for every entry but '.' and '..'.
      if (!dots) v.add_lookup(d.ino);
    } else {
      struct stat st {};
      st.st_ino = d.ino;
      st.st_mode = d.type;
      need = fuse_add_direntry(req, buf.data() + used, size - used, d.name.c_str(), &st, next);
      if (need > size - used) break;
    }
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  do_readdir(req, ino, size, off, fi, false);
}

void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  do_readdir(req, ino, size, off, fi, true);
}

void op_releasedir(fuse_req_t req, fuse_ino_t fino, fuse_file_info* fi) {
  delete reinterpret_cast<DirHandle*>(fi->fh);
  volume(req).release(to_ext2(fino));
  fuse_reply_err(req, 0);
}

}  // namespace

void register_dir_ops(fuse_lowlevel_ops& ops) {
  ops.opendir = op_opendir;
  ops.readdir = op_readdir;
  ops.readdirplus = op_readdirplus;
  ops.releasedir = op_releasedir;
}

}  // namespace kiln::fs::fuse_detail

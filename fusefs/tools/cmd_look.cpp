// kiln-fs ls / cat / stat: quick looks into a guest filesystem, read-only. Symbolic links
// are followed inside the guest's root (stat shows a link itself).
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <string>

#include "commands.h"
#include "guest.h"
#include "kiln/fs/filesystem.h"

namespace kiln::fs::cli {
namespace {

struct LookArgs {
  OpenOptions open;
  std::string image, path;
  bool long_format = false;
};

LookArgs parse_look(const Args& args, const char* name) {
  LookArgs a;
  a.open.read_only = true;
  if (auto p = args.get("--partition")) a.open.partition = parse_partition(*p);
  a.long_format = args.flag("-l");
  if (args.positional().size() != 2) throw UsageError(std::string(name) + " takes IMAGE and PATH");
  ImageArg image = image_arg(args, args.positional()[0]);
  a.image = std::move(image.image);
  a.open.format = std::move(image.format);
  a.open.key_secret = std::move(image.key_secret);
  a.path = args.positional()[1];
  return a;
}

std::string mode_string(uint16_t mode) {
  std::string s = "?---------";
  if (LINUX_S_ISREG(mode)) s[0] = '-';
  if (LINUX_S_ISDIR(mode)) s[0] = 'd';
  if (LINUX_S_ISLNK(mode)) s[0] = 'l';
  if (LINUX_S_ISCHR(mode)) s[0] = 'c';
  if (LINUX_S_ISBLK(mode)) s[0] = 'b';
  if (LINUX_S_ISFIFO(mode)) s[0] = 'p';
  if (LINUX_S_ISSOCK(mode)) s[0] = 's';
  const char* rwx = "rwxrwxrwx";
  for (int i = 0; i < 9; ++i)
    if (mode & (0400 >> i)) s[1 + i] = rwx[i];
  if (mode & 04000) s[3] = (mode & 0100) ? 's' : 'S';
  if (mode & 02000) s[6] = (mode & 0010) ? 's' : 'S';
  if (mode & 01000) s[9] = (mode & 0001) ? 't' : 'T';
  return s;
}

const char* type_name(uint16_t mode) {
  if (LINUX_S_ISREG(mode)) return "regular file";
  if (LINUX_S_ISDIR(mode)) return "directory";
  if (LINUX_S_ISLNK(mode)) return "symbolic link";
  if (LINUX_S_ISCHR(mode)) return "character device";
  if (LINUX_S_ISBLK(mode)) return "block device";
  if (LINUX_S_ISFIFO(mode)) return "fifo";
  if (LINUX_S_ISSOCK(mode)) return "socket";
  return "unknown";
}

std::string time_string(uint32_t t) {
  time_t tt = t;
  struct tm tm;
  gmtime_r(&tt, &tm);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return b;
}

ext2_ino_t must_find(Guest& g, const std::string& path, Follow follow, const Filesystem& fs) {
  ext2_ino_t ino = g.lookup(path, follow);
  if (ino == 0) throw Error(fs.describe() + ": " + path + ": no such file or directory");
  return ino;
}

void print_xattrs(ext2_filsys fs, ext2_ino_t ino) {
  ext2_xattr_handle* h = nullptr;
  if (ext2fs_xattrs_open(fs, ino, &h)) return;
  if (ext2fs_xattrs_read(h) == 0) {
    auto cb = [](char* name, char* value, size_t len, void*) -> int {
      std::string v(value, len);
      bool printable = std::all_of(v.begin(), v.end(),
                                   [](char ch) { return (ch >= 0x20 && ch < 0x7f) || ch == '\0'; });
      if (!v.empty() && v.back() == '\0') v.pop_back();
      if (printable) {
        std::printf("  xattr: %s=\"%s\"\n", name, v.c_str());
      } else {
        std::printf("  xattr: %s=0x", name);
        for (unsigned char ch : std::string(value, len)) std::printf("%02x", ch);
        std::printf("\n");
      }
      return 0;
    };
    ext2fs_xattrs_iterate(h, cb, nullptr);
  }
  ext2fs_xattrs_close(&h);
}

}  // namespace

int cmd_ls(const Args& args) {
  LookArgs a = parse_look(args, "ls");
  auto fs = Filesystem::open(a.image, a.open);
  Guest g(fs->handle());
  ext2_ino_t ino = must_find(g, a.path, Follow::kAll, *fs);
  std::vector<Guest::DirEntry> entries;
  if (LINUX_S_ISDIR(g.read_inode(ino).i_mode)) {
    entries = g.list_dir(ino, a.path);
  } else {
    entries.push_back({a.path, ino, 0});
  }
  std::sort(entries.begin(), entries.end(),
            [](const auto& x, const auto& y) { return x.name < y.name; });
  for (const auto& e : entries) {
    if (!a.long_format) {
      std::printf("%s\n", e.name.c_str());
      continue;
    }
    ext2_inode_large i = g.read_inode(e.ino);
    std::string line = mode_string(i.i_mode);
    std::printf("%s %3u %5u %5u %10" PRIu64 " %s %s", line.c_str(), i.i_links_count, inode_uid(i),
                inode_gid(i), static_cast<uint64_t>(EXT2_I_SIZE(&i)),
                time_string(i.i_mtime).c_str(), e.name.c_str());
    if (LINUX_S_ISLNK(i.i_mode)) std::printf(" -> %s", g.read_link(e.ino, e.name).c_str());
    std::printf("\n");
  }
  fs->close();
  return 0;
}

int cmd_cat(const Args& args) {
  LookArgs a = parse_look(args, "cat");
  auto fs = Filesystem::open(a.image, a.open);
  Guest g(fs->handle());
  ext2_ino_t ino = must_find(g, a.path, Follow::kAll, *fs);
  ext2_inode_large i = g.read_inode(ino);
  if (!LINUX_S_ISREG(i.i_mode))
    throw Error(fs->describe() + ": " + a.path + " is a " + type_name(i.i_mode) +
                ", not a regular file");
  ext2_file_t f = nullptr;
  errcode_t rc = ext2fs_file_open(fs->handle(), ino, 0, &f);
  if (rc) throw Error(fs->describe() + ": " + a.path + ": " + ext2_error(rc));
  std::vector<char> buf(1u << 20);
  for (;;) {
    unsigned int got = 0;
    rc = ext2fs_file_read(f, buf.data(), static_cast<unsigned int>(buf.size()), &got);
    if (rc) {
      ext2fs_file_close(f);
      throw Error(fs->describe() + ": " + a.path + ": " + ext2_error(rc));
    }
    if (got == 0) break;
    if (std::fwrite(buf.data(), 1, got, stdout) != got) {
      ext2fs_file_close(f);
      throw Error("cannot write to standard output");
    }
  }
  ext2fs_file_close(f);
  fs->close();
  if (std::fflush(stdout) != 0) throw Error("cannot write to standard output");
  return 0;
}

int cmd_stat(const Args& args) {
  LookArgs a = parse_look(args, "stat");
  auto fs = Filesystem::open(a.image, a.open);
  Guest g(fs->handle());
  ext2_ino_t ino = must_find(g, a.path, Follow::kParents, *fs);
  ext2_inode_large i = g.read_inode(ino);
  std::printf("  File: %s\n", a.path.c_str());
  std::printf("  Type: %s\n", type_name(i.i_mode));
  std::printf("  Size: %" PRIu64 "\n", static_cast<uint64_t>(EXT2_I_SIZE(&i)));
  std::printf(" Inode: %u\n", ino);
  std::printf(" Links: %u\n", i.i_links_count);
  std::printf("Access: (%04o/%s)\n", i.i_mode & 07777, mode_string(i.i_mode).c_str());
  std::printf("   Uid: %u\n   Gid: %u\n", inode_uid(i), inode_gid(i));
  std::printf("Modify: %s\nChange: %s\n", time_string(i.i_mtime).c_str(),
              time_string(i.i_ctime).c_str());
  if (LINUX_S_ISLNK(i.i_mode)) std::printf("  Link: %s\n", g.read_link(ino, a.path).c_str());
  print_xattrs(fs->handle(), ino);
  fs->close();
  return 0;
}

}  // namespace kiln::fs::cli

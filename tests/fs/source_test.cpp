// Local sources: the write lock is taken, refused to a second writer, and released on every
// path — also when the image cannot be opened.
#include "kiln/fs/source.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "kiln/fs/filesystem.h"

namespace kiln::fs {
namespace {

class TempFile {
 public:
  explicit TempFile(const std::string& content) {
    char name[] = "/tmp/kiln-fs-unit-XXXXXX";
    int fd = mkstemp(name);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
    ::close(fd);
    path_ = name;
  }
  ~TempFile() { ::unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// True if this process can take the exclusive lock now (through a new open file description,
// so a lock still held by a leaked descriptor of ours conflicts).
bool lockable(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  bool ok = fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0;
  if (fd >= 0) ::close(fd);
  return ok;
}

TEST(LocalSource, WriterLocksAndReleases) {
  TempFile f(std::string(1 << 20, '\0'));
  {
    auto src = open_local_source(f.path(), {});
    EXPECT_FALSE(lockable(f.path()));
    try {
      open_local_source(f.path(), {});
      ADD_FAILURE() << "a second writer was let in";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("in use by another process"), std::string::npos);
      EXPECT_EQ(e.reason(), Reason::kBusy) << e.what();
    }
    src->close();
    EXPECT_TRUE(lockable(f.path()));
  }
  EXPECT_TRUE(lockable(f.path()));
}

TEST(LocalSource, LockReleasedWhenTheImageCannotBeOpened) {
  // qcow2 magic, then garbage: the block layer refuses it after the lock was taken.
  TempFile f(std::string("QFI\xfb", 4) + std::string(4092, '\x7f'));
  SourceOptions o;
  o.format = "qcow2";
  try {
    open_local_source(f.path(), o);
    ADD_FAILURE() << "opened";
  } catch (const Error& e) {
    // The block layer's reason comes through: version 0x7f7f7f7f is no qcow2 Kiln reads.
    EXPECT_EQ(e.reason(), Reason::kUnsupported) << e.what();
    EXPECT_NE(std::string(e.what()).find("unsupported qcow2 version"), std::string::npos);
  }
  EXPECT_TRUE(lockable(f.path()));
  // The same through Filesystem::open.
  OpenOptions fo;
  fo.format = "qcow2";
  EXPECT_THROW(Filesystem::open(f.path(), fo), Error);
  EXPECT_TRUE(lockable(f.path()));
}

TEST(LocalSource, LockReleasedWhenNoFilesystemIsFound) {
  TempFile f(std::string(4 << 20, '\0'));
  try {
    Filesystem::open(f.path(), {});
    ADD_FAILURE() << "a disk of zeros was opened";
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kNotFound) << e.what();
  }
  EXPECT_TRUE(lockable(f.path()));
}

}  // namespace
}  // namespace kiln::fs

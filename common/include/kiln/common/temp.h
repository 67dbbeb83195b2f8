// Temporary files and directories that go away with their owner, also when an exception
// unwinds (tests and tools alike).
#pragma once

#include <string>

namespace kiln::common {

// A new directory (mkdtemp, mode 0700) under $TMPDIR (or /tmp) named `prefix`XXXXXX, removed
// with everything in it on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "kiln-");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string str() const { return path_; }
  // path()/name
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  std::string operator/(const std::string& name) const { return file(name); }

 private:
  std::string path_;
};

// Unlinks `path` on destruction unless released (a file being written under a temporary name
// that is renamed into place at the end).
class TempFile {
 public:
  explicit TempFile(std::string path) : path_(std::move(path)) {}
  ~TempFile();
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& path() const { return path_; }
  void release() { path_.clear(); }

 private:
  std::string path_;
};

}  // namespace kiln::common

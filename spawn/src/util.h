// Small RAII helpers of kiln-spawn: file descriptors, temporary files, advisory locks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kiln::spawn {

class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  ~UniqueFd();
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  UniqueFd& operator=(UniqueFd&& o) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Removes the file when it goes out of scope, unless released.
class TempFile {
 public:
  explicit TempFile(std::string path) : path_(std::move(path)) {}
  ~TempFile();
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  void release() { path_.clear(); }

 private:
  std::string path_;
};

// An exclusive flock(2) on `path` (created 0600 if needed), held until destruction.
class FileLock {
 public:
  explicit FileLock(const std::string& path);
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  UniqueFd fd_;
};

// pwrite until done; throws Error(kSystem) naming `what`.
void write_all(int fd, const void* data, size_t size, uint64_t offset, const std::string& what);
// Writes `content` to `path` (mode 0600), fsynced.
void write_file(const std::string& path, const std::string& content);
// Reads a whole file of at most `limit` bytes; throws Error(kInvalid) naming `what` beyond it.
std::string read_file(const std::string& path, size_t limit, const std::string& what);
void sync_dir(const std::string& dir);

}  // namespace kiln::spawn

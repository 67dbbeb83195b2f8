// Small helpers of kiln-spawn: advisory locks, whole-file reads and writes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>  // std::try_to_lock_t
#include <string>

#include "kiln/common/fd.h"
#include "kiln/common/temp.h"

namespace kiln::spawn {

using common::Fd;
using common::TempFile;

// An exclusive flock(2) on `path` (created 0600 if needed), held until destruction.
class FileLock {
 public:
  explicit FileLock(const std::string& path);  // waits for the lock
  // Takes the lock only if nobody holds it; held() says whether it did.
  FileLock(const std::string& path, std::try_to_lock_t);
  bool held() const { return held_; }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  Fd fd_;
  bool held_ = false;
};

// pwrite until done; throws Error(kIo) naming `what`.
void write_all(int fd, const void* data, size_t size, uint64_t offset, const std::string& what);
// Writes `content` to `path` (mode 0600), fsynced.
void write_file(const std::string& path, const std::string& content);
// Reads a whole file of at most `limit` bytes; throws Error(kInvalidArgument) naming `what` beyond
// it.
std::string read_file(const std::string& path, size_t limit, const std::string& what);
void sync_dir(const std::string& dir);
// Removes `path` if it exists; throws Error(kIo) if it cannot.
void remove_file(const std::string& path);

}  // namespace kiln::spawn

#include "util.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "kiln/spawn/error.h"

namespace kiln::spawn {

FileLock::FileLock(const std::string& path)
    : fd_(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600)) {
  if (fd_.get() < 0) throw errno_error("cannot open lock " + path, errno);
  while (::flock(fd_.get(), LOCK_EX) != 0) {
    if (errno != EINTR) throw errno_error("cannot lock " + path, errno);
  }
  held_ = true;
}

FileLock::FileLock(const std::string& path, std::try_to_lock_t)
    : fd_(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600)) {
  if (fd_.get() < 0) throw errno_error("cannot open lock " + path, errno);
  while (::flock(fd_.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) return;
    if (errno != EINTR) throw errno_error("cannot lock " + path, errno);
  }
  held_ = true;
}

void write_all(int fd, const void* data, size_t size, uint64_t offset, const std::string& what) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::pwrite(fd, p, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw errno_error("cannot write " + what, errno);
    }
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

void write_file(const std::string& path, const std::string& content) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (fd.get() < 0) throw errno_error("cannot create " + path, errno);
  write_all(fd.get(), content.data(), content.size(), 0, path);
  if (::fsync(fd.get()) != 0) throw errno_error("cannot sync " + path, errno);
}

std::string read_file(const std::string& path, size_t limit, const std::string& what) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw errno_error("cannot open " + what + " " + path, errno);
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) throw errno_error("cannot stat " + path, errno);
  if (!S_ISREG(st.st_mode)) throw invalid(what + " " + path + " is not a regular file");
  if (static_cast<uint64_t>(st.st_size) > limit)
    throw invalid(what + " " + path + " is larger than " + std::to_string(limit) + " bytes");
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw errno_error("cannot read " + path, errno);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > limit)
      throw invalid(what + " " + path + " is larger than " + std::to_string(limit) + " bytes");
  }
  return out;
}

void sync_dir(const std::string& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() >= 0) ::fsync(fd.get());
}

void remove_file(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT)
    throw errno_error("cannot remove " + path, errno);
}

}  // namespace kiln::spawn

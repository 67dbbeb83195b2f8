#include "lock.h"

#include <fcntl.h>

#include <cerrno>
#include <cstring>

#include "kiln/block/device.h"

namespace kiln::block {
namespace {

constexpr off_t kPermBase = 100;    // byte held by who holds permission i
constexpr off_t kSharedBase = 200;  // byte held by who refuses to share permission i

enum Perm : unsigned {
  kConsistentRead = 1u << 0,
  kWrite = 1u << 1,
  kWriteUnchanged = 1u << 2,
  kResize = 1u << 3,
};
constexpr unsigned kPermCount = 4;
constexpr const char* kPermNames[kPermCount] = {"consistent read", "write", "write unchanged",
                                                "resize"};

// True when another open file description holds a lock on `byte`.
bool byte_taken(int fd, off_t byte, int* err) {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  if (fcntl(fd, F_OFD_GETLK, &fl) < 0) {
    *err = errno;
    return false;
  }
  return fl.l_type != F_UNLCK;
}

int take_byte(int fd, off_t byte) {
  struct flock fl {};
  fl.l_type = F_RDLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? errno : 0;
}

[[noreturn]] void refuse(const std::string& path, const char* perm, bool shared) {
  throw Error(EAGAIN, path + ": cannot get the " + (shared ? "shared " : "") + "\"" + perm +
                          "\" lock: is another process using the image?");
}

}  // namespace

void lock_image_file(int fd, const std::string& path, bool writable) {
  const unsigned perm =
      writable ? (kConsistentRead | kWrite | kWriteUnchanged | kResize) : kConsistentRead;
  const unsigned unshared = kWrite | kResize;
  int err = 0;
  for (unsigned i = 0; i < kPermCount; ++i) {
    if ((perm & (1u << i)) && byte_taken(fd, kSharedBase + i, &err))
      refuse(path, kPermNames[i], false);
    if ((unshared & (1u << i)) && byte_taken(fd, kPermBase + i, &err))
      refuse(path, kPermNames[i], true);
    if (err) throw Error(err, path + ": cannot test the image locks: " + strerror(err));
  }
  // Between the test and the locks below another process may do the same; QEMU accepts that
  // window too (both then hold their bytes and the next opener sees the conflict).
  for (unsigned i = 0; i < kPermCount; ++i) {
    if (perm & (1u << i))
      if (int e = take_byte(fd, kPermBase + i))
        throw Error(e, path + ": cannot lock the image: " + strerror(e));
    if (unshared & (1u << i))
      if (int e = take_byte(fd, kSharedBase + i))
        throw Error(e, path + ": cannot lock the image: " + strerror(e));
  }
}

void unlock_image_bytes(int fd, off_t first, off_t count) noexcept {
  struct flock fl {};
  fl.l_type = F_UNLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = first;
  fl.l_len = count;
  fcntl(fd, F_OFD_SETLK, &fl);  // unlocking what is not held is not an error
}

void unlock_image_file(int fd) noexcept {
  unlock_image_bytes(fd, kPermBase, kSharedBase + kPermCount - kPermBase);
}

}  // namespace kiln::block

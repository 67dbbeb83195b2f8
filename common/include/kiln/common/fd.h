// One owner for a file descriptor: move-only, closed when the owner goes (every module uses
// this one; see docs/common.md).
#pragma once

namespace kiln::common {

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }

  // Gives the descriptor away: the caller closes it.
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  // Closes the current descriptor (ignoring close()'s result) and takes `fd`.
  void reset(int fd = -1);
  // Closes now and returns 0 or the errno close() reported: a file that was written must be
  // closed this way, because NFS and some FUSE file systems report write errors only here.
  int close();

 private:
  int fd_ = -1;
};

}  // namespace kiln::common

// A connected socket driven through the reactor's io_uring: buffered reads (one recv fills
// many small requests), exact reads that bypass the buffer for large payloads, and gathered
// writes (many replies in one sendmsg).
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kiln/block/reactor.h"

namespace kiln::nbd {

class Socket {
 public:
  Socket(block::Reactor& r, int fd);
  ~Socket();
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  int fd() const { return fd_; }
  // Submits future I/O through `r` (the connection moved to another reactor thread).
  void move_to(block::Reactor& r) { r_ = &r; }
  // Fills `out` completely. Returns 0, -ECONNRESET at end of stream, or -errno.
  block::Task<int> read_exact(std::span<uint8_t> out);
  // Reads up to and including the next '\n' and stores the line without it in `line`.
  // Returns 0, -EMSGSIZE when the line would exceed `max` bytes, -ECONNRESET at end of
  // stream, or -errno. Consumes the buffer a chunk at a time, so a long line costs one
  // memchr per receive, not one coroutine resumption per byte.
  block::Task<int> read_line(std::string& line, size_t max);
  // Reads and drops `n` bytes.
  block::Task<int> skip(uint64_t n);
  // Sends everything described by `iov`. Returns 0 or -errno.
  block::Task<int> write_all(std::vector<iovec> iov);
  block::Task<int> write_all(std::span<const uint8_t> data) {
    return write_all(std::vector<iovec>{{const_cast<uint8_t*>(data.data()), data.size()}});
  }
  // Bytes already received but not consumed.
  size_t buffered() const { return end_ - begin_; }
  void shutdown_read();

 private:
  block::Task<int> fill();

  block::Reactor* r_;
  int fd_;
  std::unique_ptr<uint8_t[]> buf_;
  size_t begin_ = 0, end_ = 0;
  static constexpr size_t kBufferSize = 128 * 1024;
};

}  // namespace kiln::nbd

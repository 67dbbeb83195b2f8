#include "socket.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kiln::nbd {

Socket::Socket(block::Reactor& r, int fd) : r_(&r), fd_(fd), buf_(new uint8_t[kBufferSize]) {}

Socket::~Socket() { ::close(fd_); }

void Socket::shutdown_read() { ::shutdown(fd_, SHUT_RD); }

block::Task<int> Socket::fill() {
  if (begin_ == end_) begin_ = end_ = 0;
  for (;;) {
    uint8_t* p = buf_.get() + end_;
    const size_t room = kBufferSize - end_;
    const int fd = fd_;
    int n = co_await r_->submit([=](io_uring_sqe* s) { io_uring_prep_recv(s, fd, p, room, 0); });
    if (n == -EINTR || n == -EAGAIN) continue;
    if (n < 0) co_return n;
    if (n == 0) co_return -ECONNRESET;
    end_ += size_t(n);
    co_return 0;
  }
}

block::Task<int> Socket::read_exact(std::span<uint8_t> out) {
  size_t got = 0;
  while (got < out.size()) {
    if (begin_ < end_) {
      const size_t n = std::min(out.size() - got, end_ - begin_);
      std::memcpy(out.data() + got, buf_.get() + begin_, n);
      begin_ += n;
      got += n;
      continue;
    }
    const size_t want = out.size() - got;
    if (want >= kBufferSize / 2) {
      // Large payloads go straight into their destination.
      uint8_t* p = out.data() + got;
      const int fd = fd_;
      int n = co_await r_->submit([=](io_uring_sqe* s) { io_uring_prep_recv(s, fd, p, want, 0); });
      if (n == -EINTR || n == -EAGAIN) continue;
      if (n < 0) co_return n;
      if (n == 0) co_return -ECONNRESET;
      got += size_t(n);
      continue;
    }
    if (begin_ == end_ || end_ == kBufferSize) begin_ = end_ = 0;
    if (int rc = co_await fill(); rc < 0) co_return rc;
  }
  co_return 0;
}

block::Task<int> Socket::read_line(std::string& line, size_t max) {
  line.clear();
  for (;;) {
    if (begin_ < end_) {
      const uint8_t* start = buf_.get() + begin_;
      const size_t avail = end_ - begin_;
      const void* nl = std::memchr(start, '\n', avail);
      const size_t take = nl ? size_t(static_cast<const uint8_t*>(nl) - start) : avail;
      if (line.size() + take > max) co_return -EMSGSIZE;
      line.append(reinterpret_cast<const char*>(start), take);
      begin_ += take;
      if (nl) {
        ++begin_;  // the newline itself
        co_return 0;
      }
    }
    if (int rc = co_await fill(); rc < 0) co_return rc;
  }
}

block::Task<int> Socket::skip(uint64_t n) {
  while (n > 0) {
    if (begin_ == end_)
      if (int rc = co_await fill(); rc < 0) co_return rc;
    const size_t k = size_t(std::min<uint64_t>(n, end_ - begin_));
    begin_ += k;
    n -= k;
  }
  co_return 0;
}

block::Task<int> Socket::write_all(std::vector<iovec> iov) {
  size_t first = 0;
  while (first < iov.size()) {
    msghdr msg{};
    msg.msg_iov = &iov[first];
    msg.msg_iovlen = std::min<size_t>(iov.size() - first, IOV_MAX);
    const int fd = fd_;
    int n = co_await r_->submit(
        [&msg, fd](io_uring_sqe* s) { io_uring_prep_sendmsg(s, fd, &msg, MSG_NOSIGNAL); });
    if (n == -EINTR || n == -EAGAIN) continue;
    if (n < 0) co_return n;
    size_t sent = size_t(n);
    while (first < iov.size() && sent >= iov[first].iov_len) sent -= iov[first++].iov_len;
    if (sent) {
      iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + sent;
      iov[first].iov_len -= sent;
    }
  }
  co_return 0;
}

}  // namespace kiln::nbd

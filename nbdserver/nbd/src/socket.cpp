#include "socket.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "log.h"

namespace kiln::nbd {

Socket::Socket(block::Reactor& r, common::Fd fd)
    : r_(&r), fd_(std::move(fd)), buf_(new uint8_t[kBufferSize]) {}

Socket::~Socket() = default;

void Socket::shutdown_read() { ::shutdown(fd_.get(), SHUT_RD); }

block::Task<int> Socket::raw_recv(uint8_t* p, size_t n) {
  const int fd = fd_.get();
  for (;;) {
    int got = co_await r_->submit([=](io_uring_sqe* s) { io_uring_prep_recv(s, fd, p, n, 0); });
    if (got == -EINTR || got == -EAGAIN) continue;
    if (got == 0) co_return -ECONNRESET;
    co_return got;
  }
}

block::Task<int> Socket::recv_some(uint8_t* p, size_t n) {
  if (!tls_) co_return co_await raw_recv(p, n);
  for (;;) {
    const long got = tls_->recv(p, n);
    if (got > 0) co_return int(got);
    if (got == 0) co_return -ECONNRESET;
    if (got != TlsSession::kWantRead) {
      logf(LogLevel::kInfo, "%s", tls_->error().c_str());
      co_return int(got);
    }
    const std::span<uint8_t> space = tls_->input_space();
    const int rc = co_await raw_recv(space.data(), space.size());
    if (rc == -ECONNRESET) {
      tls_->input_eof();
      continue;
    }
    if (rc < 0) co_return rc;
    tls_->input_commit(size_t(rc));
  }
}

block::Task<int> Socket::fill() {
  if (begin_ == end_) begin_ = end_ = 0;
  const int n = co_await recv_some(buf_.get() + end_, kBufferSize - end_);
  if (n < 0) co_return n;
  end_ += size_t(n);
  co_return 0;
}

block::Task<int> Socket::receive() {
  // What is left is at most part of one request header: move it to the front, so that the
  // receive has the whole buffer.
  if (begin_ > 0) {
    std::memmove(buf_.get(), buf_.get() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  co_return co_await fill();
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
      const int n = co_await recv_some(out.data() + got, want);
      if (n < 0) co_return n;
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
  if (tls_) co_return co_await tls_send(std::move(iov));
  co_return co_await raw_send(std::move(iov));
}

block::Task<int> Socket::raw_send(std::vector<iovec> iov) {
  size_t first = 0;
  while (first < iov.size()) {
    msghdr msg{};
    msg.msg_iov = &iov[first];
    msg.msg_iovlen = std::min<size_t>(iov.size() - first, IOV_MAX);
    const int fd = fd_.get();
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

block::Task<int> Socket::send_tls_output() {
  // Taken out whole: what the session writes meanwhile (a key update answered while
  // receiving) goes into a fresh buffer and is sent next, in order.
  std::vector<uint8_t> data = tls_->take_output();
  if (data.empty()) co_return 0;
  // (Built apart: GCC 12 rejects a braced iovec list as a coroutine call's argument.)
  std::vector<iovec> iov(1);
  iov[0].iov_base = data.data();
  iov[0].iov_len = data.size();
  co_return co_await raw_send(std::move(iov));
}

block::Task<int> Socket::tls_send(std::vector<iovec> iov) {
  // Encrypted a slice at a time, so a 32 MiB reply never holds 32 MiB of ciphertext too.
  constexpr size_t kSlice = 256 * 1024;
  size_t i = 0, skip = 0;  // position: iov[i], `skip` bytes into it
  while (i < iov.size()) {
    std::vector<iovec> slice;
    size_t bytes = 0;
    while (i < iov.size() && bytes < kSlice) {
      const size_t take = std::min(iov[i].iov_len - skip, kSlice - bytes);
      slice.push_back({static_cast<uint8_t*>(iov[i].iov_base) + skip, take});
      bytes += take;
      skip += take;
      if (skip == iov[i].iov_len) {
        ++i;
        skip = 0;
      }
    }
    if (int rc = tls_->send(slice); rc < 0) {
      logf(LogLevel::kInfo, "%s", tls_->error().c_str());
      co_return rc;
    }
    if (int rc = co_await send_tls_output(); rc < 0) co_return rc;
  }
  co_return 0;
}

block::Task<int> Socket::start_tls(std::shared_ptr<const TlsCredentials> creds,
                                   std::string* error) {
  if (tls_) {
    *error = "TLS is already on";
    co_return -EINVAL;
  }
  if (buffered()) {
    *error = "the client sent data before the TLS handshake";
    co_return -EPROTO;
  }
  try {
    tls_ = std::make_unique<TlsSession>(std::move(creds));
  } catch (const std::exception& e) {
    *error = e.what();
    co_return -EPROTO;
  }
  for (;;) {
    const int rc = tls_->handshake();
    if (tls_->has_output())
      if (int s = co_await send_tls_output(); s < 0) co_return s;
    if (rc == 0) co_return 0;
    if (rc != TlsSession::kWantRead) {
      *error = tls_->error();
      co_return rc;
    }
    const std::span<uint8_t> space = tls_->input_space();
    const int n = co_await raw_recv(space.data(), space.size());
    if (n == -ECONNRESET) {
      tls_->input_eof();  // the handshake step reports the early end
      continue;
    }
    if (n < 0) co_return n;
    tls_->input_commit(size_t(n));
  }
}

block::Task<void> Socket::close_tls() {
  if (!tls_) co_return;
  tls_->bye();
  co_await send_tls_output();
}

}  // namespace kiln::nbd

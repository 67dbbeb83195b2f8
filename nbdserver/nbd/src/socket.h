// A connected socket driven through the reactor's io_uring: buffered reads (one recv fills
// many small requests), exact reads that bypass the buffer for large payloads, and gathered
// writes (many replies in one sendmsg). After start_tls() the same calls carry plaintext
// through a TLS session (tls.h), and only ciphertext crosses the socket.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kiln/block/reactor.h"
#include "kiln/common/fd.h"
#include "tls.h"

namespace kiln::nbd {

class Socket {
 public:
  Socket(block::Reactor& r, common::Fd fd);
  ~Socket();
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  int fd() const { return fd_.get(); }
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
  // Bytes already received but not consumed, and a view of them (valid until the next call
  // that receives). The request loop parses every request a receive brought from this view
  // without a coroutine call per request.
  size_t buffered() const { return end_ - begin_; }
  std::span<const uint8_t> pending() const { return {buf_.get() + begin_, end_ - begin_}; }
  void consume(size_t n) { begin_ += n; }
  // Receives once more into the buffer, behind what is not consumed yet. Returns 0,
  // -ECONNRESET at end of stream, or -errno.
  block::Task<int> receive();
  void shutdown_read();

  // Runs the server side of a TLS handshake on this socket; from then on every read and write
  // goes through the session. Returns 0, or -errno (-EPROTO: the reason is in `error`).
  // Nothing may be buffered when it starts (bytes sent before the handshake are plaintext a
  // man in the middle could have injected).
  block::Task<int> start_tls(std::shared_ptr<const TlsCredentials> creds, std::string* error);
  const TlsSession* tls() const { return tls_.get(); }
  // Sends TLS close_notify, if TLS is on. Best effort.
  block::Task<void> close_tls();

 private:
  block::Task<int> fill();
  // One receive into `p` (plain or through TLS): bytes (> 0), or -ECONNRESET, or -errno.
  block::Task<int> recv_some(uint8_t* p, size_t n);
  block::Task<int> raw_recv(uint8_t* p, size_t n);
  block::Task<int> raw_send(std::vector<iovec> iov);
  block::Task<int> tls_send(std::vector<iovec> iov);
  block::Task<int> send_tls_output();

  block::Reactor* r_;
  common::Fd fd_;
  std::unique_ptr<uint8_t[]> buf_;
  size_t begin_ = 0, end_ = 0;
  std::unique_ptr<TlsSession> tls_;
  static constexpr size_t kBufferSize = 128 * 1024;
};

}  // namespace kiln::nbd

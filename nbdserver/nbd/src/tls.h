// A TLS session (server side) that never touches the socket: GnuTLS pulls ciphertext from an
// input buffer that the Socket fills through io_uring, and pushes ciphertext into an output
// buffer that the Socket sends. Every call is synchronous and returns kWantRead when GnuTLS
// needs more bytes from the peer, so the Socket can await a receive and call again.
#pragma once

#include <gnutls/gnutls.h>
#include <sys/uio.h>

#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kiln/nbd/tls.h"

namespace kiln::nbd {

class TlsSession {
 public:
  static constexpr int kWantRead = -100000;  // distinct from every -errno

  explicit TlsSession(std::shared_ptr<const TlsCredentials> creds);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // Ciphertext received from the peer: receive into input_space(), then commit what came.
  std::span<uint8_t> input_space();
  void input_commit(size_t n) { in_end_ += n; }
  void input_eof() { eof_ = true; }
  // Ciphertext waiting to be sent.
  bool has_output() const { return !out_.empty(); }
  std::vector<uint8_t> take_output() { return std::exchange(out_, {}); }

  // One step of the handshake: 0 when it is complete, kWantRead, or -EPROTO (see error()).
  int handshake();
  // Decrypts into `buf`: bytes (> 0), 0 at the peer's close_notify or end of stream,
  // kWantRead, or -EPROTO.
  long recv(uint8_t* buf, size_t len);
  // Plaintext that GnuTLS has already decrypted and not yet handed out.
  bool has_pending_plaintext() const;
  // Encrypts all of `data` into the output buffer, small pieces packed into shared records.
  // Returns 0 or -EPROTO.
  int send(std::span<const iovec> data);
  // Sends close_notify (into the output buffer).
  void bye();

  const std::string& error() const { return error_; }
  // "TLS1.3, PSK identity 'alice'" or "TLS1.3, X.509": for the log.
  std::string describe() const;
  // The PSK identity the peer authenticated with ("" for X.509).
  std::string psk_identity() const;
  // Who the peer proved to be: its PSK identity, or with --tls-verify-peer the distinguished
  // name of its verified certificate (RFC 4514, "CN=client,O=Example"); "" if nobody. Fixed
  // once the handshake is done.
  const std::string& peer_identity() const { return identity_; }

 private:
  static ssize_t pull(gnutls_transport_ptr_t p, void* buf, size_t len);
  static ssize_t push(gnutls_transport_ptr_t p, const giovec_t* iov, int n);
  static int pull_timeout(gnutls_transport_ptr_t p, unsigned ms);
  int fail(int rc, const char* what);
  int record_send(const uint8_t* p, size_t len);
  std::string certificate_dn() const;

  std::shared_ptr<const TlsCredentials> creds_;
  gnutls_session_t s_ = nullptr;
  std::vector<uint8_t> in_;
  size_t in_begin_ = 0, in_end_ = 0;
  bool eof_ = false;
  std::vector<uint8_t> out_;
  std::vector<uint8_t> stage_;  // small pieces gathered into one record
  std::string error_;
  std::string identity_;
};

}  // namespace kiln::nbd

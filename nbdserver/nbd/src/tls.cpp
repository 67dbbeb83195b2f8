#include "tls.h"

#include <fcntl.h>
#include <gnutls/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "kiln/common/fd.h"
#include "log.h"

namespace kiln::nbd {

namespace {

// Limits on the PSK file: psktool writes one short line per identity.
constexpr size_t kMaxPskFileBytes = 1u << 20;
constexpr size_t kMaxPskIdentity = 255;  // what a TLS PSK identity may be (RFC 4279 allows 2^16,
                                         // GnuTLS itself keeps usernames this short)
constexpr size_t kMaxPskKeyBytes = 512;
// Ciphertext received at a time, and plaintext packed per batch of records.
constexpr size_t kInputChunk = 64 * 1024;
// TLS's largest record payload, and the ciphertext buffer reserved for a slice of replies.
constexpr size_t kMaxRecord = 16 * 1024;
constexpr size_t kOutputReserve = 320 * 1024;
// Cipher suites: GnuTLS's defaults, plus the PSK key exchanges when keys are pre-shared (what
// qemu and libnbd ask for). A TLS 1.3 external PSK is bound to SHA-256, which rules out
// AES-256-GCM-SHA384; left to the client's order the next choice is ChaCha20-Poly1305, several
// times slower than AES-128-GCM where the CPU has AES instructions (measured in
// bench/README.md): the server's order decides, with AES-GCM ahead of ChaCha20.
constexpr char kPskPriority[] =
    "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK:-CHACHA20-POLY1305:+CHACHA20-POLY1305:%SERVER_PRECEDENCE";

[[noreturn]] void fail_load(const std::string& what, int rc) {
  throw std::runtime_error(what + ": " + gnutls_strerror(rc));
}

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::map<std::string, std::vector<uint8_t>> read_psk_file(const std::string& path) {
  common::Fd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!file) throw std::runtime_error(path + ": " + strerror(errno));
  const int fd = file.get();
  struct stat st;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
    throw std::runtime_error(path + ": not a regular file");
  if (st.st_mode & (S_IRWXG | S_IRWXO))
    logf(LogLevel::kWarn, "%s: readable by others than its owner (keys should be 0600)",
         path.c_str());
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) != 0;) {
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(path + ": " + strerror(errno));
    }
    text.append(buf, size_t(n));
    if (text.size() > kMaxPskFileBytes)
      throw std::runtime_error(path + ": larger than 1 MiB, not a PSK file");
  }
  file.reset();

  std::map<std::string, std::vector<uint8_t>> keys;
  std::istringstream lines(text);
  std::string line;
  for (unsigned no = 1; std::getline(lines, line); ++no) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    const std::string where = path + ":" + std::to_string(no);
    const size_t colon = line.find(':');
    if (colon == std::string::npos || colon == 0)
      throw std::runtime_error(where + ": expected IDENTITY:HEXKEY");
    std::string identity = line.substr(0, colon);
    const std::string hex = line.substr(colon + 1);
    if (identity.size() > kMaxPskIdentity)
      throw std::runtime_error(where + ": identity longer than 255 bytes");
    if (hex.empty() || hex.size() % 2 || hex.size() / 2 > kMaxPskKeyBytes)
      throw std::runtime_error(where + ": the key must be an even number of hex digits");
    std::vector<uint8_t> key(hex.size() / 2);
    for (size_t i = 0; i < key.size(); ++i) {
      const int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
      if (hi < 0 || lo < 0) throw std::runtime_error(where + ": the key is not hexadecimal");
      key[i] = uint8_t(hi << 4 | lo);
    }
    if (!keys.emplace(std::move(identity), std::move(key)).second)
      throw std::runtime_error(where + ": identity listed twice");
  }
  if (keys.empty()) throw std::runtime_error(path + ": no keys");
  return keys;
}

}  // namespace

TlsMode parse_tls_mode(const std::string& text) {
  if (text == "off") return TlsMode::kOff;
  if (text == "on") return TlsMode::kOn;
  if (text == "require") return TlsMode::kRequire;
  throw std::invalid_argument("--tls must be off, on or require, not '" + text + "'");
}

std::shared_ptr<TlsCredentials> TlsCredentials::load(const TlsConfig& config) {
  if (!config.x509_dir.empty() && !config.psk_file.empty())
    throw std::runtime_error("--tls-creds and --tls-psk exclude each other");
  std::shared_ptr<TlsCredentials> c(new TlsCredentials);
  c->verify_peer_ = config.verify_peer;
  if (!config.psk_file.empty()) {
    if (config.verify_peer)
      throw std::runtime_error("--tls-verify-peer needs X.509 credentials (--tls-creds)");
    c->keys_ = read_psk_file(config.psk_file);
    if (int rc = gnutls_psk_allocate_server_credentials(&c->psk_); rc < 0)
      fail_load("PSK credentials", rc);
    gnutls_psk_set_server_credentials_function(c->psk_, &TlsCredentials::psk_lookup);
    if (int rc = gnutls_psk_set_server_known_dh_params(c->psk_, GNUTLS_SEC_PARAM_MEDIUM); rc < 0)
      fail_load("PSK DH parameters", rc);
    return c;
  }
  if (config.x509_dir.empty()) throw std::runtime_error("TLS needs --tls-creds or --tls-psk");

  const std::string dir = config.x509_dir;
  const std::string ca = dir + "/ca-cert.pem", crl = dir + "/ca-crl.pem";
  const std::string cert = dir + "/server-cert.pem", key = dir + "/server-key.pem";
  const std::string dh = dir + "/dh-params.pem";
  if (int rc = gnutls_certificate_allocate_credentials(&c->x509_); rc < 0)
    fail_load("X.509 credentials", rc);
  if (exists(ca)) {
    if (int rc = gnutls_certificate_set_x509_trust_file(c->x509_, ca.c_str(), GNUTLS_X509_FMT_PEM);
        rc < 0)
      fail_load(ca, rc);
  } else if (config.verify_peer) {
    throw std::runtime_error(ca + ": missing (--tls-verify-peer checks clients against it)");
  }
  if (exists(crl)) {
    if (int rc = gnutls_certificate_set_x509_crl_file(c->x509_, crl.c_str(), GNUTLS_X509_FMT_PEM);
        rc < 0)
      fail_load(crl, rc);
  }
  if (int rc = gnutls_certificate_set_x509_key_file(c->x509_, cert.c_str(), key.c_str(),
                                                    GNUTLS_X509_FMT_PEM);
      rc < 0)
    fail_load(cert + " / " + key, rc);
  if (exists(dh)) {
    gnutls_dh_params_t params;
    gnutls_dh_params_init(&params);
    std::ifstream in(dh);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string pem = ss.str();
    gnutls_datum_t d{reinterpret_cast<unsigned char*>(const_cast<char*>(pem.data())),
                     unsigned(pem.size())};
    int rc = gnutls_dh_params_import_pkcs3(params, &d, GNUTLS_X509_FMT_PEM);
    if (rc < 0) {
      gnutls_dh_params_deinit(params);
      fail_load(dh, rc);
    }
    // The credentials keep a copy of the parameters (GnuTLS >= 3.5.6).
    gnutls_certificate_set_dh_params(c->x509_, params);
    gnutls_dh_params_deinit(params);
  } else if (int rc = gnutls_certificate_set_known_dh_params(c->x509_, GNUTLS_SEC_PARAM_MEDIUM);
             rc < 0) {
    fail_load("X.509 DH parameters", rc);
  }
  return c;
}

TlsCredentials::~TlsCredentials() {
  if (x509_) gnutls_certificate_free_credentials(x509_);
  if (psk_) gnutls_psk_free_server_credentials(psk_);
}

int TlsCredentials::psk_lookup(gnutls_session_t s, const char* username, gnutls_datum_t* key) {
  auto* creds = static_cast<const TlsCredentials*>(gnutls_session_get_ptr(s));
  auto it = creds->keys_.find(username);
  if (it == creds->keys_.end()) {
    logf(LogLevel::kInfo, "TLS: unknown PSK identity '%s'", username);
    return -1;
  }
  key->data = static_cast<unsigned char*>(gnutls_malloc(it->second.size()));
  if (!key->data) return -1;
  std::memcpy(key->data, it->second.data(), it->second.size());
  key->size = unsigned(it->second.size());
  return 0;
}

TlsSession::TlsSession(std::shared_ptr<const TlsCredentials> creds) : creds_(std::move(creds)) {
  // No session tickets: resumption buys nothing for long-lived NBD connections, and a server
  // that never sends them never writes outside a reply.
  if (int rc = gnutls_init(&s_, GNUTLS_SERVER | GNUTLS_NO_TICKETS | GNUTLS_NONBLOCK); rc < 0)
    throw std::runtime_error(std::string("TLS: ") + gnutls_strerror(rc));
  gnutls_session_set_ptr(s_, const_cast<TlsCredentials*>(creds_.get()));
  int rc;
  if (creds_->psk_) {
    rc = gnutls_priority_set_direct(s_, kPskPriority, nullptr);
    if (rc >= 0) rc = gnutls_credentials_set(s_, GNUTLS_CRD_PSK, creds_->psk_);
  } else {
    rc = gnutls_set_default_priority(s_);
    if (rc >= 0) rc = gnutls_credentials_set(s_, GNUTLS_CRD_CERTIFICATE, creds_->x509_);
    if (rc >= 0 && creds_->verify_peer_)
      gnutls_certificate_server_set_request(s_, GNUTLS_CERT_REQUIRE);
  }
  if (rc < 0) {
    gnutls_deinit(s_);
    throw std::runtime_error(std::string("TLS: ") + gnutls_strerror(rc));
  }
  gnutls_transport_set_ptr(s_, this);
  gnutls_transport_set_pull_function(s_, &TlsSession::pull);
  gnutls_transport_set_vec_push_function(s_, &TlsSession::push);
  gnutls_transport_set_pull_timeout_function(s_, &TlsSession::pull_timeout);
}

TlsSession::~TlsSession() { gnutls_deinit(s_); }

std::span<uint8_t> TlsSession::input_space() {
  if (in_begin_ == in_end_) in_begin_ = in_end_ = 0;
  if (in_.size() - in_end_ < kInputChunk / 4) {
    // Move what is left to the front; grow only when that is not enough.
    if (in_begin_ > 0) std::memmove(in_.data(), in_.data() + in_begin_, in_end_ - in_begin_);
    in_end_ -= in_begin_;
    in_begin_ = 0;
    if (in_.size() - in_end_ < kInputChunk / 4) in_.resize(in_end_ + kInputChunk);
  }
  return {in_.data() + in_end_, in_.size() - in_end_};
}

ssize_t TlsSession::pull(gnutls_transport_ptr_t p, void* buf, size_t len) {
  auto* t = static_cast<TlsSession*>(p);
  if (t->in_begin_ == t->in_end_) {
    if (t->eof_) return 0;
    gnutls_transport_set_errno(t->s_, EAGAIN);
    return -1;
  }
  const size_t n = std::min(len, t->in_end_ - t->in_begin_);
  std::memcpy(buf, t->in_.data() + t->in_begin_, n);
  t->in_begin_ += n;
  return ssize_t(n);
}

ssize_t TlsSession::push(gnutls_transport_ptr_t p, const giovec_t* iov, int n) {
  auto* t = static_cast<TlsSession*>(p);
  size_t total = 0;
  for (int i = 0; i < n; ++i) {
    const auto* b = static_cast<const uint8_t*>(iov[i].iov_base);
    t->out_.insert(t->out_.end(), b, b + iov[i].iov_len);
    total += iov[i].iov_len;
  }
  return ssize_t(total);
}

int TlsSession::pull_timeout(gnutls_transport_ptr_t p, unsigned) {
  auto* t = static_cast<TlsSession*>(p);
  if (t->in_begin_ < t->in_end_ || t->eof_) return 1;
  gnutls_transport_set_errno(t->s_, EAGAIN);
  return 0;
}

int TlsSession::fail(int rc, const char* what) {
  error_ = std::string(what) + ": " + gnutls_strerror(rc);
  return -EPROTO;
}

int TlsSession::handshake() {
  for (;;) {
    const int rc = gnutls_handshake(s_);
    if (rc == GNUTLS_E_SUCCESS) break;
    if (rc == GNUTLS_E_AGAIN) return kWantRead;
    if (rc == GNUTLS_E_INTERRUPTED || !gnutls_error_is_fatal(rc)) continue;
    return fail(rc, "TLS handshake");
  }
  if (creds_->psk_) identity_ = psk_identity();
  if (creds_->verify_peer_) {
    unsigned status = 0;
    if (int rc = gnutls_certificate_verify_peers2(s_, &status); rc < 0)
      return fail(rc, "client certificate");
    if (status) {
      gnutls_datum_t text{};
      gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &text, 0);
      error_ = "client certificate rejected: " +
               std::string(text.data ? reinterpret_cast<char*>(text.data) : "invalid");
      gnutls_free(text.data);
      return -EPROTO;
    }
    identity_ = certificate_dn();
    if (identity_.empty()) {
      error_ = "client certificate: no distinguished name";
      return -EPROTO;
    }
  }
  return 0;
}

std::string TlsSession::certificate_dn() const {
  unsigned count = 0;
  const gnutls_datum_t* chain = gnutls_certificate_get_peers(s_, &count);
  if (!chain || count == 0) return {};
  gnutls_x509_crt_t crt;
  if (gnutls_x509_crt_init(&crt) < 0) return {};
  std::string out;
  gnutls_datum_t dn{};
  if (gnutls_x509_crt_import(crt, &chain[0], GNUTLS_X509_FMT_DER) >= 0 &&
      gnutls_x509_crt_get_dn3(crt, &dn, 0) >= 0) {
    out.assign(reinterpret_cast<const char*>(dn.data), dn.size);
    gnutls_free(dn.data);
  }
  gnutls_x509_crt_deinit(crt);
  return out;
}

long TlsSession::recv(uint8_t* buf, size_t len) {
  for (;;) {
    const ssize_t rc = gnutls_record_recv(s_, buf, len);
    if (rc >= 0) return long(rc);
    if (rc == GNUTLS_E_AGAIN) return kWantRead;
    if (rc == GNUTLS_E_INTERRUPTED) continue;
    // A peer that closes without close_notify ends the stream like any other close.
    if (rc == GNUTLS_E_PREMATURE_TERMINATION) return 0;
    // A TLS 1.2 renegotiation request is declined by ignoring it; other warnings too.
    if (!gnutls_error_is_fatal(int(rc))) continue;
    return fail(int(rc), "TLS receive");
  }
}

bool TlsSession::has_pending_plaintext() const { return gnutls_record_check_pending(s_) > 0; }

int TlsSession::record_send(const uint8_t* p, size_t len) {
  while (len > 0) {
    const ssize_t n = gnutls_record_send(s_, p, len);
    if (n == GNUTLS_E_INTERRUPTED || n == GNUTLS_E_AGAIN) continue;
    if (n < 0) return fail(int(n), "TLS send");
    p += n;
    len -= size_t(n);
  }
  return 0;
}

int TlsSession::send(std::span<const iovec> data) {
  // Small pieces (reply headers, 4 KiB reads) are gathered so that replies share records
  // instead of costing a record and an AEAD tag each; large ones are encrypted from where
  // they are, without a copy.
  if (out_.capacity() == 0) out_.reserve(kOutputReserve);
  std::vector<uint8_t>& stage = stage_;
  stage.clear();
  for (const iovec& v : data) {
    const auto* p = static_cast<const uint8_t*>(v.iov_base);
    if (v.iov_len < kMaxRecord && stage.size() + v.iov_len <= kMaxRecord) {
      stage.insert(stage.end(), p, p + v.iov_len);
      continue;
    }
    if (!stage.empty()) {
      if (int rc = record_send(stage.data(), stage.size()); rc < 0) return rc;
      stage.clear();
    }
    if (v.iov_len < kMaxRecord) {
      stage.insert(stage.end(), p, p + v.iov_len);
    } else if (int rc = record_send(p, v.iov_len); rc < 0) {
      return rc;
    }
  }
  if (!stage.empty()) return record_send(stage.data(), stage.size());
  return 0;
}

void TlsSession::bye() { gnutls_bye(s_, GNUTLS_SHUT_WR); }

std::string TlsSession::describe() const {
  char* desc = gnutls_session_get_desc(s_);  // e.g. "(TLS1.3-X.509)-(ECDHE-SECP256R1)-..."
  std::string out = desc ? desc : "TLS";
  gnutls_free(desc);
  if (creds_->psk_) return out + ", PSK identity '" + psk_identity() + "'";
  return out + (creds_->verify_peer_ ? ", client certificate '" + identity_ + "'" : "");
}

std::string TlsSession::psk_identity() const {
  if (!creds_->psk_) return {};
  const char* u = gnutls_psk_server_get_username(s_);
  return u ? u : "";
}

}  // namespace kiln::nbd

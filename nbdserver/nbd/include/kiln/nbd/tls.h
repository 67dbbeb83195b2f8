// TLS for NBD: the modes and the server's credentials (loaded once, before serving; shared
// by every session). Credentials come from X.509 files in a directory with qemu's file names
// (server-cert.pem, server-key.pem, and ca-cert.pem, ca-crl.pem, dh-params.pem when present),
// or from pre-shared keys in psktool's format ("identity:hexkey" lines, what nbdkit and qemu's
// tls-creds-psk read). The PSK file is parsed into memory so that a handshake never reads a
// file on a reactor thread. The sessions themselves are in src/tls.h.
#pragma once

#include <gnutls/gnutls.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace kiln::nbd {

enum class TlsMode {
  kOff,      // NBD_OPT_STARTTLS is refused
  kOn,       // clients may upgrade; plain clients are served too
  kRequire,  // every option but STARTTLS and ABORT waits for TLS (qemu-nbd's behaviour)
};

struct TlsConfig {
  TlsMode mode = TlsMode::kOff;
  std::string x509_dir;      // --tls-creds
  std::string psk_file;      // --tls-psk
  bool verify_peer = false;  // X.509: require a client certificate signed by ca-cert.pem
};

// Parses "off", "on" or "require". Throws std::invalid_argument.
TlsMode parse_tls_mode(const std::string& text);

class TlsCredentials {
 public:
  // Loads and checks the credentials. Throws std::runtime_error naming the file at fault.
  static std::shared_ptr<TlsCredentials> load(const TlsConfig& config);
  ~TlsCredentials();
  TlsCredentials(const TlsCredentials&) = delete;
  TlsCredentials& operator=(const TlsCredentials&) = delete;

  bool psk() const { return psk_ != nullptr; }
  bool verify_peer() const { return verify_peer_; }

 private:
  friend class TlsSession;
  TlsCredentials() = default;
  static int psk_lookup(gnutls_session_t s, const char* username, gnutls_datum_t* key);

  gnutls_certificate_credentials_t x509_ = nullptr;
  gnutls_psk_server_credentials_t psk_ = nullptr;
  std::map<std::string, std::vector<uint8_t>> keys_;  // PSK identity -> key
  bool verify_peer_ = false;
};

}  // namespace kiln::nbd

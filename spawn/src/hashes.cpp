#include "hashes.h"

#include <gnutls/crypto.h>
#include <xxhash.h>

#include <algorithm>
#include <cctype>

#include "kiln/spawn/error.h"

namespace kiln::spawn {

namespace {

std::string to_hex(const unsigned char* p, size_t n) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    out += kHex[p[i] >> 4];
    out += kHex[p[i] & 15];
  }
  return out;
}

// One running digest (GnuTLS, already kiln-nbd's TLS library).
class Digest {
 public:
  explicit Digest(gnutls_digest_algorithm_t algo) : algo_(algo) {
    if (gnutls_hash_init(&h_, algo) < 0) throw system_error("cannot start a message digest");
  }
  ~Digest() {
    if (h_) gnutls_hash_deinit(h_, nullptr);
  }
  Digest(const Digest&) = delete;
  Digest& operator=(const Digest&) = delete;
  void update(const void* p, size_t n) {
    if (gnutls_hash(h_, p, n) < 0) throw system_error("message digest update failed");
  }
  std::string hex() {
    unsigned char md[64];
    unsigned len = gnutls_hash_get_len(algo_);
    if (len == 0 || len > sizeof md) throw system_error("unexpected digest length");
    gnutls_hash_deinit(h_, md);
    h_ = nullptr;
    return to_hex(md, len);
  }

 private:
  gnutls_digest_algorithm_t algo_;
  gnutls_hash_hd_t h_ = nullptr;
};

}  // namespace

struct ImageHashes::State {
  XXH3_state_t* xxh = XXH3_createState();
  Digest md5{GNUTLS_DIG_MD5}, sha256{GNUTLS_DIG_SHA256}, sha512{GNUTLS_DIG_SHA512};
  State() {
    if (!xxh) throw system_error("out of memory");
    XXH3_128bits_reset(xxh);
  }
  ~State() { XXH3_freeState(xxh); }
  State(const State&) = delete;
  State& operator=(const State&) = delete;
};

ImageHashes::ImageHashes() : st_(std::make_unique<State>()) {}
ImageHashes::~ImageHashes() = default;

void ImageHashes::update(const void* data, size_t n) {
  XXH3_128bits_update(st_->xxh, data, n);
  st_->md5.update(data, n);
  st_->sha256.update(data, n);
  st_->sha512.update(data, n);
}

void ImageHashes::finish() {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st_->xxh));
  xxh3_ = to_hex(c.digest, sizeof c.digest);
  md5_ = st_->md5.hex();
  sha256_ = st_->sha256.hex();
  sha512_ = st_->sha512.hex();
}

ExpectedChecksum parse_checksum(const std::string& text) {
  if (text.empty()) return {};
  auto colon = text.find(':');
  if (colon == std::string::npos)
    throw invalid("--checksum must be sha256:HEX or md5:HEX, not '" + text + "'");
  ExpectedChecksum c{text.substr(0, colon), text.substr(colon + 1)};
  size_t want_len = c.algo == "sha256" ? 64 : c.algo == "md5" ? 32 : 0;
  if (!want_len) throw invalid("--checksum algorithm must be sha256 or md5, not '" + c.algo + "'");
  std::transform(c.hex.begin(), c.hex.end(), c.hex.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  bool hex = std::all_of(c.hex.begin(), c.hex.end(),
                         [](unsigned char ch) { return std::isxdigit(ch) != 0; });
  if (c.hex.size() != want_len || !hex)
    throw invalid("--checksum " + c.algo + " needs " + std::to_string(want_len) +
                  " hexadecimal digits");
  return c;
}

void verify_checksum(const ExpectedChecksum& want, const ImageHashes& h) {
  if (want.algo.empty()) return;
  const std::string& got = want.algo == "sha256" ? h.sha256() : h.md5();
  if (got != want.hex)
    throw invalid("checksum mismatch: expected " + want.algo + ":" + want.hex + ", got " +
                  want.algo + ":" + got + "; nothing was stored");
}

}  // namespace kiln::spawn

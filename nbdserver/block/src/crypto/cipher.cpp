#include "crypto/cipher.h"

// libcrypto and Nettle are loaded on first use: only LUKS images need them, and loading
// libcrypto costs every kiln-img, kiln-io, kiln-fs and kiln-nbd process about 2.4 ms at start
// (docs/common.md).
#include <nettle/pbkdf2.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <string.h>
// Nettle names its functions through macros (pbkdf2 -> nettle_pbkdf2), and ours is called
// pbkdf2 too; in a unity build the macros would also reach the files compiled after this one.
// The real names are used below.
#undef pbkdf2
#undef pbkdf2_hmac_sha1
#undef pbkdf2_hmac_sha256
#undef pbkdf2_hmac_sha384
#undef pbkdf2_hmac_sha512
#undef pbkdf2_hmac_gosthash94cp

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "kiln/block/device.h"
#include "kiln/common/random.h"
#include "kiln/common/shared_library.h"

namespace kiln::block::crypto {

namespace {

#define KILN_STRINGIFY2(x) #x
#define KILN_STRINGIFY(x) KILN_STRINGIFY2(x)
// The soname of the libcrypto whose headers we build with ("libcrypto.so.3").
constexpr const char* kLibcrypto = "libcrypto.so." KILN_STRINGIFY(OPENSSL_SHLIB_VERSION);

// clang-format off
#define KILN_LIBCRYPTO_FUNCTIONS(X) \
  X(EVP_CIPHER_CTX_new) X(EVP_CIPHER_CTX_free) X(EVP_CipherInit_ex) X(EVP_CipherUpdate) \
  X(EVP_aes_128_xts) X(EVP_aes_256_xts) \
  X(EVP_sha1) X(EVP_sha256) X(EVP_sha512) X(EVP_MD_get_size) \
  X(EVP_MD_CTX_new) X(EVP_MD_CTX_free) \
  X(EVP_DigestInit_ex) X(EVP_DigestUpdate) X(EVP_DigestFinal_ex)
// clang-format on

// PBKDF2 comes from Nettle (GnuTLS's, and so QEMU's), not from libcrypto: OpenSSL 3's
// PKCS5_PBKDF2_HMAC copies its HMAC contexts, with a malloc and a free each, at every iteration.
// It is half as fast (PBKDF2-HMAC-SHA256 on the 2-core machine: 3.6k against 6.4k iterations per
// ms), and under AddressSanitizer, whose allocator is slow, 30 times slower (130 against 3300 to
// 5300): every open of a LUKS image that qemu-img made took a sanitizer build a quarter of a
// second instead of 10 ms. Nettle itself, not GnuTLS's gnutls_pbkdf2: GnuTLS has thread-local
// variables, and loaded by dlopen() after the reactor's threads started, they crashed
// LeakSanitizer's scan at exit (clang 14). The soname of Nettle's ABI since 3.6.
constexpr const char* kLibnettle = "libnettle.so.8";

// clang-format off
#define KILN_NETTLE_FUNCTIONS(X) \
  X(nettle_pbkdf2_hmac_sha1) X(nettle_pbkdf2_hmac_sha256) X(nettle_pbkdf2_hmac_sha512)
// clang-format on

// What LUKS needs of both libraries: a LUKS open or create uses both.
struct Api {
#define KILN_CRYPTO_DECLARE(name) decltype(&::name) name = nullptr;
  KILN_LIBCRYPTO_FUNCTIONS(KILN_CRYPTO_DECLARE)
  KILN_NETTLE_FUNCTIONS(KILN_CRYPTO_DECLARE)
#undef KILN_CRYPTO_DECLARE
};

// Resolved once (a function-local static: thread-safe); the libraries stay loaded. Throws
// block::Error(ENOTSUP) if either cannot be loaded.
const Api& api() {
  static const std::pair<Api, std::string> loaded = [] {
    std::pair<Api, std::string> out;
    common::SharedLibrary ssl(kLibcrypto, "OpenSSL's libcrypto (package libssl3)");
    common::SharedLibrary nettle(kLibnettle, "Nettle (package libnettle8)");
#define KILN_CRYPTO_RESOLVE_SSL(name) ssl.resolve(out.first.name, #name);
#define KILN_CRYPTO_RESOLVE_NETTLE(name) nettle.resolve(out.first.name, #name);
    KILN_LIBCRYPTO_FUNCTIONS(KILN_CRYPTO_RESOLVE_SSL)
    KILN_NETTLE_FUNCTIONS(KILN_CRYPTO_RESOLVE_NETTLE)
#undef KILN_CRYPTO_RESOLVE_NETTLE
#undef KILN_CRYPTO_RESOLVE_SSL
    out.second = !ssl.error().empty() ? ssl.error() : nettle.error();
    return out;
  }();
  if (!loaded.second.empty())
    throw Error(common::Reason::kUnsupported, ENOTSUP, "LUKS encryption needs " + loaded.second);
  return loaded.first;
}

}  // namespace

struct SectorCipher::Ctx {
  EVP_CIPHER_CTX* ctx = api().EVP_CIPHER_CTX_new();
  ~Ctx() { api().EVP_CIPHER_CTX_free(ctx); }
};

namespace {

const EVP_CIPHER* xts_for(size_t key_bytes) {
  switch (key_bytes) {
    case 32:
      return api().EVP_aes_128_xts();
    case 64:
      return api().EVP_aes_256_xts();
    default:
      return nullptr;  // OpenSSL has no AES-192-XTS; 48-byte keys are refused by the caller
  }
}

const EVP_MD* md_for(std::string_view hash) {
  if (hash == "sha1") return api().EVP_sha1();
  if (hash == "sha256") return api().EVP_sha256();
  if (hash == "sha512") return api().EVP_sha512();
  return nullptr;
}

}  // namespace

std::unique_ptr<SectorCipher> SectorCipher::make(std::span<const uint8_t> key) {
  const EVP_CIPHER* c = xts_for(key.size());
  if (!c) return nullptr;
  std::unique_ptr<SectorCipher> s(new SectorCipher);
  s->enc_ = std::make_unique<Ctx>();
  s->dec_ = std::make_unique<Ctx>();
  if (!s->enc_->ctx || !s->dec_->ctx) return nullptr;
  if (api().EVP_CipherInit_ex(s->enc_->ctx, c, nullptr, key.data(), nullptr, 1) != 1 ||
      api().EVP_CipherInit_ex(s->dec_->ctx, c, nullptr, key.data(), nullptr, 0) != 1)
    return nullptr;  // e.g. XTS with two equal halves
  return s;
}

SectorCipher::~SectorCipher() = default;

int SectorCipher::crypt(uint64_t sector, const uint8_t* in, uint8_t* out, size_t len, int enc) {
  if (len % kSectorSize) return -EINVAL;
  const Api& lib = api();
  EVP_CIPHER_CTX* ctx = enc ? enc_->ctx : dec_->ctx;
  uint8_t iv[16] = {};
  for (size_t done = 0; done < len; done += kSectorSize, ++sector) {
    for (int i = 0; i < 8; ++i) iv[i] = uint8_t(sector >> (8 * i));  // plain64: little-endian
    int outl = 0;
    if (lib.EVP_CipherInit_ex(ctx, nullptr, nullptr, nullptr, iv, -1) != 1 ||
        lib.EVP_CipherUpdate(ctx, out + done, &outl, in + done, int(kSectorSize)) != 1 ||
        outl != int(kSectorSize))
      return -EIO;
  }
  return 0;
}

int SectorCipher::run(uint64_t sector, std::span<uint8_t> buf, int enc) {
  return crypt(sector, buf.data(), buf.data(), buf.size(), enc);
}

int SectorCipher::encrypt_to(uint64_t sector, std::span<const uint8_t> in, uint8_t* out) {
  return crypt(sector, in.data(), out, in.size(), 1);
}

size_t hash_size(std::string_view hash) {
  const EVP_MD* md = md_for(hash);
  return md ? size_t(api().EVP_MD_get_size(md)) : 0;
}

bool pbkdf2(std::string_view hash, std::span<const uint8_t> pass, std::span<const uint8_t> salt,
            uint32_t iterations, std::span<uint8_t> out) {
  // Nettle asserts (aborts) on zero iterations or an empty output.
  if (iterations == 0 || iterations > uint32_t(INT32_MAX) || out.empty()) return false;
  const Api& lib = api();
  decltype(lib.nettle_pbkdf2_hmac_sha256) fn = nullptr;
  if (hash == "sha1")
    fn = lib.nettle_pbkdf2_hmac_sha1;
  else if (hash == "sha256")
    fn = lib.nettle_pbkdf2_hmac_sha256;
  else if (hash == "sha512")
    fn = lib.nettle_pbkdf2_hmac_sha512;
  else
    return false;
  fn(pass.size(), pass.data(), iterations, salt.size(), salt.data(), out.size(), out.data());
  return true;
}

bool digest2(std::string_view hash, std::span<const uint8_t> a, std::span<const uint8_t> b,
             uint8_t* out) {
  const EVP_MD* md = md_for(hash);
  if (!md) return false;
  const Api& lib = api();
  EVP_MD_CTX* ctx = lib.EVP_MD_CTX_new();
  if (!ctx) return false;
  const bool ok = lib.EVP_DigestInit_ex(ctx, md, nullptr) == 1 &&
                  lib.EVP_DigestUpdate(ctx, a.data(), a.size()) == 1 &&
                  lib.EVP_DigestUpdate(ctx, b.data(), b.size()) == 1 &&
                  lib.EVP_DigestFinal_ex(ctx, out, nullptr) == 1;
  lib.EVP_MD_CTX_free(ctx);
  return ok;
}

void random_bytes(std::span<uint8_t> out) {
  try {
    common::random_bytes(out.data(), out.size());
  } catch (const common::Error& e) {  // as block::Error, which the block layer's callers catch
    throw Error(e.error_number() ? e.error_number() : EIO, e.what());
  }
}

void wipe(void* p, size_t n) { explicit_bzero(p, n); }

}  // namespace kiln::block::crypto

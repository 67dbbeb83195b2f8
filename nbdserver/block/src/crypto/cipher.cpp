#include "crypto/cipher.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <cerrno>
#include <cstring>

#include "kiln/block/device.h"

namespace kiln::block::crypto {

struct SectorCipher::Ctx {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  ~Ctx() { EVP_CIPHER_CTX_free(ctx); }
};

namespace {

const EVP_CIPHER* xts_for(size_t key_bytes) {
  switch (key_bytes) {
    case 32:
      return EVP_aes_128_xts();
    case 64:
      return EVP_aes_256_xts();
    default:
      return nullptr;  // OpenSSL has no AES-192-XTS; 48-byte keys are refused by the caller
  }
}

const EVP_MD* md_for(std::string_view hash) {
  if (hash == "sha1") return EVP_sha1();
  if (hash == "sha256") return EVP_sha256();
  if (hash == "sha512") return EVP_sha512();
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
  if (EVP_CipherInit_ex(s->enc_->ctx, c, nullptr, key.data(), nullptr, 1) != 1 ||
      EVP_CipherInit_ex(s->dec_->ctx, c, nullptr, key.data(), nullptr, 0) != 1)
    return nullptr;  // e.g. XTS with two equal halves
  return s;
}

SectorCipher::~SectorCipher() = default;

int SectorCipher::crypt(uint64_t sector, const uint8_t* in, uint8_t* out, size_t len, int enc) {
  if (len % kSectorSize) return -EINVAL;
  EVP_CIPHER_CTX* ctx = enc ? enc_->ctx : dec_->ctx;
  uint8_t iv[16] = {};
  for (size_t done = 0; done < len; done += kSectorSize, ++sector) {
    for (int i = 0; i < 8; ++i) iv[i] = uint8_t(sector >> (8 * i));  // plain64: little-endian
    int outl = 0;
    if (EVP_CipherInit_ex(ctx, nullptr, nullptr, nullptr, iv, -1) != 1 ||
        EVP_CipherUpdate(ctx, out + done, &outl, in + done, int(kSectorSize)) != 1 ||
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
  return md ? size_t(EVP_MD_get_size(md)) : 0;
}

bool pbkdf2(std::string_view hash, std::span<const uint8_t> pass, std::span<const uint8_t> salt,
            uint32_t iterations, std::span<uint8_t> out) {
  const EVP_MD* md = md_for(hash);
  if (!md || iterations == 0 || iterations > uint32_t(INT32_MAX)) return false;
  return PKCS5_PBKDF2_HMAC(reinterpret_cast<const char*>(pass.data()), int(pass.size()),
                           salt.data(), int(salt.size()), int(iterations), md, int(out.size()),
                           out.data()) == 1;
}

bool digest2(std::string_view hash, std::span<const uint8_t> a, std::span<const uint8_t> b,
             uint8_t* out) {
  const EVP_MD* md = md_for(hash);
  if (!md) return false;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (!ctx) return false;
  const bool ok =
      EVP_DigestInit_ex(ctx, md, nullptr) == 1 && EVP_DigestUpdate(ctx, a.data(), a.size()) == 1 &&
      EVP_DigestUpdate(ctx, b.data(), b.size()) == 1 && EVP_DigestFinal_ex(ctx, out, nullptr) == 1;
  EVP_MD_CTX_free(ctx);
  return ok;
}

void random_bytes(std::span<uint8_t> out) {
  if (RAND_bytes(out.data(), int(out.size())) != 1)
    throw Error(EIO, "cannot get random bytes from OpenSSL");
}

void wipe(void* p, size_t n) { OPENSSL_cleanse(p, n); }

}  // namespace kiln::block::crypto

// The cryptographic primitives the LUKS code needs, from OpenSSL's libcrypto and, for PBKDF2,
// Nettle (nothing here implements a primitive): AES-XTS over 512-byte sectors with plain64 IVs,
// PBKDF2-HMAC and one-shot hashes; random bytes come from the kernel (getrandom). Both libraries
// are loaded on first use: a function that needs one throws block::Error(ENOTSUP) if it cannot
// be loaded. Algorithm names come from the LUKS allow list (luks.h); a name that is not on it
// never reaches a library.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace kiln::block::crypto {

constexpr size_t kSectorSize = 512;  // LUKS1 sectors: the unit of the plain64 IV

// AES-XTS with a plain64 IV: sector n is encrypted with the tweak n (little-endian, 16 bytes).
// One instance per image, used by one reactor thread (an OpenSSL context is not shareable).
class SectorCipher {
 public:
  // `key` is the XTS key (two AES keys): 32, 48 or 64 bytes for aes-128/192/256.
  // Returns nullptr if OpenSSL refuses the key (for XTS: two identical halves).
  static std::unique_ptr<SectorCipher> make(std::span<const uint8_t> key);
  ~SectorCipher();
  SectorCipher(const SectorCipher&) = delete;
  SectorCipher& operator=(const SectorCipher&) = delete;

  // In place. `buf` is a whole number of sectors; `first_sector` is the IV of its first one.
  // Returns 0 or -EIO.
  int encrypt(uint64_t first_sector, std::span<uint8_t> buf) { return run(first_sector, buf, 1); }
  int decrypt(uint64_t first_sector, std::span<uint8_t> buf) { return run(first_sector, buf, 0); }
  // Out of place: `out` gets the ciphertext of `in` (same size, whole sectors).
  int encrypt_to(uint64_t first_sector, std::span<const uint8_t> in, uint8_t* out);

 private:
  SectorCipher() = default;
  int run(uint64_t first_sector, std::span<uint8_t> buf, int enc);
  int crypt(uint64_t first_sector, const uint8_t* in, uint8_t* out, size_t len, int enc);
  struct Ctx;
  std::unique_ptr<Ctx> enc_, dec_;
};

// Digest size of a hash on the allow list ("sha1", "sha256", "sha512"), or 0 if unknown.
size_t hash_size(std::string_view hash);
// PBKDF2-HMAC-`hash` (Nettle's: see cipher.cpp). Returns false for a hash not on the allow
// list, zero iterations or an empty output.
bool pbkdf2(std::string_view hash, std::span<const uint8_t> pass, std::span<const uint8_t> salt,
            uint32_t iterations, std::span<uint8_t> out);
// One-shot digest of the concatenation of `a` and `b` into `out` (hash_size bytes).
bool digest2(std::string_view hash, std::span<const uint8_t> a, std::span<const uint8_t> b,
             uint8_t* out);
// Cryptographically strong random bytes (getrandom). Throws block::Error if it fails.
void random_bytes(std::span<uint8_t> out);
// Wipes key material (not optimised away).
void wipe(void* p, size_t n);

}  // namespace kiln::block::crypto

// The digests an image is recorded with, computed in one pass over its bytes:
//   XXH3-128  kiln's own content key (the base cache is named by it)
//   MD5       Glance's `checksum`
//   SHA-512   Glance's `os_hash_value` (os_hash_algo sha512)
//   SHA-256   only to verify a --checksum sha256:HEX the user gave
// The cryptographic ones come from GnuTLS (kiln's one crypto library), never from our own code.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace kiln::spawn {

class ImageHashes {
 public:
  ImageHashes();
  ~ImageHashes();
  ImageHashes(const ImageHashes&) = delete;
  ImageHashes& operator=(const ImageHashes&) = delete;

  void update(const void* data, size_t n);
  // Call once, after the last update(). Lowercase hex digests.
  void finish();
  const std::string& xxh3() const { return xxh3_; }
  const std::string& md5() const { return md5_; }
  const std::string& sha256() const { return sha256_; }
  const std::string& sha512() const { return sha512_; }

 private:
  struct State;
  std::unique_ptr<State> st_;
  std::string xxh3_, md5_, sha256_, sha512_;
};

// An expected digest from --checksum ALGO:HEX (sha256 or md5).
struct ExpectedChecksum {
  std::string algo;  // "sha256", "md5", or empty: none given
  std::string hex;   // lowercase
};

// Parses "sha256:HEX" or "md5:HEX" (hex of the right length, either case). Empty text gives an
// empty ExpectedChecksum. Throws Error(kInvalidArgument) naming the problem.
ExpectedChecksum parse_checksum(const std::string& text);

// Throws Error(kInvalidArgument) "checksum mismatch: ..." unless `h` matches `want`.
void verify_checksum(const ExpectedChecksum& want, const ImageHashes& h);

}  // namespace kiln::spawn

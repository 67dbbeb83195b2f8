// PBKDF2-HMAC (crypto/cipher.h, Nettle's) against the published test vectors of RFC 6070
// (SHA-1) and RFC 7914 section 11 (SHA-256), and SHA-512 and an empty passphrase against
// Python's hashlib.pbkdf2_hmac: LUKS images of QEMU and cryptsetup open only if every byte
// agrees.
#include <gtest/gtest.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "crypto/cipher.h"

using namespace kiln::block::crypto;

namespace {

std::span<const uint8_t> pass_bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string to_hex(const std::vector<uint8_t>& v) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : v) {
    out += kDigits[b >> 4];
    out += kDigits[b & 15];
  }
  return out;
}

std::string derive_hex(std::string_view hash, std::string_view pass, std::string_view salt,
                       uint32_t iterations, size_t out_bytes) {
  std::vector<uint8_t> out(out_bytes, 0xAA);
  if (!pbkdf2(hash, pass_bytes(pass), pass_bytes(salt), iterations, out)) return "failed";
  return to_hex(out);
}

}  // namespace

TEST(LuksPbkdf2, PublishedVectors) {
  EXPECT_EQ(derive_hex("sha1", "password", "salt", 1, 20),
            "0c60c80f961f0e71f3a9b524af6012062fe037a6");
  EXPECT_EQ(derive_hex("sha1", "password", "salt", 4096, 20),
            "4b007901b765489abead49d926f721d065a429c1");
  EXPECT_EQ(derive_hex("sha1", "passwordPASSWORDpassword", "saltSALTsaltSALTsaltSALTsaltSALTsalt",
                       4096, 25),
            "3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038");
  EXPECT_EQ(derive_hex("sha256", "passwd", "salt", 1, 64),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
            "49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783");
  EXPECT_EQ(derive_hex("sha256", "Password", "NaCl", 80000, 64),
            "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56"
            "a1d425a1225833549adb841b51c9b3176a272bdebba1d078478f62b397f33c8d");
}

TEST(LuksPbkdf2, Sha512AndAnEmptyPassphrase) {
  EXPECT_EQ(derive_hex("sha512", "correct horse battery staple", std::string(32, '\0'), 1000, 64),
            "af14bc4b88c66abffc044a332d4f0d8901b51c77be77b0a85d1abcdb1d48e9e8"
            "df390fe264c3c0c0d3c65f04399aa87aba2d3f4277ffd30f94f289099129ed23");
  EXPECT_EQ(derive_hex("sha256", "", "salt", 2, 32),
            "62384466264daadc4144018c6bd864648272b34da8980d31521ffcce92ae003b");
}

TEST(LuksPbkdf2, RefusesWhatIsNotOnTheAllowList) {
  EXPECT_EQ(derive_hex("md5", "password", "salt", 1, 16), "failed");
  EXPECT_EQ(derive_hex("sha256", "password", "salt", 0, 32), "failed");
  EXPECT_EQ(derive_hex("sha256", "password", "salt", 0x80000000u, 32), "failed");
}

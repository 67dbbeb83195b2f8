// LUKS1 headers as QEMU keeps them inside a qcow2 file (the full disk encryption header
// extension points at them): the on-disk layout, validation with a limit on every field,
// unlocking a key slot with a passphrase, and making a new header for `create`.
//
// Layout (big-endian, 592 bytes, then the key material of the slots, then — in a LUKS device,
// not in qcow2 — the payload):
//   0 magic "LUKS\xba\xbe" | 6 version (1) | 8 cipher name[32] | 40 cipher mode[32] |
//   72 hash spec[32] | 104 payload offset (sectors) | 108 key bytes | 112 master key digest[20] |
//   132 digest salt[32] | 164 digest iterations | 168 uuid[40] | 208 eight key slots of 48 bytes:
//   active (0x00ac71f3 or 0x0000dead) | iterations | salt[32] | key material offset (sectors) |
//   stripes.
// A slot's key material is the master key split into `stripes` pieces (anti-forensic split,
// diffused with the header's hash), encrypted with a key derived from the passphrase by PBKDF2.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace kiln::block::crypto {

constexpr size_t kLuksHeaderBytes = 592;
constexpr size_t kLuksSlots = 8;
constexpr size_t kLuksSaltBytes = 32;
constexpr size_t kLuksDigestBytes = 20;
constexpr uint32_t kLuksStripes =
    4000;  // what every LUKS1 implementation writes (QEMU requires it)
constexpr uint32_t kLuksSlotActive = 0x00ac71f3;
constexpr uint32_t kLuksSlotInactive = 0x0000dead;
// PBKDF2 work is bounded before any is done: a slot or digest iteration count above this is
// refused (QEMU's default 2 s of PBKDF2 is a few million on current machines), and so is a
// header whose active slots add up to more than kMaxTotalIterations block computations (a
// wrong passphrase tries every slot).
constexpr uint32_t kMaxIterations = 1u << 25;
constexpr uint64_t kMaxTotalIterations = 1ull << 28;
// The header area (header and key material) QEMU makes is about 2 MiB; more is refused.
constexpr uint64_t kMaxLuksAreaBytes = 16u << 20;

struct LuksSlot {
  bool active = false;
  uint32_t iterations = 0;
  std::array<uint8_t, kLuksSaltBytes> salt{};
  uint32_t key_offset = 0;  // sectors from the start of the header
  uint32_t stripes = 0;
};

struct LuksHeader {
  std::string cipher_name, cipher_mode, hash, uuid;
  uint32_t payload_offset = 0;  // sectors
  uint32_t key_bytes = 0;
  std::array<uint8_t, kLuksDigestBytes> mk_digest{};
  std::array<uint8_t, kLuksSaltBytes> mk_digest_salt{};
  uint32_t mk_digest_iterations = 0;
  std::array<LuksSlot, kLuksSlots> slots;

  // qemu-img info's names: "aes-256", "xts", "plain64".
  std::string cipher_alg() const;
  std::string mode() const;
  std::string ivgen() const;
};

// Parses and validates the header at the start of `area_bytes` of header area (the length the
// container gives it). Returns an error message (naming the bad field) or nullopt.
std::optional<std::string> parse_luks(std::span<const uint8_t> header, uint64_t area_bytes,
                                      LuksHeader* out);

void serialize_luks(const LuksHeader& h, uint8_t* out);  // kLuksHeaderBytes

enum class Unlock { kOk, kWrongPassphrase, kFailed };
// Tries each active slot with `passphrase`; `area` is the whole header area. On kOk,
// `master_key` holds the key (the caller wipes it). On kFailed, `why` says what broke.
Unlock unlock_luks(const LuksHeader& h, std::span<const uint8_t> area,
                   std::span<const uint8_t> passphrase, std::vector<uint8_t>* master_key,
                   std::string* why);

struct LuksCreateOptions {
  std::string cipher_alg = "aes-256";  // aes-128 or aes-256, mode xts, ivgen plain64
  std::string hash = "sha256";         // sha1, sha256 or sha512
  uint32_t iter_time_ms = 2000;        // PBKDF2 time for the slot, as QEMU's encrypt.iter-time
};
constexpr uint32_t kMaxIterTimeMs = 60000;

// A new header area with slot 0 holding a random master key under `passphrase`. Throws
// block::Error (EINVAL for an option outside the allow list). `master_key` gets the key.
std::vector<uint8_t> create_luks(const LuksCreateOptions& o, std::span<const uint8_t> passphrase,
                                 std::vector<uint8_t>* master_key);

}  // namespace kiln::block::crypto

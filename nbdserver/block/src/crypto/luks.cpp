#include "crypto/luks.h"

#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "crypto/cipher.h"
#include "kiln/block/device.h"
#include "kiln/block/endian.h"

namespace kiln::block::crypto {

namespace {

constexpr uint8_t kMagic[6] = {'L', 'U', 'K', 'S', 0xba, 0xbe};
constexpr size_t kSlotsAt = 208, kSlotBytes = 48;
constexpr uint32_t kHeaderSectors = 8;  // 4 KiB: the first key material starts there, as QEMU's

// A NUL-terminated name in a fixed field (a field without NUL is damaged).
std::optional<std::string> field_name(const uint8_t* p, size_t len) {
  const void* nul = std::memchr(p, 0, len);
  if (!nul) return std::nullopt;
  return std::string(reinterpret_cast<const char*>(p), static_cast<const uint8_t*>(nul) - p);
}

// Whether `name` is short printable ASCII (a name copied into an error message).
std::string shown(const std::string& name) {
  std::string out;
  for (unsigned char c : name) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += char(c);
    } else {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    }
  }
  return out;
}

uint64_t split_bytes(uint32_t key_bytes, uint32_t stripes) { return uint64_t(key_bytes) * stripes; }
uint64_t round_sectors(uint64_t bytes) { return (bytes + kSectorSize - 1) / kSectorSize; }

// PBKDF2 blocks per derivation: the cost of one iteration for an output of `out` bytes.
uint64_t blocks(std::string_view hash, size_t out) {
  const size_t hs = hash_size(hash);
  return (out + hs - 1) / hs;
}

// The LUKS1 diffusion: each digest-sized piece of `block` becomes H(be32(i) || piece).
bool diffuse(std::string_view hash, std::span<uint8_t> block) {
  const size_t hs = hash_size(hash);
  uint8_t out[64];
  for (size_t i = 0, pos = 0; pos < block.size(); ++i, pos += hs) {
    const size_t n = std::min(hs, block.size() - pos);
    uint8_t iv[4];
    block::store_be32(iv, uint32_t(i));
    if (!digest2(hash, iv, block.subspan(pos, n), out)) return false;
    std::memcpy(block.data() + pos, out, n);
  }
  wipe(out, sizeof out);
  return true;
}

// Anti-forensic merge of `stripes` pieces of `key.size()` bytes each into `key`.
bool af_merge(std::string_view hash, std::span<const uint8_t> split, uint32_t stripes,
              std::span<uint8_t> key) {
  const size_t kb = key.size();
  std::memset(key.data(), 0, kb);
  for (uint32_t i = 0; i < stripes; ++i) {
    for (size_t j = 0; j < kb; ++j) key[j] ^= split[i * kb + j];
    if (i + 1 < stripes && !diffuse(hash, key)) return false;
  }
  return true;
}

// The reverse: random pieces, the last one chosen so that they merge into `key`.
bool af_split(std::string_view hash, std::span<const uint8_t> key, uint32_t stripes,
              std::span<uint8_t> split) {
  const size_t kb = key.size();
  std::vector<uint8_t> d(kb, 0);
  random_bytes(split.first(kb * (stripes - 1)));
  for (uint32_t i = 0; i + 1 < stripes; ++i) {
    for (size_t j = 0; j < kb; ++j) d[j] ^= split[i * kb + j];
    if (!diffuse(hash, d)) return false;
  }
  for (size_t j = 0; j < kb; ++j) split[(stripes - 1) * kb + j] = d[j] ^ key[j];
  wipe(d.data(), d.size());
  return true;
}

bool equal_ct(const uint8_t* a, const uint8_t* b, size_t n) {
  uint8_t diff = 0;
  for (size_t i = 0; i < n; ++i) diff |= uint8_t(a[i] ^ b[i]);
  return diff == 0;
}

// Whether `mk` is the header's master key.
bool check_digest(const LuksHeader& h, std::span<const uint8_t> mk) {
  uint8_t d[kLuksDigestBytes];
  if (!pbkdf2(h.hash, mk, h.mk_digest_salt, h.mk_digest_iterations, d)) return false;
  const bool ok = equal_ct(d, h.mk_digest.data(), sizeof d);
  wipe(d, sizeof d);
  return ok;
}

// Wipes key material when it goes out of scope, on a throw too; release() hands the buffer
// over (returned to the caller, who owns it from then on) instead.
class WipeOnExit {
 public:
  explicit WipeOnExit(std::span<uint8_t> bytes) : bytes_(bytes) {}
  WipeOnExit(const WipeOnExit&) = delete;
  WipeOnExit& operator=(const WipeOnExit&) = delete;
  ~WipeOnExit() {
    if (!bytes_.empty()) wipe(bytes_.data(), bytes_.size());
  }
  void release() { bytes_ = {}; }

 private:
  std::span<uint8_t> bytes_;
};

}  // namespace

std::string LuksHeader::cipher_alg() const {
  return cipher_name + "-" + std::to_string(key_bytes * 4);
}
std::string LuksHeader::mode() const { return cipher_mode.substr(0, cipher_mode.find('-')); }
std::string LuksHeader::ivgen() const {
  auto dash = cipher_mode.find('-');
  return dash == std::string::npos ? "" : cipher_mode.substr(dash + 1);
}

std::optional<std::string> parse_luks(std::span<const uint8_t> b, uint64_t area_bytes,
                                      LuksHeader* out) {
  if (b.size() < kLuksHeaderBytes || area_bytes < kLuksHeaderBytes)
    return "LUKS header is truncated";
  if (std::memcmp(b.data(), kMagic, sizeof kMagic) != 0) return "LUKS header has no LUKS magic";
  if (uint32_t v = load_be16(&b[6]); v != 1)
    return "LUKS version " + std::to_string(v) + " is not supported (only LUKS1)";
  LuksHeader h;
  auto name = field_name(&b[8], 32);
  auto mode = field_name(&b[40], 32);
  auto hash = field_name(&b[72], 32);
  if (!name || !mode || !hash) return "LUKS header has an unterminated cipher or hash name";
  h.cipher_name = *name;
  h.cipher_mode = *mode;
  h.hash = *hash;
  h.payload_offset = load_be32(&b[104]);
  h.key_bytes = load_be32(&b[108]);
  std::memcpy(h.mk_digest.data(), &b[112], kLuksDigestBytes);
  std::memcpy(h.mk_digest_salt.data(), &b[132], kLuksSaltBytes);
  h.mk_digest_iterations = load_be32(&b[164]);
  auto uuid = field_name(&b[168], 40);
  h.uuid = uuid ? *uuid : "";

  // The allow list: what qemu-img creates for qcow2 (aes, xts-plain64), with the usual hashes.
  if (h.cipher_name != "aes")
    return "LUKS cipher '" + shown(h.cipher_name) + "' is not supported (only aes)";
  if (h.cipher_mode != "xts-plain64")
    return "LUKS cipher mode '" + shown(h.cipher_mode) + "' is not supported (only xts-plain64)";
  if (hash_size(h.hash) == 0)
    return "LUKS hash '" + shown(h.hash) + "' is not supported (sha1, sha256 or sha512)";
  if (h.key_bytes == 48) return "LUKS cipher aes-192 (xts) is not supported (aes-128 or aes-256)";
  if (h.key_bytes != 32 && h.key_bytes != 64)
    return "LUKS key size " + std::to_string(h.key_bytes) + " is invalid for aes-xts";
  if (h.mk_digest_iterations == 0 || h.mk_digest_iterations > kMaxIterations)
    return "LUKS master key digest iteration count " + std::to_string(h.mk_digest_iterations) +
           " is outside 1.." + std::to_string(kMaxIterations);
  if (area_bytes > kMaxLuksAreaBytes) return "LUKS header area is too large";

  uint64_t work = h.mk_digest_iterations;
  const uint64_t material = round_sectors(split_bytes(h.key_bytes, kLuksStripes)) * kSectorSize;
  bool any = false;
  for (size_t i = 0; i < kLuksSlots; ++i) {
    const uint8_t* p = &b[kSlotsAt + i * kSlotBytes];
    LuksSlot& s = h.slots[i];
    const uint32_t active = load_be32(p);
    const std::string slot = "LUKS key slot " + std::to_string(i);
    if (active != kLuksSlotActive && active != kLuksSlotInactive)
      return slot + " has an invalid state";
    s.active = active == kLuksSlotActive;
    s.iterations = load_be32(p + 4);
    std::memcpy(s.salt.data(), p + 8, kLuksSaltBytes);
    s.key_offset = load_be32(p + 40);
    s.stripes = load_be32(p + 44);
    if (s.stripes != kLuksStripes)
      return slot + " has " + std::to_string(s.stripes) + " stripes (LUKS1 uses " +
             std::to_string(kLuksStripes) + ")";
    const uint64_t start = uint64_t(s.key_offset) * kSectorSize;
    if (start < kLuksHeaderBytes) return slot + " key material overlaps the header";
    if (start > area_bytes || material > area_bytes - start)
      return slot + " key material lies outside the LUKS header area";
    for (size_t j = 0; j < i; ++j) {
      const uint64_t other = uint64_t(h.slots[j].key_offset) * kSectorSize;
      if (start < other + material && other < start + material)
        return slot + " key material overlaps key slot " + std::to_string(j);
    }
    if (!s.active) continue;
    any = true;
    if (s.iterations == 0 || s.iterations > kMaxIterations)
      return slot + " iteration count " + std::to_string(s.iterations) + " is outside 1.." +
             std::to_string(kMaxIterations);
    work += uint64_t(s.iterations) * blocks(h.hash, h.key_bytes);
  }
  if (!any) return "LUKS header has no active key slot";
  if (work > kMaxTotalIterations) return "LUKS key slots need too much PBKDF2 work to unlock";
  *out = std::move(h);
  return std::nullopt;
}

void serialize_luks(const LuksHeader& h, uint8_t* b) {
  std::memset(b, 0, kLuksHeaderBytes);
  std::memcpy(b, kMagic, sizeof kMagic);
  store_be16(&b[6], 1);
  std::memcpy(&b[8], h.cipher_name.data(), std::min<size_t>(h.cipher_name.size(), 31));
  std::memcpy(&b[40], h.cipher_mode.data(), std::min<size_t>(h.cipher_mode.size(), 31));
  std::memcpy(&b[72], h.hash.data(), std::min<size_t>(h.hash.size(), 31));
  store_be32(&b[104], h.payload_offset);
  store_be32(&b[108], h.key_bytes);
  std::memcpy(&b[112], h.mk_digest.data(), kLuksDigestBytes);
  std::memcpy(&b[132], h.mk_digest_salt.data(), kLuksSaltBytes);
  store_be32(&b[164], h.mk_digest_iterations);
  std::memcpy(&b[168], h.uuid.data(), std::min<size_t>(h.uuid.size(), 39));
  for (size_t i = 0; i < kLuksSlots; ++i) {
    uint8_t* p = &b[kSlotsAt + i * kSlotBytes];
    const LuksSlot& s = h.slots[i];
    store_be32(p, s.active ? kLuksSlotActive : kLuksSlotInactive);
    store_be32(p + 4, s.iterations);
    std::memcpy(p + 8, s.salt.data(), kLuksSaltBytes);
    store_be32(p + 40, s.key_offset);
    store_be32(p + 44, s.stripes);
  }
}

Unlock unlock_luks(const LuksHeader& h, std::span<const uint8_t> area,
                   std::span<const uint8_t> passphrase, std::vector<uint8_t>* master_key,
                   std::string* why) {
  const uint64_t material_bytes = split_bytes(h.key_bytes, kLuksStripes);
  const uint64_t sectors = round_sectors(material_bytes);
  std::vector<uint8_t> split(sectors * kSectorSize);
  std::vector<uint8_t> derived(h.key_bytes), mk(h.key_bytes);
  Unlock result = Unlock::kWrongPassphrase;
  for (const LuksSlot& s : h.slots) {
    if (!s.active) continue;
    const uint64_t start = uint64_t(s.key_offset) * kSectorSize;
    if (start > area.size() || split.size() > area.size() - start) {
      *why = "LUKS key material lies outside the header area";
      result = Unlock::kFailed;
      break;
    }
    if (!pbkdf2(h.hash, passphrase, s.salt, s.iterations, derived)) {
      *why = "PBKDF2 failed";
      result = Unlock::kFailed;
      break;
    }
    auto cipher = SectorCipher::make(derived);
    if (!cipher) continue;  // a key OpenSSL refuses (equal XTS halves) cannot be the right one
    std::memcpy(split.data(), area.data() + start, split.size());
    if (cipher->decrypt(0, split) < 0 ||
        !af_merge(h.hash, std::span<const uint8_t>(split).first(material_bytes), kLuksStripes,
                  mk)) {
      *why = "cannot decrypt the key material";
      result = Unlock::kFailed;
      break;
    }
    if (check_digest(h, mk)) {
      *master_key = mk;
      result = Unlock::kOk;
      break;
    }
  }
  wipe(split.data(), split.size());
  wipe(derived.data(), derived.size());
  wipe(mk.data(), mk.size());
  return result;
}

std::vector<uint8_t> create_luks(const LuksCreateOptions& o, std::span<const uint8_t> passphrase,
                                 std::vector<uint8_t>* master_key) {
  LuksHeader h;
  h.cipher_name = "aes";
  h.cipher_mode = "xts-plain64";
  if (o.cipher_alg == "aes-256")
    h.key_bytes = 64;
  else if (o.cipher_alg == "aes-128")
    h.key_bytes = 32;
  else
    throw Error(EINVAL, "cipher algorithm '" + shown(o.cipher_alg) +
                            "' is not supported (aes-128 or aes-256, mode xts)");
  if (hash_size(o.hash) == 0)
    throw Error(EINVAL,
                "hash algorithm '" + shown(o.hash) + "' is not supported (sha1, sha256 or sha512)");
  if (o.iter_time_ms == 0 || o.iter_time_ms > kMaxIterTimeMs)
    throw Error(EINVAL,
                "iter-time must be between 1 and " + std::to_string(kMaxIterTimeMs) + " ms");
  h.hash = o.hash;

  // PBKDF2 speed on this machine, in single-block iterations per millisecond of this thread's
  // CPU time (not wall time: a busy machine would otherwise get weak keys), as QEMU measures it
  // to turn iter-time into counts: the slot takes iter-time, the digest an eighth of it.
  uint64_t per_ms = 0;
  {
    const uint8_t salt[kLuksSaltBytes] = {};
    uint8_t out[kLuksDigestBytes];
    auto cpu_us = [] {
      timespec ts{};
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
      return uint64_t(ts.tv_sec) * 1000000 + uint64_t(ts.tv_nsec) / 1000;
    };
    for (uint32_t n = 1u << 12;; n *= 2) {
      const uint64_t t0 = cpu_us();
      if (!pbkdf2(h.hash, passphrase, salt, n, out)) throw Error(EIO, "PBKDF2 failed");
      const uint64_t us = cpu_us() - t0;
      if (us >= 50000 || n >= (1u << 24)) {
        per_ms = uint64_t(n) * 1000 / std::max<uint64_t>(us, 1);
        break;
      }
    }
  }
  auto clamp = [](uint64_t v) { return uint32_t(std::clamp<uint64_t>(v, 1000, kMaxIterations)); };
  const uint32_t slot_iters = clamp(per_ms * o.iter_time_ms / blocks(h.hash, h.key_bytes));
  h.mk_digest_iterations = clamp(per_ms * o.iter_time_ms / 8);

  std::vector<uint8_t> mk(h.key_bytes);
  WipeOnExit wipe_mk(mk);
  random_bytes(mk);
  random_bytes(h.mk_digest_salt);
  if (!pbkdf2(h.hash, mk, h.mk_digest_salt, h.mk_digest_iterations, h.mk_digest))
    throw Error(EIO, "PBKDF2 failed");
  uint8_t u[16];
  random_bytes(u);
  u[6] = uint8_t((u[6] & 0x0f) | 0x40);  // version 4 (random)
  u[8] = uint8_t((u[8] & 0x3f) | 0x80);
  char uuid[40];
  std::snprintf(uuid, sizeof uuid,
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
                u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
                u[15]);
  h.uuid = uuid;

  // Key material areas 4 KiB aligned after a 4 KiB header, as QEMU lays them out.
  const uint64_t material_bytes = split_bytes(h.key_bytes, kLuksStripes);
  const uint32_t stride = uint32_t((round_sectors(material_bytes) + 7) / 8 * 8);
  for (size_t i = 0; i < kLuksSlots; ++i) {
    h.slots[i].key_offset = kHeaderSectors + uint32_t(i) * stride;
    h.slots[i].stripes = kLuksStripes;
  }
  h.payload_offset = kHeaderSectors + uint32_t(kLuksSlots) * stride;
  std::vector<uint8_t> area(uint64_t(h.payload_offset) * kSectorSize, 0);
  WipeOnExit wipe_area(area);  // the key material is split into it in the clear first

  LuksSlot& s = h.slots[0];
  s.active = true;
  s.iterations = slot_iters;
  random_bytes(s.salt);
  std::vector<uint8_t> derived(h.key_bytes);
  WipeOnExit wipe_derived(derived);
  if (!pbkdf2(h.hash, passphrase, s.salt, s.iterations, derived)) throw Error(EIO, "PBKDF2 failed");
  std::span<uint8_t> split(area.data() + uint64_t(s.key_offset) * kSectorSize,
                           round_sectors(material_bytes) * kSectorSize);
  const bool ok = af_split(h.hash, mk, kLuksStripes, split.first(material_bytes));
  auto cipher = SectorCipher::make(derived);
  if (!ok || !cipher || cipher->encrypt(0, split) < 0)
    throw Error(EIO, "cannot encrypt the LUKS key material");
  serialize_luks(h, area.data());
  *master_key = mk;  // mk itself is wiped on the way out
  wipe_area.release();
  return area;
}

}  // namespace kiln::block::crypto

// qcow2 LUKS encryption (crypt_method 2): the header area named by the full disk encryption
// extension is a LUKS1 header (crypto/luks.h) whose master key encrypts every data cluster
// with AES-XTS, 512-byte sectors, plain64 IV = the sector's *host* offset in the qcow2 file /
// 512 (QEMU's crypt_physical_offset for LUKS). Metadata (header, tables, refcounts) is never
// encrypted; zero and unallocated clusters read as zeros without decrypting, as in QEMU.
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "qcow2/image.h"

namespace kiln::block::qcow2 {

namespace {

constexpr uint64_t kSector = crypto::kSectorSize;

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};

}  // namespace

Task<void> Image::open_encryption() {
  std::vector<uint8_t> area(h_.crypto_length);
  if (int rc = co_await fd_.read_full(area, h_.crypto_offset); rc < 0)
    throw Error(-rc, path_ + ": cannot read the LUKS header: " + strerror(-rc));
  crypto::LuksHeader lh;
  if (auto err = crypto::parse_luks(area, area.size(), &lh))
    throw Error(Reason::kCorrupt, EINVAL, path_ + ": " + *err);
  luks_ = std::move(lh);
  overlaps_ = std::make_unique<Overlaps>(r_);
  caps_.min_block = kSector;
  if (!opt_.key_secret) {
    if (opt_.header_only) co_return;
    // QEMU's words, so that scripts written for qemu-img see the same line.
    throw Error(Reason::kPermission, EACCES,
                path_ + ": Parameter 'encrypt.key-secret' is required for cipher");
  }
  const std::string& secret = *opt_.key_secret;
  std::vector<uint8_t> key;
  std::string why;
  const auto result = crypto::unlock_luks(
      *luks_, area, {reinterpret_cast<const uint8_t*>(secret.data()), secret.size()}, &key, &why);
  crypto::wipe(area.data(), area.size());
  if (result == crypto::Unlock::kWrongPassphrase)
    throw Error(Reason::kPermission, EACCES,
                path_ + ": Invalid password, cannot unlock any keyslot");
  if (result != crypto::Unlock::kOk)
    throw Error(Reason::kIo, EIO, path_ + ": cannot unlock the LUKS header: " + why);
  cipher_ = crypto::SectorCipher::make(key);
  crypto::wipe(key.data(), key.size());
  if (!cipher_)
    throw Error(Reason::kCorrupt, EINVAL, path_ + ": the LUKS master key is not a valid key");
}

int Image::decrypt_data(std::span<uint8_t> buf, uint64_t host) {
  if (!luks_) return 0;
  if (!cipher_) return -EACCES;  // opened for the header only
  if ((host | buf.size()) & (kSector - 1)) return -EINVAL;
  return cipher_->decrypt(host / kSector, buf);
}

Task<int> Image::write_data(std::span<const uint8_t> data, uint64_t host) {
  // QEMU's metadata overlap check, for the structures known without reading anything: a
  // cluster the allocator hands out is never one of them (holds_fixed_metadata), so only a
  // hostile L2 entry written in place can get here with one.
  if (overlaps_fixed_metadata(host, data.size())) co_return -EIO;
  if (!luks_) co_return co_await fd_.write_full(data, host);
  if (!cipher_) co_return -EACCES;
  if ((host | data.size()) & (kSector - 1)) co_return -EINVAL;
  // The caller's buffer is theirs (and const): the ciphertext goes to one of our own, aligned
  // so that direct I/O needs no second copy.
  const size_t alloc = (data.size() + 4095) & ~size_t{4095};
  std::unique_ptr<uint8_t, FreeDeleter> out(static_cast<uint8_t*>(std::aligned_alloc(4096, alloc)));
  if (!out) co_return -ENOMEM;
  if (int rc = cipher_->encrypt_to(host / kSector, data, out.get()); rc < 0) co_return rc;
  co_return co_await fd_.write_full({out.get(), data.size()}, host);
}

Task<int> Image::read_unaligned(uint64_t offset, std::span<uint8_t> buf) {
  const uint64_t a = offset & ~(kSector - 1);
  const uint64_t b = (offset + buf.size() + kSector - 1) & ~(kSector - 1);
  std::vector<uint8_t> bounce(b - a);
  if (int rc = co_await read(a, bounce); rc < 0) co_return rc;
  std::memcpy(buf.data(), bounce.data() + (offset - a), buf.size());
  co_return 0;
}

Task<int> Image::write_unaligned(uint64_t offset, std::span<const uint8_t> buf, unsigned flags) {
  // Read-modify-write of the partial sectors at either end, holding the sectors so that no
  // overlapping write lands between the read and the write (overlap.h) and is undone.
  const uint64_t a = offset & ~(kSector - 1);
  const uint64_t b = (offset + buf.size() + kSector - 1) & ~(kSector - 1);
  std::vector<uint8_t> bounce(b - a);
  Overlaps::Guard guard = co_await overlaps_->enter(a, b, true);
  int rc = co_await read(a, std::span<uint8_t>(bounce).first(kSector));
  if (rc == 0 && b - a > kSector)
    rc = co_await read(b - kSector, std::span<uint8_t>(bounce).last(kSector));
  if (rc == 0) {
    std::memcpy(bounce.data() + (offset - a), buf.data(), buf.size());
    rc = co_await write_sectors(a, bounce, flags);
  }
  co_return rc;
}

Task<int> Image::zero_unaligned(uint64_t offset, uint64_t length, unsigned flags) {
  // The partial sectors at either end are written as zeros; whole sectors between are zeroed
  // the usual way (without decrypting or writing anything where the cluster allows).
  const uint64_t end = offset + length;
  const uint64_t a = std::min(end, (offset + kSector - 1) & ~(kSector - 1));
  const uint64_t b = std::max(a, end & ~(kSector - 1));
  if (flags & kWriteFastZero) co_return -ENOTSUP;
  const unsigned wflags = flags & kWriteFua;
  if (a > offset) {
    std::vector<uint8_t> zeros(a - offset);
    if (int rc = co_await write_unaligned(offset, zeros, wflags); rc < 0) co_return rc;
  }
  if (b > a)
    if (int rc = co_await write_zeroes(a, b - a, flags); rc < 0) co_return rc;
  if (end > b) {
    std::vector<uint8_t> zeros(end - b);
    if (int rc = co_await write_unaligned(b, zeros, wflags); rc < 0) co_return rc;
  }
  co_return 0;
}

}  // namespace kiln::block::qcow2

#include "kiln/spawn/disk_key.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "kiln/block/qcow2.h"
#include "kiln/block/secret.h"
#include "kiln/common/random.h"
#include "kiln/common/text.h"
#include "kiln/spawn/error.h"
#include "util.h"

namespace kiln::spawn {

namespace {
constexpr size_t kKeyBytes = 32;      // 256 bits: as strong as the AES-256-XTS master key it guards
constexpr uint32_t kIterTimeMs = 10;  // PBKDF2 (at least 1000 iterations whatever the time)
}  // namespace

std::string disk_key_path(const std::string& instance_dir) {
  return instance_dir + "/" + kDiskKeyFile;
}

bool disk_encrypted(const std::string& instance_dir) {
  struct stat st {};
  return ::lstat(disk_key_path(instance_dir).c_str(), &st) == 0;
}

bool instance_encrypted(const std::string& instance_dir) {
  struct stat st {};
  return disk_encrypted(instance_dir) ||
         ::lstat((instance_dir + "/" + kStorageEncryptedFile).c_str(), &st) == 0;
}

std::string create_disk_key(const std::string& instance_dir) {
  const std::string path = disk_key_path(instance_dir);
  std::string raw(kKeyBytes, '\0');
  common::random_bytes(raw.data(), raw.size());
  std::string key = common::base64(raw);
  raw.assign(raw.size(), '\0');
  // O_EXCL: never reuse (or follow a link to) a key file that is already there.
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (fd.get() < 0) throw errno_error("cannot create the disk key " + path, errno);
  // The umask may have taken bits away, never added them; 0600 exactly.
  if (::fchmod(fd.get(), 0600) != 0) throw errno_error("cannot chmod " + path, errno);
  write_all(fd.get(), key.data(), key.size(), 0, path);
  if (::fsync(fd.get()) != 0) throw errno_error("cannot fsync " + path, errno);
  return key;
}

void set_overlay_encryption(block::qcow2::CreateOptions& o, const std::string& key) {
  o.encrypt_format = "luks";
  o.key_secret = key;
  o.encrypt_iter_time_ms = kIterTimeMs;
  o.size = (o.size + 511) / 512 * 512;
}

std::optional<std::string> read_disk_key(const std::string& instance_dir) {
  if (!disk_encrypted(instance_dir)) return std::nullopt;
  return block::read_secret_file(disk_key_path(instance_dir), /*owner_only=*/true);
}

}  // namespace kiln::spawn

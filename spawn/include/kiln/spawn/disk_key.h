// boot --encrypted: the instance's overlay is a LUKS-encrypted qcow2 (over the plain cached
// base), unlocked by a key of its own in <instance_dir>/disk.key. Only root reads the key:
// QEMU never needs it, since the guest reaches its disk through kiln-nbd, which opens the
// overlay with the key (add-export's key-secret-file). Whether an instance is encrypted is
// the key file's presence (the store records nothing of it). See docs/kiln-spawn.md.
#pragma once

#include <optional>
#include <string>

namespace kiln::block::qcow2 {
struct CreateOptions;
}

namespace kiln::spawn {

inline constexpr const char* kDiskKeyFile = "disk.key";

// <instance_dir>/disk.key
std::string disk_key_path(const std::string& instance_dir);
// True if the instance's directory holds a disk key.
bool disk_encrypted(const std::string& instance_dir);
// A compute host's instance whose encrypted disk a storage host made: the key is in that
// host's instance directory, and this empty file in the compute host's says so.
inline constexpr const char* kStorageEncryptedFile = "disk.encrypted";
// disk_encrypted(), or the disk is encrypted on a storage host (what `show` reports).
bool instance_encrypted(const std::string& instance_dir);

// Makes a new key file (O_EXCL, mode 0600, fsynced): 32 bytes from getrandom, written as
// base64 text without a newline (44 bytes), because QEMU takes a LUKS passphrase only as
// valid UTF-8; the text itself is the passphrase (a secret object's default format=raw), the
// same for kiln-nbd, kiln-fs and qemu-img. Returns the passphrase. Throws Error.
std::string create_disk_key(const std::string& instance_dir);
// Makes `o` an encrypted overlay's (encrypt.format=luks, key slot 0 unlocked by `key`, its
// size rounded up to whole 512-byte sectors as LUKS needs; QEMU reads zeros past a shorter
// backing file). PBKDF2 runs for a short time only: stretching adds nothing to a key of 256
// random bits, and every open (inject, resize, each export) pays it again.
void set_overlay_encryption(block::qcow2::CreateOptions& o, const std::string& key);
// The passphrase in the key file, or nullopt if the instance has none. Refuses a key file
// that others may read. Throws Error.
std::optional<std::string> read_disk_key(const std::string& instance_dir);

}  // namespace kiln::spawn

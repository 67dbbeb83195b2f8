// File injection into a guest filesystem, without FUSE and without a kernel mount: what
// `kiln-fs inject` does, as a library for `spawn`.
//
//   std::vector<kiln::fs::Operation> ops = {
//       kiln::fs::Operation::ssh_key("root", key_text),
//       kiln::fs::Operation::hostname("vm1.example.org"),
//       kiln::fs::Operation::file("/etc/motd", "hello\n", 0644),
//   };
//   kiln::fs::inject("vm1.qcow2", ops);          // opens, applies all, closes; throws Error
//
// Operations run in order in one open/close of the filesystem. Everything is checked and
// applied in memory first; the image is written only when every operation succeeded, so a
// failing operation leaves the image unchanged. An existing file with other names (hard
// links) is never rewritten: the name written gets a new inode (docs/kiln-fs.md).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kiln/fs/filesystem.h"

namespace kiln::fs {

enum class OpKind {
  kSshKey,    // user, data = the key line(s)
  kHostname,  // data = the name
  kFile,      // path, data = content, mode/uid/gid
  kMkdir,     // path (parents too), mode/uid/gid
  kDelete,    // path (directories recursively; a missing path is not an error)
  kPassword,  // user, data = the crypt(3) hash for /etc/shadow
};

struct Operation {
  OpKind kind = OpKind::kFile;
  std::string path;  // guest path, absolute
  std::string user;  // guest user name (kSshKey, kPassword)
  std::string data;
  // kFile: default 0644 for a new file (an existing file keeps its mode); kMkdir: 0755.
  std::optional<uint32_t> mode;
  // Default 0:0 for new files and directories; existing ones keep their owner.
  std::optional<uint32_t> uid;
  std::optional<uint32_t> gid;

  static Operation ssh_key(std::string user, std::string key);
  static Operation hostname(std::string name);
  static Operation file(std::string path, std::string content,
                        std::optional<uint32_t> mode = std::nullopt,
                        std::optional<uint32_t> uid = std::nullopt,
                        std::optional<uint32_t> gid = std::nullopt);
  static Operation mkdir(std::string path, std::optional<uint32_t> mode = std::nullopt,
                         std::optional<uint32_t> uid = std::nullopt,
                         std::optional<uint32_t> gid = std::nullopt);
  static Operation remove(std::string path);
  static Operation password(std::string user, std::string hash);

  // "--ssh-key root", "--file /etc/motd", ...: how errors name the operation.
  std::string describe() const;
};

struct InjectOptions {
  // Follow symbolic links met in guest paths (resolved inside the guest's root), those owned
  // by root with a single name only; ~/.ssh and its authorized_keys never. Off: a symlink
  // anywhere in a path that is written to is refused.
  bool follow_symlinks = false;
};

// Checks the operations' syntax without touching any image (paths absolute and without
// "..", user names, hostname, modes, hash). Throws Error naming the bad operation.
void validate(const std::vector<Operation>& ops);

// Applies `ops` to an open, writable filesystem. Throws Error; the caller then destroys `fs`
// without close() to leave the image unchanged — which holds as long as the changes fit in
// OpenOptions::write_buffer_bytes (inject() opens with an unbounded buffer).
void apply(Filesystem& fs, const std::vector<Operation>& ops, const InjectOptions& options = {});

// validate + Filesystem::open (writable) + apply + close.
void inject(const std::string& image, const std::vector<Operation>& ops,
            const OpenOptions& open_options = {}, const InjectOptions& options = {});

}  // namespace kiln::fs

// Secrets and image options given the way QEMU's tools take them, shared by kiln-img, kiln-io,
// kiln-nbd and kiln-fs:
//   --object secret,id=ID,file=PATH | data=TEXT [,format=raw|base64]
//   --image-opts driver=qcow2,file.filename=IMG,encrypt.key-secret=ID
// A secret's bytes are never printed or logged; errors name the id or the file only.
#pragma once

#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace kiln::block {

constexpr size_t kMaxSecretBytes = 64 * 1024;

// Reads a secret file whole (at most kMaxSecretBytes; the bytes as they are, a trailing newline
// included, as QEMU). `owner_only`: refuse a file that is not a regular file or that its group
// or others may read or write (mode 0600 or stricter), for kiln-nbd's control API.
// `allowed_dirs` (kiln-nbd's --allow-dir; empty: anywhere): the file must lie under one of them,
// checked before it is opened and again on the opened descriptor. Throws block::Error.
std::string read_secret_file(const std::string& path, bool owner_only,
                             const std::vector<std::string>& allowed_dirs = {});

// The secrets defined with --object on one command line, by id.
class Secrets {
 public:
  // Parses one --object argument. Only `secret` objects are known. Throws block::Error.
  void add_object(const std::string& spec);
  // The secret's bytes; throws block::Error (kNotFound) "No secret with id 'ID'" as QEMU.
  const std::string& get(const std::string& id) const;
  bool empty() const { return by_id_.empty(); }

 private:
  std::map<std::string, std::string> by_id_;
};

// An image named by --image-opts (or a plain file name and -f).
struct ImageOpts {
  std::string filename;
  std::string format;  // driver: "qcow2", "raw", or "" (probe)
  std::optional<std::string> key_secret_id;
};
// Parses "driver=qcow2,file.filename=IMG,encrypt.key-secret=ID" (also file=IMG,
// file.driver=file, encrypt.format=luks; ",," escapes a comma). Throws block::Error.
ImageOpts parse_image_opts(const std::string& text);

// The image a tool's command line names, the same way in kiln-img, kiln-io, kiln-nbd and
// kiln-fs: `text` is the image argument, a file name with `format` (its -f/--format value, or
// nullopt if not given), or with `image_opts` (--image-opts) an option string as above whose
// encrypt.key-secret names one of `objects` (every --object, all parsed and checked even when
// unused, as QEMU does). --image-opts with a format is refused. Throws Error.
struct ImageSpec {
  std::string path;
  std::string format;  // "" = probe
  std::optional<std::string> key_secret;
};
ImageSpec resolve_image_arg(const std::string& text, bool image_opts,
                            const std::optional<std::string>& format,
                            const std::vector<std::string>& objects);

// Splits "a=1,b=2" into pairs (",," is a literal comma). Throws block::Error on "a" without "=".
std::vector<std::pair<std::string, std::string>> split_options(const std::string& text);

}  // namespace kiln::block

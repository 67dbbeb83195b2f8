#include "kiln/block/secret.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "allowed_dirs.h"
#include "kiln/block/device.h"
#include "kiln/common/fd.h"
#include "kiln/common/text.h"

namespace kiln::block {

namespace {

// RFC 4648 base64 (QEMU's format=base64), strict: no whitespace, correct padding.
std::optional<std::string> decode_base64(const std::string& in) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  if (in.size() % 4) return std::nullopt;
  std::string out;
  for (size_t i = 0; i < in.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int j = 0; j < 4; ++j) {
      const char c = in[i + j];
      if (c == '=' && i + 4 == in.size() && j >= 2) {
        v[j] = 0;
        ++pad;
      } else if (pad || (v[j] = value(c)) < 0) {
        return std::nullopt;
      }
    }
    const uint32_t n = uint32_t(v[0]) << 18 | uint32_t(v[1]) << 12 | uint32_t(v[2]) << 6 | v[3];
    out += char(n >> 16);
    if (pad < 2) out += char(n >> 8 & 0xff);
    if (pad < 1) out += char(n & 0xff);
  }
  return out;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> split_options(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const std::string& item : common::split_qemu_options(text)) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    if (eq == std::string::npos)
      throw Error(Reason::kInvalidArgument, EINVAL,
                  "Invalid parameter '" + item + "' (expected key=value)");
    out.emplace_back(item.substr(0, eq), item.substr(eq + 1));
  }
  return out;
}

std::string read_secret_file(const std::string& path, bool owner_only,
                             const std::vector<std::string>& allowed_dirs) {
  check_allowed_path(path, allowed_dirs);
  common::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) throw Error(errno, "Unable to read secret file '" + path + "': " + strerror(errno));
  check_allowed_fd(fd.get(), path, allowed_dirs);
  struct stat st;
  if (fstat(fd.get(), &st) < 0)
    throw Error(errno, "Unable to read secret file '" + path + "': " + strerror(errno));
  if (owner_only && (!S_ISREG(st.st_mode) || (st.st_mode & 077)))
    throw Error(Reason::kPermission, EACCES,
                "secret file '" + path +
                    "' must be a regular file that only its owner may read (mode 0600)");
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error(errno, "Unable to read secret file '" + path + "': " + strerror(errno));
    if (n == 0) break;
    if (out.size() + size_t(n) > kMaxSecretBytes)
      throw Error(Reason::kInvalidArgument, EFBIG,
                  "secret file '" + path + "' is larger than " + std::to_string(kMaxSecretBytes) +
                      " bytes");
    out.append(buf, size_t(n));
  }
  return out;
}

void Secrets::add_object(const std::string& spec) {
  auto comma = spec.find(',');
  const std::string type = spec.substr(0, comma);
  if (type != "secret")
    throw Error(Reason::kUnsupported, ENOTSUP,
                "Invalid object type '" + type + "' (only 'secret' objects are supported)");
  std::string id, file, format = "raw";
  std::optional<std::string> data;
  if (comma != std::string::npos) {
    for (auto& [k, v] : split_options(spec.substr(comma + 1))) {
      if (k == "id")
        id = v;
      else if (k == "file")
        file = v;
      else if (k == "data")
        data = v;
      else if (k == "format")
        format = v;
      else
        throw Error(
            Reason::kInvalidArgument, EINVAL,
            "Invalid parameter '" + k + "' for a secret object" +
                (k == "keyid" || k == "iv" ? " (encrypted secrets are not supported)" : ""));
    }
  }
  if (id.empty()) throw Error(Reason::kInvalidArgument, EINVAL, "Parameter 'id' is missing");
  if (by_id_.count(id))
    throw Error(Reason::kExists, EEXIST, "attempt to add duplicate property '" + id + "'");
  if (file.empty() == !data)
    throw Error(Reason::kInvalidArgument, EINVAL,
                "Secret '" + id + "': either 'file' or 'data' must be provided");
  if (format != "raw" && format != "base64")
    throw Error(Reason::kInvalidArgument, EINVAL,
                "Secret '" + id + "': format must be raw or base64");
  std::string value = data ? *data : read_secret_file(file, false);
  if (value.size() > kMaxSecretBytes)
    throw Error(Reason::kInvalidArgument, EFBIG, "Secret '" + id + "' is too large");
  if (format == "base64") {
    auto decoded = decode_base64(value);
    if (!decoded)
      throw Error(Reason::kInvalidArgument, EINVAL, "Secret '" + id + "': invalid base64 data");
    value = std::move(*decoded);
  }
  by_id_.emplace(id, std::move(value));
}

const std::string& Secrets::get(const std::string& id) const {
  auto it = by_id_.find(id);
  if (it == by_id_.end()) throw Error(Reason::kNotFound, ENOENT, "No secret with id '" + id + "'");
  return it->second;
}

ImageOpts parse_image_opts(const std::string& text) {
  ImageOpts o;
  for (auto& [k, v] : split_options(text)) {
    if (k == "driver") {
      if (v != "qcow2" && v != "raw")
        throw Error(Reason::kUnsupported, ENOTSUP,
                    "Unknown driver '" + v + "' (supported: qcow2, raw)");
      o.format = v;
    } else if (k == "file.filename" || k == "file") {
      o.filename = v;
    } else if (k == "file.driver") {
      if (v != "file")
        throw Error(Reason::kUnsupported, ENOTSUP, "Unknown protocol driver '" + v + "' (file)");
    } else if (k == "encrypt.key-secret") {
      o.key_secret_id = v;
    } else if (k == "encrypt.format") {
      if (v != "luks")
        throw Error(Reason::kUnsupported, ENOTSUP,
                    "encrypt.format '" + v + "' is not supported (luks)");
    } else {
      throw Error(Reason::kInvalidArgument, EINVAL, "Invalid option '" + k + "' in --image-opts");
    }
  }
  if (o.filename.empty())
    throw Error(Reason::kInvalidArgument, EINVAL,
                "--image-opts needs file.filename=IMAGE (and driver=qcow2)");
  return o;
}

ImageSpec resolve_image_arg(const std::string& text, bool image_opts,
                            const std::optional<std::string>& format,
                            const std::vector<std::string>& objects) {
  Secrets secrets;
  for (const std::string& spec : objects) secrets.add_object(spec);
  ImageSpec out;
  if (!image_opts) {
    out.path = text;
    out.format = format.value_or("");
    return out;
  }
  if (format)
    throw Error(Reason::kInvalidArgument, EINVAL,
                "--image-opts and --format are mutually exclusive");
  ImageOpts o = parse_image_opts(text);
  out.path = std::move(o.filename);
  out.format = std::move(o.format);
  if (o.key_secret_id) out.key_secret = secrets.get(*o.key_secret_id);
  return out;
}

}  // namespace kiln::block

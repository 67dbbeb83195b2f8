// kiln-fs inject: the operations of kiln/fs/inject.h from the command line, applied in the
// order given. Host files are read and every argument checked before the image is opened.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "commands.h"
#include "kiln/common/fd.h"
#include "kiln/fs/inject.h"

namespace kiln::fs::cli {
namespace {

constexpr uint64_t kMaxHostFile = 1ull << 30;

std::string read_host_file(const std::string& path, const std::string& what) {
  common::Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!f) throw Error(what + ": cannot open " + path + ": " + std::strerror(errno));
  struct stat st;
  if (fstat(f.get(), &st) != 0 || !S_ISREG(st.st_mode))
    throw Error(what + ": " + path + " is not a regular file");
  if (static_cast<uint64_t>(st.st_size) > kMaxHostFile)
    throw Error(what + ": " + path + " is larger than 1 GiB");
  std::string data;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(f.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error(what + ": cannot read " + path + ": " + std::strerror(errno));
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
    if (data.size() > kMaxHostFile) throw Error(what + ": " + path + " is larger than 1 GiB");
  }
  return data;
}

// What is meant as a number: a digit first, or a sign and a digit ("-1" is a bad uid, not a name).
bool looks_numeric(const std::string& s) {
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  return !s.empty() &&
         (digit(s[0]) || ((s[0] == '-' || s[0] == '+') && s.size() > 1 && digit(s[1])));
}

struct Spec {
  std::string head;
  std::optional<uint32_t> mode, uid, gid;
};

// "X[:MODE[:UID:GID]]", the suffixes taken from the right so that X may itself contain ':'. A
// suffix that looks like a number is meant as one and must be valid: "motd:0799" is a bad
// mode, not a file named "motd:0799".
Spec parse_spec(const std::string& text, const std::string& option) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    size_t p = text.find(':', start);
    parts.push_back(text.substr(start, p == std::string::npos ? p : p - start));
    if (p == std::string::npos) break;
    start = p + 1;
  }
  const size_t n = parts.size();
  size_t numeric = 0;
  while (numeric < 3 && numeric + 1 < n && looks_numeric(parts[n - 1 - numeric])) ++numeric;
  Spec spec;
  if (numeric == 0) {
    spec.head = text;
    return spec;
  }
  const std::string where = option + " '" + text + "'";
  if (numeric == 2) throw UsageError(where + ": give MODE or MODE:UID:GID after the path");
  const size_t m = n - numeric;  // index of MODE
  for (size_t i = 0; i < m; ++i) spec.head += (i ? ":" : "") + parts[i];
  auto number = [&](const std::string& text, const char* what, uint32_t max,
                    common::cli::Radix radix) {
    try {
      return static_cast<uint32_t>(common::cli::parse_number(text, what, 0, max, radix));
    } catch (const UsageError& e) {
      throw UsageError(where + ": " + e.what());
    }
  };
  spec.mode = number(parts[m], "mode", 07777, common::cli::Radix::kOctal);
  if (numeric == 3) {
    // (uid_t)-1 means "no change" to chown(2): not an owner.
    spec.uid = number(parts[m + 1], "uid", 0xfffffffeu, common::cli::Radix::kDecimal);
    spec.gid = number(parts[m + 2], "gid", 0xfffffffeu, common::cli::Radix::kDecimal);
  }
  return spec;
}

std::pair<std::string, std::string> split_at_colon(const std::string& text, const char* option,
                                                   const char* form) {
  size_t colon = text.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    throw UsageError(std::string(option) + " takes " + form + ", not '" + text + "'");
  return {text.substr(0, colon), text.substr(colon + 1)};
}

}  // namespace

int cmd_inject(const Args& args) {
  std::vector<Operation> ops;
  OpenOptions open_options;
  InjectOptions inject_options;
  // In the order given: a later operation sees what an earlier one did.
  for (const auto& [name, arg, on] : args.items()) {
    if (name == "--ssh-key") {
      auto [user, file] = split_at_colon(arg, "--ssh-key", "USER:FILE");
      ops.push_back(Operation::ssh_key(user, read_host_file(file, "--ssh-key " + user)));
    } else if (name == "--hostname") {
      ops.push_back(Operation::hostname(arg));
    } else if (name == "--file") {
      size_t eq = arg.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == arg.size())
        throw UsageError("--file takes GUEST_PATH=HOST_FILE[:MODE[:UID:GID]], not '" + arg + "'");
      const std::string guest = arg.substr(0, eq);
      Spec s = parse_spec(arg.substr(eq + 1), "--file");
      ops.push_back(
          Operation::file(guest, read_host_file(s.head, "--file " + guest), s.mode, s.uid, s.gid));
    } else if (name == "--mkdir") {
      Spec s = parse_spec(arg, "--mkdir");
      ops.push_back(Operation::mkdir(s.head, s.mode, s.uid, s.gid));
    } else if (name == "--delete") {
      ops.push_back(Operation::remove(arg));
    } else if (name == "--password") {
      auto [user, hash] = split_at_colon(arg, "--password", "USER:HASH");
      ops.push_back(Operation::password(user, hash));
    } else if (name == "--follow-symlinks") {
      inject_options.follow_symlinks = true;
    } else if (name == "--partition") {
      open_options.partition = parse_partition(arg);
    }
  }
  if (args.positional().size() != 1) throw UsageError("inject takes one IMAGE");
  if (ops.empty()) throw UsageError("inject: nothing to do (give at least one operation)");
  ImageArg image = image_arg(args, args.positional()[0]);
  open_options.format = std::move(image.format);
  open_options.key_secret = std::move(image.key_secret);
  inject(image.image, ops, open_options, inject_options);
  return 0;
}

}  // namespace kiln::fs::cli

#include "text_edit.h"

#include <cctype>
#include <sstream>
#include <vector>

#include "kiln/fs/filesystem.h"

namespace kiln::fs {
namespace {

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    lines.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  return lines;
}

std::string join_lines(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

std::vector<std::string> split_fields(const std::string& line, char sep) {
  std::vector<std::string> f;
  size_t start = 0;
  for (;;) {
    size_t p = line.find(sep, start);
    f.push_back(line.substr(start, p == std::string::npos ? std::string::npos : p - start));
    if (p == std::string::npos) break;
    start = p + 1;
  }
  return f;
}

bool parse_id(const std::string& s, uint32_t* out) {
  if (s.empty() || s.size() > 10) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v > 0xffffffffu) return false;
  *out = static_cast<uint32_t>(v);
  return true;
}

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r");
  if (a == std::string::npos) return "";
  size_t b = s.find_last_not_of(" \t\r");
  return s.substr(a, b - a + 1);
}

}  // namespace

std::optional<PasswdEntry> find_passwd_entry(const std::string& passwd, const std::string& user) {
  for (const auto& line : split_lines(passwd)) {
    std::vector<std::string> f = split_fields(line, ':');
    if (f.size() < 7 || f[0] != user) continue;
    PasswdEntry e;
    e.name = f[0];
    if (!parse_id(f[2], &e.uid) || !parse_id(f[3], &e.gid) || f[5].empty() || f[5][0] != '/')
      continue;
    e.home = f[5];
    return e;
  }
  return std::nullopt;
}

std::optional<std::string> set_shadow_hash(const std::string& shadow, const std::string& user,
                                           const std::string& hash) {
  std::vector<std::string> lines = split_lines(shadow);
  for (auto& line : lines) {
    std::vector<std::string> f = split_fields(line, ':');
    if (f.size() < 2 || f[0] != user) continue;
    f[1] = hash;
    std::string joined;
    for (size_t i = 0; i < f.size(); ++i) joined += (i ? ":" : "") + f[i];
    line = joined;
    return join_lines(lines);
  }
  return std::nullopt;
}

std::string set_hosts_name(const std::string& hosts, const std::string& hostname) {
  std::string names = hostname;
  size_t dot = hostname.find('.');
  if (dot != std::string::npos) names += " " + hostname.substr(0, dot);
  const std::string entry = "127.0.1.1\t" + names;
  std::vector<std::string> lines = split_lines(hosts);
  bool done = false;
  std::vector<std::string> out;
  for (auto& line : lines) {
    std::istringstream in(line);
    std::string addr;
    in >> addr;
    if (addr == "127.0.1.1") {
      if (!done) out.push_back(entry);  // a second such line is dropped
      done = true;
      continue;
    }
    out.push_back(line);
  }
  if (!done) out.push_back(entry);
  return join_lines(out);
}

std::string append_keys(const std::string& existing, const std::string& keys) {
  std::vector<std::string> have = split_lines(existing);
  std::string out = existing;
  if (!out.empty() && out.back() != '\n') out += '\n';
  for (const auto& raw : split_lines(keys)) {
    std::string key = trim(raw);
    if (key.empty()) continue;
    bool present = false;
    for (const auto& h : have)
      if (trim(h) == key) present = true;
    if (present) continue;
    out += key + "\n";
    have.push_back(key);
  }
  return out;
}

void check_user_name(const std::string& user, const std::string& what) {
  if (user.empty() || user.size() > 256)
    throw Error(Reason::kInvalidArgument, what + ": the user name must have 1 to 256 characters");
  for (unsigned char c : user)
    if (c == ':' || c == '\n' || c == '/' || c < 0x21 || c == 0x7f)
      throw Error(Reason::kInvalidArgument,
                  what + ": invalid character in the user name '" + user + "'");
}

void check_hostname(const std::string& name, const std::string& what) {
  if (name.empty() || name.size() > 253)
    throw Error(Reason::kInvalidArgument, what + ": a host name has 1 to 253 characters");
  for (const auto& label : split_fields(name, '.')) {
    if (label.empty() || label.size() > 63)
      throw Error(
          Reason::kInvalidArgument,
          what + ": '" + name + "' is not a valid host name (labels of 1 to 63 characters)");
    if (label.front() == '-' || label.back() == '-')
      throw Error(
          Reason::kInvalidArgument,
          what + ": '" + name + "' is not a valid host name (a label starts or ends with '-')");
    for (unsigned char c : label)
      if (!std::isalnum(c) && c != '-')
        throw Error(
            Reason::kInvalidArgument,
            what + ": '" + name + "' is not a valid host name (letters, digits, '-' and '.')");
  }
}

void check_shadow_hash(const std::string& hash, const std::string& what) {
  if (hash.size() > 1024)
    throw Error(Reason::kInvalidArgument, what + ": the password hash is too long");
  for (unsigned char c : hash)
    if (c == ':' || c < 0x21 || c == 0x7f)
      throw Error(Reason::kInvalidArgument, what + ": invalid character in the password hash");
}

void check_ssh_keys(const std::string& keys, const std::string& what) {
  if (keys.size() > (1u << 20))
    throw Error(Reason::kInvalidArgument, what + ": the key file is larger than 1 MiB");
  if (keys.find('\0') != std::string::npos)
    throw Error(Reason::kInvalidArgument, what + ": the key file contains NUL bytes");
  bool any = false;
  for (const auto& line : split_lines(keys)) {
    std::string t = trim(line);
    if (t.empty() || t[0] == '#') continue;
    any = true;
    // "type base64 [comment]" or "options type base64 [comment]"
    if (t.find(' ') == std::string::npos)
      throw Error(Reason::kInvalidArgument,
                  what + ": '" + t.substr(0, 40) + "' does not look like an SSH public key");
  }
  if (!any) throw Error(Reason::kInvalidArgument, what + ": the key file holds no key");
}

}  // namespace kiln::fs

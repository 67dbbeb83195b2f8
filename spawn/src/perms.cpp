#include "perms.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "kiln/spawn/error.h"
#include "util.h"

namespace kiln::spawn {

namespace {

constexpr const char* kLibvirtQemuUser = "libvirt-qemu";  // Debian's -Dqemu_user/-Dqemu_group

// Digits only (a leading '+' as libvirt's "+N" spelling), at most 4294967294.
bool parse_id(const std::string& s, uint32_t* out) {
  std::string d = !s.empty() && s[0] == '+' ? s.substr(1) : s;
  if (d.empty() || d.size() > 10) return false;
  uint64_t v = 0;
  for (char c : d) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v > 0xfffffffeu) return false;
  *out = static_cast<uint32_t>(v);
  return true;
}

std::string octal(mode_t m) {
  char b[8];
  std::snprintf(b, sizeof b, "%04o", static_cast<unsigned>(m & 07777));
  return b;
}

struct PasswdEntry {
  bool found = false;
  uint32_t uid = 0, gid = 0;
  std::string name;
};

PasswdEntry passwd_by_name(const std::string& name) {
  std::vector<char> buf(16384);
  passwd pw{}, *res = nullptr;
  PasswdEntry e;
  if (getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &res) == 0 && res)
    e = {true, pw.pw_uid, pw.pw_gid, pw.pw_name};
  return e;
}

PasswdEntry passwd_by_uid(uint32_t uid) {
  std::vector<char> buf(16384);
  passwd pw{}, *res = nullptr;
  PasswdEntry e;
  if (getpwuid_r(uid, &pw, buf.data(), buf.size(), &res) == 0 && res)
    e = {true, pw.pw_uid, pw.pw_gid, pw.pw_name};
  return e;
}

bool group_by_name(const std::string& name, uint32_t* gid) {
  std::vector<char> buf(16384);
  group gr{}, *res = nullptr;
  if (getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &res) != 0 || !res) return false;
  *gid = gr.gr_gid;
  return true;
}

std::string group_name(uint32_t gid) {
  std::vector<char> buf(16384);
  group gr{}, *res = nullptr;
  if (getgrgid_r(gid, &gr, buf.data(), buf.size(), &res) == 0 && res) return gr.gr_name;
  return std::to_string(gid);
}

}  // namespace

bool is_local_system_qemu(const std::string& uri) {
  return uri == "qemu:///system" || uri.rfind("qemu:///system?", 0) == 0 ||
         uri == "qemu+unix:///system" || uri.rfind("qemu+unix:///system?", 0) == 0;
}

HostUser parse_host_user(const std::string& spec, const std::string& what) {
  const size_t colon = spec.find(':');
  const std::string u = spec.substr(0, colon);
  const std::string g = colon == std::string::npos ? "" : spec.substr(colon + 1);
  if (u.empty() || (colon != std::string::npos && g.empty()) || spec.size() > 256)
    throw invalid(what + " must be USER or USER:GROUP, not '" + spec + "'");
  HostUser h;
  PasswdEntry pw;
  if (parse_id(u, &h.uid)) {
    pw = passwd_by_uid(h.uid);
    h.user = pw.found ? pw.name : std::to_string(h.uid);
  } else {
    const bool numeric_looking = (u[0] >= '0' && u[0] <= '9') || u[0] == '+' || u[0] == '-';
    if (numeric_looking) throw invalid(what + ": invalid uid '" + u + "' (0 to 4294967294)");
    pw = passwd_by_name(u);
    if (!pw.found) throw invalid(what + ": no user '" + u + "' on this host");
    h.uid = pw.uid;
    h.user = pw.name;
  }
  if (g.empty()) {
    if (!pw.found)
      throw invalid(what + ": uid " + u + " has no entry in the passwd database: give its group");
    h.gid = pw.gid;
  } else if (!parse_id(g, &h.gid)) {
    const bool numeric_looking = (g[0] >= '0' && g[0] <= '9') || g[0] == '+' || g[0] == '-';
    if (numeric_looking) throw invalid(what + ": invalid gid '" + g + "' (0 to 4294967294)");
    if (!group_by_name(g, &h.gid)) throw invalid(what + ": no group '" + g + "' on this host");
  }
  h.group = group_name(h.gid);
  return h;
}

HostUser current_host_user() {
  HostUser h;
  h.uid = ::geteuid();
  h.gid = ::getegid();
  PasswdEntry pw = passwd_by_uid(h.uid);
  h.user = pw.found ? pw.name : std::to_string(h.uid);
  h.group = group_name(h.gid);
  return h;
}

std::string qemu_conf_value(const std::string& text, const std::string& key) {
  std::istringstream in(text);
  std::string line, value;
  while (std::getline(in, line)) {
    size_t i = line.find_first_not_of(" \t");
    if (i == std::string::npos || line[i] == '#') continue;
    if (line.compare(i, key.size(), key) != 0) continue;
    i = line.find_first_not_of(" \t", i + key.size());
    if (i == std::string::npos || line[i] != '=') continue;
    i = line.find_first_not_of(" \t", i + 1);
    if (i == std::string::npos || line[i] != '"') continue;
    size_t end = line.find('"', i + 1);
    if (end == std::string::npos) continue;
    value = line.substr(i + 1, end - i - 1);  // the last setting wins, as in libvirt
  }
  return value;
}

HostUser default_qemu_user(const std::string& libvirt_uri, const std::string& qemu_conf) {
  if (!is_local_system_qemu(libvirt_uri)) return current_host_user();
  std::string text;
  std::error_code ec;
  if (std::filesystem::exists(qemu_conf, ec))
    text = read_file(qemu_conf, 1 << 20, "libvirt's QEMU configuration");
  std::string user = qemu_conf_value(text, "user");
  std::string group = qemu_conf_value(text, "group");
  if (user.empty()) user = kLibvirtQemuUser;
  if (group.empty()) group = kLibvirtQemuUser;
  try {
    return parse_host_user(user + ":" + group, "the user QEMU runs as");
  } catch (const Error& e) {
    throw invalid(std::string(e.what()) + " (from " + qemu_conf +
                  " or libvirt's default; give --qemu-user or config-set qemu_user)");
  }
}

void make_dir(const std::string& path, mode_t mode) {
  std::filesystem::path p = std::filesystem::path(path).lexically_normal();
  if (p.has_relative_path() && !p.has_filename()) p = p.parent_path();  // "a/b/" -> "a/b"
  std::string parent = p.parent_path().string();
  struct stat st {};
  if (!parent.empty() && parent != path && ::stat(parent.c_str(), &st) != 0) {
    if (errno != ENOENT) throw errno_error("cannot stat " + parent, errno);
    make_dir(parent, kPassageDir);
  }
  if (::mkdir(path.c_str(), mode) != 0 && errno != EEXIST)
    throw errno_error("cannot create " + path, errno);
  if (::stat(path.c_str(), &st) != 0) throw errno_error("cannot stat " + path, errno);
  if (!S_ISDIR(st.st_mode)) throw system_error(path + " exists and is not a directory");
  // mkdir applied the umask, and an existing directory may have any mode.
  if ((st.st_mode & 07777) != mode && ::chmod(path.c_str(), mode) != 0)
    throw errno_error("cannot chmod " + octal(mode) + " " + path, errno);
}

void make_file(const std::string& path, mode_t mode) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode));
  if (fd.get() < 0) throw errno_error("cannot create " + path, errno);
  if (::fchmod(fd.get(), mode) != 0) throw errno_error("cannot chmod " + path, errno);
}

void give_to(const std::string& path, const HostUser& user) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (fd.get() < 0) throw errno_error("cannot open " + path, errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw errno_error("cannot stat " + path, errno);
  if ((st.st_uid != user.uid || st.st_gid != user.gid) &&
      ::fchown(fd.get(), user.uid, user.gid) != 0)
    throw errno_error("cannot give " + path + " to " + user.spec() +
                          " (the user QEMU runs as; kiln-spawn needs root for that)",
                      errno);
  if (::fchmod(fd.get(), kPrivateFile) != 0) throw errno_error("cannot chmod " + path, errno);
}

namespace {

// The permission bits of `st` that apply to `user` (as the kernel picks them: owner, else
// group, else other), shifted to the "other" position (rwx = 7).
mode_t bits_for(const struct stat& st, const HostUser& user, const std::vector<gid_t>& groups) {
  if (st.st_uid == user.uid) return (st.st_mode >> 6) & 7;
  if (std::find(groups.begin(), groups.end(), st.st_gid) != groups.end())
    return (st.st_mode >> 3) & 7;
  return st.st_mode & 7;
}

std::vector<gid_t> groups_of(const HostUser& user) {
  std::vector<gid_t> groups(64);
  int n = static_cast<int>(groups.size());
  if (getgrouplist(user.user.c_str(), user.gid, groups.data(), &n) < 0) {
    groups.resize(static_cast<size_t>(n));
    if (getgrouplist(user.user.c_str(), user.gid, groups.data(), &n) < 0) n = 0;
  }
  groups.resize(static_cast<size_t>(n));
  groups.push_back(user.gid);
  return groups;
}

}  // namespace

void check_reachable(const std::string& path, const HostUser& user, const std::string& what,
                     mode_t need) {
  if (user.uid == 0) return;
  const std::vector<gid_t> groups = groups_of(user);
  auto refuse = [&](const std::string& where, const struct stat& st, const std::string& fix) {
    throw invalid("QEMU runs as " + user.spec() + " and cannot " +
                  (where == path ? std::string("use ") : std::string("reach ")) + what + " " +
                  path + ": " + where + " is " + octal(st.st_mode) + ", owner " +
                  std::to_string(st.st_uid) + ":" + std::to_string(st.st_gid) + " (" + fix +
                  ", or set the user with --qemu-user)");
  };
  std::filesystem::path p = std::filesystem::absolute(path).parent_path();
  std::vector<std::filesystem::path> dirs;
  for (; !p.empty(); p = p.parent_path()) {
    dirs.push_back(p);
    if (p == p.root_path()) break;
  }
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    struct stat st {};
    if (::stat(it->c_str(), &st) != 0) throw errno_error("cannot stat " + it->string(), errno);
    if (!(bits_for(st, user, groups) & 1))
      refuse(it->string(), st, "let others through with chmod o+x");
  }
  if (need == 0) return;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw errno_error("cannot stat " + path, errno);
  if ((bits_for(st, user, groups) & need) != need)
    refuse(path, st, "give it to that user, or open it to others");
}

}  // namespace kiln::spawn

#include "kiln/nbd/access.h"

#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "kiln/common/error.h"

namespace kiln::nbd {

namespace {

// A whole decimal number that fits an id, or nullopt.
std::optional<uint32_t> numeric_id(const std::string& s) {
  if (s.empty() || s.size() > 10 || s.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  const unsigned long long v = std::stoull(s);
  if (v >= 0xffffffffull) return std::nullopt;  // (uid_t)-1 means "no change" to chown
  return uint32_t(v);
}

std::optional<passwd> find_user(const std::string& name, std::vector<char>& buf) {
  passwd pw{}, *found = nullptr;
  buf.assign(16384, 0);
  if (getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || !found)
    return std::nullopt;
  return pw;
}

}  // namespace

gid_t find_group(const std::string& name) {
  if (auto id = numeric_id(name)) return gid_t(*id);
  group gr{}, *found = nullptr;
  std::vector<char> buf(16384);
  if (getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &found) != 0 || !found)
    throw common::not_found("unknown group '" + name + "'");
  return found->gr_gid;
}

Owner parse_owner(const std::string& spec) {
  const auto colon = spec.find(':');
  const std::string user = spec.substr(0, colon);
  if (user.empty()) throw common::invalid("owner '" + spec + "': no user (USER[:GROUP])");
  Owner o{};
  if (auto id = numeric_id(user)) {
    o.uid = uid_t(*id);
  } else {
    std::vector<char> buf;
    auto pw = find_user(user, buf);
    if (!pw) throw common::not_found("unknown user '" + user + "'");
    o.uid = pw->pw_uid;
  }
  if (colon != std::string::npos) {
    const std::string grp = spec.substr(colon + 1);
    if (grp.empty()) throw common::invalid("owner '" + spec + "': empty group");
    o.gid = find_group(grp);
  }
  return o;
}

bool control_peer_allowed(int fd, std::optional<gid_t> group, std::string* who) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
    *who = std::string("unknown peer (") + strerror(errno) + ")";
    return false;
  }
  *who = "uid " + std::to_string(cred.uid) + " gid " + std::to_string(cred.gid) + " pid " +
         std::to_string(cred.pid);
  if (cred.uid == 0 || cred.uid == geteuid()) return true;
  if (!group) return false;
  if (cred.gid == *group) return true;
  // Supplementary groups of the peer's user, from the group database.
  std::vector<char> buf;
  passwd pw{}, *found = nullptr;
  buf.assign(16384, 0);
  if (getpwuid_r(cred.uid, &pw, buf.data(), buf.size(), &found) != 0 || !found) return false;
  int n = 64;
  std::vector<gid_t> groups(static_cast<size_t>(n));
  for (int tries = 0; tries < 4; ++tries) {
    int count = n;
    if (getgrouplist(found->pw_name, found->pw_gid, groups.data(), &count) >= 0) {
      groups.resize(size_t(count));
      return std::find(groups.begin(), groups.end(), *group) != groups.end();
    }
    n = std::max(count, n * 2);  // too small: count says how many there are
    groups.resize(size_t(n));
  }
  return false;
}

}  // namespace kiln::nbd

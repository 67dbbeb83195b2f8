// Who may reach what: users and groups named on the command line or in the control API, and
// the SO_PEERCRED check of control connections.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

namespace kiln::nbd {

// A group by name or number. Throws std::runtime_error("unknown group ...").
gid_t find_group(const std::string& name);
// "USER" or "USER:GROUP" (names or numbers) as the owner of a socket. Throws
// std::runtime_error on an unknown user or group.
struct Owner {
  uid_t uid;
  std::optional<gid_t> gid;
};
Owner parse_owner(const std::string& spec);

// Whether the process at the other end of the Unix socket `fd` may use the control API: uid 0,
// the server's own effective uid, or a member of `group` (its gid, or a supplementary group
// of its user per the group database). `who` is set to a description of the peer for logs.
bool control_peer_allowed(int fd, std::optional<gid_t> group, std::string* who);

}  // namespace kiln::nbd

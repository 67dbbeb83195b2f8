// Network namespaces: named ones as bind-mounted files (like `ip netns`, but under our own
// directory), and a guard that enters one for the current thread and comes back.
#pragma once

#include <string>

#include "kiln/common/fd.h"

namespace kiln::net {

using common::Fd;

// Opens a namespace file: a path, or a name under /run/netns (as `ip netns` makes them).
Fd open_netns(const std::string& path_or_name);

// Enters the namespace for the lifetime of the guard.
class NetnsGuard {
 public:
  explicit NetnsGuard(int netns_fd);
  ~NetnsGuard();
  NetnsGuard(const NetnsGuard&) = delete;
  NetnsGuard& operator=(const NetnsGuard&) = delete;

 private:
  Fd saved_;
};

// Creates a new, empty network namespace bound to `path` (no-op if one is bound there).
void create_named_netns(const std::string& path);
// Unbinds and removes it; processes still inside keep it alive.
void delete_named_netns(const std::string& path);
bool is_netns_file(const std::string& path);

// Writes a sysctl of the current network namespace, e.g. "net/ipv4/ip_forward".
void write_sysctl(const std::string& key, const std::string& value);

}  // namespace kiln::net

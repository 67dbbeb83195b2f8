// The text edits injection makes to guest configuration files, as pure functions (unit-tested
// without an image): /etc/passwd lookups, the /etc/shadow hash field, the /etc/hosts line for
// the hostname, and authorized_keys appends.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace kiln::fs {

struct PasswdEntry {
  std::string name;
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::string home;
};

// The entry of `user` in passwd(5) text, or nullopt. Malformed lines are skipped.
std::optional<PasswdEntry> find_passwd_entry(const std::string& passwd, const std::string& user);

// shadow(5) text with the second field of `user`'s line replaced; nullopt if no such line.
std::optional<std::string> set_shadow_hash(const std::string& shadow, const std::string& user,
                                           const std::string& hash);

// hosts(5) text with the 127.0.1.1 line naming `hostname` (and its short form); other lines
// kept. The line is replaced if present, appended otherwise.
std::string set_hosts_name(const std::string& hosts, const std::string& hostname);

// authorized_keys text with every line of `keys` that is not already there appended.
std::string append_keys(const std::string& existing, const std::string& keys);

// Checks, as the operations need them (throw Error with `what` in the message).
void check_user_name(const std::string& user, const std::string& what);
void check_hostname(const std::string& name, const std::string& what);
void check_shadow_hash(const std::string& hash, const std::string& what);
void check_ssh_keys(const std::string& keys, const std::string& what);

}  // namespace kiln::fs

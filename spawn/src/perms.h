// Who may open what kiln-spawn leaves on the host. Tenant data (overlays, config drives, image
// copies, the store) is 0600 in 0700 directories, whatever the umask. QEMU, which libvirt runs
// as an unprivileged user of its own, must still open an instance's config drive, console log
// and NBD socket: those files are given to that user (0600), and only the directories on the
// way to them are searchable by others (0711: no listing, no reading) — docs/kiln-spawn.md.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace kiln::spawn {

inline constexpr mode_t kPrivateFile = 0600;
inline constexpr mode_t kPrivateDir = 0700;
// On the way to what QEMU opens: others may pass through, not list or read.
inline constexpr mode_t kPassageDir = 0711;

// A user and group of the host, e.g. the one QEMU runs as.
struct HostUser {
  uint32_t uid = 0, gid = 0;
  std::string user, group;  // names, or the numbers when the id has no name
  // "USER:GROUP" as the add-export request's "owner" and the messages give it.
  std::string spec() const { return user + ":" + group; }
};

// "USER[:GROUP]": names, or decimal ids (0 to 4294967294, digits only; "+N" as qemu.conf writes
// it too). Without GROUP, the user's primary group. Throws Error(kInvalidArgument) naming `what`.
HostUser parse_host_user(const std::string& spec, const std::string& what);
HostUser current_host_user();

// The user libvirt runs QEMU as for `libvirt_uri`: for the local system daemon (qemu:///system),
// qemu.conf's `user` and `group` (`qemu_conf`), else libvirt's built-in default
// (libvirt-qemu:libvirt-qemu, as Debian builds it); for every other URI (qemu:///session,
// test:///, remote hosts) the user running kiln-spawn.
HostUser default_qemu_user(const std::string& libvirt_uri,
                           const std::string& qemu_conf = "/etc/libvirt/qemu.conf");
// True for the local system daemon's URIs (qemu:///system, qemu+unix:///system, with or
// without ?...): the ones whose qemu.conf is /etc/libvirt/qemu.conf on this host.
bool is_local_system_qemu(const std::string& uri);
// The quoted value of `key = "..."` in qemu.conf's text, or "" if it is not set.
std::string qemu_conf_value(const std::string& text, const std::string& key);

// Makes `path` (and missing parents, kPassageDir) and gives it exactly `mode`, also when it
// existed with another one (older installs, other umasks).
void make_dir(const std::string& path, mode_t mode);
// Creates an empty file `path` with `mode` (or truncates an existing one and sets `mode`).
void make_file(const std::string& path, mode_t mode);
// chown + chmod kPrivateFile, not following a symbolic link.
void give_to(const std::string& path, const HostUser& user);

// Throws Error(kInvalidArgument) unless `user` can search every directory above `path`, and has the
// permissions `need` (rwx as 4/2/1; 0: none checked) on `path` itself: the mode bits that
// apply to it (owner, else group with its supplementary groups, else other). Root can.
void check_reachable(const std::string& path, const HostUser& user, const std::string& what,
                     mode_t need = 0);

}  // namespace kiln::spawn

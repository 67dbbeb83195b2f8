// The daemons netplumb runs inside namespaces (dnsmasq, the metadata proxy), found again by the
// pid file named on their command line ("--pid-file=PATH"), so that a recycled pid is never
// mistaken for ours, and stopped by that pid only.
#pragma once

#include <sys/types.h>

#include <string>

namespace kiln::net {

// The contents of a small file, "" if it cannot be read.
std::string read_small_file(const std::string& path);

// The pid in `pid_file` if that process runs (not a zombie) with "--pid-file=<pid_file>" on
// its command line, else 0. `cmdline` gets its NUL-separated command line.
pid_t daemon_pid(const std::string& pid_file, std::string* cmdline = nullptr);

// SIGTERM, up to 3 s for it to go, then SIGKILL.
void stop_daemon(pid_t pid);

}  // namespace kiln::net

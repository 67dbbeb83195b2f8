// The daemons netplumb runs inside namespaces (dnsmasq, the metadata proxy), found again by the
// pid file named on their command line ("--pid-file=PATH"), so that a recycled pid is never
// mistaken for ours, and stopped by that pid only.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace kiln::net {

// The contents of a small file, "" if it cannot be read.
std::string read_small_file(const std::string& path);

// The pid in `pid_file` if that process runs (not a zombie) with "--pid-file=<pid_file>" on
// its command line, else 0. `cmdline` gets its NUL-separated command line.
pid_t daemon_pid(const std::string& pid_file, std::string* cmdline = nullptr);

// SIGTERM, up to 3 s for it to go, then SIGKILL.
void stop_daemon(pid_t pid);

// Runs `args` (args[0] a path) inside the network namespace at `netns_path` and waits for the
// process it forked; returns that process's wait status (exit 126: the namespace could not be
// entered or the log opened, 127: args[0] could not run). With a `log` path, for a program
// that does not go to the background itself: a double fork (the daemon is nobody's child, so
// no zombie in a long-lived caller) into a new session, stdin from /dev/null, stdout and
// stderr appended to `log`; the status is then the intermediate process's (0).
int run_in_netns(const std::string& netns_path, const std::vector<std::string>& args,
                 const std::string& log = "");

}  // namespace kiln::net

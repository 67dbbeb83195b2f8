// kiln-fs: guest filesystems in user space — list, look, inject, mount.
#include <getopt.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "commands.h"
#include "kiln/fs/filesystem.h"
#include "kiln/version.h"

namespace kiln::fs::tool {
namespace {

constexpr const char* kUsage =
    "usage: kiln-fs COMMAND IMAGE [ARGS] [OPTIONS]\n"
    "IMAGE is a raw or qcow2 file, or an nbd:// or nbd+unix:// URI.\n"
    "\n"
    "  list IMAGE [--json]                 partitions and filesystems\n"
    "  ls IMAGE PATH [-l]                  list a directory of the guest\n"
    "  cat IMAGE PATH                      print a guest file\n"
    "  stat IMAGE PATH                     inode, mode, owner, times, xattrs\n"
    "  inject IMAGE OPERATION...           change the guest without mounting it:\n"
    "      --ssh-key USER:FILE             append FILE's keys to ~USER/.ssh/authorized_keys\n"
    "      --hostname NAME                 /etc/hostname and the /etc/hosts line\n"
    "      --file GUEST=HOST[:MODE[:UID:GID]]  copy a host file in\n"
    "      --mkdir PATH[:MODE[:UID:GID]]   make a directory (and its parents)\n"
    "      --delete PATH                   remove a file or a directory tree\n"
    "      --password USER:HASH            set the crypt(3) hash in /etc/shadow\n"
    "      --follow-symlinks               follow symbolic links in guest paths\n"
    "  mount IMAGE DIR [--ro] [--allow-other] [-f|--foreground]\n"
    "\n"
    "Common options: --partition N (default: the only ext filesystem), --format raw|qcow2.\n"
    "kiln-fs --version shows the version.\n";

}  // namespace

int parse_partition(const char* text) {
  // Digits only: strtol would take " 1", "+1" and "1 " too.
  const std::string s = text;
  long v = 0;
  bool ok = !s.empty() && s.size() <= 5;
  for (char c : s) {
    ok = ok && c >= '0' && c <= '9';
    if (ok) v = v * 10 + (c - '0');
  }
  if (!ok || v < 1 || v > 8192)
    throw UsageError("invalid partition number '" + s + "' (1 to 8192)");
  return static_cast<int>(v);
}

void bad_option(int c, const char* arg) {
  if (c == ':') throw UsageError(std::string("option '") + arg + "' needs an argument");
  throw UsageError(std::string("unknown option '") + arg + "'");
}

}  // namespace kiln::fs::tool

int main(int argc, char** argv) {
  using namespace kiln::fs::tool;
  if (argc < 2 || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 1 : 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::printf("kiln-fs %s\n", KILN_VERSION);
    return 0;
  }
  const std::string cmd = argv[1];
  try {
    // Subcommands parse argv[1..]: argv[0] of their view is the subcommand's name.
    int sub_argc = argc - 1;
    char** sub_argv = argv + 1;
    if (cmd == "list") return cmd_list(sub_argc, sub_argv);
    if (cmd == "inject") return cmd_inject(sub_argc, sub_argv);
    if (cmd == "ls") return cmd_ls(sub_argc, sub_argv);
    if (cmd == "cat") return cmd_cat(sub_argc, sub_argv);
    if (cmd == "stat") return cmd_stat(sub_argc, sub_argv);
    if (cmd == "mount") return cmd_mount(sub_argc, sub_argv);
    throw UsageError("unknown command '" + cmd + "' (list, ls, cat, stat, inject, mount)");
  } catch (const UsageError& e) {
    std::fprintf(stderr, "kiln-fs: %s (kiln-fs --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kiln-fs: %s\n", e.what());
    return 1;
  }
}

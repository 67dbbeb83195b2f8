// kiln-fs: guest filesystems in user space — list, look, inject, mount. One table of
// subcommands; the common CLI layer parses their options and reports errors.
#include <iostream>
#include <string>

#include "commands.h"
#include "kiln/block/secret.h"
#include "kiln/fs/filesystem.h"

namespace kiln::fs::cli {
namespace {

constexpr const char* kUsage =
    "Usage: kiln-fs COMMAND IMAGE [ARGS] [OPTIONS]\n"
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
    "      --busy-wait=USEC                after a reply, look for the next request this long\n"
    "                                      before sleeping (default 20; 0 = sleep at once)\n"
    "\n"
    "Common options: --partition N (default: the only ext filesystem), --format raw|qcow2.\n"
    "Encrypted qcow2 (LUKS): --object secret,id=ID,file=KEYFILE --image-opts\n"
    "  driver=qcow2,file.filename=IMAGE,encrypt.key-secret=ID in place of IMAGE.\n"
    "kiln-fs --version shows the version.\n";

using Command = common::cli::Command<const Args>;

const common::cli::CommandTable<const Args> kCommands = {
    {"list",
     "IMAGE [--json]",
     {{"--json"}, kFormatOption, kObjectOption, kImageOptsOption},
     cmd_list},
    {"ls",
     "IMAGE PATH [-l]",
     {{"-l"}, kPartitionOption, kFormatOption, kObjectOption, kImageOptsOption},
     cmd_ls},
    {"cat",
     "IMAGE PATH",
     {kPartitionOption, kFormatOption, kObjectOption, kImageOptsOption},
     cmd_cat},
    {"stat",
     "IMAGE PATH",
     {kPartitionOption, kFormatOption, kObjectOption, kImageOptsOption},
     cmd_stat},
    {"inject",
     "IMAGE OPERATION...",
     {{"--ssh-key", kValue},
      {"--hostname", kValue},
      {"--file", kValue},
      {"--mkdir", kValue},
      {"--delete", kValue},
      {"--password", kValue},
      {"--follow-symlinks"},
      kPartitionOption,
      kFormatOption,
      kObjectOption,
      kImageOptsOption},
     cmd_inject},
    {"mount",
     "IMAGE DIR [--ro] [--allow-other] [-f|--foreground] [--busy-wait=USEC]",
     {{"--ro|--read-only"},
      {"--allow-other"},
      {"-f|--foreground"},
      {"--busy-wait", kValue},
      kPartitionOption,
      kFormatOption,
      kObjectOption,
      kImageOptsOption},
     cmd_mount},
};

void help(std::ostream& out) { out << kUsage; }

int run(const std::vector<std::string>& argv) {
  if (argv.empty()) {
    std::cerr << kUsage;
    return 1;
  }
  const Command* cmd = common::cli::find_command(kCommands, argv[0]);
  if (!cmd)
    throw UsageError("unknown command '" + argv[0] + "' (list, ls, cat, stat, inject, mount)");
  std::vector<Option> options = cmd->options;
  options.push_back({"-h|--help"});
  const Args args = common::cli::parse({argv.begin() + 1, argv.end()}, options);
  if (args.flag("--help")) {  // the whole help: it lists every command's options
    help(std::cout);
    return 0;
  }
  return cmd->run(args);
}

}  // namespace

int parse_partition(const std::string& text) {
  return static_cast<int>(common::cli::parse_number(text, "partition number", 1, 8192));
}

ImageArg image_arg(const Args& args, const std::string& text) {
  block::ImageSpec spec = block::resolve_image_arg(text, args.flag("--image-opts"),
                                                   args.get("--format"), args.all("--object"));
  return {std::move(spec.path), std::move(spec.format), std::move(spec.key_secret)};
}

}  // namespace kiln::fs::cli

int main(int argc, char** argv) {
  using namespace kiln::common::cli;
  return run_main({"kiln-fs", kiln::fs::cli::help, 2, true, &exit_one}, argc, argv,
                  kiln::fs::cli::run);
}

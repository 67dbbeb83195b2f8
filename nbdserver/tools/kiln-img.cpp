// kiln-img: create, inspect, check, map, grow and convert disk images, with the syntax,
// output and exit codes of qemu-img for the subset it covers.
#include <iostream>
#include <string>

#include "img_commands.h"
#include "kiln/block/device.h"
#include "tool_util.h"

namespace kiln::block::cli {

OutputFormat parse_output_format(const std::string& value) {
  if (value == "human") return OutputFormat::kHuman;
  if (value == "json") return OutputFormat::kJson;
  throw ToolError("--output must be used with human or json as argument.");
}

std::string valid_format(const std::string& requested) {
  if (!requested.empty() && requested != "raw" && requested != "qcow2")
    throw ToolError("Unknown file format '" + requested + "' (supported: qcow2, raw)");
  return requested;
}

std::string resolve_format(const std::string& requested, const std::string& path) {
  if (requested.empty()) return kiln::block::probe_format(path);
  return valid_format(requested);
}

}  // namespace kiln::block::cli

namespace {

using kiln::common::cli::kValue;
using kiln::common::cli::Option;
using Command = kiln::common::cli::Command<const kiln::common::cli::Args>;

const Option kFormat{"-f", kValue};
const Option kOutput{"--output", kValue};
const Option kHelp{"-h|--help"};
// QEMU's secrets and option strings (encrypted images): see docs/kiln-img.md.
const Option kObject{"--object", kValue};
const Option kImageOpts{"--image-opts"};

// qemu-img's options for the subset of each command that kiln-img implements.
const kiln::common::cli::CommandTable<const kiln::common::cli::Args> kCommands = {
    {"create",
     "[-q] [-f FMT] [-b BACKING -F BACKING_FMT] [-u] [-o OPTIONS] FILE [SIZE]",
     {kHelp, kFormat, {"-b", kValue}, {"-F", kValue}, {"-o", kValue}, {"-q"}, {"-u"}, kObject},
     kiln::block::cli::img_create},
    {"info",
     "[-f FMT] [--output=human|json] [--backing-chain] FILE",
     {kHelp, kFormat, kOutput, {"--backing-chain"}, {"-U"}, kObject, kImageOpts},
     kiln::block::cli::img_info},
    {"check",
     "[-q] [-f FMT] [-r leaks|all] [--output=human|json] FILE",
     {kHelp, kFormat, kOutput, {"-r|--repair", kValue}, {"-q"}, {"-U"}, kObject, kImageOpts},
     kiln::block::cli::img_check},
    {"map",
     "[-f FMT] [--output=human|json] FILE",
     {kHelp, kFormat, kOutput, {"-U"}, kObject, kImageOpts},
     kiln::block::cli::img_map},
    {"resize",
     "[-q] [-f FMT] FILE [+]SIZE",
     {kHelp, kFormat, {"-q"}, {"--shrink"}, kObject, kImageOpts},
     kiln::block::cli::img_resize},
    {"convert",
     "[--object OBJ] [--image-opts] [--target-image-opts] [-q] [-p] [-U] [-f FMT] "
     "[-l SNAPSHOT_PARAM] [-O FMT] [-o OPTIONS] [-c] [-B BACKING -F BACKING_FMT] [-S SIZE] "
     "[-n] [-m N] [-W] SOURCE DEST",
     {kHelp,
      kFormat,
      {"-O", kValue},
      {"-q"},
      {"-p"},
      {"-U"},
      {"-o", kValue},
      {"-c"},
      {"-B", kValue},
      {"-F", kValue},
      {"-S", kValue},
      {"-n"},
      {"-m", kValue},
      {"-W"},
      {"-l", kValue},
      kObject,
      kImageOpts,
      {"--target-image-opts"}},
     kiln::block::cli::img_convert},
    {"compare",
     "[-f FMT] [-F FMT] [-s] [-q] [-U] FILE1 FILE2",
     {kHelp,
      {"-f|--a-format", kValue},
      {"-F|--b-format", kValue},
      {"-s|--strict"},
      {"-q|--quiet"},
      {"-U|--force-share"},
      {"-p|--progress"}},
     kiln::block::cli::img_compare},
    {"measure",
     "[--output=human|json] [-O FMT] [-o OPTIONS] [--size N | [-f FMT] FILE]",
     {kHelp,
      kFormat,
      kOutput,
      {"-O", kValue},
      {"-o", kValue},
      {"--size", kValue},
      {"-U|--force-share"}},
     kiln::block::cli::img_measure},
    {"commit",
     "[-q] [-f FMT] [-b BASE] [-d] [-p] FILE",
     {kHelp, kFormat, {"-b", kValue}, {"-d"}, {"-p"}, {"-q"}},
     kiln::block::cli::img_commit},
    {"rebase",
     "[-q] [-f FMT] [-u] [-p] -b BACKING [-F FMT] FILE",
     {kHelp, kFormat, {"-b", kValue}, {"-F", kValue}, {"-u"}, {"-p"}, {"-q"}},
     kiln::block::cli::img_rebase},
    {"amend",
     "[-q] [-f FMT] -o OPTIONS FILE",
     {kHelp, kFormat, {"-o", kValue}, {"-p"}, {"-q"}, {"--force"}},
     kiln::block::cli::img_amend},
    {"snapshot",
     "[-q] [-U] [-f FMT] [-l | -a SNAPSHOT | -c SNAPSHOT | -d SNAPSHOT] FILE",
     {kHelp, kFormat, {"-l"}, {"-a", kValue}, {"-c", kValue}, {"-d", kValue}, {"-q"}, {"-U"}},
     kiln::block::cli::img_snapshot},
};

void help(std::ostream& out) {
  out << "Usage: kiln-img COMMAND [OPTIONS]\n"
         "\n"
         "Commands:\n";
  kiln::common::cli::print_commands(out, kCommands);
  out << "\n"
         "FMT is qcow2 or raw. SIZE takes a k, M, G or T suffix (powers of 1024).\n"
         "qcow2 create OPTIONS: cluster_size, refcount_bits, compat (0.10|1.1), lazy_refcounts\n"
         "(on|off), compression_type (zlib|zstd), backing_file, backing_fmt, size,\n"
         "encrypt.format=luks with encrypt.key-secret=ID (an --object secret,id=ID,file=F),\n"
         "encrypt.cipher-alg, encrypt.hash-alg, encrypt.iter-time.\n"
         "info, check, map, resize and convert take --object and --image-opts as qemu-img\n"
         "does.\n"
         "See docs/kiln-img.md. kiln-img --version shows the version.\n";
}

int run(const std::vector<std::string>& argv) {
  if (argv.empty())
    throw kiln::block::cli::ToolError("Not enough arguments (try 'kiln-img --help')");
  const std::string& name = argv[0];
  if (name == "help") {
    help(std::cout);
    return 0;
  }
  if (name == "-V") {
    kiln::common::cli::print_version(std::cout, "kiln-img");
    return 0;
  }
  const Command* cmd = kiln::common::cli::find_command(kCommands, name);
  if (!cmd)
    throw kiln::block::cli::ToolError("Command not found: " + name + " (try 'kiln-img --help')");
  auto args = kiln::common::cli::parse({argv.begin() + 1, argv.end()}, cmd->options);
  if (args.flag("--help")) {
    std::cout << "Usage: kiln-img " << cmd->name << " " << cmd->usage << "\n";
    return 0;
  }
  return cmd->run(args);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kiln::common::cli;
  return run_main({"kiln-img", help, 1, false, &exit_one}, argc, argv, run);
}

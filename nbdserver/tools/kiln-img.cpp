// kiln-img: create, inspect, check, map, grow and convert disk images, with the syntax,
// output and exit codes of qemu-img for the subset it covers.
#include <getopt.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "img_commands.h"
#include "kiln/block/device.h"
#include "kiln/version.h"
#include "tool_util.h"

namespace kiln::tools {

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

void bad_option(int optopt_char, const char* arg) {
  if (optopt_char == ':')
    throw ToolError(std::string("option '") + (arg ? arg : "?") + "' requires an argument");
  throw ToolError(std::string("unrecognized option '") + (arg ? arg : "?") + "'");
}

}  // namespace kiln::tools

namespace {

void usage(FILE* out) {
  std::fputs(
      "usage: kiln-img COMMAND [OPTIONS]\n"
      "\n"
      "Commands:\n"
      "  create [-q] [-f FMT] [-b BACKING -F BACKING_FMT] [-u] [-o OPTIONS] FILE [SIZE]\n"
      "  info [-f FMT] [--output=human|json] [--backing-chain] FILE\n"
      "  check [-q] [-f FMT] [-r leaks|all] [--output=human|json] FILE\n"
      "  map [-f FMT] [--output=human|json] FILE\n"
      "  resize [-q] [-f FMT] FILE [+]SIZE\n"
      "  convert [-q] [-f FMT] -O raw SOURCE DEST\n"
      "\n"
      "FMT is qcow2 or raw. SIZE takes a k, M, G or T suffix (powers of 1024).\n"
      "qcow2 create OPTIONS: cluster_size, refcount_bits, compat (0.10|1.1), lazy_refcounts\n"
      "(on|off), compression_type (zlib|zstd), backing_file, backing_fmt, size.\n"
      "See docs/kiln-img.md. kiln-img --version shows the version.\n",
      out);
}

int dispatch(int argc, char** argv) {
  if (argc < 2) {
    throw kiln::tools::ToolError("Not enough arguments (try 'kiln-img --help')");
  }
  std::string cmd = argv[1];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    usage(stdout);
    return 0;
  }
  if (cmd == "-V" || cmd == "--version") {
    std::printf("kiln-img %s\n", KILN_VERSION);
    return 0;
  }
  // getopt() keeps global state; every subcommand parses once from a fresh start.
  optind = 0;
  opterr = 0;
  int sub_argc = argc - 1;
  char** sub_argv = argv + 1;
  if (cmd == "create") return kiln::tools::img_create(sub_argc, sub_argv);
  if (cmd == "info") return kiln::tools::img_info(sub_argc, sub_argv);
  if (cmd == "check") return kiln::tools::img_check(sub_argc, sub_argv);
  if (cmd == "map") return kiln::tools::img_map(sub_argc, sub_argv);
  if (cmd == "resize") return kiln::tools::img_resize(sub_argc, sub_argv);
  if (cmd == "convert") return kiln::tools::img_convert(sub_argc, sub_argv);
  throw kiln::tools::ToolError("Command not found: " + cmd + " (try 'kiln-img --help')");
}

}  // namespace

int main(int argc, char** argv) {
  int rc;
  try {
    rc = dispatch(argc, argv);
  } catch (const kiln::tools::ToolError& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "kiln-img: %s\n", e.what());
    return e.exit_code();
  } catch (const kiln::block::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "kiln-img: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    std::fprintf(stderr, "kiln-img: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "kiln-img: %s\n", e.what());
    return 1;
  }
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
    std::fprintf(stderr, "kiln-img: error writing to standard output: %s\n", std::strerror(errno));
    return 1;
  }
  return rc;
}

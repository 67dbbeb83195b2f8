// The subcommands of kiln-img. Each takes the arguments after the subcommand name (argv[0] is
// the subcommand), prints what qemu-img prints, and returns the exit code; errors are thrown
// as ToolError or kiln::block::Error and turned into one line by main().
#pragma once

#include <string>

#include "kiln/block/reactor.h"

namespace kiln::tools {

int img_create(int argc, char** argv);
int img_info(int argc, char** argv);
int img_check(int argc, char** argv);
int img_map(int argc, char** argv);
int img_resize(int argc, char** argv);
int img_convert(int argc, char** argv);

// Shared by the subcommands.
enum class OutputFormat { kHuman, kJson };
OutputFormat parse_output_format(const std::string& value);
// The format given with -f, or the probed one. Throws on unknown names.
std::string resolve_format(const std::string& requested, const std::string& path);
// Turns an unknown option or a missing argument reported by getopt into a ToolError.
[[noreturn]] void bad_option(int optopt_char, const char* arg);

}  // namespace kiln::tools

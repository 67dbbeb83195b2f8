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
// The format given with -f, or the probed one. Throws on unknown names. For commands that only
// read the top image's header (info, check); those that open the image through the block
// layer pass the format as given (checked with valid_format), so that a probed image that
// names a backing file is refused there.
std::string resolve_format(const std::string& requested, const std::string& path);
// `requested` if it is empty (probe) or a known format; throws otherwise.
std::string valid_format(const std::string& requested);
// Turns an unknown option or a missing argument reported by getopt into a ToolError.
[[noreturn]] void bad_option(int optopt_char, const char* arg);

}  // namespace kiln::tools

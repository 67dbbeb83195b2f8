// kiln-fs subcommands. Each returns the exit status or throws (kiln::fs::Error or UsageError)
// to end the program with one line on stderr.
#pragma once

#include <stdexcept>
#include <string>

namespace kiln::fs::tool {

class UsageError : public std::runtime_error {
 public:
  explicit UsageError(const std::string& what) : std::runtime_error(what) {}
};

int cmd_list(int argc, char** argv);
int cmd_inject(int argc, char** argv);
int cmd_ls(int argc, char** argv);
int cmd_cat(int argc, char** argv);
int cmd_stat(int argc, char** argv);
int cmd_mount(int argc, char** argv);

// Shared option parsing.
int parse_partition(const char* text);
[[noreturn]] void bad_option(int c, const char* arg);

}  // namespace kiln::fs::tool

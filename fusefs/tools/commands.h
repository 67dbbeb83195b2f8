// kiln-fs subcommands, one table (kiln-fs.cpp). Each gets its options and positionals parsed by
// the common CLI layer and returns the exit status or throws (kiln::fs::Error, or
// common::cli::UsageError for a usage mistake: exit 2) to end the program with one line.
#pragma once

#include <string>

#include "kiln/common/cli.h"

namespace kiln::fs::cli {

using common::cli::Args;
using common::cli::kFlag;
using common::cli::kValue;
using common::cli::Option;
using common::cli::UsageError;

int cmd_list(const Args& args);
int cmd_inject(const Args& args);
int cmd_ls(const Args& args);
int cmd_cat(const Args& args);
int cmd_stat(const Args& args);
int cmd_mount(const Args& args);

// The options every command that opens an image takes.
inline const Option kPartitionOption{"-p|--partition", kValue};
inline const Option kFormatOption{"--format", kValue};

// --partition N: 1 to 8192.
int parse_partition(const std::string& text);

}  // namespace kiln::fs::cli

// kiln-fs subcommands, one table (kiln-fs.cpp). Each gets its options and positionals parsed by
// the common CLI layer and returns the exit status or throws (kiln::fs::Error, or
// common::cli::UsageError for a usage mistake: exit 2) to end the program with one line.
#pragma once

#include <optional>
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
// Encrypted images, as kiln-img, kiln-io and kiln-nbd (and QEMU's tools) take them:
// --object secret,id=ID,file=F and --image-opts driver=qcow2,file.filename=IMG,
// encrypt.key-secret=ID (IMAGE is then that option string).
inline const Option kObjectOption{"--object", kValue};
inline const Option kImageOptsOption{"--image-opts"};

// What IMAGE names: a path or URI, its format (--format, or the driver of --image-opts) and
// the key of an encrypted image. Checked by kiln/block/secret.h's rules; a bad --object, an
// unknown secret id or --format with --image-opts is an Error (exit 1, as kiln-io).
struct ImageArg {
  std::string image;
  std::string format;
  std::optional<std::string> key_secret;
};
ImageArg image_arg(const Args& args, const std::string& text);

// --partition N: 1 to 8192.
int parse_partition(const std::string& text);

}  // namespace kiln::fs::cli

// The qcow2 creation options of `kiln-img create -o`, shared with `convert -o` (img_create.cpp).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "kiln/block/qcow2.h"

namespace kiln::block::cli {

struct CreateArgs {
  std::string format = "raw";
  std::string file;
  std::optional<uint64_t> size;
  std::string backing;
  std::string backing_format;
  bool unsafe = false;
  bool quiet = false;
  // -o values exactly as given (qemu-img echoes them), empty when not given.
  std::string cluster_size, refcount_bits, compat, lazy_refcounts, compression_type, extended_l2;
  // encrypt.* options, as given; `encrypt_echo` is what qemu-img prints for them, in order.
  std::string encrypt_format, key_secret_id, cipher_alg, hash_alg, iter_time, cipher_mode, ivgen;
  std::string encrypt_echo;
};

// Parses one -o argument (comma-separated key=value pairs, ",," escapes a comma) into `a`;
// errors name `file`.
void parse_o(const std::string& text, CreateArgs& a, const std::string& file);
bool parse_on_off(const std::string& v, const std::string& file, const char* name);
// Checks the -o values as qemu-img does and turns them into creation options (errors are
// ToolErrors starting with "FILE: ").
kiln::block::qcow2::CreateOptions qcow2_options(const CreateArgs& a);

}  // namespace kiln::block::cli

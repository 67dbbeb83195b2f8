// kiln-img create: qcow2 (with an optional backing file) or raw, as qemu-img create.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

#include "img_commands.h"
#include "img_create_options.h"
#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"
#include "kiln/block/secret.h"
#include "kiln/common/text.h"
#include "tool_util.h"

namespace kiln::block::cli {
namespace {

bool is_power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// As qemu-img, the image is a whole number of 512-byte sectors (the size printed is the one
// given). Sizes are at most 2^63 - 1, so this cannot overflow.
uint64_t whole_sectors(uint64_t size) { return (size + 511) / 512 * 512; }

}  // namespace

// Parses one -o argument: comma-separated key=value pairs (",," escapes a comma).
void parse_o(const std::string& text, CreateArgs& a, const std::string& file) {
  for (const std::string& item : common::split_qemu_options(text)) {
    if (item.empty()) continue;
    auto eq = item.find('=');
    std::string key = item.substr(0, eq);
    std::string value = eq == std::string::npos ? "" : item.substr(eq + 1);
    if (eq == std::string::npos)
      throw ToolError(file + ": Invalid parameter '" + key + "' (expected key=value)");
    if (key == "cluster_size") {
      parse_size_arg(value, "cluster size");  // checked now: an empty value is no default
      a.cluster_size = value;
    } else if (key == "refcount_bits") {
      common::cli::parse_number(value, "refcount_bits", 0, 1u << 20,
                                common::cli::Radix::kDecimalOrHex);
      a.refcount_bits = value;
    } else if (key == "compat") {
      a.compat = value;
    } else if (key == "lazy_refcounts") {
      a.lazy_refcounts = value;
    } else if (key == "extended_l2") {
      a.extended_l2 = value;
    } else if (key == "compression_type") {
      a.compression_type = value;
    } else if (key == "backing_file") {
      a.backing = value;
    } else if (key == "backing_fmt") {
      a.backing_format = value;
    } else if (key == "size") {
      a.size = parse_size_arg(value, "image size");
    } else if (key == "encryption") {
      // qemu's old boolean, which meant the legacy AES-CBC.
      if (value == "on" || value == "true" || value == "yes")
        throw ToolError(file +
                        ": Use of AES-CBC encrypted qcow2 images is no longer supported; use "
                        "encrypt.format=luks");
    } else if (key.starts_with("encrypt.")) {
      const std::string k = key.substr(8);
      if (k == "format")
        a.encrypt_format = value;
      else if (k == "key-secret")
        a.key_secret_id = value;
      else if (k == "cipher-alg")
        a.cipher_alg = value;
      else if (k == "hash-alg")
        a.hash_alg = value;
      else if (k == "iter-time")
        a.iter_time = value;
      else if (k == "cipher-mode")
        a.cipher_mode = value;
      else if (k == "ivgen-alg")
        a.ivgen = value;
      else
        throw ToolError(file + ": Invalid parameter '" + key + "'");
      a.encrypt_echo += " " + key + "=" + value;
    } else {
      throw ToolError(file + ": Invalid parameter '" + key + "'");
    }
  }
}

bool parse_on_off(const std::string& v, const std::string& file, const char* name) {
  if (v == "on" || v == "true" || v == "yes") return true;
  if (v == "off" || v == "false" || v == "no") return false;
  throw ToolError(file + ": Parameter '" + name + "' expects 'on' or 'off'");
}

kiln::block::qcow2::CreateOptions qcow2_options(const CreateArgs& a) {
  const std::string& f = a.file;
  kiln::block::qcow2::CreateOptions o;
  if (!a.cluster_size.empty()) {
    uint64_t cs = parse_size_arg(a.cluster_size, "cluster size");
    if (!is_power_of_two(cs) || cs < 512 || cs > (2u << 20))
      throw ToolError(f + ": Cluster size must be a power of two between 512 and 2048k");
    o.cluster_size = static_cast<uint32_t>(cs);
  }
  if (!a.compat.empty()) {
    if (a.compat == "0.10" || a.compat == "v2") {
      o.version = 2;
    } else if (a.compat == "1.1" || a.compat == "v3") {
      o.version = 3;
    } else {
      throw ToolError(f + ": Invalid parameter value for 'compat': '" + a.compat +
                      "' (use 0.10 or 1.1)");
    }
  }
  if (!a.refcount_bits.empty()) {
    uint64_t rb = common::cli::parse_number(a.refcount_bits, "refcount_bits", 0, 1u << 20,
                                            common::cli::Radix::kDecimalOrHex);
    if (!is_power_of_two(rb) || rb > 64)
      throw ToolError(f + ": Refcount width must be a power of two and may not exceed 64 bits");
    if (o.version < 3 && rb != 16)
      throw ToolError(f +
                      ": Different refcount widths than 16 bits require compatibility level 1.1 "
                      "or above (use version=v3 or greater)");
    o.refcount_bits = static_cast<uint32_t>(rb);
  }
  if (!a.lazy_refcounts.empty()) {
    o.lazy_refcounts = parse_on_off(a.lazy_refcounts, f, "lazy_refcounts");
    if (o.lazy_refcounts && o.version < 3)
      throw ToolError(f +
                      ": Lazy refcounts only supported with compatibility level 1.1 and above "
                      "(use version=v3 or greater)");
  }
  if (!a.extended_l2.empty()) {
    o.extended_l2 = parse_on_off(a.extended_l2, f, "extended_l2");
    if (o.extended_l2 && o.version < 3)
      throw ToolError(f +
                      ": Extended L2 entries are only supported with compatibility level 1.1 "
                      "and above (use version=v3 or greater)");
    if (o.extended_l2 && o.cluster_size < 16384)
      throw ToolError(f +
                      ": Extended L2 entries are only supported with cluster sizes of at least "
                      "16384 bytes");
  }
  if (!a.encrypt_format.empty() || !a.key_secret_id.empty()) {
    if (a.encrypt_format == "aes")
      throw ToolError(f +
                      ": Use of AES-CBC encrypted qcow2 images is no longer supported; use "
                      "encrypt.format=luks");
    if (a.encrypt_format != "luks")
      throw ToolError(f + ": Parameter 'encrypt.format' does not accept value '" +
                      a.encrypt_format + "' (luks)");
    if (!a.cipher_mode.empty() && a.cipher_mode != "xts")
      throw ToolError(f + ": encrypt.cipher-mode '" + a.cipher_mode + "' is not supported (xts)");
    if (!a.ivgen.empty() && a.ivgen != "plain64")
      throw ToolError(f + ": encrypt.ivgen-alg '" + a.ivgen + "' is not supported (plain64)");
    o.encrypt_format = "luks";
    if (!a.cipher_alg.empty()) o.encrypt_cipher_alg = a.cipher_alg;
    if (!a.hash_alg.empty()) o.encrypt_hash_alg = a.hash_alg;
    if (!a.iter_time.empty())
      o.encrypt_iter_time_ms = static_cast<uint32_t>(
          common::cli::parse_number(a.iter_time, "encrypt.iter-time", 1, 60000));
  }
  if (!a.compression_type.empty()) {
    if (a.compression_type != "zlib" && a.compression_type != "zstd")
      throw ToolError(f + ": Parameter 'compression-type' does not accept value '" +
                      a.compression_type + "'");
    if (a.compression_type != "zlib" && o.version < 3)
      throw ToolError(f +
                      ": Non-zlib compression type is only supported with compatibility level "
                      "1.1 and above (use version=v3 or greater)");
    o.compression_type = a.compression_type;
  }
  o.backing_file = a.backing;
  o.backing_format = a.backing_format;
  return o;
}

namespace {

// Opens the backing file as the new image will (relative to its directory, with the given
// format) and returns its size.
uint64_t backing_size(const CreateArgs& a) {
  std::string path = path_combine(a.file, a.backing);
  kiln::block::OpenOptions opts;
  opts.format = a.backing_format;
  opts.read_only = true;
  auto& reactor = kiln::block::Reactor::current();
  try {
    auto dev = reactor.run(kiln::block::open_image(reactor, path, opts));
    uint64_t size = dev->size();
    reactor.run(dev->close());
    return size;
  } catch (const kiln::block::Error& e) {
    throw ToolError(a.file + ": Could not open backing image '" + a.backing + "': " + e.what());
  }
}

void create_raw(const std::string& path, uint64_t size) {
  // Truncated only once the image's locks are ours: a file in use stays intact.
  kiln::common::Fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (fd.get() < 0)
    throw ToolError(path + ": Could not create '" + path + "': " + std::strerror(errno));
  try {
    kiln::block::lock_image_file(fd.get(), path, true);
  } catch (const kiln::block::Error& e) {
    throw ToolError(e.what());
  }
  const bool sized =
      ::ftruncate(fd.get(), 0) == 0 && ::ftruncate(fd.get(), static_cast<off_t>(size)) == 0;
  kiln::block::unlock_image_file(fd.get());
  if (!sized || fd.close() != 0)
    throw ToolError(path + ": Could not resize file to " + std::to_string(size) +
                    " bytes: " + std::strerror(errno));
}

}  // namespace

int img_create(const Args& args) {
  CreateArgs a;
  a.format = args.get_or("-f", "raw");
  a.backing = args.get_or("-b", "");
  a.backing_format = args.get_or("-F", "");
  const std::vector<std::string> o_args = args.all("-o");
  a.quiet = args.flag("-q");
  a.unsafe = args.flag("-u");
  const auto& pos = args.positional();
  if (pos.empty()) throw ToolError("Expecting image file name");
  a.file = pos[0];
  if (pos.size() > 1) a.size = parse_size_arg(pos[1], "image size");
  if (pos.size() > 2) throw ToolError("Unexpected argument '" + pos[2] + "'");
  if (a.format != "raw" && a.format != "qcow2")
    throw ToolError("Unknown file format '" + a.format + "' (supported: qcow2, raw)");
  for (const std::string& o : o_args) parse_o(o, a, a.file);

  if (a.format == "raw") {
    if (!a.encrypt_echo.empty())
      throw ToolError(a.file + ": encrypt options are not supported for file format 'raw'");
    if (!a.backing.empty())
      throw ToolError(a.file + ": Backing file not supported for file format 'raw'");
    if (!a.cluster_size.empty() || !a.refcount_bits.empty() || !a.compat.empty() ||
        !a.lazy_refcounts.empty() || !a.compression_type.empty() || !a.extended_l2.empty())
      throw ToolError(a.file + ": qcow2 options are not supported for file format 'raw'");
    if (!a.size) throw ToolError(a.file + ": Image creation needs a size parameter");
    if (!a.quiet)
      std::printf("Formatting '%s', fmt=raw size=%" PRIu64 "\n", a.file.c_str(), *a.size);
    std::fflush(stdout);
    create_raw(a.file, whole_sectors(*a.size));
    return 0;
  }

  kiln::block::qcow2::CreateOptions opts = qcow2_options(a);
  if (opts.encrypt_format == "luks") {
    if (a.key_secret_id.empty())
      throw ToolError(a.file + ": Parameter 'encrypt.key-secret' is required for cipher");
    try {
      kiln::block::Secrets secrets;
      for (const std::string& spec : args.all("--object")) secrets.add_object(spec);
      opts.key_secret = secrets.get(a.key_secret_id);
    } catch (const kiln::block::Error& e) {
      throw ToolError(a.file + ": " + e.what());
    }
  }
  if (!a.backing_format.empty() && a.backing.empty())
    throw ToolError(a.file + ": Backing format given without a backing file");
  if (!a.backing.empty()) {
    if (a.backing_format.empty())
      throw ToolError(a.file + ": Backing file specified without backing format (use -F)");
    if (a.backing_format != "raw" && a.backing_format != "qcow2")
      throw ToolError(a.file + ": Unknown backing file format '" + a.backing_format +
                      "' (supported: qcow2, raw)");
    if (!a.size || !a.unsafe) {
      uint64_t bsize = backing_size(a);
      if (!a.size) a.size = bsize;
    }
  }
  if (!a.size) throw ToolError(a.file + ": Image creation needs a size parameter");
  opts.size = whole_sectors(*a.size);
  if (!a.quiet) {
    std::string line = "Formatting '" + a.file + "', fmt=qcow2" + a.encrypt_echo +
                       " cluster_size=" + std::to_string(opts.cluster_size) +
                       " extended_l2=" + (opts.extended_l2 ? "on" : "off") +
                       " compression_type=" + opts.compression_type +
                       " size=" + std::to_string(opts.size);
    if (!a.compat.empty()) line += " compat=" + a.compat;
    if (!a.backing.empty())
      line += " backing_file=" + a.backing + " backing_fmt=" + a.backing_format;
    line += std::string(" lazy_refcounts=") + (opts.lazy_refcounts ? "on" : "off") +
            " refcount_bits=" + std::to_string(opts.refcount_bits);
    std::puts(line.c_str());
    std::fflush(stdout);
  }
  try {
    kiln::block::qcow2::create(kiln::block::Reactor::current(), a.file, opts);
  } catch (const kiln::block::Error& e) {
    // The block layer's messages already name the file.
    const std::string what = e.what();
    throw ToolError(what.starts_with(a.file + ": ") ? what : a.file + ": " + what);
  }
  return 0;
}

}  // namespace kiln::block::cli

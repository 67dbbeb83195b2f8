// kiln-img convert: copies the guest view of an image (through its backing chain) into a new
// raw or qcow2 image (or an existing one with -n), with qemu-img convert's options, messages
// and exit codes. The copying is the block layer's conversion engine (kiln/block/convert.h);
// this file parses the options, creates and opens the images, and prints progress.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "img_commands.h"
#include "img_create_options.h"
#include "img_progress.h"
#include "kiln/block/convert.h"
#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"
#include "kiln/block/secret.h"
#include "kiln/block/worker_pool.h"
#include "kiln/common/text.h"
#include "tool_util.h"

namespace kiln::block::cli {
namespace {

constexpr uint64_t kMaxSparseSize = 16u << 20;  // qemu-img's limit for -S
constexpr unsigned kMaxCoroutines = 16;         // and for -m

enum class Prealloc { kOff, kMetadata, kFalloc, kFull };

struct ConvertArgs {
  std::string src, dst;
  std::string src_format, out_format = "raw";
  bool quiet = false, progress = false, force_share = false;
  bool compress = false, no_create = false, out_of_order = false;
  unsigned coroutines = 8;
  uint64_t sparse_size = 4096;
  Prealloc prealloc = Prealloc::kOff;
  CreateArgs create;  // -o for qcow2, with -B/-F as backing file and format
  bool any_o = false;
  std::string snapshot;  // -l: the source's internal snapshot (an id or a name)
  // --object secrets: the source's key (--image-opts encrypt.key-secret) and the target's
  // (-o encrypt.key-secret for a new image, --target-image-opts with -n).
  std::optional<std::string> src_key, dst_key;
};

// qemu-img's -l: "snapshot.name=NAME", "snapshot.id=ID" (comma-separated, ",," a comma) or a
// bare id-or-name.
std::string parse_snapshot_param(const std::string& text) {
  if (!text.starts_with("snapshot.")) return text;
  std::string id, name;
  for (const std::string& item : common::split_qemu_options(text)) {
    if (item.starts_with("snapshot.id="))
      id = item.substr(12);
    else if (item.starts_with("snapshot.name="))
      name = item.substr(14);
    else
      throw ToolError("Invalid parameter '" + item.substr(0, item.find('=')) + "'");
  }
  if (!id.empty() && !name.empty() && id != name)
    throw ToolError("Give snapshot.id or snapshot.name, not both");
  return id.empty() ? name : id;
}

// "FILE: message" from the shared qcow2 option code, worded as qemu-img convert words it.
[[noreturn]] void rethrow_create_error(const ToolError& e, const ConvertArgs& a) {
  std::string what = e.what();
  const std::string prefix = a.dst + ": ";
  if (what.starts_with(prefix)) what = what.substr(prefix.size());
  if (what.starts_with("Invalid parameter '")) throw ToolError(what);
  throw ToolError(a.dst + ": error while converting " + a.out_format + ": " + what);
}

Prealloc parse_prealloc(const std::string& v, const ConvertArgs& a) {
  if (v == "off") return Prealloc::kOff;
  if (v == "metadata") return Prealloc::kMetadata;
  if (v == "falloc") return Prealloc::kFalloc;
  if (v == "full") return Prealloc::kFull;
  throw ToolError(a.dst + ": error while converting " + a.out_format +
                  ": Parameter 'preallocation' does not accept value '" + v + "'");
}

// -o: preallocation is taken here; the rest goes to the qcow2 creation options (raw takes no
// other option, as qemu-img's raw driver).
void parse_o_arg(const std::string& text, ConvertArgs& a) {
  std::string rest;
  for (const std::string& item : common::split_qemu_options(text)) {
    if (item.starts_with("preallocation=")) {
      a.prealloc = parse_prealloc(item.substr(14), a);
      continue;
    }
    if (item.empty()) continue;
    if (a.out_format == "raw") {
      const std::string key = item.substr(0, item.find('='));
      if (key != "size") throw ToolError("Invalid parameter '" + key + "'");
      continue;  // the size is the source's, as in qemu-img
    }
    std::string escaped;
    for (char c : item) escaped += c == ',' ? std::string(",,") : std::string(1, c);
    rest += (rest.empty() ? "" : ",") + escaped;
  }
  if (rest.empty()) return;
  try {
    parse_o(rest, a.create, a.dst);
  } catch (const ToolError& e) {
    rethrow_create_error(e, a);
  }
}

kiln::block::Secrets secrets(const Args& args) {
  kiln::block::Secrets out;
  for (const std::string& spec : args.all("--object")) out.add_object(spec);
  return out;
}

ConvertArgs parse_args(const Args& args) {
  ConvertArgs a;
  a.out_format = args.get_or("-O", "raw");
  a.quiet = args.flag("-q");
  a.progress = args.flag("-p") && !a.quiet;
  a.force_share = args.flag("-U");
  a.compress = args.flag("-c");
  a.no_create = args.flag("-n");
  a.out_of_order = args.flag("-W");
  if (auto l = args.get("-l")) {
    a.snapshot = parse_snapshot_param(*l);
    if (a.snapshot.empty()) throw ToolError("Snapshot name or id must not be empty");
  }
  const auto& pos = args.positional();
  if (pos.size() < 2) throw ToolError("Must specify image file name");
  if (pos.size() > 2)
    throw ToolError("kiln-img convert takes one source image (got " +
                    std::to_string(pos.size() - 1) + ")");
  // --image-opts names the source (and -f may not go with it), as image_arg() reads it.
  const ImageArg src = image_arg(args, pos[0]);
  a.src = src.path;
  a.src_format = valid_format(src.format);
  a.src_key = src.key_secret;
  a.dst = pos[1];
  if (args.flag("--target-image-opts")) {
    // As qemu-img: the target's options describe an existing image only.
    if (!a.no_create) throw ToolError("--target-image-opts requires use of -n flag");
    try {
      kiln::block::ImageOpts o = kiln::block::parse_image_opts(pos[1]);
      a.dst = o.filename;
      if (!o.format.empty()) a.out_format = o.format;
      if (o.key_secret_id) a.dst_key = secrets(args).get(*o.key_secret_id);
    } catch (const kiln::block::Error& e) {
      throw ToolError(e.what());
    }
  }
  if (a.out_format != "raw" && a.out_format != "qcow2")
    throw ToolError("Unknown file format '" + a.out_format + "'");
  if (args.has("-m")) {
    const std::string m = args.get_or("-m", "");
    uint64_t n = 0;
    bool ok = !m.empty() && m.size() <= 3 &&
              std::all_of(m.begin(), m.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (ok) n = std::stoull(m);
    if (!ok || n < 1 || n > kMaxCoroutines)
      throw ToolError(
          "Invalid number of coroutines. Allowed number of coroutines is between 1 "
          "and 16");
    a.coroutines = unsigned(n);
  }
  if (args.has("-S")) {
    const std::string s = args.get_or("-S", "");
    uint64_t v;
    try {
      v = kiln::block::parse_size(s);
    } catch (const kiln::block::Error&) {
      throw ToolError(
          "Invalid buffer size for sparse output specified. You may use k, M, G, T, "
          "P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes "
          "and exabytes.");
    }
    if (v % 512 || v > kMaxSparseSize)
      throw ToolError(
          "Invalid buffer size for sparse output specified. Valid sizes are "
          "multiples of 512 up to 16777216. Select 0 to disable sparse detection "
          "(fully allocates output).");
    a.sparse_size = v;
  }
  a.create.file = a.dst;
  a.create.format = a.out_format;
  const std::vector<std::string> o_args = args.all("-o");
  a.any_o = !o_args.empty();
  if (a.no_create && a.any_o) throw ToolError("-o has no effect when skipping image creation");
  for (const std::string& o : o_args) parse_o_arg(o, a);
  if (!a.create.key_secret_id.empty()) {
    try {
      a.dst_key = secrets(args).get(a.create.key_secret_id);
    } catch (const kiln::block::Error& e) {
      throw ToolError(a.dst + ": error while converting " + a.out_format + ": " + e.what());
    }
  }

  const std::string backing = args.get_or("-B", "");
  const std::string backing_format = args.get_or("-F", "");
  if (!backing.empty()) a.create.backing = backing;
  if (!backing_format.empty()) a.create.backing_format = backing_format;
  if (a.compress && a.out_format != "qcow2")
    throw ToolError("Compression not supported for this file format");
  if (a.out_format == "raw" && !a.create.backing.empty())
    throw ToolError("Backing file not supported for file format 'raw'");
  if (a.out_format == "raw" && a.prealloc == Prealloc::kMetadata)
    throw ToolError(a.dst +
                    ": error while converting raw: Unsupported preallocation mode: " + "metadata");
  // Compressed clusters would bypass the cipher (the library refuses them too).
  if (a.compress && !a.create.encrypt_format.empty())
    throw ToolError("Compression and encryption not supported at the same time");
  if (a.compress && a.prealloc != Prealloc::kOff)
    throw ToolError("Compression and preallocation not supported at the same time");
  if (a.no_create && !a.create.backing.empty())
    throw ToolError("-B has no effect when skipping image creation");
  if (!a.create.backing_format.empty() && a.create.backing.empty())
    throw ToolError(a.dst +
                    ": error while converting qcow2: Backing format cannot be used "
                    "without backing file");
  if (!a.create.backing.empty()) {
    if (a.create.backing_format.empty())
      throw ToolError("Use of backing file requires explicit backing format");
    valid_format(a.create.backing_format);
  }
  return a;
}

// Raw target: the file, truncated to `size` once its locks are ours, preallocated as asked.
void create_raw(const ConvertArgs& a, uint64_t size) {
  kiln::common::Fd fd(::open(a.dst.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (fd.get() < 0) throw ToolError("Could not create '" + a.dst + "': " + std::strerror(errno));
  try {
    kiln::block::lock_image_file(fd.get(), a.dst, true);
  } catch (const kiln::block::Error& e) {
    throw ToolError(e.what());
  }
  if (::ftruncate(fd.get(), 0) != 0 || ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0)
    throw ToolError("Could not resize '" + a.dst + "': " + std::strerror(errno));
  int rc = 0;
  if (a.prealloc == Prealloc::kFalloc) {
    rc = ::posix_fallocate(fd.get(), 0, static_cast<off_t>(size));
  } else if (a.prealloc == Prealloc::kFull) {
    // As qemu: the zeros are really written, so the blocks are allocated and initialised.
    std::vector<uint8_t> zeros(1u << 20);
    for (uint64_t off = 0; off < size && rc == 0;) {
      const size_t n = size_t(std::min<uint64_t>(zeros.size(), size - off));
      const ssize_t w = ::pwrite(fd.get(), zeros.data(), n, static_cast<off_t>(off));
      if (w < 0 && errno != EINTR) rc = errno;
      if (w > 0) off += uint64_t(w);
    }
  }
  if (rc != 0)
    throw ToolError(
        a.dst + ": error while converting raw: Could not preallocate data: " + std::strerror(rc));
  kiln::block::unlock_image_file(fd.get());
  if (fd.close() != 0) throw ToolError("Could not create '" + a.dst + "': " + std::strerror(errno));
}

void create_qcow2(ConvertArgs& a, uint64_t size) {
  kiln::block::qcow2::CreateOptions opts;
  a.create.size = size;
  try {
    opts = qcow2_options(a.create);
  } catch (const ToolError& e) {
    rethrow_create_error(e, a);
  }
  opts.size = (size + 511) / 512 * 512;
  if (opts.encrypt_format == "luks") {
    if (!a.dst_key)
      throw ToolError(a.dst +
                      ": error while converting qcow2: Parameter 'encrypt.key-secret' is "
                      "required for cipher");
    opts.key_secret = a.dst_key;
  }
  if (a.prealloc != Prealloc::kOff && !opts.backing_file.empty() && !opts.extended_l2)
    throw ToolError(a.dst +
                    ": error while converting qcow2: Backing file and preallocation can "
                    "only be used at the same time if extended_l2 is on");
  try {
    kiln::block::qcow2::create(kiln::block::Reactor::current(), a.dst, opts);
  } catch (const kiln::block::Error& e) {
    std::string what = e.what();
    if (what.starts_with(a.dst + ": ")) what = what.substr(a.dst.size() + 2);
    throw ToolError(a.dst + ": error while converting qcow2: " + what);
  }
}

}  // namespace

int img_convert(const Args& args) {
  ConvertArgs a = parse_args(args);
  auto& reactor = kiln::block::Reactor::current();

  kiln::block::OpenOptions src_opts;
  src_opts.format = a.src_format;
  src_opts.key_secret = a.src_key;
  src_opts.read_only = true;
  src_opts.lock = !a.force_share;
  src_opts.snapshot = a.snapshot;  // -l: read-only, as the source always is
  auto src = reactor.run(kiln::block::open_image(reactor, a.src, src_opts));
  const uint64_t size = src->size();

  if (!a.no_create) {
    if (a.out_format == "raw")
      create_raw(a, size);
    else
      create_qcow2(a, size);
  }
  kiln::block::OpenOptions dst_opts;
  dst_opts.format = a.out_format;
  dst_opts.key_secret = a.dst_key;
  std::unique_ptr<kiln::block::BlockDevice> dst;
  try {
    dst = reactor.run(kiln::block::open_image(reactor, a.dst, dst_opts));
  } catch (const kiln::block::Error& e) {
    throw ToolError("Could not open '" + a.dst + "': " + e.what());
  }
  if (dst->size() < size)
    throw ToolError("Target image '" + a.dst + "' is smaller than the source (" +
                    std::to_string(dst->size()) + " < " + std::to_string(size) + " bytes)");
  if (!a.no_create && a.out_format == "qcow2" && a.prealloc != Prealloc::kOff) {
    using kiln::block::qcow2::Preallocation;
    const auto mode = a.prealloc == Prealloc::kMetadata ? Preallocation::kMetadata
                      : a.prealloc == Prealloc::kFalloc ? Preallocation::kFalloc
                                                        : Preallocation::kFull;
    if (int rc = reactor.run(kiln::block::qcow2::preallocate(*dst, mode)); rc < 0)
      throw ToolError(
          a.dst + ": error while converting qcow2: Could not preallocate: " + std::strerror(-rc));
  }
  if (a.compress && !kiln::block::qcow2::cluster_size(*dst))
    throw ToolError("Compression not supported for this file format");

  // -B: the new image's backing file as the new image sees it, to leave out what it shows.
  std::unique_ptr<kiln::block::BlockDevice> backing;
  if (!a.create.backing.empty()) {
    kiln::block::OpenOptions bo;
    bo.format = a.create.backing_format;
    bo.read_only = true;
    backing =
        reactor.run(kiln::block::open_image(reactor, path_combine(a.dst, a.create.backing), bo));
  }

  kiln::block::ConvertOptions co;
  co.coroutines = a.coroutines;
  co.out_of_order = a.out_of_order;
  co.sparse_size = a.sparse_size;
  co.compress = a.compress;
  co.target_zeroed = !a.no_create && !backing;
  co.target_backing = backing.get();
  co.target_preallocated = !a.no_create && a.prealloc != Prealloc::kOff;
  std::unique_ptr<kiln::block::WorkerPool> pool;
  if (a.compress) {
    reactor.enable_remote();
    pool = std::make_unique<kiln::block::WorkerPool>(
        std::max(1u, std::thread::hardware_concurrency()));
    co.pool = pool.get();
  }
  Progress progress(a.progress);
  co.progress = [&](uint64_t done, uint64_t total) { progress.update(done, total); };
  try {
    reactor.run(kiln::block::convert(reactor, *src, *dst, co));
  } catch (const kiln::block::Error& e) {
    throw ToolError(e.what());
  }
  progress.finish();
  if (int rc = reactor.run(dst->close()); rc < 0)
    throw ToolError("error while writing '" + a.dst + "': " + std::strerror(-rc));
  if (backing) reactor.run(backing->close());
  reactor.run(src->close());
  return 0;
}

}  // namespace kiln::block::cli

// kiln-img commit: writes what an overlay (and, with -b, the images between it and BASE)
// allocates into its backing file, then empties the overlay unless -d or -b, as qemu-img
// commit does. The guest view of the overlay does not change; the base's does.
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "img_commands.h"
#include "img_ops_util.h"
#include "img_progress.h"
#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"
#include "tool_util.h"

namespace kiln::block::cli {
namespace {

constexpr size_t kMaxChain = 64;

std::string real(const std::string& p) {
  char buf[PATH_MAX];
  return ::realpath(p.c_str(), buf) ? std::string(buf) : std::string();
}

// Whether `layer` is the image that -b names: the name its overlay stores, or the same file.
bool is_base(const Layer& layer, const std::string& wanted) {
  if (layer.stored_name == wanted || layer.path == wanted) return true;
  const std::string a = real(layer.path);
  return !a.empty() && a == real(wanted);
}

}  // namespace

int img_commit(const Args& args) {
  const std::string format = args.get_or("-f", "");
  const auto base_arg = args.get("-b");
  const bool quiet = args.flag("-q");
  // As qemu-img: naming the base keeps the overlay as it is (-b implies -d).
  const bool keep = args.flag("-d") || base_arg.has_value();
  if (args.positional().size() != 1) throw ToolError("Expecting one image file name");
  const std::string top = args.positional()[0];
  auto& reactor = kiln::block::Reactor::current();

  // The chain from the top down to the base, from the headers alone.
  std::vector<Layer> above{{top, top_format(reactor, top, format), ""}};
  std::optional<Layer> base;
  for (;;) {
    auto next = backing_of(reactor, above.back());
    if (!next) {
      if (above.size() == 1) throw ToolError("Image does not have a backing file");
      break;
    }
    if (!base_arg || is_base(*next, *base_arg)) {
      base = next;
      break;
    }
    if (above.size() >= kMaxChain)
      throw ToolError("The backing chain of '" + top + "' is deeper than 64 images");
    above.push_back(*next);
  }
  if (!base)
    throw ToolError("Did not find '" + *base_arg + "' in the backing chain of '" + top + "'");

  // The overlay stays open (and locked) from the copy to the emptying; every image above the
  // base is read without its backing file, so only the base itself is opened for writing.
  std::vector<std::unique_ptr<BlockDevice>> layers;
  for (const Layer& l : above) {
    kiln::block::OpenOptions o;
    o.read_only = keep || &l != &above.front();
    o.open_backing = false;
    layers.push_back(open_or_exit(reactor, l.path, l.format, o));
  }
  kiln::block::OpenOptions bo;
  auto base_dev = open_or_exit(reactor, base->path, base->format, bo);
  const uint64_t size = layers.front()->size();
  if (base_dev->size() < size) {
    // As qemu-img: the base grows to the overlay's size.
    int rc = reactor.run(base_dev->resize(size));
    if (rc < 0)
      throw ToolError("Could not resize '" + base->path + "' to " + std::to_string(size) +
                      " bytes: " + std::strerror(-rc));
  }
  // Bottom-up: what a higher image allocates overwrites what a lower one wrote. Progress
  // counts the bytes walked in every layer.
  Progress progress(args.flag("-p") && !quiet);
  const uint64_t total = size * layers.size();
  for (size_t i = layers.size(); i-- > 0;) {
    const uint64_t done = size * (layers.size() - 1 - i);
    reactor.run(copy_allocated(*layers[i], *base_dev, size, base->path,
                               [&](uint64_t off) { progress.update(done + off, total); }));
  }
  int rc = reactor.run(base_dev->close());
  if (rc < 0) throw ToolError("Could not flush '" + base->path + "': " + std::strerror(-rc));
  if (!keep) {
    // Only now that the base holds everything may the overlay let go of it.
    if (std::string(layers.front()->format()) == "qcow2") {
      rc = reactor.run(kiln::block::qcow2::make_empty(*layers.front()));
      if (rc < 0) throw ToolError("Could not empty " + top + ": " + std::strerror(-rc));
    }
  }
  for (auto& l : layers) {
    rc = reactor.run(l->close());
    if (rc < 0) throw ToolError("Could not close '" + l->filename() + "': " + std::strerror(-rc));
  }
  progress.finish();
  if (!quiet) std::printf("Image committed.\n");
  return 0;
}

}  // namespace kiln::block::cli

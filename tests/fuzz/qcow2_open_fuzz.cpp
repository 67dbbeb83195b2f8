// libFuzzer target for the image opener: the input is written to a file (an image, or a sparse
// description of a large one: fuzz_file.h) and opened as qcow2, read-only, without its backing
// file; a few ranges are read and their block status asked. Any outcome but a crash, a
// sanitizer report or a leak is fine.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_file.h"
#include "kiln/block/device.h"

namespace {

using kiln::block::BlockDevice;
using kiln::block::Reactor;
using kiln::block::Task;

Task<void> exercise(BlockDevice& dev) {
  const uint64_t size = dev.size();
  std::vector<uint8_t> buf(64 * 1024);
  const uint64_t offsets[] = {0, 512, 65536 - 100, size / 2, size > 4096 ? size - 4096 : 0};
  for (uint64_t off : offsets) {
    if (off >= size) continue;
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), size - off));
    (void)co_await dev.read(off, std::span<uint8_t>(buf.data(), n));
  }
  std::vector<kiln::block::Extent> extents;
  (void)co_await dev.block_status(0, std::min<uint64_t>(size, uint64_t{1} << 30), &extents);
  co_await dev.close();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!kiln::fuzz::write_input(data, size)) return -1;
  Reactor& reactor = Reactor::current();
  kiln::block::OpenOptions opts;
  opts.format = "qcow2";
  opts.read_only = true;
  opts.open_backing = false;
  opts.l2_cache_bytes = 256 * 1024;
  opts.refcount_cache_bytes = 64 * 1024;
  try {
    std::unique_ptr<BlockDevice> dev =
        reactor.run(kiln::block::open_image(reactor, kiln::fuzz::temp_path(), opts));
    reactor.run(exercise(*dev));
  } catch (const kiln::block::Error&) {
    // Refused images are the expected outcome for most inputs.
  }
  return 0;
}

// libFuzzer target for the image opener: the input is written to a temporary file and opened
// as qcow2, read-only, without its backing file; a few ranges are read and their block status
// asked. Any outcome but a crash, a sanitizer report or a leak is fine.
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kiln/block/device.h"

namespace {

using kiln::block::BlockDevice;
using kiln::block::Reactor;
using kiln::block::Task;

// One in-memory file for the whole run, rewritten for every input and opened by the block layer
// through /proc, so nothing is left behind however the fuzzer exits.
int memory_file() {
  static const int fd = [] {
    int f = memfd_create("kiln-fuzz", MFD_CLOEXEC);
    if (f < 0) abort();
    return f;
  }();
  return fd;
}

const std::string& temp_path() {
  static const std::string path = "/proc/self/fd/" + std::to_string(memory_file());
  return path;
}

bool write_input(const uint8_t* data, size_t size) {
  const int fd = memory_file();
  if (ftruncate(fd, 0) != 0) return false;
  size_t done = 0;
  while (done < size) {
    ssize_t n = pwrite(fd, data + done, size - done, static_cast<off_t>(done));
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

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
  if (size > (1u << 20)) return -1;
  if (!write_input(data, size)) return 0;
  Reactor& reactor = Reactor::current();
  kiln::block::OpenOptions opts;
  opts.format = "qcow2";
  opts.read_only = true;
  opts.open_backing = false;
  opts.l2_cache_bytes = 256 * 1024;
  opts.refcount_cache_bytes = 64 * 1024;
  try {
    std::unique_ptr<BlockDevice> dev =
        reactor.run(kiln::block::open_image(reactor, temp_path(), opts));
    reactor.run(exercise(*dev));
  } catch (const kiln::block::Error&) {
    // Refused images are the expected outcome for most inputs.
  }
  return 0;
}

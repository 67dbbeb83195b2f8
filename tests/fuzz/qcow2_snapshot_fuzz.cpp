// libFuzzer target for internal snapshots: the input (an image, or a sparse description:
// fuzz_file.h) is opened read-only as each of its first snapshots and read, then a snapshot is
// created, applied and deleted in it, whatever its refcount structures say. Any outcome
// but a crash, a sanitizer report or a leak is fine: hostile snapshot tables must be refused with
// an Error.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_file.h"
#include "kiln/block/device.h"
#include "kiln/block/qcow2_snapshot.h"

namespace {

using kiln::block::BlockDevice;
using kiln::block::Reactor;
using kiln::block::Task;

Task<void> read_some(BlockDevice& dev) {
  std::vector<uint8_t> buf(16 * 1024);
  const uint64_t size = dev.size();
  for (uint64_t off : {uint64_t{0}, size / 2, size > buf.size() ? size - buf.size() : 0}) {
    if (off >= size) continue;
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), size - off));
    (void)co_await dev.read(off, std::span<uint8_t>(buf.data(), n));
  }
  co_await dev.close();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!kiln::fuzz::write_input(data, size)) return -1;
  Reactor& reactor = Reactor::current();
  const std::string& path = kiln::fuzz::temp_path();
  for (const char* id : {"1", "2"}) {
    kiln::block::OpenOptions opts;
    opts.format = "qcow2";
    opts.read_only = true;
    opts.open_backing = false;
    opts.snapshot = id;
    opts.l2_cache_bytes = 256 * 1024;
    opts.refcount_cache_bytes = 64 * 1024;
    try {
      std::unique_ptr<BlockDevice> dev = reactor.run(kiln::block::open_image(reactor, path, opts));
      reactor.run(read_some(*dev));
    } catch (const kiln::block::Error&) {
    }
  }
  try {
    kiln::block::qcow2::snapshot_create(reactor, path, "fuzz");
    kiln::block::qcow2::snapshot_apply(reactor, path, "1");
    kiln::block::qcow2::snapshot_delete(reactor, path, "fuzz");
  } catch (const kiln::block::Error&) {
  }
  return 0;
}

// libFuzzer target for the qcow2 checker (kiln-img check): the input is written to a temporary
// file and checked, and repaired when its last byte asks for it (leaks or all), as a user would
// run `kiln-img check -r all` on an image of unknown origin. Any outcome but a crash, a
// sanitizer report or a leak is fine.
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
#include "kiln/block/qcow2.h"

namespace {

using kiln::block::Reactor;

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

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (1u << 20)) return -1;
  if (!write_input(data, size)) return 0;
  using kiln::block::qcow2::Repair;
  const Repair repair = size == 0                 ? Repair::kNone
                        : data[size - 1] % 3 == 1 ? Repair::kLeaks
                        : data[size - 1] % 3 == 2 ? Repair::kAll
                                                  : Repair::kNone;
  try {
    (void)kiln::block::qcow2::check(Reactor::current(), temp_path(), repair);
  } catch (const kiln::block::Error&) {
  }
  return 0;
}

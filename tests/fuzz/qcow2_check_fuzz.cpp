// libFuzzer target for the qcow2 checker (kiln-img check): the input is written to a file (an
// image, or a sparse description of a large one: fuzz_file.h) and checked, and repaired when
// its last byte asks for it (leaks or all), as a user would run `kiln-img check -r all` on an
// image of unknown origin. Any outcome but a crash, a sanitizer report or a leak is fine.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_file.h"
#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"

using kiln::block::Reactor;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!kiln::fuzz::write_input(data, size)) return -1;
  using kiln::block::qcow2::Repair;
  const Repair repair = size == 0                 ? Repair::kNone
                        : data[size - 1] % 3 == 1 ? Repair::kLeaks
                        : data[size - 1] % 3 == 2 ? Repair::kAll
                                                  : Repair::kNone;
  try {
    (void)kiln::block::qcow2::check(Reactor::current(), kiln::fuzz::temp_path(), repair);
  } catch (const kiln::block::Error&) {
  }
  return 0;
}

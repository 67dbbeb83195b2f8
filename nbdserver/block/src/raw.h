#pragma once

#include <memory>
#include <string>

#include "kiln/block/device.h"

namespace kiln::block {

// A raw image file. Throws Error if it cannot be opened.
std::unique_ptr<BlockDevice> open_raw(Reactor& r, const std::string& path, bool read_only,
                                      bool lock = true);

}  // namespace kiln::block

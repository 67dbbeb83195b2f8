#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kiln/block/device.h"

namespace kiln::block {

// A raw image file. Throws Error if it cannot be opened (or lies outside `allowed_dirs`).
// `direct`: O_DIRECT (OpenOptions::direct).
std::unique_ptr<BlockDevice> open_raw(Reactor& r, const std::string& path, bool read_only,
                                      bool lock = true,
                                      const std::vector<std::string>& allowed_dirs = {},
                                      bool direct = false);

}  // namespace kiln::block

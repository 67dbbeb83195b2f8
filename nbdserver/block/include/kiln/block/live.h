// What kiln-nbd's live snapshot and commit need of the block layer beyond BlockDevice: putting
// a new overlay on top of an open chain, and taking a backing device out from under its image.
// All of it only while no request is in flight on the devices concerned.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kiln/block/device.h"

namespace kiln::block {

// The device right under `top` in its chain (a qcow2 image's backing), or null.
BlockDevice* backing_of(BlockDevice& top);

// Takes the backing device out of `top` (a qcow2 image), which then reads its unallocated
// ranges as zeros: for the moment before `top` is closed and its backing goes on alone.
std::unique_ptr<BlockDevice> take_backing(BlockDevice& top);

// Creates the qcow2 image at `path` for a live snapshot: `size` bytes, backed by the image
// `backing` (made absolute, its format recorded). `path` must not exist, and its directory
// must lie under `allowed_dirs` (when given). Blocking, on a reactor of its own: call it from a
// thread that runs no reactor. Throws Error.
void create_overlay(const std::string& path, const std::string& backing,
                    const std::string& backing_format, uint64_t size, uint32_t cluster_size,
                    bool extended_l2, const std::vector<std::string>& allowed_dirs);

// Opens the qcow2 image at `path`, whose header must name `backing`'s file (same file, its
// format, the same virtual size), without opening its backing chain: the open device `backing`
// goes under it with attach_backing() (that file's locks are this process's already).
// Throws Error.
Task<std::unique_ptr<BlockDevice>> open_overlay(Reactor& reactor, const std::string& path,
                                                OpenOptions options, const BlockDevice& backing);
// Puts `backing` under `overlay` (from open_overlay), which owns it from then on.
void attach_backing(BlockDevice& overlay, std::unique_ptr<BlockDevice> backing);

}  // namespace kiln::block

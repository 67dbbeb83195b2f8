// Switching an open image file between reading and writing without closing it (live snapshot
// and commit): its QEMU-style advisory locks change with it, as QEMU's bdrv_reopen changes
// its permissions.
#pragma once

#include <string>

namespace kiln::block {

// Makes the image file open on `fd` (named `path`) writable or read-only in place.
// Read-only: the write, write-unchanged and resize lock bytes are released (the file stays
// open; nothing writes through it any more), so that readers such as `qemu-img info` may open
// it. Writable: the writer's locks are taken (Error(EAGAIN) naming the lock if another process
// reads or writes the file); a file opened read-only is opened again for writing (with
// O_DIRECT when `direct`), checked to be the same file, and put on `fd` with dup3. Throws
// Error; on failure the file keeps its read-only locks.
void reopen_image_file(int fd, const std::string& path, bool writable, bool direct);

}  // namespace kiln::block

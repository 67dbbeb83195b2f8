// Advisory locks on image files, in QEMU's scheme so that Kiln and QEMU see each other.
//
// QEMU (block/file-posix.c) expresses what an opener does and what it lets others do as
// shared open-file-description locks on single bytes of the image file: byte 100+i is held
// by whoever holds permission i, byte 200+i by whoever refuses to share permission i. The
// permissions are consistent-read (0), write (1), write-unchanged (2) and resize (3). An
// opener first tests that nobody refuses what it wants and that nobody holds what it refuses
// to share, then takes its own bytes. Using the same bytes means that `qemu-img` refuses an
// image that kiln-nbd serves, and Kiln refuses an image that a QEMU guest is writing.
#pragma once

// lock_image_file() is declared in kiln/block/device.h: a writer holds consistent-read, write,
// write-unchanged and resize; a reader holds consistent-read; neither lets others write or
// resize the file under it.
#include <sys/types.h>

#include "kiln/block/device.h"

namespace kiln::block {

// Declared after the descriptor it names, so that it runs first: drops the image locks
// before the descriptor is closed (unlock_image_file says why).
// Drops the lock bytes [first, first + count) of `fd`'s open file description; what is not
// held is no error.
void unlock_image_bytes(int fd, off_t first, off_t count) noexcept;

struct UnlockOnExit {
  int fd;
  ~UnlockOnExit() { unlock_image_file(fd); }
};

}  // namespace kiln::block

// kiln-fs mount: serves an ext2/3/4 filesystem opened with libext2fs through FUSE (libfuse3,
// low-level API, one thread).
#pragma once

#include <ext2fs/ext2fs.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace kiln::fs {

struct FuseMountOptions {
  std::string mountpoint;
  bool read_only = false;    // mount "ro"; every modifying request fails with EROFS
  bool allow_other = false;  // let users other than the mounting one in (FUSE "allow_other")
  bool foreground = false;   // false: fork into the background once the mount is usable
  bool debug = false;        // libfuse's request trace on stderr (implies foreground)
  // Shown as the mount's source in /proc/mounts and df (e.g. the image path).
  std::string fsname = "kiln-fs";
  // Seconds the kernel may cache names and attributes. This process is the only writer of the
  // filesystem, so long timeouts are safe.
  double cache_timeout = 60.0;
  // After this many milliseconds without requests, pending metadata (bitmaps, group
  // descriptors, superblock) is written to the image, so that an unmount leaves little to do.
  // 0 disables the idle flush.
  int idle_flush_ms = 1000;
  // After each reply, how long (microseconds) to look for the next request with non-blocking
  // reads before sleeping until one comes. A program that makes one request at a time (tar,
  // cp, rm -r: each waits for its reply) usually sends the next within a few microseconds, and
  // finding it awake spares this thread a sleep and a wake-up per request: `tar x` of small
  // files about 1.35x faster on a 2-CPU machine, for about the same CPU. Costs at most this
  // long of CPU per request; 0 sleeps at once. Not done on a machine with one CPU, where the
  // wait would keep the program that sends the request from running.
  int busy_wait_us = 20;
  // As root: a `fuseblk` mount over a placeholder loop device (see "Unmount" below), so that
  // `umount DIR` returns only once the image is written. Falls back to a plain `fuse` mount,
  // with a warning, when no loop device can be had.
  bool wait_at_unmount = true;
  // Writes the image back and releases it (Filesystem::close for kiln-fs), once the mount is
  // gone and the final flush of `fs` is done; `fs` must not be used afterwards. Returns 0, or
  // non-zero after printing one line on stderr. Empty: the caller closes `fs` after
  // fuse_mount() returns (and an unmount does not wait for that).
  std::function<int()> close_image;
  // An io_manager that keeps writes in memory and writes them all back once it holds too much
  // (kiln-fs's) would, left alone, spill between flush points: inodes and extent trees reach
  // the image without the bitmaps and group descriptors that go with them, which a crash then
  // leaves as blocks in use but marked free. When both are set, buffer_nearly_full() is asked
  // after every request and, when it says so, the mount makes a flush point of its own:
  // bitmaps, group descriptors and superblock into the buffer, then write_back() (0 or
  // -errno; no flush of the image itself), so that the image always holds a whole state.
  std::function<bool()> buffer_nearly_full;
  std::function<int()> write_back;
  // Writes whole blocks of file data (LEN bytes at OFFSET, bytes into the filesystem) straight
  // to the image, past that buffer: 0 or -errno. Data does not wait for a flush point, since
  // nothing on the image refers to a block the mount allocated after the last one; a crash
  // then leaves the data in blocks the image still has free. The mount calls it only for
  // such blocks and for blocks a file already had, never for blocks freed since the last flush
  // point (the image's metadata may still give them to a deleted file, or hold an extent tree
  // or directory there): those go through the io_manager with the metadata. Empty: all
  // writes go through the io_manager.
  std::function<int(uint64_t offset, const void* data, size_t len)> write_data;
};

// Mounts `fs` on opts.mountpoint and serves it until the filesystem is unmounted
// (`fusermount3 -u DIR`, `umount DIR`) or SIGTERM/SIGINT/SIGHUP arrives (then it unmounts
// itself). Before returning it frees the inodes that were unlinked while still open, marks the
// filesystem clean again and flushes it with ext2fs_flush(); the caller still owns `fs` and
// closes it.
//
// Returns 0 after a clean unmount, or non-zero after printing one line on stderr.
//
// Daemon mode (foreground == false): the process forks after the mount is in place; the parent
// exits with status 0 (so its exit means the mount is usable) and the child serves the mount and
// returns from this function. The io_manager behind `fs` must survive fork(): no threads started
// before the call may be needed afterwards.
//
// Unmount: the final flush and close_image run when the kernel sends FUSE_DESTROY (or, when it
// does not, once the session ends). The kernel sends DESTROY, and waits for the answer, only
// for a `fuseblk` mount: with wait_at_unmount, as root, `umount DIR` therefore returns with
// the image written and released. A plain `fuse` mount (not root, or no loop device) is only
// aborted by umount, so the write-back happens just after it returns; whoever reuses the
// image must wait for this process to exit (kiln-fs keeps the image locked until then). An
// unmount counts once the mount has left this process's mount namespace, even if another
// namespace kept a copy of it (that copy then stops working).
int fuse_mount(ext2_filsys fs, const FuseMountOptions& opts);

}  // namespace kiln::fs

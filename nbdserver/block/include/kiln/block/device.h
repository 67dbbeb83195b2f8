// The block layer's one interface: a virtual disk that can be read, written, flushed, trimmed,
// zeroed, asked what its ranges are, and grown. Data operations return 0 or -errno.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "kiln/block/reactor.h"
#include "kiln/block/task.h"
#include "kiln/common/error.h"

namespace kiln::block {

// Errors of the control plane (opening, creating, checking): a common::Error (a reason that
// callers and tests match, the errno behind it, one clear line). A hostile or damaged image
// is kCorrupt, a feature Kiln lacks kUnsupported, a held lock kBusy, a missing file kNotFound.
class Error : public common::Error {
 public:
  Error(common::Reason reason, int err, const std::string& what)
      : common::Error(reason, what, err) {}
  // A system call's failure: the reason is the errno's (common::reason_of_errno).
  Error(int err, const std::string& what)
      : common::Error(common::reason_of_errno(err), what, err) {}
  int code() const { return error_number(); }
};
using common::Reason;

enum WriteFlags : unsigned {
  kWriteFua = 1u << 0,       // durable before the reply
  kWriteNoUnmap = 1u << 1,   // write_zeroes: keep the storage allocated
  kWriteFastZero = 1u << 2,  // write_zeroes: fail with -ENOTSUP rather than write zeros slowly
};

struct Capabilities {
  bool read_only = false;
  bool can_flush = true;
  bool can_fua = true;
  bool can_discard = true;
  bool can_write_zeroes = true;
  bool can_fast_zero = true;
  bool can_extents = true;
  bool can_multi_conn = true;  // a flush covers writes completed through any user of the device
  uint32_t min_block = 1;
  uint32_t preferred_block = 4096;
  uint32_t max_block = 32u << 20;
};

// What a guest range is. Mirrors `qemu-img map`: `present` means some image of the chain
// allocates it and `depth` says which (0 = this one); unallocated ranges have
// depth = chain length. `data` ranges read from storage at `host_offset` of that image.
struct Extent {
  static constexpr uint64_t kNoOffset = ~uint64_t{0};
  uint64_t offset = 0;
  uint64_t length = 0;
  bool present = false;
  bool zero = false;
  bool data = false;
  bool compressed = false;
  uint32_t depth = 0;
  uint64_t host_offset = kNoOffset;
};

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  virtual uint64_t size() const = 0;
  virtual const Capabilities& caps() const = 0;
  virtual const char* format() const = 0;
  virtual const std::string& filename() const = 0;
  // Images below this one (0 for a raw file or a qcow2 without backing).
  virtual uint32_t chain_length() const = 0;

  virtual Task<int> read(uint64_t offset, std::span<uint8_t> buf) = 0;
  virtual Task<int> write(uint64_t offset, std::span<const uint8_t> buf, unsigned flags) = 0;
  virtual Task<int> flush() = 0;
  virtual Task<int> discard(uint64_t offset, uint64_t length) = 0;
  virtual Task<int> write_zeroes(uint64_t offset, uint64_t length, unsigned flags) = 0;
  // Appends extents covering [offset, offset+length) (clipped to the size) to `out`,
  // adjacent extents of the same kind merged.
  virtual Task<int> block_status(uint64_t offset, uint64_t length, std::vector<Extent>* out) = 0;
  // Grows the device to `new_size`; shrinking is refused with -ENOTSUP.
  virtual Task<int> resize(uint64_t new_size) = 0;
  // Flushes and leaves the image clean; the device must not be used afterwards.
  virtual Task<int> close() = 0;
  // A hint, for a writer that streams much data and flushes at the end: starts writing what
  // the image file holds in the page cache to the disk, without waiting, so that the flush
  // has less left to do. Changes nothing that is read back, nor what a flush guarantees.
  virtual void start_writeback() {}
  // Live snapshot and commit (kiln-nbd): makes the open image read-only (flushed, left clean,
  // its write locks released so that other tools may read it) or writable again (its write
  // locks taken, the file reopened for writing if it was opened read-only). Only with no
  // request in flight. Throws Error; devices that cannot switch throw kUnsupported.
  virtual Task<void> set_read_only(bool read_only);
};

struct OpenOptions {
  // "raw", "qcow2", or empty to probe the top image. A probed qcow2 image that names a
  // backing file is refused (unless open_backing is false): its header may be a guest's
  // forgery inside a raw disk. Backing formats are never probed.
  std::string format;
  bool read_only = false;
  // Take QEMU-compatible advisory locks (see docs/block-layer.md). Turning them off is
  // qemu-img's -U (force share): allowed for read-only opens only.
  bool lock = true;
  bool open_backing = true;
  // O_DIRECT for the image and its backing chain (qemu's cache.direct, --cache=none and
  // directsync): no host page cache; requests that are not aligned for direct I/O go through
  // bounce buffers (see docs/kiln-nbd.md). Open fails with Reason::kUnsupported where the file
  // system refuses direct I/O.
  bool direct = false;
  uint32_t max_chain_depth = 64;
  size_t l2_cache_bytes = 4u << 20;
  size_t refcount_cache_bytes = 1u << 20;
  // When not empty, the image and every backing file must lie (symlinks resolved) under one
  // of these directories, or the open fails with Error(EACCES) (kiln-nbd's --allow-dir).
  std::vector<std::string> allowed_dirs;
  // qcow2: open this internal snapshot (an id, or else a name, as qemu's -l takes them)
  // instead of the active image; read_only must be set. Error(ENOENT) if there is none.
  std::string snapshot;
  // qcow2 LUKS encryption (qemu's encrypt.key-secret): the secret's bytes, which unlock every
  // encrypted image of the chain (see docs/block-layer.md). Without it an encrypted image is
  // refused, unless `header_only`.
  std::optional<std::string> key_secret;
  // Open for the header only (qemu-img info): an encrypted image opens without its key, and
  // then any read or write of its data fails with -EACCES.
  bool header_only = false;
};

// Takes QEMU-compatible advisory locks on an image file opened for reading (and writing, if
// `writable`): see docs/block-layer.md. Throws Error(EAGAIN) naming the lock when another
// process holds the image. open_image() does this itself; tools that write image files
// directly (raw create, convert) call it before they truncate. The locks live with `fd`.
void lock_image_file(int fd, const std::string& path, bool writable);
// Drops every lock byte `fd`'s open file description holds. Called before an image's file is
// closed: closing the descriptor releases the locks only once nothing else refers to the
// description, and something may for a moment after (a child forked meanwhile that has not
// yet called exec, an io_uring worker that has posted a completion but not yet let go of the
// file), in which time a new opener of the image would be refused.
void unlock_image_file(int fd) noexcept;

// Opens an image and, for qcow2, its backing chain. Throws Error with a clear message
// (EPERM for a probed image that names a backing file).
Task<std::unique_ptr<BlockDevice>> open_image(Reactor& reactor, const std::string& path,
                                              OpenOptions options);

// "raw" or "qcow2", by content. Throws Error if the file cannot be read.
std::string probe_format(const std::string& path);

// Parses a size: decimal digits, an optional fraction, an optional suffix b/k/M/G/T/P/E (either
// case, powers of 1024): "512", "10G", "1.5M". The whole string must match, and the result be a
// whole number of bytes below 2^64. Throws Error (EINVAL: not a size, ERANGE: too large) with
// the reason; the caller names the argument.
uint64_t parse_size(const std::string& text);

}  // namespace kiln::block

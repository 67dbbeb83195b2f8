// The conversion engine behind `kiln-img convert` (and kiln-spawn's snapshot): copies the guest
// view of one device (any format, through its backing chain) into another, as qemu-img convert
// does. The source's block status decides what is read: zero and unallocated ranges are never
// read or written as data; data is read in buffers, scanned for zeros (-S), and written —
// plain, as zero ranges, or compressed (-c, on a worker pool). Several requests are in flight
// (-m), writing in order or as they complete (-W).
#pragma once

#include <cstdint>
#include <functional>

#include "kiln/block/device.h"

namespace kiln::block {

class WorkerPool;

struct ConvertOptions {
  // Requests in flight (qemu-img's -m, default 8, at most 16 there).
  unsigned coroutines = 8;
  // Writes may land in any order (-W); otherwise each buffer is written after the one before.
  bool out_of_order = false;
  // Runs of zeros at least this long in the data are not written as data (-S, default 4k);
  // 0: no zero detection at all, everything is written as data (a fully allocated target).
  uint64_t sparse_size = 4096;
  // Write compressed clusters (-c): the target must be a qcow2 device that holds nothing yet
  // in the ranges written, and `pool` does the compression.
  bool compress = false;
  WorkerPool* pool = nullptr;
  // The target reads as zeros everywhere (freshly created without backing file): zero ranges
  // need no write. Otherwise they are written as zeros (which may unmap).
  bool target_zeroed = true;
  // The target's clusters exist already (preallocation): data is written in place, so zero
  // detection works on file system blocks (as for raw) rather than on whole clusters.
  bool target_preallocated = false;
  // The target's backing file (-B): ranges where the source reads what it reads are not
  // written (the target shows them through the backing file).
  BlockDevice* target_backing = nullptr;
  // Bytes per read buffer (at least one target cluster is used).
  uint64_t buffer_size = 2u << 20;
  // Called on the reactor thread as work completes: bytes of the source done, total.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

struct ConvertStats {
  uint64_t data_bytes = 0;           // written as data (compressed clusters counted whole)
  uint64_t zero_bytes = 0;           // written as zeros (write_zeroes)
  uint64_t skipped_bytes = 0;        // not written: already zeros, or the backing file's
  uint64_t compressed_clusters = 0;  // written compressed
};

// Converts `src` into `dst` (at least as large). Throws Error naming the failing operation and
// offset ("error while reading at byte N: ..." / "error while writing at byte N: ..."). `dst`
// is flushed at the end.
Task<void> convert(Reactor& reactor, BlockDevice& src, BlockDevice& dst,
                   const ConvertOptions& options, ConvertStats* stats = nullptr);

}  // namespace kiln::block

// Per-opcode counts and times of the FUSE requests a mount served, printed at the end when
// KILN_FS_STATS is set in the environment (a measuring aid: docs/kiln-fs-performance.md).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>

namespace kiln::fs::fuse_detail {

class RequestStats {
 public:
  // Enabled when KILN_FS_STATS is set to anything but "" or "0".
  RequestStats();
  bool enabled() const { return enabled_; }
  // A request of LEN bytes with OPCODE took NANOS of wall time and CPU_NANOS of this thread's
  // CPU time to serve (from its arrival to the reply). On a loaded machine the wall time
  // includes waiting for a CPU; the CPU time does not (nor the io_uring workers' time).
  void add(uint32_t opcode, size_t len, int64_t nanos, int64_t cpu_nanos);
  // This thread's CPU time, for add().
  static int64_t thread_cpu_nanos();
  // Opcode, count, bytes in requests, total and mean time; the io_manager's byte counts.
  void print(FILE* out, uint64_t bytes_read, uint64_t bytes_written) const;

 private:
  static constexpr uint32_t kOpcodes = 64;
  struct Entry {
    uint64_t count = 0;
    uint64_t bytes = 0;
    int64_t nanos = 0;
    int64_t cpu_nanos = 0;
  };
  bool enabled_ = false;
  Entry entries_[kOpcodes + 1];  // the last one: anything larger
  std::chrono::steady_clock::time_point start_;
};

}  // namespace kiln::fs::fuse_detail

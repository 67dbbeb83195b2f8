#include "request_stats.h"

#include <linux/fuse.h>
#include <time.h>

#include <cstdlib>
#include <cstring>

namespace kiln::fs::fuse_detail {
namespace {

struct OpcodeName {
  uint32_t opcode;
  const char* name;
};

constexpr OpcodeName kNames[] = {
    {FUSE_LOOKUP, "LOOKUP"},
    {FUSE_FORGET, "FORGET"},
    {FUSE_GETATTR, "GETATTR"},
    {FUSE_SETATTR, "SETATTR"},
    {FUSE_READLINK, "READLINK"},
    {FUSE_SYMLINK, "SYMLINK"},
    {FUSE_MKNOD, "MKNOD"},
    {FUSE_MKDIR, "MKDIR"},
    {FUSE_UNLINK, "UNLINK"},
    {FUSE_RMDIR, "RMDIR"},
    {FUSE_RENAME, "RENAME"},
    {FUSE_LINK, "LINK"},
    {FUSE_OPEN, "OPEN"},
    {FUSE_READ, "READ"},
    {FUSE_WRITE, "WRITE"},
    {FUSE_STATFS, "STATFS"},
    {FUSE_RELEASE, "RELEASE"},
    {FUSE_FSYNC, "FSYNC"},
    {FUSE_SETXATTR, "SETXATTR"},
    {FUSE_GETXATTR, "GETXATTR"},
    {FUSE_LISTXATTR, "LISTXATTR"},
    {FUSE_REMOVEXATTR, "REMOVEXATTR"},
    {FUSE_FLUSH, "FLUSH"},
    {FUSE_INIT, "INIT"},
    {FUSE_OPENDIR, "OPENDIR"},
    {FUSE_READDIR, "READDIR"},
    {FUSE_RELEASEDIR, "RELEASEDIR"},
    {FUSE_FSYNCDIR, "FSYNCDIR"},
    {FUSE_ACCESS, "ACCESS"},
    {FUSE_CREATE, "CREATE"},
    {FUSE_INTERRUPT, "INTERRUPT"},
    {FUSE_DESTROY, "DESTROY"},
    {FUSE_BATCH_FORGET, "BATCH_FORGET"},
    {FUSE_FALLOCATE, "FALLOCATE"},
    {FUSE_READDIRPLUS, "READDIRPLUS"},
    {FUSE_RENAME2, "RENAME2"},
    {FUSE_LSEEK, "LSEEK"},
    {FUSE_COPY_FILE_RANGE, "COPY_FILE_RANGE"},
    {FUSE_SYNCFS, "SYNCFS"},
};

const char* opcode_name(uint32_t op) {
  for (const OpcodeName& n : kNames) {
    if (n.opcode == op) return n.name;
  }
  return nullptr;
}

}  // namespace

RequestStats::RequestStats() : start_(std::chrono::steady_clock::now()) {
  const char* env = std::getenv("KILN_FS_STATS");
  enabled_ = env && *env && std::strcmp(env, "0") != 0;
}

void RequestStats::add(uint32_t opcode, size_t len, int64_t nanos, int64_t cpu_nanos) {
  Entry& e = entries_[opcode < kOpcodes ? opcode : kOpcodes];
  ++e.count;
  e.bytes += len;
  e.nanos += nanos;
  e.cpu_nanos += cpu_nanos;
}

int64_t RequestStats::thread_cpu_nanos() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

void RequestStats::print(FILE* out, uint64_t bytes_read, uint64_t bytes_written) const {
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::fprintf(out, "kiln-fs: requests served (%.3f s mounted)\n", wall);
  std::fprintf(out, "kiln-fs: %-13s %10s %14s %12s %10s %12s %10s\n", "opcode", "count", "bytes in",
               "wall ms", "wall us/op", "cpu ms", "cpu us/op");
  int64_t total_nanos = 0, total_cpu = 0;
  for (uint32_t op = 0; op <= kOpcodes; ++op) {
    const Entry& e = entries_[op];
    if (!e.count) continue;
    total_nanos += e.nanos;
    total_cpu += e.cpu_nanos;
    const char* name = op < kOpcodes ? opcode_name(op) : nullptr;
    char number[16];
    std::snprintf(number, sizeof number, "op %u", op);
    const double n = static_cast<double>(e.count);
    std::fprintf(out, "kiln-fs: %-13s %10llu %14llu %12.1f %10.1f %12.1f %10.1f\n",
                 name ? name : number, static_cast<unsigned long long>(e.count),
                 static_cast<unsigned long long>(e.bytes), e.nanos / 1e6, e.nanos / 1e3 / n,
                 e.cpu_nanos / 1e6, e.cpu_nanos / 1e3 / n);
  }
  std::fprintf(out,
               "kiln-fs: serving requests: %.1f ms wall, %.1f ms cpu; io_manager read %llu, "
               "wrote %llu bytes\n",
               total_nanos / 1e6, total_cpu / 1e6, static_cast<unsigned long long>(bytes_read),
               static_cast<unsigned long long>(bytes_written));
}

}  // namespace kiln::fs::fuse_detail

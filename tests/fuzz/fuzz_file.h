// The file that the qcow2 fuzz targets open: one in-memory file (memfd) for the whole run,
// rewritten for every input and opened by the block layer through /proc, so nothing is left
// behind however the fuzzer exits.
//
// An input is either the image itself (up to 1 MiB), or a sparse description, so that the
// targets reach what only large files reach (offsets past 4 GiB, sparse terabytes, tables far
// apart) without megabytes of input:
//   "KSPARSE1", u64 file size (little-endian, at most 2^44),
//   then records: u64 offset (little-endian, taken modulo the file size), u16 length, bytes.
// The file is the given size, zeros (holes) except where records put their bytes.
#pragma once

#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace kiln::fuzz {

inline int memory_file() {
  static const int fd = [] {
    int f = memfd_create("kiln-fuzz", MFD_CLOEXEC);
    if (f < 0) abort();
    return f;
  }();
  return fd;
}

inline const std::string& temp_path() {
  static const std::string path = "/proc/self/fd/" + std::to_string(memory_file());
  return path;
}

inline bool write_at(const uint8_t* data, size_t size, uint64_t offset) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = pwrite(memory_file(), data + done, size - done, static_cast<off_t>(offset + done));
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

inline uint64_t load_le(const uint8_t* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

constexpr char kSparseMagic[8] = {'K', 'S', 'P', 'A', 'R', 'S', 'E', '1'};
constexpr uint64_t kMaxSparseSize = uint64_t{1} << 44;
constexpr size_t kMaxPlainSize = 1u << 20;

// Writes the file an input describes. Returns false for inputs to skip.
inline bool write_input(const uint8_t* data, size_t size) {
  const int fd = memory_file();
  if (ftruncate(fd, 0) != 0) return false;
  if (size < 16 || std::memcmp(data, kSparseMagic, 8) != 0)
    return size <= kMaxPlainSize && write_at(data, size, 0);
  const uint64_t file_size = load_le(data + 8, 8) % (kMaxSparseSize + 1);
  if (file_size == 0 || ftruncate(fd, static_cast<off_t>(file_size)) != 0) return false;
  for (size_t pos = 16; pos + 10 <= size;) {
    const uint64_t offset = load_le(data + pos, 8) % file_size;
    size_t len = static_cast<size_t>(load_le(data + pos + 8, 2));
    pos += 10;
    len = std::min<size_t>({len, size - pos, static_cast<size_t>(file_size - offset)});
    if (!write_at(data + pos, len, offset)) return false;
    pos += len;
  }
  return true;
}

}  // namespace kiln::fuzz

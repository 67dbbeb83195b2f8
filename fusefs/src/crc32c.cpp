// CRC32C for libext2fs with the CPU's crc32 instruction.
//
// With metadata_csum (mkfs.ext4's default), every directory block, inode, extent block, bitmap
// and group descriptor libext2fs reads is checked and every one it writes is summed with
// CRC32C, and a mount or an injection reads and writes the same few blocks again and again.
// libext2fs computes the sum eight bytes at a time through tables: about 14,000 instructions
// for a 4 KiB directory block, a third of everything the mount's process executed in a `tar x`
// of small files (callgrind; docs/kiln-fs-performance.md, part 9). The library calls its
// `ext2fs_crc32c_le` through its PLT, so the definition below, exported from the executable
// (fusefs/CMakeLists.txt), is the one those calls reach. Same contract as the library's: the
// raw, reflected CRC32C update of CRC over LEN bytes at P, with no inversion before or after
// (the caller seeds and finishes).
//
// Three streams of kStream bytes are summed side by side (the instruction takes three cycles
// and the CPU can start one per cycle) and joined by shifting the earlier sums over the bytes
// that follow them: CRC is linear, so crc(A‖B) = shift_|B|(crc(A)) ^ crc(B) when B's sum
// starts at zero. Without SSE 4.2, the library's own definition does the work.
#include <dlfcn.h>
#include <ext2fs/ext2fs.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace {

constexpr uint32_t kPoly = 0x82f63b78;  // CRC32C (Castagnoli), reflected
constexpr size_t kStream = 256;         // bytes of each of the three streams per round

// The raw update of STATE over COUNT zero bytes, bit by bit (compile time only).
constexpr uint32_t over_zeros(uint32_t state, size_t count) {
  for (size_t i = 0; i < count * 8; ++i) state = (state >> 1) ^ ((state & 1) ? kPoly : 0);
  return state;
}

// shift(x) = the update of x over kStream zero bytes, which is linear in x: kShift[k][b] is
// the shift of byte b at byte position k, and a 32-bit value's shift is the XOR of its four.
using ShiftTable = std::array<std::array<uint32_t, 256>, 4>;
constexpr ShiftTable make_shift_table() {
  std::array<uint32_t, 32> bit{};
  for (int i = 0; i < 32; ++i) bit[i] = over_zeros(uint32_t{1} << i, kStream);
  ShiftTable t{};
  for (int k = 0; k < 4; ++k) {
    for (int b = 0; b < 256; ++b) {
      uint32_t v = 0;
      for (int i = 0; i < 8; ++i) {
        if (b & (1 << i)) v ^= bit[k * 8 + i];
      }
      t[k][b] = v;
    }
  }
  return t;
}
constexpr ShiftTable kShift = make_shift_table();

inline uint32_t shift(uint32_t x) {
  return kShift[0][x & 0xff] ^ kShift[1][(x >> 8) & 0xff] ^ kShift[2][(x >> 16) & 0xff] ^
         kShift[3][x >> 24];
}

#if defined(__x86_64__)
inline uint64_t load64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

__attribute__((target("sse4.2"))) uint32_t crc32c_hw(uint32_t crc, const unsigned char* p,
                                                     size_t len) {
  uint64_t c = crc;
  // Bytes up to an 8-byte boundary, so that the long loads below are aligned.
  while (len > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    c = __builtin_ia32_crc32qi(static_cast<uint32_t>(c), *p++);
    --len;
  }
  while (len >= 3 * kStream) {
    uint64_t b = 0;
    uint64_t d = 0;
    for (size_t i = 0; i < kStream; i += 8) {
      c = __builtin_ia32_crc32di(c, load64(p + i));
      b = __builtin_ia32_crc32di(b, load64(p + kStream + i));
      d = __builtin_ia32_crc32di(d, load64(p + 2 * kStream + i));
    }
    c = shift(shift(static_cast<uint32_t>(c)) ^ static_cast<uint32_t>(b)) ^
        static_cast<uint32_t>(d);
    p += 3 * kStream;
    len -= 3 * kStream;
  }
  for (; len >= 8; p += 8, len -= 8) c = __builtin_ia32_crc32di(c, load64(p));
  for (; len > 0; --len) c = __builtin_ia32_crc32qi(static_cast<uint32_t>(c), *p++);
  return static_cast<uint32_t>(c);
}
#endif

using Crc32cFn = __u32 (*)(__u32, unsigned char const*, size_t);

// The library's definition, for CPUs without the instruction: the next one after ours. Only
// libext2fs (and tests linked with it) call this function, so the library is there to find.
Crc32cFn library_crc32c() {
  static const Crc32cFn fn = reinterpret_cast<Crc32cFn>(dlsym(RTLD_NEXT, "ext2fs_crc32c_le"));
  if (fn == nullptr) std::abort();
  return fn;
}

#if defined(__x86_64__)
// One CPUID, on the first checksum. __builtin_cpu_supports would do the same, but it links
// libgcc's CPU probe, which runs about ten CPUIDs (each a VM exit, 1.4 µs on the 2-core VM) at
// every process start.
bool have_crc32_instruction() {
  static const bool yes = [] {
    unsigned eax, ebx, ecx, edx;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_SSE4_2) != 0;
  }();
  return yes;
}
#endif

}  // namespace

extern "C" __attribute__((visibility("default"))) __u32 ext2fs_crc32c_le(__u32 crc,
                                                                         unsigned char const* p,
                                                                         size_t len) {
#if defined(__x86_64__)
  if (have_crc32_instruction()) return crc32c_hw(crc, p, len);
#endif
  return library_crc32c()(crc, p, len);
}

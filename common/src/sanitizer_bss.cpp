// Linked into every executable of a sanitizer build (KILN_SANITIZE), and only there.
//
// At exit, LeakSanitizer reads every word of the executable's .bss, looking for pointers. With
// the sanitizer runtime linked statically (clang), that .bss is about 10 MiB, mostly the
// runtime's stack depot hash tables, and most of it was never touched: the scan takes one page
// fault per 4 KiB page, and on the virtual machines CI runs on a page fault costs about 12 us.
// Backing it up front took an instrumented `kiln-img --help` from 54 to 40 ms of CPU, and the
// test tiers start thousands of such processes.
//
// So before anything else runs (.preinit_array), the .bss is backed in one go: transparent huge
// pages for the 2 MiB-aligned part, where the kernel allows them (MADV_HUGEPAGE; the system's
// setting is usually "madvise"), and the whole range populated at once (MADV_POPULATE_WRITE,
// Linux 5.14). Both are hints: where the kernel refuses, the process runs as before. What
// LeakSanitizer scans, and so what it reports, does not change.
#include <sys/mman.h>

#include <cstdint>

extern "C" char __bss_start[];  // GNU ld's symbols for an executable's .bss
extern "C" char _end[];

namespace {

#ifndef MADV_POPULATE_WRITE
constexpr int MADV_POPULATE_WRITE = 23;
#endif

void back_bss() {
  constexpr std::uintptr_t page = 4096;
  constexpr std::uintptr_t huge = std::uintptr_t{2} << 20;
  const auto begin = reinterpret_cast<std::uintptr_t>(__bss_start) & ~(page - 1);
  const auto end = reinterpret_cast<std::uintptr_t>(_end);
  const std::uintptr_t huge_begin = (begin + huge - 1) & ~(huge - 1);
  const std::uintptr_t huge_end = end & ~(huge - 1);
  if (huge_begin < huge_end) {
    madvise(reinterpret_cast<void*>(huge_begin), huge_end - huge_begin, MADV_HUGEPAGE);
  }
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
}

}  // namespace

// Runs before the constructors of every object, the sanitizer runtime's own included.
__attribute__((section(".preinit_array"), used)) void (*const kiln_back_bss)() = back_bss;

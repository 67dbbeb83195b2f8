// Whether this translation unit is built with AddressSanitizer. GCC defines
// __SANITIZE_ADDRESS__; clang before 16 only answers __has_feature(address_sanitizer), and the
// sanitizer tier builds with clang 14. Caches that reuse freed memory turn themselves off under
// it, since a reused block would hide a use after free.
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define KILN_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KILN_ASAN 1
#endif
#endif
#ifndef KILN_ASAN
#define KILN_ASAN 0
#endif

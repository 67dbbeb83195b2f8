// Random bytes from the kernel (getrandom(2)) and random version-4 UUIDs.
#pragma once

#include <cstddef>
#include <string>

namespace kiln::common {

// Fills `buf` (blocking until the kernel's pool is initialised, once after boot); throws
// Error(kIo) if getrandom fails.
void random_bytes(void* buf, size_t len);

// "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx", lower-case hex (RFC 9562 version 4, variant 10).
std::string new_uuid();

// True for a UUID in that canonical form (any version), lower or upper case.
bool is_uuid(const std::string& s);

}  // namespace kiln::common

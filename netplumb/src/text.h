// Small string helpers private to netplumb.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kiln::net {

inline std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  if (s.empty()) return out;
  size_t start = 0;
  while (true) {
    size_t pos = s.find(sep, start);
    out.emplace_back(s.substr(start, pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return out;
}

inline std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out += sep;
    out += parts[i];
  }
  return out;
}

// A random version-4 UUID.
std::string new_uuid();

// Random bytes from the kernel.
void random_bytes(void* buf, size_t len);

}  // namespace kiln::net

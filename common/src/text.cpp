#include "kiln/common/text.h"

#include <cstdint>

namespace kiln::common {

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  if (s.empty()) return out;
  size_t start = 0;
  for (;;) {
    size_t pos = s.find(sep, start);
    out.emplace_back(s.substr(start, pos == std::string_view::npos ? pos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return out;
}

std::vector<std::string> split_nonempty(std::string_view s, char sep) {
  std::vector<std::string> out;
  for (auto& piece : split(s, sep))
    if (!piece.empty()) out.push_back(std::move(piece));
  return out;
}

std::vector<std::string> split_qemu_options(std::string_view s) {
  std::vector<std::string> items(1);
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != ',')
      items.back() += s[i];
    else if (i + 1 < s.size() && s[i + 1] == ',')
      items.back() += ',', ++i;
    else
      items.emplace_back();
  }
  return items;
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out += sep;
    out += parts[i];
  }
  return out;
}

std::string trim(std::string_view s) {
  constexpr std::string_view kSpace = " \t\r\n";
  size_t a = s.find_first_not_of(kSpace);
  if (a == std::string_view::npos) return "";
  size_t b = s.find_last_not_of(kSpace);
  return std::string(s.substr(a, b - a + 1));
}

std::string base64(std::string_view in) {
  static const char* kTab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += kTab[v >> 18];
    out += kTab[(v >> 12) & 63];
    out += kTab[(v >> 6) & 63];
    out += kTab[v & 63];
  }
  if (i + 1 == in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    out += kTab[v >> 18];
    out += kTab[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += kTab[v >> 18];
    out += kTab[(v >> 12) & 63];
    out += kTab[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

}  // namespace kiln::common

#include "tool_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "kiln/block/device.h"

namespace kiln::tools {

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) ::close(fd_);
}

int UniqueFd::close() {
  int rc = fd_ >= 0 ? ::close(fd_) : 0;
  fd_ = -1;
  return rc;
}

std::string human_size(uint64_t bytes) {
  static const char* const kUnits[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
  // Switch to the next unit once the value would print as 1000 or more in the current one.
  int unit = 0;
  long double scaled = static_cast<long double>(bytes) * 1024.0L / 1000.0L;
  while (unit < 6 && scaled >= 1024.0L) {
    scaled /= 1024.0L;
    ++unit;
  }
  double value = static_cast<double>(bytes) / static_cast<double>(uint64_t{1} << (10 * unit));
  char buf[64];
  std::snprintf(buf, sizeof buf, "%0.3g %sB", value, kUnits[unit]);
  return buf;
}

namespace {
[[noreturn]] void invalid(const char* what, const std::string& text, const std::string& why) {
  throw ToolError(std::string("Invalid ") + what + " '" + text + "': " + why);
}
}  // namespace

uint64_t parse_size_arg(const std::string& text, const char* what, uint64_t max) {
  uint64_t v;
  try {
    v = kiln::block::parse_size(text);
  } catch (const kiln::block::Error& e) {
    if (e.code() == ERANGE) invalid(what, text, "must be at most " + std::to_string(max));
    invalid(what, text, e.what());
  }
  if (v > max) invalid(what, text, "must be at most " + std::to_string(max));
  return v;
}

uint64_t parse_uint(const std::string& text, uint64_t max, const char* what) {
  const bool hex = text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X');
  const size_t first = hex ? 2 : 0;
  const char* digits = hex ? "0123456789abcdefABCDEF" : "0123456789";
  if (text.size() == first || text.find_first_not_of(digits, first) != std::string::npos)
    invalid(what, text, "expected a decimal number, or 0x and hexadecimal digits");
  if (!hex && text.size() > 1 && text[0] == '0')
    invalid(what, text, "a leading zero is ambiguous (octal?): write it without");
  uint64_t v = 0;
  for (size_t i = first; i < text.size(); ++i) {
    const unsigned d =
        hex ? unsigned(std::isdigit(static_cast<unsigned char>(text[i]))
                           ? text[i] - '0'
                           : (std::tolower(static_cast<unsigned char>(text[i])) - 'a' + 10))
            : unsigned(text[i] - '0');
    if (d > max || v > (max - d) / (hex ? 16 : 10))
      invalid(what, text, "must be at most " + std::to_string(max));
    v = v * (hex ? 16 : 10) + d;
  }
  return v;
}

std::string path_combine(const std::string& base, const std::string& relative) {
  if (relative.empty() || relative[0] == '/') return relative;
  auto slash = base.rfind('/');
  if (slash == std::string::npos) return relative;
  return base.substr(0, slash + 1) + relative;
}

int64_t allocated_bytes(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return -1;
  return static_cast<int64_t>(st.st_blocks) * 512;
}

uint64_t file_length(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0)
    throw ToolError("Could not open '" + path + "': " + std::strerror(errno));
  return static_cast<uint64_t>(st.st_size);
}

std::string json_quote(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
  return out;
}

JsonObject& JsonObject::add(const std::string& key, const std::string& s) {
  members_.push_back({key, json_quote(s), {}, Member::kScalar});
  return *this;
}

JsonObject& JsonObject::add(const std::string& key, uint64_t v) {
  members_.push_back({key, std::to_string(v), {}, Member::kScalar});
  return *this;
}

JsonObject& JsonObject::add(const std::string& key, int64_t v) {
  members_.push_back({key, std::to_string(v), {}, Member::kScalar});
  return *this;
}

JsonObject& JsonObject::add(const std::string& key, bool v) {
  members_.push_back({key, v ? "true" : "false", {}, Member::kScalar});
  return *this;
}

JsonObject& JsonObject::add(const std::string& key, const JsonObject& v) {
  members_.push_back({key, "", {v}, Member::kObject});
  return *this;
}

JsonObject& JsonObject::add(const std::string& key, const std::vector<JsonObject>& v) {
  members_.push_back({key, "", v, Member::kArray});
  return *this;
}

static std::string spaces(int n) { return std::string(static_cast<size_t>(n), ' '); }

std::string JsonObject::render(int indent) const {
  if (members_.empty()) return "{\n" + spaces(indent) + "}";
  std::string out = "{\n";
  for (size_t i = 0; i < members_.size(); ++i) {
    const Member& m = members_[i];
    out += spaces(indent + 4) + json_quote(m.key) + ": ";
    switch (m.kind) {
      case Member::kScalar:
        out += m.scalar;
        break;
      case Member::kObject:
        out += m.items[0].render(indent + 4);
        break;
      case Member::kArray:
        out += render_array(m.items, indent + 4);
        break;
    }
    out += i + 1 < members_.size() ? ",\n" : "\n";
  }
  out += spaces(indent) + "}";
  return out;
}

std::string render_array(const std::vector<JsonObject>& items, int indent) {
  if (items.empty()) return "[\n" + spaces(indent) + "]";
  std::string out = "[\n";
  for (size_t i = 0; i < items.size(); ++i) {
    out += spaces(indent + 4) + items[i].render(indent + 4);
    out += i + 1 < items.size() ? ",\n" : "\n";
  }
  out += spaces(indent) + "]";
  return out;
}

}  // namespace kiln::tools

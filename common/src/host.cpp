#include "kiln/common/host.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>

#include "kiln/common/error.h"

namespace kiln::common {

std::string this_host_name() {
  std::string name;
  if (const char* e = std::getenv("KILN_HOST"); e && *e) {
    name = e;
  } else {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0) throw errno_error("gethostname", errno);
    name = buf;
  }
  check_host_name(name);
  return name;
}

void check_host_name(const std::string& name) {
  auto ok = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  };
  if (name.empty() || name.size() > 255 || !std::all_of(name.begin(), name.end(), ok) ||
      !std::isalnum(static_cast<unsigned char>(name[0]))) {
    std::string shown = name.substr(0, 80);
    for (char& c : shown)
      if (!std::isprint(static_cast<unsigned char>(c))) c = '?';
    throw invalid("host name '" + shown +
                  "' must be 1 to 255 characters of A-Z a-z 0-9 . _ - starting with a letter "
                  "or digit");
  }
}

}  // namespace kiln::common
